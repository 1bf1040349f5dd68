//! Reads and writes on a cell database that host discovery and the `cell_v2` commands need. Cell databases
//! are opened from their cell mapping's URL; compute agents never come here (they go through the cell
//! conductor).

use crate::Result;
use sqlx::Row;
use tessera_db::{get_text, Db};

/// Open a cell's database (pool of `max` connections) and bring its schema up to date when `sync`.
pub async fn open(url: &str, max: u32, sync: bool) -> Result<Db> {
    let db = Db::connect(url, max).await?;
    if sync {
        db.migrate(&tessera_db::compute::CELL_MIGRATIONS).await?;
    }
    Ok(db)
}

#[derive(Debug, Clone, PartialEq)]
pub struct NodeRef {
    pub id: i64,
    pub uuid: String,
    pub host: String,
}

/// Live compute nodes, all or only those not yet mapped to a cell.
pub async fn compute_nodes(db: &Db, unmapped_only: bool) -> Result<Vec<NodeRef>> {
    let q = if unmapped_only {
        "SELECT id, uuid, host FROM compute_nodes WHERE deleted = 0 AND mapped = 0 ORDER BY id"
    } else {
        "SELECT id, uuid, host FROM compute_nodes WHERE deleted = 0 ORDER BY id"
    };
    sqlx::query(q)
        .fetch_all(db.pool())
        .await?
        .iter()
        .map(|r| {
            Ok(NodeRef {
                id: r.try_get("id")?,
                uuid: get_text(r, "uuid")?,
                host: get_text(r, "host")?,
            })
        })
        .collect()
}

/// Mark one compute node mapped (host discovery).
pub async fn set_node_mapped(db: &Db, id: i64) -> Result<()> {
    sqlx::query(&db.sql("UPDATE compute_nodes SET mapped = 1, updated_at = ? WHERE id = ?"))
        .bind(tessera_types::now_epoch_micros())
        .bind(id)
        .execute(db.pool())
        .await?;
    Ok(())
}

/// Mark the compute nodes of `host` (all of the cell's when None) unmapped, so a later discovery finds them.
pub async fn unmap_nodes(db: &Db, host: Option<&str>) -> Result<()> {
    let now = tessera_types::now_epoch_micros();
    match host {
        Some(h) => {
            sqlx::query(
                &db.sql("UPDATE compute_nodes SET mapped = 0, updated_at = ? WHERE host = ? AND deleted = 0"),
            )
            .bind(now)
            .bind(h)
            .execute(db.pool())
            .await?
        }
        None => {
            sqlx::query(&db.sql("UPDATE compute_nodes SET mapped = 0, updated_at = ? WHERE deleted = 0"))
                .bind(now)
                .execute(db.pool())
                .await?
        }
    };
    Ok(())
}

/// Hosts with a live `nova-compute` service record (disabled ones included).
pub async fn compute_service_hosts(db: &Db) -> Result<Vec<String>> {
    sqlx::query(&db.sql("SELECT host FROM services WHERE service_binary = ? AND deleted = 0 ORDER BY id"))
        .bind("nova-compute")
        .fetch_all(db.pool())
        .await?
        .iter()
        .map(|r| Ok(get_text(r, "host")?))
        .collect()
}

/// How many live (not deleted) instances the cell holds, optionally only on `host`.
pub async fn live_instances(db: &Db, host: Option<&str>) -> Result<i64> {
    let n: i64 = match host {
        Some(h) => {
            sqlx::query_scalar(&db.sql("SELECT COUNT(*) FROM instances WHERE deleted = 0 AND host = ?"))
                .bind(h)
                .fetch_one(db.pool())
                .await?
        }
        None => {
            sqlx::query_scalar("SELECT COUNT(*) FROM instances WHERE deleted = 0")
                .fetch_one(db.pool())
                .await?
        }
    };
    Ok(n)
}

/// An instance's row state: None when no row exists (archived or never there), else whether it is deleted.
pub async fn instance_deleted(db: &Db, uuid: &str) -> Result<Option<bool>> {
    let r = sqlx::query(&db.sql("SELECT deleted FROM instances WHERE uuid = ?"))
        .bind(uuid)
        .fetch_optional(db.pool())
        .await?;
    Ok(match r {
        Some(r) => Some(r.try_get::<i64, _>("deleted")? != 0),
        None => None,
    })
}

#[derive(Debug, Clone, PartialEq)]
pub struct InstanceRef {
    pub uuid: String,
    pub project_id: String,
    pub user_id: String,
}

/// Instances (deleted ones too), oldest first, after the instance `marker`, at most `limit`.
pub async fn instances_page(db: &Db, marker: Option<&str>, limit: i64) -> Result<Vec<InstanceRef>> {
    let after = match marker {
        Some(m) => sqlx::query(&db.sql("SELECT created_at, id FROM instances WHERE uuid = ?"))
            .bind(m)
            .fetch_optional(db.pool())
            .await?
            .map(|r| Ok::<_, sqlx::Error>((r.try_get::<i64, _>("created_at")?, r.try_get::<i64, _>("id")?)))
            .transpose()?,
        None => None,
    };
    let rows = match after {
        Some((t, id)) => sqlx::query(&db.sql(
            "SELECT uuid, project_id, user_id FROM instances WHERE created_at > ? OR (created_at = ? AND id > ?) \
             ORDER BY created_at, id LIMIT ?",
        ))
        .bind(t)
        .bind(t)
        .bind(id)
        .bind(limit)
        .fetch_all(db.pool())
        .await?,
        None => sqlx::query(&db.sql(
            "SELECT uuid, project_id, user_id FROM instances ORDER BY created_at, id LIMIT ?",
        ))
        .bind(limit)
        .fetch_all(db.pool())
        .await?,
    };
    rows.iter()
        .map(|r| {
            Ok(InstanceRef {
                uuid: get_text(r, "uuid")?,
                project_id: get_text(r, "project_id")?,
                user_id: get_text(r, "user_id")?,
            })
        })
        .collect()
}

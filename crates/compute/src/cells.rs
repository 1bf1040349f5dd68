//! Cells v2 mappings in the API database: cells (cell0 included), compute hosts → cell, instances → cell.

use crate::{dup_or, Result};
use sqlx::Row;
use tessera_db::{get_opt_text, get_text, AnyRow, Db};

/// cell0's fixed identity: the cell of instances that were never scheduled. It has a database and no bus.
pub const CELL0_UUID: &str = "00000000-0000-0000-0000-000000000000";
pub const CELL0_NAME: &str = "cell0";
pub const CELL0_TRANSPORT_URL: &str = "none:///";

#[derive(Debug, Clone, PartialEq)]
pub struct CellMapping {
    pub id: i64,
    pub uuid: String,
    pub name: Option<String>,
    pub transport_url: String,
    pub database_connection: String,
    pub disabled: bool,
}

impl CellMapping {
    pub fn is_cell0(&self) -> bool {
        self.uuid == CELL0_UUID
    }
    /// `name (uuid)`, or the uuid alone for an unnamed cell.
    pub fn label(&self) -> String {
        match &self.name {
            Some(n) => format!("{n} ({})", self.uuid),
            None => self.uuid.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct HostMapping {
    pub id: i64,
    pub cell_id: i64,
    pub host: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct InstanceMapping {
    pub id: i64,
    pub instance_uuid: String,
    pub cell_id: Option<i64>,
    pub project_id: String,
    pub user_id: Option<String>,
    pub queued_for_delete: bool,
    pub created_at: i64,
}

const CELL_COLS: &str = "id, uuid, name, transport_url, database_connection, disabled";

fn cell_from(r: &AnyRow) -> Result<CellMapping> {
    Ok(CellMapping {
        id: r.try_get("id")?,
        uuid: get_text(r, "uuid")?,
        name: get_opt_text(r, "name")?,
        transport_url: get_text(r, "transport_url")?,
        database_connection: get_text(r, "database_connection")?,
        disabled: r.try_get::<i64, _>("disabled")? != 0,
    })
}

/// Every cell, in id order.
pub async fn cell_list(db: &Db) -> Result<Vec<CellMapping>> {
    sqlx::query(&format!("SELECT {CELL_COLS} FROM cell_mappings ORDER BY id"))
        .fetch_all(db.pool())
        .await?
        .iter()
        .map(cell_from)
        .collect()
}

pub async fn cell_get(db: &Db, uuid: &str) -> Result<Option<CellMapping>> {
    sqlx::query(&db.sql(&format!("SELECT {CELL_COLS} FROM cell_mappings WHERE uuid = ?")))
        .bind(uuid)
        .fetch_optional(db.pool())
        .await?
        .as_ref()
        .map(cell_from)
        .transpose()
}

pub async fn cell_get_by_id(db: &Db, id: i64) -> Result<Option<CellMapping>> {
    sqlx::query(&db.sql(&format!("SELECT {CELL_COLS} FROM cell_mappings WHERE id = ?")))
        .bind(id)
        .fetch_optional(db.pool())
        .await?
        .as_ref()
        .map(cell_from)
        .transpose()
}

/// Insert a cell mapping (a reused uuid is [`crate::ComputeError::Duplicate`]).
pub async fn cell_create(
    db: &Db,
    uuid: &str,
    name: Option<&str>,
    transport_url: &str,
    database_connection: &str,
    disabled: bool,
) -> Result<CellMapping> {
    let now = tessera_types::now_epoch_micros();
    sqlx::query(&db.sql(
        "INSERT INTO cell_mappings (uuid, name, transport_url, database_connection, disabled, created_at, \
         updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
    ))
    .bind(uuid)
    .bind(name)
    .bind(transport_url)
    .bind(database_connection)
    .bind(disabled as i64)
    .bind(now)
    .bind(now)
    .execute(db.pool())
    .await
    .map_err(|e| dup_or(e, || format!("cell mapping {uuid}")))?;
    cell_get(db, uuid)
        .await?
        .ok_or_else(|| crate::ComputeError::NotFound(format!("cell mapping {uuid}")))
}

/// Save a mapping's name, URLs and disabled flag.
pub async fn cell_update(db: &Db, c: &CellMapping) -> Result<()> {
    sqlx::query(&db.sql(
        "UPDATE cell_mappings SET name = ?, transport_url = ?, database_connection = ?, disabled = ?, \
         updated_at = ? WHERE id = ?",
    ))
    .bind(c.name.as_deref())
    .bind(&c.transport_url)
    .bind(&c.database_connection)
    .bind(c.disabled as i64)
    .bind(tessera_types::now_epoch_micros())
    .bind(c.id)
    .execute(db.pool())
    .await?;
    Ok(())
}

/// Delete a cell with its host mappings and the given instance mappings, in one transaction.
pub async fn cell_delete(db: &Db, cell_id: i64, instance_mapping_ids: &[i64]) -> Result<()> {
    let mut tx = db.begin().await?;
    for id in instance_mapping_ids {
        sqlx::query(&db.sql("DELETE FROM instance_mappings WHERE id = ?"))
            .bind(id)
            .execute(&mut *tx)
            .await?;
    }
    sqlx::query(&db.sql("DELETE FROM host_mappings WHERE cell_id = ?"))
        .bind(cell_id)
        .execute(&mut *tx)
        .await?;
    sqlx::query(&db.sql("DELETE FROM cell_mappings WHERE id = ?"))
        .bind(cell_id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

fn host_from(r: &AnyRow) -> Result<HostMapping> {
    Ok(HostMapping {
        id: r.try_get("id")?,
        cell_id: r.try_get("cell_id")?,
        host: get_text(r, "host")?,
    })
}

/// Host mappings of one cell, or of all; by host name.
pub async fn host_mappings(db: &Db, cell_id: Option<i64>) -> Result<Vec<HostMapping>> {
    let rows = match cell_id {
        Some(c) => {
            sqlx::query(
                &db.sql("SELECT id, cell_id, host FROM host_mappings WHERE cell_id = ? ORDER BY host"),
            )
            .bind(c)
            .fetch_all(db.pool())
            .await?
        }
        None => {
            sqlx::query("SELECT id, cell_id, host FROM host_mappings ORDER BY host")
                .fetch_all(db.pool())
                .await?
        }
    };
    rows.iter().map(host_from).collect()
}

pub async fn host_mapping_get(db: &Db, host: &str) -> Result<Option<HostMapping>> {
    sqlx::query(&db.sql("SELECT id, cell_id, host FROM host_mappings WHERE host = ?"))
        .bind(host)
        .fetch_optional(db.pool())
        .await?
        .as_ref()
        .map(host_from)
        .transpose()
}

/// Map a host to a cell; a host mapped already (by a concurrent discovery, say) is
/// [`crate::ComputeError::Duplicate`] — the unique key on `host` is what makes discovery race-safe.
pub async fn host_mapping_create(db: &Db, cell_id: i64, host: &str) -> Result<()> {
    let now = tessera_types::now_epoch_micros();
    sqlx::query(
        &db.sql("INSERT INTO host_mappings (cell_id, host, created_at, updated_at) VALUES (?, ?, ?, ?)"),
    )
    .bind(cell_id)
    .bind(host)
    .bind(now)
    .bind(now)
    .execute(db.pool())
    .await
    .map_err(|e| dup_or(e, || format!("host mapping for {host}")))?;
    Ok(())
}

pub async fn host_mapping_delete(db: &Db, host: &str) -> Result<bool> {
    let n = sqlx::query(&db.sql("DELETE FROM host_mappings WHERE host = ?"))
        .bind(host)
        .execute(db.pool())
        .await?
        .rows_affected();
    Ok(n > 0)
}

const IM_COLS: &str = "id, instance_uuid, cell_id, project_id, user_id, queued_for_delete, created_at";

fn im_from(r: &AnyRow) -> Result<InstanceMapping> {
    Ok(InstanceMapping {
        id: r.try_get("id")?,
        instance_uuid: get_text(r, "instance_uuid")?,
        cell_id: r.try_get("cell_id")?,
        project_id: get_text(r, "project_id")?,
        user_id: get_opt_text(r, "user_id")?,
        queued_for_delete: r.try_get::<i64, _>("queued_for_delete")? != 0,
        created_at: r.try_get("created_at")?,
    })
}

/// Mark an instance mapping as queued for delete (its server is being or has been deleted).
pub async fn instance_mapping_queue_for_delete(db: &Db, instance_uuid: &str) -> Result<()> {
    sqlx::query(
        &db.sql("UPDATE instance_mappings SET queued_for_delete = 1, updated_at = ? WHERE instance_uuid = ?"),
    )
    .bind(tessera_types::now_epoch_micros())
    .bind(instance_uuid)
    .execute(db.pool())
    .await?;
    Ok(())
}

/// Live (not queued for delete) instance mappings of a cell, optionally of one project: what a listing
/// shows for a cell that does not answer.
pub async fn live_instance_mappings(
    db: &Db,
    cell_id: i64,
    project_id: Option<&str>,
) -> Result<Vec<InstanceMapping>> {
    let sql = match project_id {
        Some(_) => format!(
            "SELECT {IM_COLS} FROM instance_mappings WHERE cell_id = ? AND queued_for_delete = 0 AND project_id = ?"
        ),
        None => format!("SELECT {IM_COLS} FROM instance_mappings WHERE cell_id = ? AND queued_for_delete = 0"),
    };
    let sql = db.sql(&sql);
    let mut q = sqlx::query(&sql).bind(cell_id);
    if let Some(p) = project_id {
        q = q.bind(p);
    }
    q.fetch_all(db.pool()).await?.iter().map(im_from).collect()
}

pub async fn instance_mapping_get(db: &Db, instance_uuid: &str) -> Result<Option<InstanceMapping>> {
    sqlx::query(&db.sql(&format!(
        "SELECT {IM_COLS} FROM instance_mappings WHERE instance_uuid = ?"
    )))
    .bind(instance_uuid)
    .fetch_optional(db.pool())
    .await?
    .as_ref()
    .map(im_from)
    .transpose()
}

/// Which of `uuids` are mapped servers not queued for delete (one query).
pub async fn live_mapped(db: &Db, uuids: &[&str]) -> Result<std::collections::HashSet<String>> {
    if uuids.is_empty() {
        return Ok(Default::default());
    }
    let raw = format!(
        "SELECT instance_uuid FROM instance_mappings WHERE queued_for_delete = 0 AND instance_uuid IN ({})",
        vec!["?"; uuids.len()].join(", ")
    );
    let sql = db.sql(&raw);
    // A statement per list length would fill the statement caches: not kept.
    let mut q = sqlx::query(&sql).persistent(false);
    for u in uuids {
        q = q.bind(*u);
    }
    q.fetch_all(db.pool())
        .await?
        .iter()
        .map(|r| Ok(tessera_db::get_text(r, "instance_uuid")?))
        .collect()
}

pub async fn instance_mappings_in_cell(db: &Db, cell_id: i64) -> Result<Vec<InstanceMapping>> {
    sqlx::query(&db.sql(&format!(
        "SELECT {IM_COLS} FROM instance_mappings WHERE cell_id = ? ORDER BY id"
    )))
    .bind(cell_id)
    .fetch_all(db.pool())
    .await?
    .iter()
    .map(im_from)
    .collect()
}

pub async fn instance_mappings_of_project(db: &Db, project_id: &str) -> Result<Vec<InstanceMapping>> {
    sqlx::query(&db.sql(&format!(
        "SELECT {IM_COLS} FROM instance_mappings WHERE project_id = ? ORDER BY id"
    )))
    .bind(project_id)
    .fetch_all(db.pool())
    .await?
    .iter()
    .map(im_from)
    .collect()
}

/// Insert an instance mapping; an instance mapped already is [`crate::ComputeError::Duplicate`].
pub async fn instance_mapping_create(
    db: &Db,
    instance_uuid: &str,
    cell_id: Option<i64>,
    project_id: &str,
    user_id: Option<&str>,
) -> Result<()> {
    let now = tessera_types::now_epoch_micros();
    sqlx::query(&db.sql(
        "INSERT INTO instance_mappings (instance_uuid, cell_id, project_id, user_id, queued_for_delete, \
         created_at, updated_at) VALUES (?, ?, ?, ?, 0, ?, ?)",
    ))
    .bind(instance_uuid)
    .bind(cell_id)
    .bind(project_id)
    .bind(user_id)
    .bind(now)
    .bind(now)
    .execute(db.pool())
    .await
    .map_err(|e| dup_or(e, || format!("instance mapping for {instance_uuid}")))?;
    Ok(())
}

pub async fn instance_mapping_delete(db: &Db, id: i64) -> Result<()> {
    sqlx::query(&db.sql("DELETE FROM instance_mappings WHERE id = ?"))
        .bind(id)
        .execute(db.pool())
        .await?;
    Ok(())
}

/// The default cell0 database URL: the cell database URL with `_cell0` appended to the database name
/// (before any query string), as nova-manage derives it. For SQLite the "name" is the file path.
pub fn default_cell0_url(database_connection: &str) -> String {
    let (base, query) = match database_connection.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (database_connection, None),
    };
    let mut out = format!("{base}_cell0");
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cell0_url_appends_to_the_database_name() {
        assert_eq!(
            default_cell0_url("mysql+pymysql://nova:pw@db/nova?charset=utf8"),
            "mysql+pymysql://nova:pw@db/nova_cell0?charset=utf8"
        );
        assert_eq!(
            default_cell0_url("sqlite:////var/lib/tessera/cell1.sqlite"),
            "sqlite:////var/lib/tessera/cell1.sqlite_cell0"
        );
    }

    #[tokio::test]
    async fn mappings_round_trip_and_hosts_map_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Db::connect(&format!("sqlite:///{}/api.sqlite", dir.path().display()), 2)
            .await
            .expect("connect");
        db.migrate(&tessera_db::compute::API_MIGRATIONS)
            .await
            .expect("migrate");
        let c0 = cell_create(
            &db,
            CELL0_UUID,
            Some(CELL0_NAME),
            CELL0_TRANSPORT_URL,
            "sqlite://",
            false,
        )
        .await
        .expect("cell0");
        assert!(c0.is_cell0());
        assert!(matches!(
            cell_create(&db, CELL0_UUID, Some("again"), "none:///", "sqlite://", false).await,
            Err(crate::ComputeError::Duplicate(_))
        ));
        let c1 = cell_create(
            &db,
            "11111111-1111-1111-1111-111111111111",
            Some("cell1"),
            "inproc://cell1",
            "sqlite://x",
            true,
        )
        .await
        .expect("cell1");
        assert!(c1.disabled);
        host_mapping_create(&db, c1.id, "host-a").await.expect("map");
        assert!(matches!(
            host_mapping_create(&db, c1.id, "host-a").await,
            Err(crate::ComputeError::Duplicate(_))
        ));
        assert_eq!(host_mappings(&db, Some(c1.id)).await.expect("hosts").len(), 1);
        assert!(host_mappings(&db, Some(c0.id)).await.expect("hosts").is_empty());
        instance_mapping_create(&db, "i-1", Some(c1.id), "p", Some("u"))
            .await
            .expect("im");
        cell_delete(
            &db,
            c1.id,
            &[instance_mapping_get(&db, "i-1")
                .await
                .expect("get")
                .expect("some")
                .id],
        )
        .await
        .expect("delete");
        assert!(host_mapping_get(&db, "host-a").await.expect("get").is_none());
        assert!(instance_mapping_get(&db, "i-1").await.expect("get").is_none());
        assert_eq!(cell_list(&db).await.expect("list"), vec![c0]);
    }
}

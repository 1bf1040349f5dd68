//! Host aggregates in the API database (hosts, metadata; `availability_zone` metadata puts hosts in a zone).

use crate::{dup_or, Result};
use sqlx::Row;
use std::collections::{BTreeMap, HashMap};
use tessera_db::{get_text, Db};

#[derive(Debug, Clone, PartialEq)]
pub struct Aggregate {
    pub id: i64,
    pub uuid: String,
    pub name: String,
    pub hosts: Vec<String>,
    pub metadata: BTreeMap<String, String>,
    pub created_at: i64,
    pub updated_at: i64,
}

impl Aggregate {
    pub fn availability_zone(&self) -> Option<&str> {
        self.metadata.get("availability_zone").map(String::as_str)
    }
}

/// Every aggregate with its hosts and metadata, by id.
pub async fn list(db: &Db) -> Result<Vec<Aggregate>> {
    let mut hosts: HashMap<i64, Vec<String>> = HashMap::new();
    for r in sqlx::query("SELECT aggregate_id, host FROM aggregate_hosts ORDER BY host")
        .fetch_all(db.pool())
        .await?
    {
        hosts
            .entry(r.try_get("aggregate_id")?)
            .or_default()
            .push(get_text(&r, "host")?);
    }
    let mut meta: HashMap<i64, BTreeMap<String, String>> = HashMap::new();
    for r in sqlx::query("SELECT aggregate_id, meta_key, meta_value FROM aggregate_metadata")
        .fetch_all(db.pool())
        .await?
    {
        meta.entry(r.try_get("aggregate_id")?)
            .or_default()
            .insert(get_text(&r, "meta_key")?, get_text(&r, "meta_value")?);
    }
    sqlx::query("SELECT id, uuid, name, created_at, updated_at FROM aggregates ORDER BY id")
        .fetch_all(db.pool())
        .await?
        .iter()
        .map(|r| {
            let id: i64 = r.try_get("id")?;
            Ok(Aggregate {
                id,
                uuid: get_text(r, "uuid")?,
                name: get_text(r, "name")?,
                hosts: hosts.remove(&id).unwrap_or_default(),
                metadata: meta.remove(&id).unwrap_or_default(),
                created_at: r.try_get("created_at")?,
                updated_at: r.try_get("updated_at")?,
            })
        })
        .collect()
}

pub async fn get(db: &Db, id: i64) -> Result<Option<Aggregate>> {
    Ok(list(db).await?.into_iter().find(|a| a.id == id))
}

/// Create an aggregate (a taken name is [`crate::ComputeError::Duplicate`]), with an optional zone.
pub async fn create(db: &Db, name: &str, az: Option<&str>) -> Result<Aggregate> {
    let now = tessera_types::now_epoch_micros();
    let uuid = tessera_types::new_uuid();
    let mut tx = db.begin().await?;
    sqlx::query(&db.sql("INSERT INTO aggregates (uuid, name, created_at, updated_at) VALUES (?, ?, ?, ?)"))
        .bind(&uuid)
        .bind(name)
        .bind(now)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(|e| dup_or(e, || format!("aggregate {name}")))?;
    let id: i64 = sqlx::query_scalar(&db.sql("SELECT id FROM aggregates WHERE uuid = ?"))
        .bind(&uuid)
        .fetch_one(&mut *tx)
        .await?;
    if let Some(z) = az {
        sqlx::query(&db.sql(
            "INSERT INTO aggregate_metadata (aggregate_id, meta_key, meta_value) VALUES (?, 'availability_zone', ?)",
        ))
        .bind(id)
        .bind(z)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    get(db, id)
        .await?
        .ok_or_else(|| crate::ComputeError::NotFound(format!("aggregate {id}")))
}

pub async fn rename(db: &Db, id: i64, name: &str) -> Result<()> {
    sqlx::query(&db.sql("UPDATE aggregates SET name = ?, updated_at = ? WHERE id = ?"))
        .bind(name)
        .bind(tessera_types::now_epoch_micros())
        .bind(id)
        .execute(db.pool())
        .await
        .map_err(|e| dup_or(e, || format!("aggregate {name}")))?;
    Ok(())
}

/// Apply metadata changes (None deletes the key), in one transaction.
pub async fn set_metadata(db: &Db, id: i64, changes: &BTreeMap<String, Option<String>>) -> Result<()> {
    let mut tx = db.begin().await?;
    for (k, v) in changes {
        sqlx::query(&db.sql("DELETE FROM aggregate_metadata WHERE aggregate_id = ? AND meta_key = ?"))
            .bind(id)
            .bind(k)
            .execute(&mut *tx)
            .await?;
        if let Some(v) = v {
            sqlx::query(
                &db.sql(
                    "INSERT INTO aggregate_metadata (aggregate_id, meta_key, meta_value) VALUES (?, ?, ?)",
                ),
            )
            .bind(id)
            .bind(k)
            .bind(v)
            .execute(&mut *tx)
            .await?;
        }
    }
    sqlx::query(&db.sql("UPDATE aggregates SET updated_at = ? WHERE id = ?"))
        .bind(tessera_types::now_epoch_micros())
        .bind(id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

pub async fn add_host(db: &Db, id: i64, host: &str) -> Result<()> {
    sqlx::query(&db.sql("INSERT INTO aggregate_hosts (aggregate_id, host) VALUES (?, ?)"))
        .bind(id)
        .bind(host)
        .execute(db.pool())
        .await
        .map_err(|e| dup_or(e, || format!("host {host} in aggregate {id}")))?;
    Ok(())
}

pub async fn remove_host(db: &Db, id: i64, host: &str) -> Result<bool> {
    let n = sqlx::query(&db.sql("DELETE FROM aggregate_hosts WHERE aggregate_id = ? AND host = ?"))
        .bind(id)
        .bind(host)
        .execute(db.pool())
        .await?
        .rows_affected();
    Ok(n > 0)
}

pub async fn delete(db: &Db, id: i64) -> Result<()> {
    let mut tx = db.begin().await?;
    sqlx::query(&db.sql("DELETE FROM aggregate_metadata WHERE aggregate_id = ?"))
        .bind(id)
        .execute(&mut *tx)
        .await?;
    sqlx::query(&db.sql("DELETE FROM aggregates WHERE id = ?"))
        .bind(id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// Host → availability zone, from aggregates with `availability_zone` metadata.
pub async fn host_zones(db: &Db) -> Result<HashMap<String, String>> {
    let mut out = HashMap::new();
    for a in list(db).await? {
        if let Some(z) = a.availability_zone() {
            for h in &a.hosts {
                out.insert(h.clone(), z.to_string());
            }
        }
    }
    Ok(out)
}

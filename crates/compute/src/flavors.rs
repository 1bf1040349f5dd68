//! Flavors in the API database: the flavor, its extra specs and the projects a private flavor is shared
//! with. All-in-one creates Nova's classic m1.* set on first start.

use crate::{dup_or, Result};
use sqlx::Row;
use std::collections::BTreeMap;
use tessera_db::{get_opt_text, get_text, AnyRow, Db};

#[derive(Debug, Clone, PartialEq)]
pub struct Flavor {
    pub id: i64,
    pub flavorid: String,
    pub name: String,
    pub memory_mb: i64,
    pub vcpus: i64,
    pub root_gb: i64,
    pub ephemeral_gb: i64,
    pub swap: i64,
    pub rxtx_factor: f64,
    pub disabled: bool,
    pub is_public: bool,
    pub description: Option<String>,
    pub extra_specs: BTreeMap<String, String>,
}

const COLS: &str =
    "id, flavorid, name, memory_mb, vcpus, root_gb, ephemeral_gb, swap, rxtx_factor, disabled, \
                    is_public, description";

fn from_row(r: &AnyRow) -> Result<Flavor> {
    Ok(Flavor {
        id: r.try_get("id")?,
        flavorid: get_text(r, "flavorid")?,
        name: get_text(r, "name")?,
        memory_mb: r.try_get("memory_mb")?,
        vcpus: r.try_get("vcpus")?,
        root_gb: r.try_get("root_gb")?,
        ephemeral_gb: r.try_get("ephemeral_gb")?,
        swap: r.try_get("swap")?,
        rxtx_factor: r.try_get("rxtx_factor")?,
        disabled: r.try_get::<i64, _>("disabled")? != 0,
        is_public: r.try_get::<i64, _>("is_public")? != 0,
        description: get_opt_text(r, "description")?,
        extra_specs: BTreeMap::new(),
    })
}

async fn with_specs(db: &Db, mut fs: Vec<Flavor>) -> Result<Vec<Flavor>> {
    if fs.is_empty() {
        return Ok(fs);
    }
    let rows = sqlx::query("SELECT flavor_id, spec_key, spec_value FROM flavor_extra_specs")
        .fetch_all(db.pool())
        .await?;
    let mut by: BTreeMap<i64, BTreeMap<String, String>> = BTreeMap::new();
    for r in rows {
        by.entry(r.try_get("flavor_id")?)
            .or_default()
            .insert(get_text(&r, "spec_key")?, get_text(&r, "spec_value")?);
    }
    for f in &mut fs {
        f.extra_specs = by.remove(&f.id).unwrap_or_default();
    }
    Ok(fs)
}

/// Every flavor with its extra specs, by flavor id.
pub async fn list(db: &Db) -> Result<Vec<Flavor>> {
    let fs = sqlx::query(&format!("SELECT {COLS} FROM flavors ORDER BY flavorid"))
        .fetch_all(db.pool())
        .await?
        .iter()
        .map(from_row)
        .collect::<Result<Vec<_>>>()?;
    with_specs(db, fs).await
}

pub async fn get(db: &Db, flavorid: &str) -> Result<Option<Flavor>> {
    let f = sqlx::query(&db.sql(&format!("SELECT {COLS} FROM flavors WHERE flavorid = ?")))
        .bind(flavorid)
        .fetch_optional(db.pool())
        .await?
        .as_ref()
        .map(from_row)
        .transpose()?;
    Ok(match f {
        Some(f) => with_specs(db, vec![f]).await?.pop(),
        None => None,
    })
}

/// Insert a flavor; a taken name or flavor id is [`crate::ComputeError::Duplicate`].
pub async fn create(db: &Db, f: &Flavor) -> Result<Flavor> {
    let now = tessera_types::now_epoch_micros();
    sqlx::query(&db.sql(
        "INSERT INTO flavors (flavorid, name, memory_mb, vcpus, root_gb, ephemeral_gb, swap, rxtx_factor, \
         vcpu_weight, disabled, is_public, description, created_at, updated_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL, ?, ?, ?, ?, ?)",
    ))
    .bind(&f.flavorid)
    .bind(&f.name)
    .bind(f.memory_mb)
    .bind(f.vcpus)
    .bind(f.root_gb)
    .bind(f.ephemeral_gb)
    .bind(f.swap)
    .bind(f.rxtx_factor)
    .bind(f.disabled as i64)
    .bind(f.is_public as i64)
    .bind(f.description.as_deref())
    .bind(now)
    .bind(now)
    .execute(db.pool())
    .await
    .map_err(|e| dup_or(e, || format!("flavor {} ({})", f.name, f.flavorid)))?;
    get(db, &f.flavorid)
        .await?
        .ok_or_else(|| crate::ComputeError::NotFound(format!("flavor {}", f.flavorid)))
}

pub async fn set_description(db: &Db, id: i64, description: Option<&str>) -> Result<()> {
    sqlx::query(&db.sql("UPDATE flavors SET description = ?, updated_at = ? WHERE id = ?"))
        .bind(description)
        .bind(tessera_types::now_epoch_micros())
        .bind(id)
        .execute(db.pool())
        .await?;
    Ok(())
}

/// Delete a flavor with its extra specs and project access, in one transaction.
pub async fn delete(db: &Db, id: i64) -> Result<()> {
    let mut tx = db.begin().await?;
    for t in ["flavor_extra_specs", "flavor_projects"] {
        sqlx::query(&db.sql(&format!("DELETE FROM {t} WHERE flavor_id = ?")))
            .bind(id)
            .execute(&mut *tx)
            .await?;
    }
    sqlx::query(&db.sql("DELETE FROM flavors WHERE id = ?"))
        .bind(id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// Set (insert or replace) extra specs, in one transaction.
pub async fn set_specs(db: &Db, id: i64, specs: &BTreeMap<String, String>) -> Result<()> {
    let mut tx = db.begin().await?;
    for (k, v) in specs {
        sqlx::query(&db.sql("DELETE FROM flavor_extra_specs WHERE flavor_id = ? AND spec_key = ?"))
            .bind(id)
            .bind(k)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            &db.sql("INSERT INTO flavor_extra_specs (flavor_id, spec_key, spec_value) VALUES (?, ?, ?)"),
        )
        .bind(id)
        .bind(k)
        .bind(v)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

pub async fn delete_spec(db: &Db, id: i64, key: &str) -> Result<bool> {
    let n = sqlx::query(&db.sql("DELETE FROM flavor_extra_specs WHERE flavor_id = ? AND spec_key = ?"))
        .bind(id)
        .bind(key)
        .execute(db.pool())
        .await?
        .rows_affected();
    Ok(n > 0)
}

/// Projects a flavor is shared with.
pub async fn projects(db: &Db, id: i64) -> Result<Vec<String>> {
    sqlx::query(&db.sql("SELECT project_id FROM flavor_projects WHERE flavor_id = ? ORDER BY project_id"))
        .bind(id)
        .fetch_all(db.pool())
        .await?
        .iter()
        .map(|r| Ok(get_text(r, "project_id")?))
        .collect()
}

/// Flavor ids (internal) shared with a project.
pub async fn shared_with(db: &Db, project: &str) -> Result<Vec<i64>> {
    sqlx::query(&db.sql("SELECT flavor_id FROM flavor_projects WHERE project_id = ?"))
        .bind(project)
        .fetch_all(db.pool())
        .await?
        .iter()
        .map(|r| Ok(r.try_get("flavor_id")?))
        .collect()
}

pub async fn add_project(db: &Db, id: i64, project: &str) -> Result<()> {
    sqlx::query(&db.sql("INSERT INTO flavor_projects (flavor_id, project_id) VALUES (?, ?)"))
        .bind(id)
        .bind(project)
        .execute(db.pool())
        .await
        .map_err(|e| dup_or(e, || format!("access to flavor {id} for {project}")))?;
    Ok(())
}

pub async fn remove_project(db: &Db, id: i64, project: &str) -> Result<bool> {
    let n = sqlx::query(&db.sql("DELETE FROM flavor_projects WHERE flavor_id = ? AND project_id = ?"))
        .bind(id)
        .bind(project)
        .execute(db.pool())
        .await?
        .rows_affected();
    Ok(n > 0)
}

/// Nova's classic flavors (ids 1–5), created when missing.
pub async fn ensure_defaults(db: &Db) -> Result<()> {
    let defaults = [
        ("1", "m1.tiny", 512, 1, 1),
        ("2", "m1.small", 2048, 1, 20),
        ("3", "m1.medium", 4096, 2, 40),
        ("4", "m1.large", 8192, 4, 80),
        ("5", "m1.xlarge", 16384, 8, 160),
    ];
    for (id, name, ram, vcpus, disk) in defaults {
        if get(db, id).await?.is_some() {
            continue;
        }
        let f = Flavor {
            id: 0,
            flavorid: id.into(),
            name: name.into(),
            memory_mb: ram,
            vcpus,
            root_gb: disk,
            ephemeral_gb: 0,
            swap: 0,
            rxtx_factor: 1.0,
            disabled: false,
            is_public: true,
            description: None,
            extra_specs: BTreeMap::new(),
        };
        match create(db, &f).await {
            Ok(_) | Err(crate::ComputeError::Duplicate(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

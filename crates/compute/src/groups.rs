//! Server groups (Nova's instance groups) in the API database: one policy per group (`affinity`,
//! `anti-affinity`, `soft-affinity`, `soft-anti-affinity`), the `max_server_per_host` rule of anti-affinity
//! (2.64), and members — added in the boot's own transaction, removed when the server is deleted.

use crate::Result;
use sqlx::Row;
use std::collections::BTreeMap;
use tessera_db::{get_text, AnyRow, Db};

pub const POLICIES: [&str; 4] = ["anti-affinity", "affinity", "soft-anti-affinity", "soft-affinity"];

#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub id: i64,
    pub uuid: String,
    pub name: String,
    pub project_id: String,
    pub user_id: String,
    pub policy: String,
    /// `max_server_per_host` (anti-affinity only), as Nova keeps rules: strings by name.
    pub rules: BTreeMap<String, i64>,
    pub members: Vec<String>,
    pub created_at: i64,
}

impl Group {
    /// How many of the group's servers one host may take under a hard anti-affinity policy.
    pub fn max_server_per_host(&self) -> i64 {
        self.rules.get("max_server_per_host").copied().unwrap_or(1)
    }
}

const COLS: &str = "g.id, g.uuid, g.name, g.project_id, g.user_id, g.created_at, p.policy, p.rules";

fn from_row(r: &AnyRow) -> Result<Group> {
    let rules: Option<String> = r.try_get("rules")?;
    Ok(Group {
        id: r.try_get("id")?,
        uuid: get_text(r, "uuid")?,
        name: r.try_get::<Option<String>, _>("name")?.unwrap_or_default(),
        project_id: get_text(r, "project_id")?,
        user_id: get_text(r, "user_id")?,
        policy: r.try_get::<Option<String>, _>("policy")?.unwrap_or_default(),
        rules: rules
            .as_deref()
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or_default(),
        members: Vec::new(),
        created_at: r.try_get("created_at")?,
    })
}

/// Members of the given groups, in the order they joined.
async fn attach_members(db: &Db, groups: &mut [Group]) -> Result<()> {
    if groups.is_empty() {
        return Ok(());
    }
    let raw = format!(
        "SELECT group_id, instance_uuid FROM instance_group_member WHERE group_id IN ({}) \
         ORDER BY created_at, instance_uuid",
        vec!["?"; groups.len()].join(", ")
    );
    let sql = db.sql(&raw);
    let mut q = sqlx::query(&sql).persistent(groups.len() == 1);
    for g in groups.iter() {
        q = q.bind(g.id);
    }
    for r in q.fetch_all(db.pool()).await? {
        let gid: i64 = r.try_get("group_id")?;
        if let Some(g) = groups.iter_mut().find(|g| g.id == gid) {
            g.members.push(get_text(&r, "instance_uuid")?);
        }
    }
    Ok(())
}

async fn select(db: &Db, filter: &str, bind: Option<&str>) -> Result<Vec<Group>> {
    let raw = format!(
        "SELECT {COLS} FROM instance_groups g LEFT JOIN instance_group_policy p ON p.group_id = g.id \
         {filter} ORDER BY g.created_at, g.id"
    );
    let sql = db.sql(&raw);
    let mut q = sqlx::query(&sql);
    if let Some(b) = bind {
        q = q.bind(b);
    }
    let mut out = q
        .fetch_all(db.pool())
        .await?
        .iter()
        .map(from_row)
        .collect::<Result<Vec<_>>>()?;
    attach_members(db, &mut out).await?;
    Ok(out)
}

pub async fn get(db: &Db, uuid: &str) -> Result<Option<Group>> {
    Ok(select(db, "WHERE g.uuid = ?", Some(uuid))
        .await?
        .into_iter()
        .next())
}

/// A project's groups, or every group (`None`).
pub async fn list(db: &Db, project: Option<&str>) -> Result<Vec<Group>> {
    match project {
        Some(p) => select(db, "WHERE g.project_id = ?", Some(p)).await,
        None => select(db, "", None).await,
    }
}

/// Create a group unless the project already has `limit` (-1: no limit); `Ok(None)` when over quota. The
/// count and the insert share one write transaction, so concurrent creates cannot both slip under it.
pub async fn create(db: &Db, g: &Group, limit: i64) -> Result<Option<Group>> {
    let mut tx = db.begin_write().await?;
    if limit >= 0 {
        let r = sqlx::query(&db.sql("SELECT COUNT(*) AS n FROM instance_groups WHERE project_id = ?"))
            .bind(&g.project_id)
            .fetch_one(&mut *tx)
            .await?;
        if r.try_get::<i64, _>("n")? >= limit {
            return Ok(None);
        }
    }
    sqlx::query(&db.sql(
        "INSERT INTO instance_groups (uuid, name, project_id, user_id, created_at, updated_at) \
         VALUES (?, ?, ?, ?, ?, ?)",
    ))
    .bind(&g.uuid)
    .bind(&g.name)
    .bind(&g.project_id)
    .bind(&g.user_id)
    .bind(g.created_at)
    .bind(g.created_at)
    .execute(&mut *tx)
    .await
    .map_err(|e| crate::dup_or(e, || format!("server group {}", g.uuid)))?;
    let id: i64 = sqlx::query(&db.sql("SELECT id FROM instance_groups WHERE uuid = ?"))
        .bind(&g.uuid)
        .fetch_one(&mut *tx)
        .await?
        .try_get("id")?;
    let rules = (!g.rules.is_empty()).then(|| serde_json::to_string(&g.rules).unwrap_or_default());
    sqlx::query(&db.sql("INSERT INTO instance_group_policy (group_id, policy, rules) VALUES (?, ?, ?)"))
        .bind(id)
        .bind(&g.policy)
        .bind(rules)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    get(db, &g.uuid).await
}

/// Delete a group with its policy and members; false when it did not exist.
pub async fn delete(db: &Db, g: &Group) -> Result<bool> {
    let mut tx = db.begin_write().await?;
    for sql in [
        "DELETE FROM instance_group_member WHERE group_id = ?",
        "DELETE FROM instance_group_policy WHERE group_id = ?",
    ] {
        sqlx::query(&db.sql(sql)).bind(g.id).execute(&mut *tx).await?;
    }
    let n = sqlx::query(&db.sql("DELETE FROM instance_groups WHERE id = ?"))
        .bind(g.id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    tx.commit().await?;
    Ok(n > 0)
}

/// Add servers to a group inside the caller's transaction, refusing (`Invalid`) when that would take the
/// group past `limit` members (-1: no limit).
pub async fn add_members(
    db: &Db,
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    group_id: i64,
    uuids: &[&str],
    limit: i64,
    now: i64,
) -> Result<()> {
    if limit >= 0 {
        let r = sqlx::query(&db.sql("SELECT COUNT(*) AS n FROM instance_group_member WHERE group_id = ?"))
            .bind(group_id)
            .fetch_one(&mut **tx)
            .await?;
        if r.try_get::<i64, _>("n")? + uuids.len() as i64 > limit {
            return Err(crate::ComputeError::OverQuota(
                "Quota exceeded, too many servers in group".into(),
            ));
        }
    }
    for u in uuids {
        sqlx::query(
            &db.sql(
                "INSERT INTO instance_group_member (group_id, instance_uuid, created_at) VALUES (?, ?, ?)",
            ),
        )
        .bind(group_id)
        .bind(*u)
        .bind(now)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// Take a deleted server out of whatever group it was in.
pub async fn remove_member(db: &Db, uuid: &str) -> Result<()> {
    sqlx::query(&db.sql("DELETE FROM instance_group_member WHERE instance_uuid = ?"))
        .bind(uuid)
        .execute(db.pool())
        .await?;
    Ok(())
}

/// The groups a server belongs to (2.71's `server_groups`).
pub async fn of_member(db: &Db, uuid: &str) -> Result<Vec<String>> {
    sqlx::query(&db.sql(
        "SELECT g.uuid FROM instance_group_member m JOIN instance_groups g ON g.id = m.group_id \
         WHERE m.instance_uuid = ?",
    ))
    .bind(uuid)
    .fetch_all(db.pool())
    .await?
    .iter()
    .map(|r| Ok(get_text(r, "uuid")?))
    .collect()
}

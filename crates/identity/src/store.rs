//! Identity datastore: one function per question, over the identity database. Every write runs in one
//! transaction together with a bump of `identity_revision`, so other processes notice the change and drop
//! their validation caches.

use crate::error::{IdentityError, Result};
use serde_json::{Map, Value};
use sqlx::Row;
use tessera_db::{in_list, AnyRow, Db, Transaction};

pub type Tx = Transaction<'static, tessera_db::Any>;

fn s(row: &AnyRow, col: &str) -> Result<String> {
    Ok(tessera_db::get_text(row, col)?)
}
fn os(row: &AnyRow, col: &str) -> Result<Option<String>> {
    Ok(tessera_db::get_opt_text(row, col)?)
}
fn i(row: &AnyRow, col: &str) -> Result<i64> {
    Ok(row.try_get::<i64, _>(col)?)
}
fn oi(row: &AnyRow, col: &str) -> Result<Option<i64>> {
    Ok(row.try_get::<Option<i64>, _>(col)?)
}
fn json_map(text: Option<String>) -> Map<String, Value> {
    text.and_then(|t| serde_json::from_str::<Map<String, Value>>(&t).ok())
        .unwrap_or_default()
}
fn json_list(text: Option<String>) -> Vec<String> {
    text.and_then(|t| serde_json::from_str::<Vec<String>>(&t).ok())
        .unwrap_or_default()
}
pub fn to_json_text<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "{}".into())
}

/// Map a unique violation to Keystone's 409.
pub fn conflict(kind: &'static str, message: impl Into<String>) -> impl FnOnce(sqlx::Error) -> IdentityError {
    let message = message.into();
    move |e| {
        if tessera_db::is_unique_violation(&e) {
            IdentityError::Conflict { kind, message }
        } else {
            IdentityError::from(e)
        }
    }
}

pub async fn bump_revision(db: &Db, tx: &mut Tx) -> Result<()> {
    sqlx::query(&db.sql("UPDATE identity_revision SET revision = revision + 1 WHERE id = ?"))
        .bind(1i64)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

pub async fn revision(db: &Db) -> Result<i64> {
    let row = sqlx::query(&db.sql("SELECT revision FROM identity_revision WHERE id = ?"))
        .bind(1i64)
        .fetch_one(db.pool())
        .await?;
    i(&row, "revision")
}

// ---------------------------------------------------------------- domains

#[derive(Debug, Clone)]
pub struct DomainRow {
    pub id: String,
    pub name: String,
    pub description: Option<String>,
    pub enabled: bool,
    pub tags: Vec<String>,
    pub extra: Map<String, Value>,
}

fn domain_from(row: &AnyRow) -> Result<DomainRow> {
    Ok(DomainRow {
        id: s(row, "id")?,
        name: s(row, "name")?,
        description: os(row, "description")?,
        enabled: i(row, "enabled")? != 0,
        tags: json_list(os(row, "tags")?),
        extra: json_map(os(row, "extra")?),
    })
}

const DOMAIN_COLS: &str = "id, name, description, enabled, tags, extra";

pub async fn domain_get(db: &Db, id: &str) -> Result<Option<DomainRow>> {
    let q = format!("SELECT {DOMAIN_COLS} FROM domains WHERE id = ?");
    let row = sqlx::query(&db.sql(&q))
        .bind(id)
        .fetch_optional(db.pool())
        .await?;
    row.as_ref().map(domain_from).transpose()
}

pub async fn domain_get_by_name(db: &Db, name: &str) -> Result<Option<DomainRow>> {
    let q = format!("SELECT {DOMAIN_COLS} FROM domains WHERE name = ?");
    let row = sqlx::query(&db.sql(&q))
        .bind(name)
        .fetch_optional(db.pool())
        .await?;
    row.as_ref().map(domain_from).transpose()
}

pub async fn domain_list(db: &Db, name: Option<&str>, enabled: Option<bool>) -> Result<Vec<DomainRow>> {
    let mut q = format!("SELECT {DOMAIN_COLS} FROM domains WHERE 1 = 1");
    if name.is_some() {
        q.push_str(" AND name = ?");
    }
    if enabled.is_some() {
        q.push_str(" AND enabled = ?");
    }
    q.push_str(" ORDER BY name");
    let sql = db.sql(&q);
    let mut query = sqlx::query(&sql);
    if let Some(n) = name {
        query = query.bind(n);
    }
    if let Some(e) = enabled {
        query = query.bind(e as i64);
    }
    query
        .fetch_all(db.pool())
        .await?
        .iter()
        .map(domain_from)
        .collect()
}

pub async fn domain_put(db: &Db, d: &DomainRow, create: bool) -> Result<()> {
    let mut tx = db.begin().await?;
    let q = if create {
        "INSERT INTO domains (description, enabled, tags, extra, name, id, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
    } else {
        "UPDATE domains SET description = ?, enabled = ?, tags = ?, extra = ?, name = ? WHERE id = ?"
    };
    let sql = db.sql(q);
    let mut query = sqlx::query(&sql)
        .bind(d.description.clone())
        .bind(d.enabled as i64)
        .bind(to_json_text(&d.tags))
        .bind(to_json_text(&d.extra))
        .bind(d.name.clone())
        .bind(d.id.clone());
    if create {
        query = query.bind(tessera_types::now_epoch_micros());
    }
    query.execute(&mut *tx).await.map_err(conflict(
        "domain",
        format!("Duplicate entry found with name {}", d.name),
    ))?;
    bump_revision(db, &mut tx).await?;
    tx.commit().await?;
    Ok(())
}

/// Delete a domain and everything in it (projects, users, groups, their assignments and credentials).
pub async fn domain_delete(db: &Db, id: &str) -> Result<()> {
    let mut tx = db.begin().await?;
    for (table, col) in [
        ("projects", "domain_id"),
        ("users", "domain_id"),
        ("identity_groups", "domain_id"),
    ] {
        let q = format!("SELECT id FROM {table} WHERE {col} = ?");
        let ids: Vec<String> = sqlx::query(&db.sql(&q))
            .bind(id)
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|r| s(r, "id"))
            .collect::<Result<_>>()?;
        for child in ids {
            delete_actor_or_target(db, &mut tx, &child).await?;
            if table == "users" {
                delete_user_rows(db, &mut tx, &child).await?;
            }
            if table == "identity_groups" {
                sqlx::query(&db.sql("DELETE FROM user_group_membership WHERE group_id = ?"))
                    .bind(&child)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        let q = format!("DELETE FROM {table} WHERE {col} = ?");
        sqlx::query(&db.sql(&q)).bind(id).execute(&mut *tx).await?;
    }
    delete_actor_or_target(db, &mut tx, id).await?;
    sqlx::query(&db.sql("DELETE FROM roles WHERE domain_id = ?"))
        .bind(id)
        .execute(&mut *tx)
        .await?;
    sqlx::query(&db.sql("DELETE FROM domains WHERE id = ?"))
        .bind(id)
        .execute(&mut *tx)
        .await?;
    bump_revision(db, &mut tx).await?;
    tx.commit().await?;
    Ok(())
}

async fn delete_actor_or_target(db: &Db, tx: &mut Tx, id: &str) -> Result<()> {
    sqlx::query(&db.sql("DELETE FROM assignments WHERE actor_id = ? OR target_id = ?"))
        .bind(id)
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn delete_user_rows(db: &Db, tx: &mut Tx, user_id: &str) -> Result<()> {
    sqlx::query(&db.sql("DELETE FROM user_group_membership WHERE user_id = ?"))
        .bind(user_id)
        .execute(&mut **tx)
        .await?;
    sqlx::query(&db.sql(
        "DELETE FROM application_credential_roles WHERE application_credential_id IN (SELECT id FROM application_credentials WHERE user_id = ?)",
    ))
    .bind(user_id)
    .execute(&mut **tx)
    .await?;
    sqlx::query(&db.sql("DELETE FROM application_credentials WHERE user_id = ?"))
        .bind(user_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

// ---------------------------------------------------------------- projects

#[derive(Debug, Clone)]
pub struct ProjectRow {
    pub id: String,
    pub name: String,
    pub domain_id: String,
    pub parent_id: Option<String>,
    pub description: Option<String>,
    pub enabled: bool,
    pub tags: Vec<String>,
    pub extra: Map<String, Value>,
}

const PROJECT_COLS: &str = "id, name, domain_id, parent_id, description, enabled, tags, extra";

fn project_from(row: &AnyRow) -> Result<ProjectRow> {
    Ok(ProjectRow {
        id: s(row, "id")?,
        name: s(row, "name")?,
        domain_id: s(row, "domain_id")?,
        parent_id: os(row, "parent_id")?,
        description: os(row, "description")?,
        enabled: i(row, "enabled")? != 0,
        tags: json_list(os(row, "tags")?),
        extra: json_map(os(row, "extra")?),
    })
}

pub async fn project_get(db: &Db, id: &str) -> Result<Option<ProjectRow>> {
    let q = format!("SELECT {PROJECT_COLS} FROM projects WHERE id = ?");
    let row = sqlx::query(&db.sql(&q))
        .bind(id)
        .fetch_optional(db.pool())
        .await?;
    row.as_ref().map(project_from).transpose()
}

pub async fn project_get_by_name(db: &Db, domain_id: &str, name: &str) -> Result<Option<ProjectRow>> {
    let q = format!("SELECT {PROJECT_COLS} FROM projects WHERE domain_id = ? AND name = ?");
    let row = sqlx::query(&db.sql(&q))
        .bind(domain_id)
        .bind(name)
        .fetch_optional(db.pool())
        .await?;
    row.as_ref().map(project_from).transpose()
}

#[derive(Debug, Default)]
pub struct ProjectFilter {
    pub name: Option<String>,
    pub domain_id: Option<String>,
    pub parent_id: Option<String>,
    pub enabled: Option<bool>,
    pub ids: Option<Vec<String>>,
}

pub async fn project_list(db: &Db, f: &ProjectFilter) -> Result<Vec<ProjectRow>> {
    let mut q = format!("SELECT {PROJECT_COLS} FROM projects WHERE 1 = 1");
    let mut binds: Vec<String> = Vec::new();
    if let Some(v) = &f.name {
        q.push_str(" AND name = ?");
        binds.push(v.clone());
    }
    if let Some(v) = &f.domain_id {
        q.push_str(" AND domain_id = ?");
        binds.push(v.clone());
    }
    if let Some(v) = &f.parent_id {
        // A top-level project's parent is its domain.
        q.push_str(" AND (parent_id = ? OR (parent_id IS NULL AND domain_id = ?))");
        binds.push(v.clone());
        binds.push(v.clone());
    }
    if let Some(ids) = &f.ids {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        q.push_str(&format!(" AND id IN {}", in_list(ids.len())));
        binds.extend(ids.iter().cloned());
    }
    if let Some(e) = f.enabled {
        q.push_str(if e { " AND enabled = 1" } else { " AND enabled = 0" });
    }
    q.push_str(" ORDER BY name");
    let sql = db.sql(&q);
    let mut query = sqlx::query(&sql);
    for b in binds {
        query = query.bind(b);
    }
    query
        .fetch_all(db.pool())
        .await?
        .iter()
        .map(project_from)
        .collect()
}

pub async fn project_put(db: &Db, p: &ProjectRow, create: bool) -> Result<()> {
    let mut tx = db.begin().await?;
    let dup = format!(
        "it is not permitted to have two projects with the same name in the same domain : {}",
        p.name
    );
    let sql = db.sql(if create {
        "INSERT INTO projects (name, description, enabled, tags, extra, domain_id, parent_id, id, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
    } else {
        "UPDATE projects SET name = ?, description = ?, enabled = ?, tags = ?, extra = ? WHERE id = ?"
    });
    let mut query = sqlx::query(&sql);
    query = query
        .bind(p.name.clone())
        .bind(p.description.clone())
        .bind(p.enabled as i64)
        .bind(to_json_text(&p.tags))
        .bind(to_json_text(&p.extra));
    if create {
        query = query
            .bind(p.domain_id.clone())
            .bind(p.parent_id.clone())
            .bind(p.id.clone())
            .bind(tessera_types::now_epoch_micros());
    } else {
        query = query.bind(p.id.clone());
    }
    query.execute(&mut *tx).await.map_err(conflict("project", dup))?;
    bump_revision(db, &mut tx).await?;
    tx.commit().await?;
    Ok(())
}

pub async fn project_has_children(db: &Db, id: &str) -> Result<bool> {
    let row = sqlx::query(&db.sql("SELECT COUNT(*) AS n FROM projects WHERE parent_id = ?"))
        .bind(id)
        .fetch_one(db.pool())
        .await?;
    Ok(i(&row, "n")? > 0)
}

pub async fn project_delete(db: &Db, id: &str) -> Result<()> {
    let mut tx = db.begin().await?;
    delete_actor_or_target(db, &mut tx, id).await?;
    sqlx::query(&db.sql(
        "DELETE FROM application_credential_roles WHERE application_credential_id IN (SELECT id FROM application_credentials WHERE project_id = ?)",
    ))
    .bind(id)
    .execute(&mut *tx)
    .await?;
    sqlx::query(&db.sql("DELETE FROM application_credentials WHERE project_id = ?"))
        .bind(id)
        .execute(&mut *tx)
        .await?;
    sqlx::query(&db.sql("UPDATE users SET default_project_id = NULL WHERE default_project_id = ?"))
        .bind(id)
        .execute(&mut *tx)
        .await?;
    sqlx::query(&db.sql("DELETE FROM projects WHERE id = ?"))
        .bind(id)
        .execute(&mut *tx)
        .await?;
    bump_revision(db, &mut tx).await?;
    tx.commit().await?;
    Ok(())
}

// ---------------------------------------------------------------- users

#[derive(Debug, Clone)]
pub struct UserRow {
    pub id: String,
    pub name: String,
    pub domain_id: String,
    pub enabled: bool,
    pub default_project_id: Option<String>,
    pub password_hash: Option<String>,
    pub password_created_at: Option<i64>,
    pub extra: Map<String, Value>,
}

const USER_COLS: &str =
    "id, name, domain_id, enabled, default_project_id, password_hash, password_created_at, extra";

fn user_from(row: &AnyRow) -> Result<UserRow> {
    Ok(UserRow {
        id: s(row, "id")?,
        name: s(row, "name")?,
        domain_id: s(row, "domain_id")?,
        enabled: i(row, "enabled")? != 0,
        default_project_id: os(row, "default_project_id")?,
        password_hash: os(row, "password_hash")?,
        password_created_at: oi(row, "password_created_at")?,
        extra: json_map(os(row, "extra")?),
    })
}

pub async fn user_get(db: &Db, id: &str) -> Result<Option<UserRow>> {
    let q = format!("SELECT {USER_COLS} FROM users WHERE id = ?");
    let row = sqlx::query(&db.sql(&q))
        .bind(id)
        .fetch_optional(db.pool())
        .await?;
    row.as_ref().map(user_from).transpose()
}

pub async fn user_get_by_name(db: &Db, domain_id: &str, name: &str) -> Result<Option<UserRow>> {
    let q = format!("SELECT {USER_COLS} FROM users WHERE domain_id = ? AND name = ?");
    let row = sqlx::query(&db.sql(&q))
        .bind(domain_id)
        .bind(name)
        .fetch_optional(db.pool())
        .await?;
    row.as_ref().map(user_from).transpose()
}

pub async fn user_list(
    db: &Db,
    name: Option<&str>,
    domain_id: Option<&str>,
    enabled: Option<bool>,
    group_id: Option<&str>,
) -> Result<Vec<UserRow>> {
    let mut q = format!("SELECT {USER_COLS} FROM users WHERE 1 = 1");
    let mut binds = Vec::new();
    if let Some(v) = name {
        q.push_str(" AND name = ?");
        binds.push(v.to_string());
    }
    if let Some(v) = domain_id {
        q.push_str(" AND domain_id = ?");
        binds.push(v.to_string());
    }
    if let Some(v) = group_id {
        q.push_str(" AND id IN (SELECT user_id FROM user_group_membership WHERE group_id = ?)");
        binds.push(v.to_string());
    }
    if let Some(e) = enabled {
        q.push_str(if e { " AND enabled = 1" } else { " AND enabled = 0" });
    }
    q.push_str(" ORDER BY name");
    let sql = db.sql(&q);
    let mut query = sqlx::query(&sql);
    for b in binds {
        query = query.bind(b);
    }
    query.fetch_all(db.pool()).await?.iter().map(user_from).collect()
}

pub async fn user_put(db: &Db, u: &UserRow, create: bool) -> Result<()> {
    let mut tx = db.begin().await?;
    user_put_tx(db, &mut tx, u, create).await?;
    bump_revision(db, &mut tx).await?;
    tx.commit().await?;
    Ok(())
}

pub async fn user_put_tx(db: &Db, tx: &mut Tx, u: &UserRow, create: bool) -> Result<()> {
    let q = if create {
        "INSERT INTO users (name, enabled, default_project_id, password_hash, password_created_at, extra, domain_id, id, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
    } else {
        "UPDATE users SET name = ?, enabled = ?, default_project_id = ?, password_hash = ?, password_created_at = ?, extra = ? WHERE domain_id = ? AND id = ?"
    };
    let sql = db.sql(q);
    let mut query = sqlx::query(&sql)
        .bind(u.name.clone())
        .bind(u.enabled as i64)
        .bind(u.default_project_id.clone())
        .bind(u.password_hash.clone())
        .bind(u.password_created_at)
        .bind(to_json_text(&u.extra))
        .bind(u.domain_id.clone())
        .bind(u.id.clone());
    if create {
        query = query.bind(tessera_types::now_epoch_micros());
    }
    query.execute(&mut **tx).await.map_err(conflict(
        "user",
        format!(
            "Duplicate entry found with name {} at domain ID {}",
            u.name, u.domain_id
        ),
    ))?;
    Ok(())
}

pub async fn user_delete(db: &Db, id: &str) -> Result<()> {
    let mut tx = db.begin().await?;
    delete_actor_or_target(db, &mut tx, id).await?;
    delete_user_rows(db, &mut tx, id).await?;
    sqlx::query(&db.sql("DELETE FROM users WHERE id = ?"))
        .bind(id)
        .execute(&mut *tx)
        .await?;
    bump_revision(db, &mut tx).await?;
    tx.commit().await?;
    Ok(())
}

// ---------------------------------------------------------------- groups

#[derive(Debug, Clone)]
pub struct GroupRow {
    pub id: String,
    pub name: String,
    pub domain_id: String,
    pub description: Option<String>,
    pub extra: Map<String, Value>,
}

fn group_from(row: &AnyRow) -> Result<GroupRow> {
    Ok(GroupRow {
        id: s(row, "id")?,
        name: s(row, "name")?,
        domain_id: s(row, "domain_id")?,
        description: os(row, "description")?,
        extra: json_map(os(row, "extra")?),
    })
}

pub async fn group_get(db: &Db, id: &str) -> Result<Option<GroupRow>> {
    let row = sqlx::query(
        &db.sql("SELECT id, name, domain_id, description, extra FROM identity_groups WHERE id = ?"),
    )
    .bind(id)
    .fetch_optional(db.pool())
    .await?;
    row.as_ref().map(group_from).transpose()
}

pub async fn group_list(
    db: &Db,
    name: Option<&str>,
    domain_id: Option<&str>,
    user_id: Option<&str>,
) -> Result<Vec<GroupRow>> {
    let mut q = "SELECT id, name, domain_id, description, extra FROM identity_groups WHERE 1 = 1".to_string();
    let mut binds = Vec::new();
    if let Some(v) = name {
        q.push_str(" AND name = ?");
        binds.push(v);
    }
    if let Some(v) = domain_id {
        q.push_str(" AND domain_id = ?");
        binds.push(v);
    }
    if let Some(v) = user_id {
        q.push_str(" AND id IN (SELECT group_id FROM user_group_membership WHERE user_id = ?)");
        binds.push(v);
    }
    q.push_str(" ORDER BY name");
    let sql = db.sql(&q);
    let mut query = sqlx::query(&sql);
    for b in binds {
        query = query.bind(b);
    }
    query.fetch_all(db.pool()).await?.iter().map(group_from).collect()
}

pub async fn group_put(db: &Db, g: &GroupRow, create: bool) -> Result<()> {
    let mut tx = db.begin().await?;
    let q = if create {
        "INSERT INTO identity_groups (name, description, extra, domain_id, id) VALUES (?, ?, ?, ?, ?)"
    } else {
        "UPDATE identity_groups SET name = ?, description = ?, extra = ? WHERE domain_id = ? AND id = ?"
    };
    sqlx::query(&db.sql(q))
        .bind(g.name.clone())
        .bind(g.description.clone())
        .bind(to_json_text(&g.extra))
        .bind(g.domain_id.clone())
        .bind(g.id.clone())
        .execute(&mut *tx)
        .await
        .map_err(conflict(
            "group",
            format!(
                "Duplicate entry found with name {} at domain ID {}",
                g.name, g.domain_id
            ),
        ))?;
    bump_revision(db, &mut tx).await?;
    tx.commit().await?;
    Ok(())
}

pub async fn group_delete(db: &Db, id: &str) -> Result<()> {
    let mut tx = db.begin().await?;
    delete_actor_or_target(db, &mut tx, id).await?;
    sqlx::query(&db.sql("DELETE FROM user_group_membership WHERE group_id = ?"))
        .bind(id)
        .execute(&mut *tx)
        .await?;
    sqlx::query(&db.sql("DELETE FROM identity_groups WHERE id = ?"))
        .bind(id)
        .execute(&mut *tx)
        .await?;
    bump_revision(db, &mut tx).await?;
    tx.commit().await?;
    Ok(())
}

pub async fn membership_check(db: &Db, user_id: &str, group_id: &str) -> Result<bool> {
    let row = sqlx::query(
        &db.sql("SELECT COUNT(*) AS n FROM user_group_membership WHERE user_id = ? AND group_id = ?"),
    )
    .bind(user_id)
    .bind(group_id)
    .fetch_one(db.pool())
    .await?;
    Ok(i(&row, "n")? > 0)
}

pub async fn membership_set(db: &Db, user_id: &str, group_id: &str, member: bool) -> Result<()> {
    let mut tx = db.begin().await?;
    sqlx::query(&db.sql("DELETE FROM user_group_membership WHERE user_id = ? AND group_id = ?"))
        .bind(user_id)
        .bind(group_id)
        .execute(&mut *tx)
        .await?;
    if member {
        sqlx::query(&db.sql("INSERT INTO user_group_membership (user_id, group_id) VALUES (?, ?)"))
            .bind(user_id)
            .bind(group_id)
            .execute(&mut *tx)
            .await?;
    }
    bump_revision(db, &mut tx).await?;
    tx.commit().await?;
    Ok(())
}

pub async fn user_group_ids(db: &Db, user_id: &str) -> Result<Vec<String>> {
    sqlx::query(&db.sql("SELECT group_id FROM user_group_membership WHERE user_id = ?"))
        .bind(user_id)
        .fetch_all(db.pool())
        .await?
        .iter()
        .map(|r| s(r, "group_id"))
        .collect()
}

// ---------------------------------------------------------------- roles

#[derive(Debug, Clone)]
pub struct RoleRow {
    pub id: String,
    pub name: String,
    /// None for global roles (stored as '').
    pub domain_id: Option<String>,
    pub description: Option<String>,
    pub options: Map<String, Value>,
}

fn role_from(row: &AnyRow) -> Result<RoleRow> {
    let d = s(row, "domain_id")?;
    Ok(RoleRow {
        id: s(row, "id")?,
        name: s(row, "name")?,
        domain_id: if d.is_empty() { None } else { Some(d) },
        description: os(row, "description")?,
        options: json_map(os(row, "options")?),
    })
}

pub async fn role_get(db: &Db, id: &str) -> Result<Option<RoleRow>> {
    let row =
        sqlx::query(&db.sql("SELECT id, name, domain_id, description, options FROM roles WHERE id = ?"))
            .bind(id)
            .fetch_optional(db.pool())
            .await?;
    row.as_ref().map(role_from).transpose()
}

pub async fn role_list(db: &Db, name: Option<&str>, domain_id: Option<&str>) -> Result<Vec<RoleRow>> {
    let mut q = "SELECT id, name, domain_id, description, options FROM roles WHERE domain_id = ?".to_string();
    if name.is_some() {
        q.push_str(" AND name = ?");
    }
    q.push_str(" ORDER BY name");
    let sql = db.sql(&q);
    let mut query = sqlx::query(&sql).bind(domain_id.unwrap_or(""));
    if let Some(n) = name {
        query = query.bind(n);
    }
    query.fetch_all(db.pool()).await?.iter().map(role_from).collect()
}

pub async fn role_all(db: &Db) -> Result<Vec<RoleRow>> {
    sqlx::query("SELECT id, name, domain_id, description, options FROM roles")
        .fetch_all(db.pool())
        .await?
        .iter()
        .map(role_from)
        .collect()
}

pub async fn role_put(db: &Db, r: &RoleRow, create: bool) -> Result<()> {
    let mut tx = db.begin().await?;
    let q = if create {
        "INSERT INTO roles (name, description, options, domain_id, id) VALUES (?, ?, ?, ?, ?)"
    } else {
        "UPDATE roles SET name = ?, description = ?, options = ? WHERE domain_id = ? AND id = ?"
    };
    sqlx::query(&db.sql(q))
        .bind(r.name.clone())
        .bind(r.description.clone())
        .bind(to_json_text(&r.options))
        .bind(r.domain_id.clone().unwrap_or_default())
        .bind(r.id.clone())
        .execute(&mut *tx)
        .await
        .map_err(conflict(
            "role",
            format!("Duplicate entry found with name {}", r.name),
        ))?;
    bump_revision(db, &mut tx).await?;
    tx.commit().await?;
    Ok(())
}

pub async fn role_delete(db: &Db, id: &str) -> Result<()> {
    let mut tx = db.begin().await?;
    sqlx::query(&db.sql("DELETE FROM assignments WHERE role_id = ?"))
        .bind(id)
        .execute(&mut *tx)
        .await?;
    sqlx::query(&db.sql("DELETE FROM implied_roles WHERE prior_role_id = ? OR implied_role_id = ?"))
        .bind(id)
        .bind(id)
        .execute(&mut *tx)
        .await?;
    sqlx::query(&db.sql("DELETE FROM application_credential_roles WHERE role_id = ?"))
        .bind(id)
        .execute(&mut *tx)
        .await?;
    sqlx::query(&db.sql("DELETE FROM roles WHERE id = ?"))
        .bind(id)
        .execute(&mut *tx)
        .await?;
    bump_revision(db, &mut tx).await?;
    tx.commit().await?;
    Ok(())
}

pub async fn implied_all(db: &Db) -> Result<Vec<(String, String)>> {
    sqlx::query("SELECT prior_role_id, implied_role_id FROM implied_roles")
        .fetch_all(db.pool())
        .await?
        .iter()
        .map(|r| Ok((s(r, "prior_role_id")?, s(r, "implied_role_id")?)))
        .collect()
}

pub async fn implied_set(db: &Db, prior: &str, implied: &str, present: bool) -> Result<()> {
    let mut tx = db.begin().await?;
    sqlx::query(&db.sql("DELETE FROM implied_roles WHERE prior_role_id = ? AND implied_role_id = ?"))
        .bind(prior)
        .bind(implied)
        .execute(&mut *tx)
        .await?;
    if present {
        sqlx::query(&db.sql("INSERT INTO implied_roles (prior_role_id, implied_role_id) VALUES (?, ?)"))
            .bind(prior)
            .bind(implied)
            .execute(&mut *tx)
            .await?;
    }
    bump_revision(db, &mut tx).await?;
    tx.commit().await?;
    Ok(())
}

// ---------------------------------------------------------------- assignments

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AssignmentRow {
    /// UserProject, GroupProject, UserDomain, GroupDomain, UserSystem, GroupSystem
    pub kind: String,
    pub actor_id: String,
    /// project or domain id; `system` for system assignments
    pub target_id: String,
    pub role_id: String,
    pub inherited: bool,
}

fn assignment_from(row: &AnyRow) -> Result<AssignmentRow> {
    Ok(AssignmentRow {
        kind: s(row, "type")?,
        actor_id: s(row, "actor_id")?,
        target_id: s(row, "target_id")?,
        role_id: s(row, "role_id")?,
        inherited: i(row, "inherited")? != 0,
    })
}

/// Assignments whose actor is one of `actors` (all when None) and target one of `targets` (all when None).
pub async fn assignment_list(
    db: &Db,
    actors: Option<&[String]>,
    targets: Option<&[String]>,
) -> Result<Vec<AssignmentRow>> {
    let mut q =
        "SELECT type, actor_id, target_id, role_id, inherited FROM assignments WHERE 1 = 1".to_string();
    let mut binds: Vec<String> = Vec::new();
    if let Some(a) = actors {
        if a.is_empty() {
            return Ok(Vec::new());
        }
        q.push_str(&format!(" AND actor_id IN {}", in_list(a.len())));
        binds.extend(a.iter().cloned());
    }
    if let Some(t) = targets {
        if t.is_empty() {
            return Ok(Vec::new());
        }
        q.push_str(&format!(" AND target_id IN {}", in_list(t.len())));
        binds.extend(t.iter().cloned());
    }
    let sql = db.sql(&q);
    let mut query = sqlx::query(&sql);
    for b in binds {
        query = query.bind(b);
    }
    query
        .fetch_all(db.pool())
        .await?
        .iter()
        .map(assignment_from)
        .collect()
}

pub async fn assignment_set(db: &Db, a: &AssignmentRow, present: bool) -> Result<()> {
    let mut tx = db.begin().await?;
    sqlx::query(&db.sql("DELETE FROM assignments WHERE type = ? AND actor_id = ? AND target_id = ? AND role_id = ? AND inherited = ?"))
        .bind(a.kind.clone())
        .bind(a.actor_id.clone())
        .bind(a.target_id.clone())
        .bind(a.role_id.clone())
        .bind(a.inherited as i64)
        .execute(&mut *tx)
        .await?;
    if present {
        sqlx::query(&db.sql(
            "INSERT INTO assignments (type, actor_id, target_id, role_id, inherited) VALUES (?, ?, ?, ?, ?)",
        ))
        .bind(a.kind.clone())
        .bind(a.actor_id.clone())
        .bind(a.target_id.clone())
        .bind(a.role_id.clone())
        .bind(a.inherited as i64)
        .execute(&mut *tx)
        .await?;
    }
    bump_revision(db, &mut tx).await?;
    tx.commit().await?;
    Ok(())
}

// ---------------------------------------------------------------- regions, services, endpoints

#[derive(Debug, Clone)]
pub struct RegionRow {
    pub id: String,
    pub description: Option<String>,
    pub parent_region_id: Option<String>,
    pub extra: Map<String, Value>,
}

fn region_from(row: &AnyRow) -> Result<RegionRow> {
    Ok(RegionRow {
        id: s(row, "id")?,
        description: os(row, "description")?,
        parent_region_id: os(row, "parent_region_id")?,
        extra: json_map(os(row, "extra")?),
    })
}

pub async fn region_get(db: &Db, id: &str) -> Result<Option<RegionRow>> {
    let row =
        sqlx::query(&db.sql("SELECT id, description, parent_region_id, extra FROM regions WHERE id = ?"))
            .bind(id)
            .fetch_optional(db.pool())
            .await?;
    row.as_ref().map(region_from).transpose()
}

pub async fn region_list(db: &Db, parent: Option<&str>) -> Result<Vec<RegionRow>> {
    let mut q = "SELECT id, description, parent_region_id, extra FROM regions".to_string();
    if parent.is_some() {
        q.push_str(" WHERE parent_region_id = ?");
    }
    q.push_str(" ORDER BY id");
    let sql = db.sql(&q);
    let mut query = sqlx::query(&sql);
    if let Some(p) = parent {
        query = query.bind(p);
    }
    query
        .fetch_all(db.pool())
        .await?
        .iter()
        .map(region_from)
        .collect()
}

pub async fn region_put(db: &Db, r: &RegionRow, create: bool) -> Result<()> {
    let mut tx = db.begin().await?;
    let q = if create {
        "INSERT INTO regions (description, parent_region_id, extra, id) VALUES (?, ?, ?, ?)"
    } else {
        "UPDATE regions SET description = ?, parent_region_id = ?, extra = ? WHERE id = ?"
    };
    sqlx::query(&db.sql(q))
        .bind(r.description.clone())
        .bind(r.parent_region_id.clone())
        .bind(to_json_text(&r.extra))
        .bind(r.id.clone())
        .execute(&mut *tx)
        .await
        .map_err(conflict("region", format!("Duplicate ID, {}", r.id)))?;
    bump_revision(db, &mut tx).await?;
    tx.commit().await?;
    Ok(())
}

pub async fn region_in_use(db: &Db, id: &str) -> Result<bool> {
    let row = sqlx::query(&db.sql(
        "SELECT (SELECT COUNT(*) FROM endpoints WHERE region_id = ?) + (SELECT COUNT(*) FROM regions WHERE parent_region_id = ?) AS n",
    ))
    .bind(id)
    .bind(id)
    .fetch_one(db.pool())
    .await?;
    Ok(i(&row, "n")? > 0)
}

pub async fn simple_delete(db: &Db, table: &'static str, id: &str) -> Result<bool> {
    let mut tx = db.begin().await?;
    let q = format!("DELETE FROM {table} WHERE id = ?");
    let n = sqlx::query(&db.sql(&q))
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    bump_revision(db, &mut tx).await?;
    tx.commit().await?;
    Ok(n > 0)
}

#[derive(Debug, Clone)]
pub struct ServiceRow {
    pub id: String,
    pub type_: String,
    pub name: Option<String>,
    pub description: Option<String>,
    pub enabled: bool,
    pub extra: Map<String, Value>,
}

fn service_from(row: &AnyRow) -> Result<ServiceRow> {
    Ok(ServiceRow {
        id: s(row, "id")?,
        type_: s(row, "type")?,
        name: os(row, "name")?,
        description: os(row, "description")?,
        enabled: i(row, "enabled")? != 0,
        extra: json_map(os(row, "extra")?),
    })
}

pub async fn service_get(db: &Db, id: &str) -> Result<Option<ServiceRow>> {
    let row =
        sqlx::query(&db.sql("SELECT id, type, name, description, enabled, extra FROM services WHERE id = ?"))
            .bind(id)
            .fetch_optional(db.pool())
            .await?;
    row.as_ref().map(service_from).transpose()
}

pub async fn service_list(db: &Db, type_: Option<&str>, name: Option<&str>) -> Result<Vec<ServiceRow>> {
    let mut q = "SELECT id, type, name, description, enabled, extra FROM services WHERE 1 = 1".to_string();
    let mut binds = Vec::new();
    if let Some(t) = type_ {
        q.push_str(" AND type = ?");
        binds.push(t);
    }
    if let Some(n) = name {
        q.push_str(" AND name = ?");
        binds.push(n);
    }
    q.push_str(" ORDER BY type, name");
    let sql = db.sql(&q);
    let mut query = sqlx::query(&sql);
    for b in binds {
        query = query.bind(b);
    }
    query
        .fetch_all(db.pool())
        .await?
        .iter()
        .map(service_from)
        .collect()
}

pub async fn service_put(db: &Db, r: &ServiceRow, create: bool) -> Result<()> {
    let mut tx = db.begin().await?;
    let q = if create {
        "INSERT INTO services (type, name, description, enabled, extra, id) VALUES (?, ?, ?, ?, ?, ?)"
    } else {
        "UPDATE services SET type = ?, name = ?, description = ?, enabled = ?, extra = ? WHERE id = ?"
    };
    sqlx::query(&db.sql(q))
        .bind(r.type_.clone())
        .bind(r.name.clone())
        .bind(r.description.clone())
        .bind(r.enabled as i64)
        .bind(to_json_text(&r.extra))
        .bind(r.id.clone())
        .execute(&mut *tx)
        .await?;
    bump_revision(db, &mut tx).await?;
    tx.commit().await?;
    Ok(())
}

pub async fn service_delete(db: &Db, id: &str) -> Result<()> {
    let mut tx = db.begin().await?;
    sqlx::query(&db.sql("DELETE FROM endpoints WHERE service_id = ?"))
        .bind(id)
        .execute(&mut *tx)
        .await?;
    sqlx::query(&db.sql("DELETE FROM services WHERE id = ?"))
        .bind(id)
        .execute(&mut *tx)
        .await?;
    bump_revision(db, &mut tx).await?;
    tx.commit().await?;
    Ok(())
}

#[derive(Debug, Clone)]
pub struct EndpointRow {
    pub id: String,
    pub service_id: String,
    pub interface: String,
    pub region_id: Option<String>,
    pub url: String,
    pub enabled: bool,
    pub extra: Map<String, Value>,
}

fn endpoint_from(row: &AnyRow) -> Result<EndpointRow> {
    Ok(EndpointRow {
        id: s(row, "id")?,
        service_id: s(row, "service_id")?,
        interface: s(row, "interface")?,
        region_id: os(row, "region_id")?,
        url: s(row, "url")?,
        enabled: i(row, "enabled")? != 0,
        extra: json_map(os(row, "extra")?),
    })
}

pub async fn endpoint_get(db: &Db, id: &str) -> Result<Option<EndpointRow>> {
    let row =
        sqlx::query(&db.sql(
            "SELECT id, service_id, interface, region_id, url, enabled, extra FROM endpoints WHERE id = ?",
        ))
        .bind(id)
        .fetch_optional(db.pool())
        .await?;
    row.as_ref().map(endpoint_from).transpose()
}

pub async fn endpoint_list(
    db: &Db,
    interface: Option<&str>,
    service_id: Option<&str>,
    region_id: Option<&str>,
) -> Result<Vec<EndpointRow>> {
    let mut q = "SELECT id, service_id, interface, region_id, url, enabled, extra FROM endpoints WHERE 1 = 1"
        .to_string();
    let mut binds = Vec::new();
    for (col, v) in [
        ("interface", interface),
        ("service_id", service_id),
        ("region_id", region_id),
    ] {
        if let Some(v) = v {
            q.push_str(&format!(" AND {col} = ?"));
            binds.push(v);
        }
    }
    q.push_str(" ORDER BY service_id, interface");
    let sql = db.sql(&q);
    let mut query = sqlx::query(&sql);
    for b in binds {
        query = query.bind(b);
    }
    query
        .fetch_all(db.pool())
        .await?
        .iter()
        .map(endpoint_from)
        .collect()
}

pub async fn endpoint_put(db: &Db, r: &EndpointRow, create: bool) -> Result<()> {
    let mut tx = db.begin().await?;
    let q = if create {
        "INSERT INTO endpoints (service_id, interface, region_id, url, enabled, extra, id) VALUES (?, ?, ?, ?, ?, ?, ?)"
    } else {
        "UPDATE endpoints SET service_id = ?, interface = ?, region_id = ?, url = ?, enabled = ?, extra = ? WHERE id = ?"
    };
    sqlx::query(&db.sql(q))
        .bind(r.service_id.clone())
        .bind(r.interface.clone())
        .bind(r.region_id.clone())
        .bind(r.url.clone())
        .bind(r.enabled as i64)
        .bind(to_json_text(&r.extra))
        .bind(r.id.clone())
        .execute(&mut *tx)
        .await?;
    bump_revision(db, &mut tx).await?;
    tx.commit().await?;
    Ok(())
}

// ---------------------------------------------------------------- application credentials

#[derive(Debug, Clone)]
pub struct AppCredRow {
    pub id: String,
    pub name: String,
    pub secret_hash: String,
    pub description: Option<String>,
    pub user_id: String,
    pub project_id: String,
    pub expires_at: Option<i64>,
    pub unrestricted: bool,
    pub role_ids: Vec<String>,
}

async fn app_cred_from(db: &Db, row: &AnyRow) -> Result<AppCredRow> {
    let id = s(row, "id")?;
    let role_ids = sqlx::query(
        &db.sql("SELECT role_id FROM application_credential_roles WHERE application_credential_id = ?"),
    )
    .bind(&id)
    .fetch_all(db.pool())
    .await?
    .iter()
    .map(|r| s(r, "role_id"))
    .collect::<Result<_>>()?;
    Ok(AppCredRow {
        id,
        name: s(row, "name")?,
        secret_hash: s(row, "secret_hash")?,
        description: os(row, "description")?,
        user_id: s(row, "user_id")?,
        project_id: s(row, "project_id")?,
        expires_at: oi(row, "expires_at")?,
        unrestricted: i(row, "unrestricted")? != 0,
        role_ids,
    })
}

const APP_CRED_COLS: &str =
    "id, name, secret_hash, description, user_id, project_id, expires_at, unrestricted";

pub async fn app_cred_get(db: &Db, id: &str) -> Result<Option<AppCredRow>> {
    let q = format!("SELECT {APP_CRED_COLS} FROM application_credentials WHERE id = ?");
    match sqlx::query(&db.sql(&q))
        .bind(id)
        .fetch_optional(db.pool())
        .await?
    {
        Some(row) => Ok(Some(app_cred_from(db, &row).await?)),
        None => Ok(None),
    }
}

pub async fn app_cred_list(db: &Db, user_id: &str, name: Option<&str>) -> Result<Vec<AppCredRow>> {
    let mut q = format!("SELECT {APP_CRED_COLS} FROM application_credentials WHERE user_id = ?");
    if name.is_some() {
        q.push_str(" AND name = ?");
    }
    q.push_str(" ORDER BY name");
    let sql = db.sql(&q);
    let mut query = sqlx::query(&sql).bind(user_id);
    if let Some(n) = name {
        query = query.bind(n);
    }
    let rows = query.fetch_all(db.pool()).await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        out.push(app_cred_from(db, r).await?);
    }
    Ok(out)
}

pub async fn app_cred_create(db: &Db, a: &AppCredRow) -> Result<()> {
    let mut tx = db.begin().await?;
    sqlx::query(&db.sql(
        "INSERT INTO application_credentials (id, name, secret_hash, description, user_id, project_id, expires_at, unrestricted, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
    ))
    .bind(a.id.clone())
    .bind(a.name.clone())
    .bind(a.secret_hash.clone())
    .bind(a.description.clone())
    .bind(a.user_id.clone())
    .bind(a.project_id.clone())
    .bind(a.expires_at)
    .bind(a.unrestricted as i64)
    .bind(tessera_types::now_epoch_micros())
    .execute(&mut *tx)
    .await
    .map_err(conflict("application_credential", format!("Duplicate entry found with name {}", a.name)))?;
    for r in &a.role_ids {
        sqlx::query(&db.sql(
            "INSERT INTO application_credential_roles (application_credential_id, role_id) VALUES (?, ?)",
        ))
        .bind(a.id.clone())
        .bind(r.clone())
        .execute(&mut *tx)
        .await?;
    }
    bump_revision(db, &mut tx).await?;
    tx.commit().await?;
    Ok(())
}

pub async fn app_cred_delete(db: &Db, id: &str) -> Result<()> {
    let mut tx = db.begin().await?;
    sqlx::query(&db.sql("DELETE FROM application_credential_roles WHERE application_credential_id = ?"))
        .bind(id)
        .execute(&mut *tx)
        .await?;
    sqlx::query(&db.sql("DELETE FROM application_credentials WHERE id = ?"))
        .bind(id)
        .execute(&mut *tx)
        .await?;
    bump_revision(db, &mut tx).await?;
    tx.commit().await?;
    Ok(())
}

// ---------------------------------------------------------------- revocation events

#[derive(Debug, Clone, Default)]
pub struct RevocationEvent {
    pub audit_id: Option<String>,
    pub user_id: Option<String>,
    pub project_id: Option<String>,
    pub domain_id: Option<String>,
    /// Tokens issued at or before this instant (epoch micros) are revoked.
    pub issued_before: i64,
}

pub async fn revocation_add(db: &Db, tx: &mut Tx, ev: &RevocationEvent) -> Result<()> {
    sqlx::query(&db.sql(
        "INSERT INTO revocation_events (id, audit_id, user_id, project_id, domain_id, issued_before, revoked_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
    ))
    .bind(tessera_types::new_hex_id())
    .bind(ev.audit_id.clone())
    .bind(ev.user_id.clone())
    .bind(ev.project_id.clone())
    .bind(ev.domain_id.clone())
    .bind(ev.issued_before)
    .bind(tessera_types::now_epoch_micros())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Record one revocation event (in its own transaction), dropping events revoked before `prune_before`
/// (they can no longer match a token that validates).
pub async fn revoke(db: &Db, ev: &RevocationEvent, prune_before: i64) -> Result<()> {
    let mut tx = db.begin().await?;
    sqlx::query(&db.sql("DELETE FROM revocation_events WHERE revoked_at < ?"))
        .bind(prune_before)
        .execute(&mut *tx)
        .await?;
    revocation_add(db, &mut tx, ev).await?;
    bump_revision(db, &mut tx).await?;
    tx.commit().await?;
    Ok(())
}

/// Events that can still matter (revoked after `since`).
pub async fn revocation_list(db: &Db, since: i64) -> Result<Vec<RevocationEvent>> {
    sqlx::query(&db.sql("SELECT audit_id, user_id, project_id, domain_id, issued_before FROM revocation_events WHERE revoked_at >= ?"))
        .bind(since)
        .fetch_all(db.pool())
        .await?
        .iter()
        .map(|r| {
            Ok(RevocationEvent {
                audit_id: os(r, "audit_id")?,
                user_id: os(r, "user_id")?,
                project_id: os(r, "project_id")?,
                domain_id: os(r, "domain_id")?,
                issued_before: i(r, "issued_before")?,
            })
        })
        .collect()
}

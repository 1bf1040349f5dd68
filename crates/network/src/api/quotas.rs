//! `/v2.0/quotas`: per-project limits (defaults from `[quotas]`, overrides in the `quotas` table), checked in
//! the same transaction as the create they limit.

use super::{body_object, project, S};
use crate::error::{NetError, Result};
use crate::store::{self, Tx};
use crate::NetworkService;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde_json::{json, Map, Value};
use sqlx::Row;
use tessera_http::auth::Caller;
use tessera_types::RequestContext;

/// The table whose rows of a project count against a quota resource.
fn table_of(resource: &str) -> &'static str {
    match resource {
        "network" => "networks",
        "subnet" => "subnets",
        "port" => "ports",
        "router" => "routers",
        "floatingip" => "floatingips",
        "security_group" => "security_groups",
        _ => "security_group_rules",
    }
}

fn default_of(svc: &NetworkService, resource: &str) -> i64 {
    svc.settings
        .quotas
        .iter()
        .find(|(r, _)| *r == resource)
        .map(|(_, v)| *v)
        .unwrap_or(-1)
}

async fn overrides<'c, E>(svc: &NetworkService, e: E, project_id: &str) -> Result<Map<String, Value>>
where
    E: sqlx::Executor<'c, Database = sqlx::Any>,
{
    let rows = sqlx::query(
        &svc.db
            .sql("SELECT resource, hard_limit FROM quotas WHERE project_id = ?"),
    )
    .bind(project_id)
    .fetch_all(e)
    .await?;
    let mut m = Map::new();
    for r in rows {
        m.insert(r.try_get("resource")?, json!(r.try_get::<i64, _>("hard_limit")?));
    }
    Ok(m)
}

/// A project's limits, defaults filled in.
async fn limits(svc: &NetworkService, project_id: &str) -> Result<Map<String, Value>> {
    let o = overrides(svc, svc.db.pool(), project_id).await?;
    Ok(crate::QUOTA_RESOURCES
        .iter()
        .map(|(r, _)| {
            (
                r.to_string(),
                o.get(*r).cloned().unwrap_or(json!(default_of(svc, r))),
            )
        })
        .collect())
}

/// Refuse to add `adding` of `resource` to the project beyond its limit (409 `OverQuota`).
pub(crate) async fn check(
    svc: &NetworkService,
    tx: &mut Tx,
    project_id: &str,
    resource: &str,
    adding: i64,
) -> Result<()> {
    let limit = match overrides(svc, &mut **tx, project_id).await?.get(resource) {
        Some(v) => v.as_i64().unwrap_or(-1),
        None => default_of(svc, resource),
    };
    if limit < 0 {
        return Ok(());
    }
    let used = store::count(
        &svc.db,
        &mut **tx,
        table_of(resource),
        "project_id = ?",
        &[project_id],
    )
    .await?;
    if used + adding > limit {
        return Err(NetError::over_quota(resource));
    }
    Ok(())
}

fn may_read(ctx: &RequestContext, project_id: &str) -> Result<()> {
    if ctx.is_admin() || ctx.project_id() == Some(project_id) {
        Ok(())
    } else {
        Err(NetError::policy("rule:get_quota"))
    }
}

fn with_project(mut m: Map<String, Value>, project_id: &str) -> Value {
    m.insert("project_id".into(), json!(project_id));
    m.insert("tenant_id".into(), json!(project_id));
    Value::Object(m)
}

pub(crate) async fn list(State(svc): S, Caller(ctx): Caller) -> Result<Response> {
    let rows = if ctx.is_admin() {
        sqlx::query("SELECT DISTINCT project_id FROM quotas")
            .fetch_all(svc.db.pool())
            .await?
    } else {
        sqlx::query(
            &svc.db
                .sql("SELECT DISTINCT project_id FROM quotas WHERE project_id = ?"),
        )
        .bind(project(&ctx)?)
        .fetch_all(svc.db.pool())
        .await?
    };
    let mut out = Vec::new();
    for r in rows {
        let p: String = r.try_get("project_id")?;
        out.push(with_project(limits(&svc, &p).await?, &p));
    }
    Ok(axum::Json(json!({"quotas": out})).into_response())
}

pub(crate) async fn show(
    State(svc): S,
    Caller(ctx): Caller,
    Path(project_id): Path<String>,
) -> Result<Response> {
    may_read(&ctx, &project_id)?;
    Ok(axum::Json(json!({"quota": limits(&svc, &project_id).await?})).into_response())
}

pub(crate) async fn defaults(
    State(svc): S,
    Caller(ctx): Caller,
    Path(project_id): Path<String>,
) -> Result<Response> {
    may_read(&ctx, &project_id)?;
    let m: Map<String, Value> = crate::QUOTA_RESOURCES
        .iter()
        .map(|(r, _)| (r.to_string(), json!(default_of(&svc, r))))
        .collect();
    Ok(axum::Json(json!({"quota": m})).into_response())
}

pub(crate) async fn details(
    State(svc): S,
    Caller(ctx): Caller,
    Path(project_id): Path<String>,
) -> Result<Response> {
    may_read(&ctx, &project_id)?;
    let l = limits(&svc, &project_id).await?;
    let mut out = Map::new();
    for (r, _) in crate::QUOTA_RESOURCES {
        let used = store::count(
            &svc.db,
            svc.db.pool(),
            table_of(r),
            "project_id = ?",
            &[&project_id],
        )
        .await?;
        out.insert(
            r.to_string(),
            json!({"limit": l.get(*r).cloned().unwrap_or(json!(-1)), "used": used, "reserved": 0}),
        );
    }
    Ok(axum::Json(json!({"quota": out})).into_response())
}

pub(crate) async fn update(
    State(svc): S,
    Caller(ctx): Caller,
    Path(project_id): Path<String>,
    body: Bytes,
) -> Result<Response> {
    if !ctx.is_admin() {
        return Err(NetError::policy("rule:update_quota"));
    }
    let m = body_object(&body, "quota")?;
    let mut set = Vec::new();
    for (k, v) in &m {
        if k == "force" || k == "check_limit" {
            continue;
        }
        if !crate::QUOTA_RESOURCES.iter().any(|(r, _)| r == k) {
            return Err(NetError::bad_request(format!("Unrecognized attribute(s) '{k}'")));
        }
        let n = v
            .as_i64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            .filter(|n| *n >= -1)
            .ok_or_else(|| NetError::invalid_input(format!("'{v}' is not an integer of -1 or more")))?;
        set.push((k.clone(), n));
    }
    let mut tx = svc.db.begin_write().await?;
    for (r, n) in &set {
        sqlx::query(
            &svc.db
                .sql("DELETE FROM quotas WHERE project_id = ? AND resource = ?"),
        )
        .bind(&project_id)
        .bind(r)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            &svc.db
                .sql("INSERT INTO quotas (project_id, resource, hard_limit) VALUES (?, ?, ?)"),
        )
        .bind(&project_id)
        .bind(r)
        .bind(*n)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(axum::Json(json!({"quota": limits(&svc, &project_id).await?})).into_response())
}

pub(crate) async fn delete(
    State(svc): S,
    Caller(ctx): Caller,
    Path(project_id): Path<String>,
) -> Result<Response> {
    if !ctx.is_admin() {
        return Err(NetError::policy("rule:delete_quota"));
    }
    let mut tx = svc.db.begin_write().await?;
    sqlx::query(&svc.db.sql("DELETE FROM quotas WHERE project_id = ?"))
        .bind(&project_id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

//! `GET /os-aggregates`: host aggregates from the API database (their management routes come with the
//! scheduler work; `openstack hypervisor show` reads this list).

use super::{admin, naive_time, Mv, S};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use serde_json::{json, Map, Value};
use sqlx::Row;
use std::collections::BTreeMap;
use tessera_db::get_text;
use tessera_http::auth::Caller;
use tessera_http::ApiError;

pub(crate) async fn list(
    State(api): S,
    Caller(ctx): Caller,
    Extension(mv): Extension<Mv>,
) -> Result<Response, ApiError> {
    admin(&ctx, "os_compute_api:os-aggregates:index")?;
    let db = &api.api_db;
    let rows = sqlx::query("SELECT id, uuid, name, created_at, updated_at FROM aggregates ORDER BY id")
        .fetch_all(db.pool())
        .await
        .map_err(super::internal)?;
    let mut hosts: BTreeMap<i64, Vec<String>> = BTreeMap::new();
    for r in sqlx::query("SELECT aggregate_id, host FROM aggregate_hosts ORDER BY host")
        .fetch_all(db.pool())
        .await
        .map_err(super::internal)?
    {
        let id: i64 = r.try_get("aggregate_id").map_err(super::internal)?;
        hosts
            .entry(id)
            .or_default()
            .push(get_text(&r, "host").map_err(super::internal)?);
    }
    let mut meta: BTreeMap<i64, Map<String, Value>> = BTreeMap::new();
    for r in sqlx::query("SELECT aggregate_id, meta_key, meta_value FROM aggregate_metadata")
        .fetch_all(db.pool())
        .await
        .map_err(super::internal)?
    {
        let id: i64 = r.try_get("aggregate_id").map_err(super::internal)?;
        meta.entry(id).or_default().insert(
            get_text(&r, "meta_key").map_err(super::internal)?,
            json!(get_text(&r, "meta_value").map_err(super::internal)?),
        );
    }
    let mut out = Vec::new();
    for r in rows {
        let id: i64 = r.try_get("id").map_err(super::internal)?;
        let created: i64 = r.try_get("created_at").map_err(super::internal)?;
        let updated: i64 = r.try_get("updated_at").map_err(super::internal)?;
        let m = meta.remove(&id).unwrap_or_default();
        let mut v = json!({
            "id": id,
            "name": get_text(&r, "name").map_err(super::internal)?,
            "availability_zone": m.get("availability_zone").cloned().unwrap_or(Value::Null),
            "hosts": hosts.remove(&id).unwrap_or_default(),
            "metadata": m,
            "created_at": naive_time(created),
            "updated_at": if updated == created { Value::Null } else { json!(naive_time(updated)) },
            "deleted": false,
            "deleted_at": null,
        });
        if mv.at_least(41) {
            v["uuid"] = json!(get_text(&r, "uuid").map_err(super::internal)?);
        }
        out.push(v);
    }
    Ok(axum::Json(json!({ "aggregates": out })).into_response())
}

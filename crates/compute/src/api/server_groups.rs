//! `/os-server-groups`: create, list (`all_projects` for admins, `limit`/`offset`), show, delete. Before 2.64
//! a group shows `policies` (a one-item list) and an empty `metadata`; from 2.64 `policy` and `rules`
//! (`max_server_per_host`, anti-affinity only); from 2.13 `project_id` and `user_id`; soft policies from
//! 2.15. Members are the group's servers that still exist. Quota `[quota] server_groups` per project.

use super::{nova, wrapped, Mv, S};
use crate::groups::{self, Group};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use http::{HeaderMap, StatusCode};
use serde_json::{json, Value};
use std::collections::HashMap;
use tessera_http::auth::Caller;
use tessera_http::{ApiError, Family};
use tessera_types::RequestContext;

use super::bad;

fn not_found(id: &str) -> ApiError {
    nova(
        StatusCode::NOT_FOUND,
        format!("Instance group {id} could not be found."),
    )
}

fn view(g: &Group, mv: Mv) -> Value {
    let mut v = json!({"id": g.uuid, "name": g.name, "members": g.members});
    if mv.at_least(64) {
        v["policy"] = json!(g.policy);
        v["rules"] = json!(g.rules);
    } else {
        v["policies"] = json!([g.policy]);
        v["metadata"] = json!({});
    }
    if mv.at_least(13) {
        v["project_id"] = json!(g.project_id);
        v["user_id"] = json!(g.user_id);
    }
    v
}

fn project_of(ctx: &RequestContext) -> Result<String, ApiError> {
    ctx.project_id().map(str::to_string).ok_or_else(|| {
        nova(
            StatusCode::FORBIDDEN,
            "Policy doesn't allow os_compute_api:os-server-groups to be performed.",
        )
    })
}

/// A group the caller may see: its own project's, or any for admins (others' are 404, as upstream's
/// policy check on a group the caller cannot see).
async fn visible(api: &super::ComputeApi, ctx: &RequestContext, id: &str) -> Result<Group, ApiError> {
    let g = groups::get(&api.api_db, id).await?.ok_or_else(|| not_found(id))?;
    if !ctx.is_admin() && ctx.project_id() != Some(g.project_id.as_str()) {
        return Err(nova(
            StatusCode::FORBIDDEN,
            "Policy doesn't allow os_compute_api:os-server-groups:show to be performed.",
        ));
    }
    Ok(g)
}

/// Keep only members whose servers still exist (mapped, not queued for delete).
async fn live_members(api: &super::ComputeApi, groups_: &mut [Group]) -> Result<(), ApiError> {
    let all: Vec<&str> = groups_
        .iter()
        .flat_map(|g| g.members.iter().map(String::as_str))
        .collect();
    let live = crate::cells::live_mapped(&api.api_db, &all).await?;
    for g in groups_.iter_mut() {
        g.members.retain(|m| live.contains(m));
    }
    Ok(())
}

pub(crate) async fn list(
    State(api): S,
    Caller(ctx): Caller,
    Extension(mv): Extension<Mv>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    if mv.at_least(75) {
        if let Some(k) = q
            .keys()
            .find(|k| !["all_projects", "limit", "offset"].contains(&k.as_str()))
        {
            return Err(bad(format!(
                "Invalid input for query parameters {k}. Additional properties are not allowed ('{k}' was unexpected)"
            )));
        }
    }
    let number = |name: &str| -> Result<Option<usize>, ApiError> {
        match q.get(name) {
            None => Ok(None),
            Some(v) => v.parse::<usize>().map(Some).map_err(|_| {
                bad(format!(
                    "Invalid input for query parameters {name}. Value: {v}. '{v}' does not match '^[0-9]*$'"
                ))
            }),
        }
    };
    let (limit, offset) = (number("limit")?, number("offset")?.unwrap_or(0));
    let all = q.contains_key("all_projects") && ctx.is_admin();
    let project = project_of(&ctx)?;
    let max = api.servers.max_limit.max(1) as usize;
    let mut found: Vec<Group> = groups::list(&api.api_db, (!all).then_some(project.as_str()))
        .await?
        .into_iter()
        .skip(offset)
        .take(limit.unwrap_or(max).min(max))
        .collect();
    live_members(&api, &mut found).await?;
    let items: Vec<Value> = found.iter().map(|g| view(g, mv)).collect();
    Ok(axum::Json(json!({ "server_groups": items })).into_response())
}

pub(crate) async fn show(
    State(api): S,
    Caller(ctx): Caller,
    Extension(mv): Extension<Mv>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let g = visible(&api, &ctx, &id).await?;
    let mut one = [g];
    live_members(&api, &mut one).await?;
    Ok(axum::Json(json!({"server_group": view(&one[0], mv)})).into_response())
}

pub(crate) async fn delete(
    State(api): S,
    Caller(ctx): Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let g = visible(&api, &ctx, &id).await?;
    if !groups::delete(&api.api_db, &g).await? {
        return Err(not_found(&id));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub(crate) async fn create(
    State(api): S,
    Caller(ctx): Caller,
    Extension(mv): Extension<Mv>,
    headers: HeaderMap,
    b: Bytes,
) -> Result<Response, ApiError> {
    let v = tessera_http::body::parse_json::<Value>(Family::Nova, &headers, &b)?;
    let allowed: &[&str] = if mv.at_least(64) {
        &["name", "policy", "rules"]
    } else {
        &["name", "policies"]
    };
    let m = wrapped(&v, "server_group", allowed)?;
    let name = match m.get("name") {
        Some(Value::String(s)) if !s.is_empty() && s.chars().count() <= 255 && s.trim() == s => s.clone(),
        Some(other) => {
            return Err(bad(format!(
                "Invalid input for field/attribute name. Value: {other}. {other} is not a valid name"
            )))
        }
        None => return Err(bad(
            "Invalid input for field/attribute server_group. Value: the group. 'name' is a required property",
        )),
    };
    let allowed_policies: &[&str] = if mv.at_least(15) {
        &groups::POLICIES
    } else {
        &groups::POLICIES[..2]
    };
    let policy_ok = |p: &Value| {
        p.as_str()
            .filter(|p| allowed_policies.contains(p))
            .map(str::to_string)
            .ok_or_else(|| {
                bad(format!(
                    "Invalid input for field/attribute policy. Value: {p}. {p} is not one of {allowed_policies:?}"
                ))
            })
    };
    let mut rules = std::collections::BTreeMap::new();
    let policy = if mv.at_least(64) {
        let p = m.get("policy").ok_or_else(|| {
            bad("Invalid input for field/attribute server_group. Value: the group. 'policy' is a required property")
        })?;
        let policy = policy_ok(p)?;
        if let Some(r) = m.get("rules") {
            let obj = r.as_object().ok_or_else(|| {
                bad(format!(
                    "Invalid input for field/attribute rules. Value: {r}. {r} is not of type 'object'"
                ))
            })?;
            for (k, val) in obj {
                if k != "max_server_per_host" {
                    return Err(bad(format!("Invalid input for field/attribute rules. Additional properties are not allowed ('{k}' was unexpected)")));
                }
                let n = super::servers::positive_int("max_server_per_host", val)?;
                rules.insert(k.clone(), n);
            }
            if policy != "anti-affinity" && !obj.is_empty() {
                return Err(bad("Only anti-affinity policy supports rules."));
            }
        }
        policy
    } else {
        let ps = m.get("policies").ok_or_else(|| {
            bad("Invalid input for field/attribute server_group. Value: the group. 'policies' is a required property")
        })?;
        match ps.as_array().map(Vec::as_slice) {
            Some([one]) => policy_ok(one)?,
            _ => {
                return Err(bad(format!(
                    "Invalid input for field/attribute policies. Value: {ps}. {ps} is not valid: exactly one policy is required"
                )))
            }
        }
    };
    let project = project_of(&ctx)?;
    let [(_, limit)] =
        super::servers::limits_of(&api, &project, [("server_groups", api.servers.server_groups)]).await?;
    let now = tessera_types::now_epoch_micros();
    let g = Group {
        id: 0,
        uuid: tessera_types::new_uuid(),
        name,
        project_id: project,
        user_id: ctx.user_id.clone(),
        policy,
        rules,
        members: Vec::new(),
        created_at: now,
    };
    let created = groups::create(&api.api_db, &g, limit)
        .await?
        .ok_or_else(|| nova(StatusCode::FORBIDDEN, "Quota exceeded, too many server groups."))?;
    Ok(axum::Json(json!({"server_group": view(&created, mv)})).into_response())
}

//! Application credentials: a user's delegated, secret-bearing login to one project with a subset of roles.

use super::{body_json, collection, created, no_content, ok, App, S};
use crate::error::{IdentityError, Result};
use crate::store::{self, AppCredRow};
use crate::{policy, validate};
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::{Path, Query};
use axum::response::Response;
use base64::Engine as _;
use http::HeaderMap;
use serde_json::{json, Value};
use std::collections::HashMap;
use tessera_http::auth::Caller;
use tessera_types::{iso_micros, new_hex_id, RequestContext};

async fn cred_json(app: &App, a: &AppCredRow) -> Result<Value> {
    let mut roles = Vec::new();
    for r in &a.role_ids {
        if let Some(r) = store::role_get(&app.id.db, r).await? {
            roles.push(json!({"id": r.id, "name": r.name, "domain_id": r.domain_id}));
        }
    }
    Ok(json!({
        "id": a.id, "name": a.name, "description": a.description, "user_id": a.user_id,
        "project_id": a.project_id, "expires_at": a.expires_at.map(iso_micros), "unrestricted": a.unrestricted,
        "roles": roles, "access_rules": [],
        "links": {"self": format!("{}/v3/users/{}/application_credentials/{}", app.base, a.user_id, a.id)},
    }))
}

fn may_read(ctx: &RequestContext, user_id: &str, action: &str) -> Result<()> {
    policy::require_reader_or_owner(ctx, user_id, None, action)
}

pub async fn create(
    State(app): S,
    Caller(ctx): Caller,
    Path(user_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    if ctx.user_id != user_id {
        return Err(IdentityError::forbidden("create_application_credential"));
    }
    if ctx.application_credential_id.is_some() {
        // A restricted credential cannot create others (we treat every credential token as restricted here).
        if let Some(ac) =
            store::app_cred_get(&app.id.db, ctx.application_credential_id.as_deref().unwrap_or("")).await?
        {
            if !ac.unrestricted {
                return Err(IdentityError::ForbiddenNotSecret(
                    "Using method 'application_credential' is not allowed for managing additional application credentials.".into(),
                ));
            }
        }
    }
    let project_id = ctx
        .project_id()
        .ok_or_else(|| {
            IdentityError::Validation(
                "Application credentials must be created with a project-scoped token.".into(),
            )
        })?
        .to_string();
    let v = body_json(&headers, &body)?;
    let m = validate::entity(&v, "application_credential")?;
    let name = validate::req_str(m, "name", 255)?;
    let description = validate::opt_text(m, "description")?.flatten();
    let unrestricted = match m.get("unrestricted") {
        None | Some(Value::Null) => false,
        _ => validate::opt_bool(m, "unrestricted")?.unwrap_or(false),
    };
    let expires_at = match validate::opt_str(m, "expires_at", 64)? {
        None => None,
        Some(s) => Some(tessera_types::parse_iso(&s).ok_or_else(|| {
            IdentityError::Validation(format!(
                "Invalid input for field 'expires_at': '{s}' is not a valid timestamp"
            ))
        })?),
    };
    if m.get("access_rules")
        .is_some_and(|a| a.as_array().is_some_and(|a| !a.is_empty()))
    {
        return Err(IdentityError::Validation(
            "Invalid input for field 'access_rules': access rules are not supported".into(),
        ));
    }
    let secret = match validate::opt_str(m, "secret", 4096)? {
        Some(s) => s,
        None => {
            let bytes: [u8; 32] = rand::random();
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
        }
    };
    // Roles: those asked for (by id or name), which the token must hold; by default all of the token's.
    let all_roles = store::role_all(&app.id.db).await?;
    let mut role_ids = Vec::new();
    match m.get("roles") {
        // Absent, null or empty (what the openstack CLI sends when no --role is given): all the token's roles.
        None | Some(Value::Null) => {
            for n in &ctx.roles {
                if let Some(r) = all_roles.iter().find(|r| &r.name == n && r.domain_id.is_none()) {
                    role_ids.push(r.id.clone());
                }
            }
        }
        Some(Value::Array(list)) if list.is_empty() => {
            for n in &ctx.roles {
                if let Some(r) = all_roles.iter().find(|r| &r.name == n && r.domain_id.is_none()) {
                    role_ids.push(r.id.clone());
                }
            }
        }
        Some(Value::Array(list)) => {
            for item in list {
                let r = match (
                    item.get("id").and_then(Value::as_str),
                    item.get("name").and_then(Value::as_str),
                ) {
                    (Some(id), _) => all_roles.iter().find(|r| r.id == id),
                    (None, Some(n)) => all_roles.iter().find(|r| r.name == n && r.domain_id.is_none()),
                    _ => {
                        return Err(IdentityError::Validation(
                            "Invalid input for field 'roles': each role needs an id or a name".into(),
                        ))
                    }
                };
                let r = r.ok_or_else(|| {
                    IdentityError::Validation(format!("Invalid input for field 'roles': unknown role {item}"))
                })?;
                if !ctx.roles.contains(&r.name) {
                    return Err(IdentityError::ForbiddenNotSecret(format!(
                        "You do not hold the role {} on project {project_id}.",
                        r.name
                    )));
                }
                role_ids.push(r.id.clone());
            }
        }
        Some(_) => {
            return Err(IdentityError::Validation(
                "Invalid input for field 'roles': not of type 'array'".into(),
            ))
        }
    }
    let a = AppCredRow {
        id: new_hex_id(),
        name,
        secret_hash: app.id.hash_password(&secret).await?,
        description,
        user_id,
        project_id,
        expires_at,
        unrestricted,
        role_ids,
    };
    store::app_cred_create(&app.id.db, &a).await?;
    app.id.changed();
    let mut body = cred_json(&app, &a).await?;
    body["secret"] = json!(secret);
    created(json!({"application_credential": body}))
}

pub async fn list(
    State(app): S,
    Caller(ctx): Caller,
    Path(user_id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response> {
    may_read(&ctx, &user_id, "list_application_credentials")?;
    let rows = store::app_cred_list(&app.id.db, &user_id, q.get("name").map(String::as_str)).await?;
    let mut items = Vec::new();
    for a in &rows {
        items.push(cred_json(&app, a).await?);
    }
    collection(
        &app,
        "application_credentials",
        &format!("users/{user_id}/application_credentials"),
        items,
    )
}

async fn find(app: &App, user_id: &str, id: &str) -> Result<AppCredRow> {
    store::app_cred_get(&app.id.db, id)
        .await?
        .filter(|a| a.user_id == user_id)
        .ok_or_else(|| IdentityError::not_found("application credential", id))
}

pub async fn get(
    State(app): S,
    Caller(ctx): Caller,
    Path((user_id, id)): Path<(String, String)>,
) -> Result<Response> {
    may_read(&ctx, &user_id, "get_application_credential")?;
    let a = find(&app, &user_id, &id).await?;
    ok(json!({"application_credential": cred_json(&app, &a).await?}))
}

pub async fn delete(
    State(app): S,
    Caller(ctx): Caller,
    Path((user_id, id)): Path<(String, String)>,
) -> Result<Response> {
    if !(ctx.user_id == user_id || policy::admin(&ctx)) {
        return Err(IdentityError::forbidden("delete_application_credential"));
    }
    find(&app, &user_id, &id).await?;
    store::app_cred_delete(&app.id.db, &id).await?;
    app.id.changed();
    no_content()
}

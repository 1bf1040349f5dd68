//! Domains, projects, users (with password change) and groups.

use super::auth::projects_of_user;
use super::{body_json, collection, created, no_content, ok, App, S};
use crate::error::{IdentityError, Result};
use crate::store::{self, DomainRow, GroupRow, ProjectRow, UserRow};
use crate::{hash, policy, validate};
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::{Path, Query};
use axum::response::Response;
use http::HeaderMap;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use tessera_http::auth::Caller;
use tessera_types::{new_hex_id, RequestContext, Scope};

type Q = Query<HashMap<String, String>>;

fn link(base: &str, path: &str, id: &str) -> Value {
    json!({"self": format!("{base}/v3/{path}/{id}")})
}

fn with_extras(mut v: Value, extra: &Map<String, Value>) -> Value {
    if let Value::Object(m) = &mut v {
        for (k, x) in extra {
            m.entry(k.clone()).or_insert_with(|| x.clone());
        }
    }
    v
}

pub(crate) fn domain_json(base: &str, d: &DomainRow) -> Value {
    with_extras(
        json!({"id": d.id, "name": d.name, "description": d.description.clone().unwrap_or_default(), "enabled": d.enabled,
               "tags": d.tags, "options": {}, "links": link(base, "domains", &d.id)}),
        &d.extra,
    )
}

pub(crate) fn project_json(base: &str, p: &ProjectRow) -> Value {
    with_extras(
        json!({"id": p.id, "name": p.name, "domain_id": p.domain_id, "description": p.description.clone().unwrap_or_default(),
               "enabled": p.enabled, "is_domain": false, "parent_id": p.parent_id.clone().unwrap_or_else(|| p.domain_id.clone()),
               "tags": p.tags, "options": {}, "links": link(base, "projects", &p.id)}),
        &p.extra,
    )
}

pub(crate) fn user_json(base: &str, u: &UserRow) -> Value {
    let mut v = json!({"id": u.id, "name": u.name, "domain_id": u.domain_id, "enabled": u.enabled,
                       "password_expires_at": null, "options": {}, "links": link(base, "users", &u.id)});
    if let Some(p) = &u.default_project_id {
        v["default_project_id"] = json!(p);
    }
    with_extras(v, &u.extra)
}

fn group_json(base: &str, g: &GroupRow) -> Value {
    with_extras(
        json!({"id": g.id, "name": g.name, "domain_id": g.domain_id, "description": g.description.clone().unwrap_or_default(),
               "links": link(base, "groups", &g.id)}),
        &g.extra,
    )
}

/// The domain a create request lands in when it names none: the token's domain, else the default domain.
fn default_domain(app: &App, ctx: &RequestContext) -> String {
    match &ctx.scope {
        Scope::Project { domain_id, .. } => domain_id.clone(),
        Scope::Domain { id, .. } => id.clone(),
        _ => app.id.settings.default_domain_id.clone(),
    }
}

async fn require_domain(app: &App, id: &str) -> Result<DomainRow> {
    store::domain_get(&app.id.db, id).await?.ok_or_else(|| {
        IdentityError::Validation(format!(
            "Invalid input for field 'domain_id': domain {id} does not exist"
        ))
    })
}

/// Domain filter for list calls by a domain-scoped reader (who sees only its domain).
fn list_scope(ctx: &RequestContext, requested: Option<&String>, action: &str) -> Result<Option<String>> {
    if policy::admin(ctx) || policy::system_reader(ctx) {
        return Ok(requested.cloned());
    }
    if let (Some(d), true) = (ctx.domain_id(), ctx.has_role("reader")) {
        if requested.is_none_or(|r| r == d) {
            return Ok(Some(d.to_string()));
        }
    }
    Err(IdentityError::forbidden(action))
}

fn q_bool(q: &HashMap<String, String>, key: &str) -> Result<Option<bool>> {
    match q.get(key) {
        None => Ok(None),
        Some(v) => validate::query_bool(v).map(Some).ok_or_else(|| {
            IdentityError::Validation(format!("Invalid input for query parameter '{key}': '{v}'"))
        }),
    }
}

// ---------------------------------------------------------------- domains

const DOMAIN_KNOWN: &[&str] = &[
    "id",
    "name",
    "description",
    "enabled",
    "tags",
    "options",
    "links",
    "explicit_domain_id",
];

pub async fn list_domains(State(app): S, Caller(ctx): Caller, Query(q): Q) -> Result<Response> {
    let only = if policy::admin(&ctx) || policy::system_reader(&ctx) {
        None
    } else if let Some(d) = ctx.domain_id().filter(|_| ctx.has_role("reader")) {
        Some(d.to_string())
    } else {
        return Err(IdentityError::forbidden("list_domains"));
    };
    let rows = store::domain_list(
        &app.id.db,
        q.get("name").map(String::as_str),
        q_bool(&q, "enabled")?,
    )
    .await?;
    let items = rows
        .iter()
        .filter(|d| only.as_ref().is_none_or(|o| *o == d.id))
        .map(|d| domain_json(&app.base, d))
        .collect();
    collection(&app, "domains", "domains", items)
}

pub async fn get_domain(State(app): S, Caller(ctx): Caller, Path(id): Path<String>) -> Result<Response> {
    let allowed = policy::admin(&ctx)
        || policy::system_reader(&ctx)
        || ctx.domain_id() == Some(id.as_str())
        || matches!(&ctx.scope, Scope::Project { domain_id, .. } if *domain_id == id);
    if !allowed {
        return Err(IdentityError::forbidden("get_domain"));
    }
    let d = store::domain_get(&app.id.db, &id)
        .await?
        .ok_or_else(|| IdentityError::not_found("domain", &id))?;
    ok(json!({"domain": domain_json(&app.base, &d)}))
}

pub async fn create_domain(
    State(app): S,
    Caller(ctx): Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    policy::require_admin(&ctx, "create_domain")?;
    let v = body_json(&headers, &body)?;
    let m = validate::entity(&v, "domain")?;
    let d = DomainRow {
        id: validate::opt_str(m, "explicit_domain_id", 64)?.unwrap_or_else(new_hex_id),
        name: validate::req_str(m, "name", 64)?,
        description: validate::opt_text(m, "description")?.flatten(),
        enabled: validate::opt_bool(m, "enabled")?.unwrap_or(true),
        tags: validate::opt_str_list(m, "tags")?.unwrap_or_default(),
        extra: validate::extras(m, DOMAIN_KNOWN),
    };
    store::domain_put(&app.id.db, &d, true).await?;
    app.id.changed();
    created(json!({"domain": domain_json(&app.base, &d)}))
}

pub async fn update_domain(
    State(app): S,
    Caller(ctx): Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    policy::require_admin(&ctx, "update_domain")?;
    let v = body_json(&headers, &body)?;
    let m = validate::entity(&v, "domain")?;
    validate::no_readonly(m, &["id"])?;
    let mut d = store::domain_get(&app.id.db, &id)
        .await?
        .ok_or_else(|| IdentityError::not_found("domain", &id))?;
    if let Some(n) = validate::opt_str(m, "name", 64)? {
        d.name = n;
    }
    if let Some(desc) = validate::opt_text(m, "description")? {
        d.description = desc;
    }
    if let Some(e) = validate::opt_bool(m, "enabled")? {
        d.enabled = e;
    }
    if let Some(t) = validate::opt_str_list(m, "tags")? {
        d.tags = t;
    }
    d.extra.extend(validate::extras(m, DOMAIN_KNOWN));
    store::domain_put(&app.id.db, &d, false).await?;
    app.id.changed();
    ok(json!({"domain": domain_json(&app.base, &d)}))
}

pub async fn delete_domain(State(app): S, Caller(ctx): Caller, Path(id): Path<String>) -> Result<Response> {
    policy::require_admin(&ctx, "delete_domain")?;
    let d = store::domain_get(&app.id.db, &id)
        .await?
        .ok_or_else(|| IdentityError::not_found("domain", &id))?;
    if d.enabled {
        return Err(IdentityError::ForbiddenNotSecret(
            "Cannot delete a domain that is enabled, please disable it first.".into(),
        ));
    }
    if d.id == app.id.settings.default_domain_id {
        return Err(IdentityError::ForbiddenNotSecret(
            "Cannot delete the default domain.".into(),
        ));
    }
    store::domain_delete(&app.id.db, &id).await?;
    app.id.changed();
    no_content()
}

// ---------------------------------------------------------------- projects

const PROJECT_KNOWN: &[&str] = &[
    "id",
    "name",
    "domain_id",
    "parent_id",
    "description",
    "enabled",
    "is_domain",
    "tags",
    "options",
    "links",
];

pub async fn list_projects(State(app): S, Caller(ctx): Caller, Query(q): Q) -> Result<Response> {
    let domain = list_scope(&ctx, q.get("domain_id"), "list_projects")?;
    if q.get("is_domain")
        .is_some_and(|v| validate::query_bool(v) == Some(true))
    {
        return collection(&app, "projects", "projects", Vec::new());
    }
    let f = store::ProjectFilter {
        name: q.get("name").cloned(),
        domain_id: domain,
        parent_id: q.get("parent_id").cloned(),
        enabled: q_bool(&q, "enabled")?,
        ids: None,
    };
    let rows = store::project_list(&app.id.db, &f).await?;
    let tags: Option<Vec<&str>> = q.get("tags").map(|t| t.split(',').collect());
    let items = rows
        .iter()
        .filter(|p| {
            tags.as_ref()
                .is_none_or(|t| t.iter().all(|x| p.tags.iter().any(|pt| pt == x)))
        })
        .map(|p| project_json(&app.base, p))
        .collect();
    collection(&app, "projects", "projects", items)
}

pub async fn get_project(State(app): S, Caller(ctx): Caller, Path(id): Path<String>) -> Result<Response> {
    let p = store::project_get(&app.id.db, &id).await?;
    let allowed = ctx.project_id() == Some(id.as_str())
        || policy::require_reader_of_domain(&ctx, p.as_ref().map(|p| p.domain_id.as_str()), "get_project")
            .is_ok();
    if !allowed {
        return Err(IdentityError::forbidden("get_project"));
    }
    let p = p.ok_or_else(|| IdentityError::not_found("project", &id))?;
    ok(json!({"project": project_json(&app.base, &p)}))
}

pub async fn create_project(
    State(app): S,
    Caller(ctx): Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    policy::require_admin(&ctx, "create_project")?;
    let v = body_json(&headers, &body)?;
    let m = validate::entity(&v, "project")?;
    let name = validate::req_str(m, "name", 64)?;
    if validate::opt_bool(m, "is_domain")? == Some(true) {
        return Err(IdentityError::Validation(
            "Invalid input for field 'is_domain': projects acting as domains are not supported".into(),
        ));
    }
    let mut domain_id = validate::opt_str(m, "domain_id", 64)?;
    let parent_id = validate::opt_str(m, "parent_id", 64)?;
    let mut parent = None;
    if let Some(pid) = &parent_id {
        match store::project_get(&app.id.db, pid).await? {
            Some(pp) => {
                if domain_id.as_ref().is_some_and(|d| *d != pp.domain_id) {
                    return Err(IdentityError::Validation(
                        "Invalid input for field 'parent_id': the parent is in another domain".into(),
                    ));
                }
                domain_id = Some(pp.domain_id.clone());
                parent = Some(pp.id);
            }
            None if store::domain_get(&app.id.db, pid).await?.is_some() => {
                domain_id = Some(pid.clone());
            }
            None => return Err(IdentityError::not_found("project", pid)),
        }
    }
    let domain_id = domain_id.unwrap_or_else(|| default_domain(&app, &ctx));
    require_domain(&app, &domain_id).await?;
    let p = ProjectRow {
        id: new_hex_id(),
        name,
        domain_id,
        parent_id: parent,
        description: validate::opt_text(m, "description")?.flatten(),
        enabled: validate::opt_bool(m, "enabled")?.unwrap_or(true),
        tags: validate::opt_str_list(m, "tags")?.unwrap_or_default(),
        extra: validate::extras(m, PROJECT_KNOWN),
    };
    store::project_put(&app.id.db, &p, true).await?;
    app.id.changed();
    created(json!({"project": project_json(&app.base, &p)}))
}

pub async fn update_project(
    State(app): S,
    Caller(ctx): Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    policy::require_admin(&ctx, "update_project")?;
    let v = body_json(&headers, &body)?;
    let m = validate::entity(&v, "project")?;
    validate::no_readonly(m, &["id", "is_domain"])?;
    let mut p = store::project_get(&app.id.db, &id)
        .await?
        .ok_or_else(|| IdentityError::not_found("project", &id))?;
    if let Some(d) = validate::opt_str(m, "domain_id", 64)? {
        if d != p.domain_id {
            return Err(IdentityError::Validation("Cannot change Domain ID".into()));
        }
    }
    if let Some(pid) = validate::opt_str(m, "parent_id", 64)? {
        if Some(&pid) != p.parent_id.as_ref() && pid != p.domain_id {
            return Err(IdentityError::ForbiddenNotSecret(
                "Update of `parent_id` is not allowed.".into(),
            ));
        }
    }
    if let Some(n) = validate::opt_str(m, "name", 64)? {
        p.name = n;
    }
    if let Some(desc) = validate::opt_text(m, "description")? {
        p.description = desc;
    }
    if let Some(e) = validate::opt_bool(m, "enabled")? {
        p.enabled = e;
    }
    if let Some(t) = validate::opt_str_list(m, "tags")? {
        p.tags = t;
    }
    p.extra.extend(validate::extras(m, PROJECT_KNOWN));
    store::project_put(&app.id.db, &p, false).await?;
    app.id.changed();
    ok(json!({"project": project_json(&app.base, &p)}))
}

pub async fn delete_project(State(app): S, Caller(ctx): Caller, Path(id): Path<String>) -> Result<Response> {
    policy::require_admin(&ctx, "delete_project")?;
    store::project_get(&app.id.db, &id)
        .await?
        .ok_or_else(|| IdentityError::not_found("project", &id))?;
    if store::project_has_children(&app.id.db, &id).await? {
        return Err(IdentityError::ForbiddenNotSecret(format!(
            "Cannot delete the project {id} since it is not a leaf in the hierarchy."
        )));
    }
    store::project_delete(&app.id.db, &id).await?;
    app.id.changed();
    no_content()
}

// ---------------------------------------------------------------- users

const USER_KNOWN: &[&str] = &[
    "id",
    "name",
    "domain_id",
    "enabled",
    "default_project_id",
    "password",
    "options",
    "links",
    "password_expires_at",
];

pub async fn list_users(State(app): S, Caller(ctx): Caller, Query(q): Q) -> Result<Response> {
    let domain = list_scope(&ctx, q.get("domain_id"), "list_users")?;
    let rows = store::user_list(
        &app.id.db,
        q.get("name").map(String::as_str),
        domain.as_deref(),
        q_bool(&q, "enabled")?,
        None,
    )
    .await?;
    collection(
        &app,
        "users",
        "users",
        rows.iter().map(|u| user_json(&app.base, u)).collect(),
    )
}

async fn user_for_read(app: &App, ctx: &RequestContext, id: &str, action: &str) -> Result<UserRow> {
    let u = store::user_get(&app.id.db, id).await?;
    policy::require_reader_or_owner(ctx, id, u.as_ref().map(|u| u.domain_id.as_str()), action)?;
    u.ok_or_else(|| IdentityError::not_found("user", id))
}

pub async fn get_user(State(app): S, Caller(ctx): Caller, Path(id): Path<String>) -> Result<Response> {
    let u = user_for_read(&app, &ctx, &id, "get_user").await?;
    ok(json!({"user": user_json(&app.base, &u)}))
}

pub async fn create_user(
    State(app): S,
    Caller(ctx): Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    policy::require_admin(&ctx, "create_user")?;
    let v = body_json(&headers, &body)?;
    let m = validate::entity(&v, "user")?;
    let name = validate::req_str(m, "name", 255)?;
    let domain_id = validate::opt_str(m, "domain_id", 64)?.unwrap_or_else(|| default_domain(&app, &ctx));
    let password = match m.get("password") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => {
            return Err(IdentityError::Validation(
                "Invalid input for field 'password': not of type 'string'".into(),
            ))
        }
    };
    let default_project_id = validate::opt_str(m, "default_project_id", 64)?;
    let enabled = validate::opt_bool(m, "enabled")?.unwrap_or(true);
    let extra = validate::extras(m, USER_KNOWN);
    require_domain(&app, &domain_id).await?;
    if let Some(p) = &default_project_id {
        store::project_get(&app.id.db, p).await?.ok_or_else(|| {
            IdentityError::Validation(format!(
                "Invalid input for field 'default_project_id': project {p} does not exist"
            ))
        })?;
    }
    let password_hash = match password {
        Some(p) => Some(app.id.hash_password(&p).await?),
        None => None,
    };
    let u = UserRow {
        id: new_hex_id(),
        name,
        domain_id,
        enabled,
        default_project_id,
        password_created_at: password_hash.as_ref().map(|_| tessera_types::now_epoch_micros()),
        password_hash,
        extra,
    };
    store::user_put(&app.id.db, &u, true).await?;
    app.id.changed();
    created(json!({"user": user_json(&app.base, &u)}))
}

pub async fn update_user(
    State(app): S,
    Caller(ctx): Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    policy::require_admin(&ctx, "update_user")?;
    let v = body_json(&headers, &body)?;
    let m = validate::entity(&v, "user")?;
    validate::no_readonly(m, &["id"])?;
    let mut u = store::user_get(&app.id.db, &id)
        .await?
        .ok_or_else(|| IdentityError::not_found("user", &id))?;
    if let Some(d) = validate::opt_str(m, "domain_id", 64)? {
        if d != u.domain_id {
            return Err(IdentityError::Validation("Cannot change Domain ID".into()));
        }
    }
    if let Some(n) = validate::opt_str(m, "name", 255)? {
        u.name = n;
    }
    let mut revoke = false;
    if let Some(e) = validate::opt_bool(m, "enabled")? {
        revoke |= u.enabled && !e;
        u.enabled = e;
    }
    if m.contains_key("default_project_id") {
        u.default_project_id = validate::opt_str(m, "default_project_id", 64)?;
        if let Some(p) = &u.default_project_id {
            store::project_get(&app.id.db, p).await?.ok_or_else(|| {
                IdentityError::Validation(format!(
                    "Invalid input for field 'default_project_id': project {p} does not exist"
                ))
            })?;
        }
    }
    match m.get("password") {
        None => {}
        Some(Value::String(p)) => {
            u.password_hash = Some(app.id.hash_password(p).await?);
            u.password_created_at = Some(tessera_types::now_epoch_micros());
            revoke = true;
        }
        Some(Value::Null) => {
            u.password_hash = None;
            revoke = true;
        }
        Some(_) => {
            return Err(IdentityError::Validation(
                "Invalid input for field 'password': not of type 'string'".into(),
            ))
        }
    }
    u.extra.extend(validate::extras(m, USER_KNOWN));
    store::user_put(&app.id.db, &u, false).await?;
    if revoke {
        app.id.revoke_user_tokens(&u.id).await?;
    }
    app.id.changed();
    ok(json!({"user": user_json(&app.base, &u)}))
}

pub async fn delete_user(State(app): S, Caller(ctx): Caller, Path(id): Path<String>) -> Result<Response> {
    policy::require_admin(&ctx, "delete_user")?;
    store::user_get(&app.id.db, &id)
        .await?
        .ok_or_else(|| IdentityError::not_found("user", &id))?;
    store::user_delete(&app.id.db, &id).await?;
    app.id.changed();
    no_content()
}

pub async fn user_projects(State(app): S, Caller(ctx): Caller, Path(id): Path<String>) -> Result<Response> {
    user_for_read(&app, &ctx, &id, "list_user_projects").await?;
    let items = projects_of_user(&app, &id)
        .await?
        .iter()
        .map(|p| project_json(&app.base, p))
        .collect();
    collection(&app, "projects", &format!("users/{id}/projects"), items)
}

pub async fn user_groups(State(app): S, Caller(ctx): Caller, Path(id): Path<String>) -> Result<Response> {
    user_for_read(&app, &ctx, &id, "list_groups_for_user").await?;
    let rows = store::group_list(&app.id.db, None, None, Some(&id)).await?;
    collection(
        &app,
        "groups",
        &format!("users/{id}/groups"),
        rows.iter().map(|g| group_json(&app.base, g)).collect(),
    )
}

/// `POST /v3/users/{id}/password`: self-service change, authenticated by the original password.
pub async fn change_password(
    State(app): S,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    let v = body_json(&headers, &body)?;
    let m = validate::entity(&v, "user")?;
    let new = validate::req_str(m, "password", 4096)?;
    let original = validate::req_str(m, "original_password", 4096)?;
    let mut u = store::user_get(&app.id.db, &id)
        .await?
        .filter(|u| u.enabled)
        .ok_or(IdentityError::Unauthorized)?;
    let stored = u.password_hash.clone().ok_or(IdentityError::Unauthorized)?;
    if !hash::verify(original, stored).await {
        return Err(IdentityError::Unauthorized);
    }
    u.password_hash = Some(app.id.hash_password(&new).await?);
    u.password_created_at = Some(tessera_types::now_epoch_micros());
    store::user_put(&app.id.db, &u, false).await?;
    app.id.revoke_user_tokens(&u.id).await?;
    no_content()
}

// ---------------------------------------------------------------- groups

const GROUP_KNOWN: &[&str] = &["id", "name", "domain_id", "description", "links"];

pub async fn list_groups(State(app): S, Caller(ctx): Caller, Query(q): Q) -> Result<Response> {
    let domain = list_scope(&ctx, q.get("domain_id"), "list_groups")?;
    let rows = store::group_list(
        &app.id.db,
        q.get("name").map(String::as_str),
        domain.as_deref(),
        None,
    )
    .await?;
    collection(
        &app,
        "groups",
        "groups",
        rows.iter().map(|g| group_json(&app.base, g)).collect(),
    )
}

async fn group_for_read(app: &App, ctx: &RequestContext, id: &str, action: &str) -> Result<GroupRow> {
    let g = store::group_get(&app.id.db, id).await?;
    policy::require_reader_of_domain(ctx, g.as_ref().map(|g| g.domain_id.as_str()), action)?;
    g.ok_or_else(|| IdentityError::not_found("group", id))
}

pub async fn get_group(State(app): S, Caller(ctx): Caller, Path(id): Path<String>) -> Result<Response> {
    let g = group_for_read(&app, &ctx, &id, "get_group").await?;
    ok(json!({"group": group_json(&app.base, &g)}))
}

pub async fn create_group(
    State(app): S,
    Caller(ctx): Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    policy::require_admin(&ctx, "create_group")?;
    let v = body_json(&headers, &body)?;
    let m = validate::entity(&v, "group")?;
    let g = GroupRow {
        id: new_hex_id(),
        name: validate::req_str(m, "name", 64)?,
        domain_id: validate::opt_str(m, "domain_id", 64)?.unwrap_or_else(|| default_domain(&app, &ctx)),
        description: validate::opt_text(m, "description")?.flatten(),
        extra: validate::extras(m, GROUP_KNOWN),
    };
    require_domain(&app, &g.domain_id).await?;
    store::group_put(&app.id.db, &g, true).await?;
    app.id.changed();
    created(json!({"group": group_json(&app.base, &g)}))
}

pub async fn update_group(
    State(app): S,
    Caller(ctx): Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    policy::require_admin(&ctx, "update_group")?;
    let v = body_json(&headers, &body)?;
    let m = validate::entity(&v, "group")?;
    validate::no_readonly(m, &["id", "domain_id"])?;
    let mut g = store::group_get(&app.id.db, &id)
        .await?
        .ok_or_else(|| IdentityError::not_found("group", &id))?;
    if let Some(n) = validate::opt_str(m, "name", 64)? {
        g.name = n;
    }
    if let Some(d) = validate::opt_text(m, "description")? {
        g.description = d;
    }
    g.extra.extend(validate::extras(m, GROUP_KNOWN));
    store::group_put(&app.id.db, &g, false).await?;
    app.id.changed();
    ok(json!({"group": group_json(&app.base, &g)}))
}

pub async fn delete_group(State(app): S, Caller(ctx): Caller, Path(id): Path<String>) -> Result<Response> {
    policy::require_admin(&ctx, "delete_group")?;
    store::group_get(&app.id.db, &id)
        .await?
        .ok_or_else(|| IdentityError::not_found("group", &id))?;
    store::group_delete(&app.id.db, &id).await?;
    app.id.changed();
    no_content()
}

pub async fn group_users(State(app): S, Caller(ctx): Caller, Path(id): Path<String>) -> Result<Response> {
    group_for_read(&app, &ctx, &id, "list_users_in_group").await?;
    let rows = store::user_list(&app.id.db, None, None, None, Some(&id)).await?;
    collection(
        &app,
        "users",
        &format!("groups/{id}/users"),
        rows.iter().map(|u| user_json(&app.base, u)).collect(),
    )
}

async fn member_targets(app: &App, gid: &str, uid: &str) -> Result<()> {
    store::group_get(&app.id.db, gid)
        .await?
        .ok_or_else(|| IdentityError::not_found("group", gid))?;
    store::user_get(&app.id.db, uid)
        .await?
        .ok_or_else(|| IdentityError::not_found("user", uid))?;
    Ok(())
}

pub async fn add_member(
    State(app): S,
    Caller(ctx): Caller,
    Path((gid, uid)): Path<(String, String)>,
) -> Result<Response> {
    policy::require_admin(&ctx, "add_user_to_group")?;
    member_targets(&app, &gid, &uid).await?;
    store::membership_set(&app.id.db, &uid, &gid, true).await?;
    app.id.changed();
    no_content()
}

pub async fn check_member(
    State(app): S,
    Caller(ctx): Caller,
    Path((gid, uid)): Path<(String, String)>,
) -> Result<Response> {
    group_for_read(&app, &ctx, &gid, "check_user_in_group").await?;
    member_targets(&app, &gid, &uid).await?;
    if !store::membership_check(&app.id.db, &uid, &gid).await? {
        return Err(IdentityError::NotFound {
            kind: "membership",
            id: format!("user {uid} in group {gid}"),
        });
    }
    no_content()
}

pub async fn remove_member(
    State(app): S,
    Caller(ctx): Caller,
    Path((gid, uid)): Path<(String, String)>,
) -> Result<Response> {
    policy::require_admin(&ctx, "remove_user_from_group")?;
    member_targets(&app, &gid, &uid).await?;
    if !store::membership_check(&app.id.db, &uid, &gid).await? {
        return Err(IdentityError::NotFound {
            kind: "membership",
            id: format!("user {uid} in group {gid}"),
        });
    }
    store::membership_set(&app.id.db, &uid, &gid, false).await?;
    app.id.changed();
    no_content()
}

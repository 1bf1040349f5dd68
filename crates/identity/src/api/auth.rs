//! Version discovery and `/v3/auth/*`: issuing, validating, checking and revoking tokens, and what a token
//! may scope to.

use super::{body_json, collection, ok, App, S};
use crate::error::{IdentityError, Result};
use crate::fernet::{self, METHOD_APP_CRED, METHOD_PASSWORD, METHOD_TOKEN};
use crate::store::{self, AppCredRow, DomainRow, ProjectRow};
use crate::token::{TokenModel, SCOPE_APP_CRED, SCOPE_DOMAIN, SCOPE_PROJECT, SCOPE_SYSTEM, SCOPE_UNSCOPED};
use crate::{hash, policy, validate};
use axum::body::Bytes;
use axum::extract::Query;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, StatusCode};
use serde_json::{json, Map, Value};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use tessera_http::auth::Caller;
use tessera_types::{now_epoch_micros, RequestContext};

fn v3_doc(base: &str) -> Value {
    json!({
        "id": "v3.14", "status": "stable", "updated": "2020-04-07T00:00:00Z",
        "links": [{"rel": "self", "href": format!("{base}/v3/")}],
        "media-types": [{"base": "application/json", "type": "application/vnd.openstack.identity-v3+json"}],
    })
}

pub async fn versions(State(app): S) -> Response {
    let mut r = (
        StatusCode::MULTIPLE_CHOICES,
        axum::Json(json!({"versions": {"values": [v3_doc(&app.base)]}})),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("{}/v3/", app.base)) {
        r.headers_mut().insert(http::header::LOCATION, v);
    }
    r
}

pub async fn version(State(app): S) -> Response {
    axum::Json(json!({"version": v3_doc(&app.base)})).into_response()
}

fn unauthorized() -> IdentityError {
    IdentityError::Unauthorized
}

fn obj<'a>(m: &'a Map<String, Value>, key: &str, path: &str) -> Result<&'a Map<String, Value>> {
    match m.get(key) {
        Some(Value::Object(o)) => Ok(o),
        Some(_) => Err(IdentityError::Validation(format!(
            "Invalid input for field '{path}': not of type 'object'"
        ))),
        None => Err(IdentityError::Validation(format!(
            "'{key}' is a required property"
        ))),
    }
}

/// A domain named by `{"id"}` or `{"name"}`.
async fn resolve_domain(app: &App, d: &Map<String, Value>) -> Result<Option<DomainRow>> {
    if let Some(id) = validate::opt_str(d, "id", 64)? {
        return store::domain_get(&app.id.db, &id).await;
    }
    if let Some(name) = validate::opt_str(d, "name", 255)? {
        return store::domain_get_by_name(&app.id.db, &name).await;
    }
    Err(IdentityError::Validation(
        "Expecting to find id or name in domain".into(),
    ))
}

async fn password_method(app: &App, identity: &Map<String, Value>) -> Result<String> {
    let pw = obj(identity, "password", "identity/password")?;
    let user = obj(pw, "user", "identity/password/user")?;
    let password = match user.get("password") {
        Some(Value::String(s)) => s.clone(),
        Some(_) => {
            return Err(IdentityError::Validation(
                "Invalid input for field 'identity/password/user/password': not of type 'string'".into(),
            ))
        }
        None => {
            return Err(IdentityError::Validation(
                "'password' is a required property".into(),
            ))
        }
    };
    let row = if let Some(id) = validate::opt_str(user, "id", 64)? {
        store::user_get(&app.id.db, &id).await?
    } else if let Some(name) = validate::opt_str(user, "name", 255)? {
        let dom = obj(user, "domain", "identity/password/user/domain")?;
        match resolve_domain(app, dom).await? {
            Some(d) => store::user_get_by_name(&app.id.db, &d.id, &name).await?,
            None => None,
        }
    } else {
        return Err(IdentityError::Validation(
            "Expecting to find id or name in user".into(),
        ));
    };
    let row = row.filter(|u| u.enabled).ok_or_else(unauthorized)?;
    let stored = row.password_hash.clone().ok_or_else(unauthorized)?;
    if !hash::verify(password, stored).await {
        tracing::info!(user_id = %row.id, "authentication failed: wrong password");
        return Err(unauthorized());
    }
    Ok(row.id)
}

async fn app_cred_method(app: &App, identity: &Map<String, Value>) -> Result<AppCredRow> {
    let ac = obj(
        identity,
        "application_credential",
        "identity/application_credential",
    )?;
    let secret = validate::req_str(ac, "secret", 4096)?;
    let row = if let Some(id) = validate::opt_str(ac, "id", 64)? {
        store::app_cred_get(&app.id.db, &id).await?
    } else if let Some(name) = validate::opt_str(ac, "name", 255)? {
        let user = obj(ac, "user", "identity/application_credential/user")?;
        let uid = if let Some(id) = validate::opt_str(user, "id", 64)? {
            Some(id)
        } else if let Some(uname) = validate::opt_str(user, "name", 255)? {
            let dom = obj(user, "domain", "identity/application_credential/user/domain")?;
            match resolve_domain(app, dom).await? {
                Some(d) => store::user_get_by_name(&app.id.db, &d.id, &uname)
                    .await?
                    .map(|u| u.id),
                None => None,
            }
        } else {
            return Err(IdentityError::Validation(
                "Expecting to find id or name in user".into(),
            ));
        };
        match uid {
            Some(uid) => store::app_cred_list(&app.id.db, &uid, Some(&name))
                .await?
                .into_iter()
                .next(),
            None => None,
        }
    } else {
        return Err(IdentityError::Validation(
            "Expecting to find id or name in application_credential".into(),
        ));
    };
    let row = row.ok_or_else(unauthorized)?;
    if row.expires_at.is_some_and(|e| e <= now_epoch_micros()) {
        return Err(unauthorized());
    }
    if !hash::verify(secret, row.secret_hash.clone()).await {
        return Err(unauthorized());
    }
    Ok(row)
}

enum ReqScope {
    Default,
    Unscoped,
    Project(ProjectRow),
    Domain(DomainRow),
    System,
}

async fn parse_scope(app: &App, auth: &Map<String, Value>) -> Result<ReqScope> {
    let scope = match auth.get("scope") {
        None | Some(Value::Null) => return Ok(ReqScope::Default),
        Some(Value::String(s)) if s == "unscoped" => return Ok(ReqScope::Unscoped),
        Some(Value::Object(o)) => o,
        Some(_) => {
            return Err(IdentityError::Validation(
                "Invalid input for field 'scope': not of type 'object'".into(),
            ))
        }
    };
    if scope.len() != 1 {
        return Err(IdentityError::Validation(
            "Invalid input for field 'scope': exactly one of project, domain or system is allowed".into(),
        ));
    }
    if let Some(Value::Object(p)) = scope.get("project") {
        let row = if let Some(id) = validate::opt_str(p, "id", 64)? {
            store::project_get(&app.id.db, &id).await?
        } else if let Some(name) = validate::opt_str(p, "name", 255)? {
            let dom = obj(p, "domain", "scope/project/domain")?;
            match resolve_domain(app, dom).await? {
                Some(d) => store::project_get_by_name(&app.id.db, &d.id, &name).await?,
                None => None,
            }
        } else {
            return Err(IdentityError::Validation(
                "Expecting to find id or name in project".into(),
            ));
        };
        let p = row
            .filter(|p| p.enabled)
            .ok_or_else(|| IdentityError::UnauthorizedWith("Project not found or disabled.".into()))?;
        return Ok(ReqScope::Project(p));
    }
    if let Some(Value::Object(d)) = scope.get("domain") {
        let d = resolve_domain(app, d)
            .await?
            .filter(|d| d.enabled)
            .ok_or_else(|| IdentityError::UnauthorizedWith("Domain not found or disabled.".into()))?;
        return Ok(ReqScope::Domain(d));
    }
    if let Some(Value::Object(s)) = scope.get("system") {
        if s.get("all") == Some(&Value::Bool(true)) {
            return Ok(ReqScope::System);
        }
        return Err(IdentityError::Validation(
            "Invalid input for field 'scope/system': expected {\"all\": true}".into(),
        ));
    }
    Err(IdentityError::Validation(
        "Invalid input for field 'scope': expected project, domain or system".into(),
    ))
}

/// `POST /v3/auth/tokens`.
pub async fn issue(
    State(app): S,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    let v = body_json(&headers, &body)?;
    let auth = validate::entity(&v, "auth")?;
    let identity = obj(auth, "identity", "auth/identity")?;
    let methods: Vec<String> = match identity.get("methods") {
        Some(Value::Array(a)) if !a.is_empty() => a
            .iter()
            .map(|m| m.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| {
                IdentityError::Validation(
                    "Invalid input for field 'identity/methods': items must be strings".into(),
                )
            })?,
        Some(_) => {
            return Err(IdentityError::Validation(
                "Invalid input for field 'identity/methods': a non-empty array is required".into(),
            ))
        }
        None => {
            return Err(IdentityError::Validation(
                "'methods' is a required property".into(),
            ))
        }
    };
    for m in &methods {
        let supported = ["password", "token", "application_credential"].contains(&m.as_str());
        if !supported || !app.id.settings.methods.contains(m) {
            return Err(IdentityError::UnauthorizedWith(
                "Attempted to authenticate with an unsupported method.".into(),
            ));
        }
        if !identity.contains_key(m) {
            return Err(IdentityError::Validation(format!("'{m}' is a required property")));
        }
    }
    let mut user_id: Option<String> = None;
    let mut mask = 0u8;
    let mut from_token: Option<Arc<TokenModel>> = None;
    let mut app_cred: Option<AppCredRow> = None;
    let mut set_user = |uid: String| -> Result<()> {
        match &user_id {
            Some(u) if *u != uid => Err(unauthorized()),
            _ => {
                user_id = Some(uid);
                Ok(())
            }
        }
    };
    for m in &methods {
        match m.as_str() {
            "password" => {
                set_user(password_method(&app, identity).await?)?;
                mask |= METHOD_PASSWORD;
            }
            "token" => {
                let t = obj(identity, "token", "identity/token")?;
                let tid = validate::req_str(t, "id", 4096)?;
                let model = app.id.validate_token(&tid, false).await.map_err(|e| match e {
                    IdentityError::Db(_) => e,
                    _ => unauthorized(),
                })?;
                set_user(model.user_id.clone())?;
                mask |= METHOD_TOKEN | model.payload.2;
                from_token = Some(model);
            }
            _ => {
                let ac = app_cred_method(&app, identity).await?;
                set_user(ac.user_id.clone())?;
                mask |= METHOD_APP_CRED;
                app_cred = Some(ac);
            }
        }
    }
    let user_id = user_id.ok_or_else(unauthorized)?;
    let mut scope = parse_scope(&app, auth).await?;
    if let Some(orig) = &from_token {
        if orig.app_cred.is_some() {
            // A token from an application credential keeps its credential's scope.
            if !matches!(scope, ReqScope::Default) {
                return Err(IdentityError::ForbiddenNotSecret(
                    "Application credential tokens cannot be rescoped.".into(),
                ));
            }
        } else if !matches!(orig.scope, tessera_types::Scope::Unscoped)
            && !app.id.settings.allow_rescope
            && !matches!(scope, ReqScope::Default)
        {
            return Err(IdentityError::ForbiddenNotSecret(
                "Rescoping scoped token is not allowed.".into(),
            ));
        }
    }
    let mut payload;
    if let Some(ac) = &app_cred {
        if !matches!(scope, ReqScope::Default) {
            return Err(IdentityError::UnauthorizedWith(
                "Application credentials cannot request a scope.".into(),
            ));
        }
        payload = app
            .id
            .new_payload(SCOPE_APP_CRED, &user_id, mask, Some(ac.project_id.clone()));
        payload.6 = Some(ac.id.clone());
    } else if let Some(orig) = from_token.as_ref().filter(|o| o.app_cred.is_some()) {
        payload = orig.payload.clone();
        payload.5 = vec![
            fernet::new_audit_id(),
            orig.audit_ids().last().cloned().unwrap_or_default(),
        ];
        payload.2 = mask;
        payload.7 = now_epoch_micros();
    } else {
        if matches!(scope, ReqScope::Default) {
            if let Some(orig) = &from_token {
                // Re-issuing a token without naming a scope keeps the original scope.
                scope = match &orig.scope {
                    tessera_types::Scope::Unscoped => ReqScope::Unscoped,
                    tessera_types::Scope::System => ReqScope::System,
                    tessera_types::Scope::Domain { id, .. } => ReqScope::Domain(
                        store::domain_get(&app.id.db, id)
                            .await?
                            .ok_or_else(unauthorized)?,
                    ),
                    tessera_types::Scope::Project { id, .. } => ReqScope::Project(
                        store::project_get(&app.id.db, id)
                            .await?
                            .ok_or_else(unauthorized)?,
                    ),
                };
            } else {
                scope = default_scope(&app, &user_id).await?;
            }
        }
        let (kind, target) = match &scope {
            ReqScope::Default | ReqScope::Unscoped => (SCOPE_UNSCOPED, None),
            ReqScope::Project(p) => (SCOPE_PROJECT, Some(p.id.clone())),
            ReqScope::Domain(d) => (SCOPE_DOMAIN, Some(d.id.clone())),
            ReqScope::System => (SCOPE_SYSTEM, None),
        };
        payload = app.id.new_payload(kind, &user_id, mask, target);
        if let Some(orig) = &from_token {
            payload.4 = orig.expires_at();
            payload
                .5
                .push(orig.audit_ids().last().cloned().unwrap_or_default());
        }
    }
    let (token, model) = app.id.mint(payload).await.map_err(|e| match e {
        IdentityError::TokenNotFound => IdentityError::UnauthorizedWith(match &scope {
            ReqScope::Project(p) => format!("User {user_id} has no access to project {}", p.id),
            ReqScope::Domain(d) => format!("User {user_id} has no access to domain {}", d.id),
            ReqScope::System => format!("User {user_id} has no access to the system"),
            _ => "The request you have made requires authentication.".to_string(),
        }),
        other => other,
    })?;
    tracing::info!(user_id = %model.user_id, audit_id = %model.audit_ids()[0], "issued token");
    let mut r = (
        StatusCode::CREATED,
        axum::Json(model.to_json(q.contains_key("nocatalog"))),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&token) {
        r.headers_mut().insert("x-subject-token", v);
    }
    Ok(r)
}

/// Without a scope: the user's default project if the user has a role there, otherwise unscoped.
async fn default_scope(app: &App, user_id: &str) -> Result<ReqScope> {
    let Some(u) = store::user_get(&app.id.db, user_id).await? else {
        return Ok(ReqScope::Unscoped);
    };
    let Some(pid) = u.default_project_id else {
        return Ok(ReqScope::Unscoped);
    };
    let Some(p) = store::project_get(&app.id.db, &pid).await?.filter(|p| p.enabled) else {
        return Ok(ReqScope::Unscoped);
    };
    let roles = app
        .id
        .effective_role_ids(user_id, crate::token::RoleTarget::Project(&p))
        .await?;
    Ok(if roles.is_empty() {
        ReqScope::Unscoped
    } else {
        ReqScope::Project(p)
    })
}

/// The subject token of a validate/check/revoke call, with Keystone's policy applied.
async fn subject(
    app: &App,
    ctx: &RequestContext,
    headers: &HeaderMap,
    allow_expired: bool,
    action: &str,
) -> Result<(String, Arc<TokenModel>)> {
    let token = headers
        .get("x-subject-token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .ok_or_else(|| IdentityError::Validation("X-Subject-Token header is required".into()))?;
    let model = app.id.validate_token(&token, allow_expired).await?;
    let privileged = policy::admin(ctx) || ctx.has_role("service") || policy::system_reader(ctx);
    if !privileged && model.user_id != ctx.user_id {
        return Err(IdentityError::forbidden(action));
    }
    Ok((token, model))
}

fn allow_expired(q: &HashMap<String, String>) -> bool {
    q.get("allow_expired")
        .is_some_and(|v| validate::query_bool(v) == Some(true))
}

pub async fn validate(
    State(app): S,
    Caller(ctx): Caller,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response> {
    let (token, model) = subject(&app, &ctx, &headers, allow_expired(&q), "validate_token").await?;
    let mut r = axum::Json(model.to_json(q.contains_key("nocatalog"))).into_response();
    if let Ok(v) = HeaderValue::from_str(&token) {
        r.headers_mut().insert("x-subject-token", v);
    }
    Ok(r)
}

pub async fn check(
    State(app): S,
    Caller(ctx): Caller,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response> {
    let (token, _) = subject(&app, &ctx, &headers, allow_expired(&q), "check_token").await?;
    let mut r = StatusCode::OK.into_response();
    if let Ok(v) = HeaderValue::from_str(&token) {
        r.headers_mut().insert("x-subject-token", v);
    }
    Ok(r)
}

pub async fn revoke(State(app): S, Caller(ctx): Caller, headers: HeaderMap) -> Result<Response> {
    let (_, model) = subject(&app, &ctx, &headers, false, "revoke_token").await?;
    app.id.revoke_token(&model).await?;
    tracing::info!(audit_id = %model.audit_ids()[0], "revoked token");
    super::no_content()
}

pub async fn auth_catalog(State(app): S, Caller(ctx): Caller) -> Result<Response> {
    if matches!(ctx.scope, tessera_types::Scope::Unscoped) {
        return Err(IdentityError::ForbiddenNotSecret(
            "A scoped token is required to read the catalog.".into(),
        ));
    }
    let catalog = app.id.catalog(ctx.project_id()).await?;
    ok(
        json!({"catalog": catalog, "links": {"self": format!("{}/v3/auth/catalog", app.base), "previous": null, "next": null}}),
    )
}

/// Project ids the user has an effective role on (direct, through groups, or inherited from a domain).
pub(crate) async fn projects_of_user(app: &App, user_id: &str) -> Result<Vec<ProjectRow>> {
    let mut actors = vec![user_id.to_string()];
    actors.extend(store::user_group_ids(&app.id.db, user_id).await?);
    let rows = store::assignment_list(&app.id.db, Some(&actors), None).await?;
    let mut ids: BTreeSet<String> = BTreeSet::new();
    let mut domains: BTreeSet<String> = BTreeSet::new();
    for a in rows {
        if a.kind.ends_with("Project") {
            ids.insert(a.target_id);
        } else if a.kind.ends_with("Domain") && a.inherited {
            domains.insert(a.target_id);
        }
    }
    let f = store::ProjectFilter {
        ids: Some(ids.into_iter().collect()),
        ..Default::default()
    };
    let mut out = store::project_list(&app.id.db, &f).await?;
    for d in domains {
        let f = store::ProjectFilter {
            domain_id: Some(d),
            ..Default::default()
        };
        for p in store::project_list(&app.id.db, &f).await? {
            if !out.iter().any(|x| x.id == p.id) {
                out.push(p);
            }
        }
    }
    Ok(out)
}

pub async fn auth_projects(State(app): S, Caller(ctx): Caller) -> Result<Response> {
    let mut items = Vec::new();
    for p in projects_of_user(&app, &ctx.user_id)
        .await?
        .into_iter()
        .filter(|p| p.enabled)
    {
        if store::domain_get(&app.id.db, &p.domain_id)
            .await?
            .is_some_and(|d| d.enabled)
        {
            items.push(super::resources::project_json(&app.base, &p));
        }
    }
    collection(&app, "projects", "auth/projects", items)
}

pub async fn auth_domains(State(app): S, Caller(ctx): Caller) -> Result<Response> {
    let mut actors = vec![ctx.user_id.clone()];
    actors.extend(store::user_group_ids(&app.id.db, &ctx.user_id).await?);
    let rows = store::assignment_list(&app.id.db, Some(&actors), None).await?;
    let ids: BTreeSet<String> = rows
        .into_iter()
        .filter(|a| a.kind.ends_with("Domain"))
        .map(|a| a.target_id)
        .collect();
    let mut items = Vec::new();
    for id in ids {
        if let Some(d) = store::domain_get(&app.id.db, &id).await?.filter(|d| d.enabled) {
            items.push(super::resources::domain_json(&app.base, &d));
        }
    }
    collection(&app, "domains", "auth/domains", items)
}

pub async fn auth_system(State(app): S, Caller(ctx): Caller) -> Result<Response> {
    let roles = app
        .id
        .effective_role_ids(&ctx.user_id, crate::token::RoleTarget::System)
        .await?;
    let system = if roles.is_empty() {
        json!([])
    } else {
        json!([{"all": true}])
    };
    ok(
        json!({"system": system, "links": {"self": format!("{}/v3/auth/system", app.base), "previous": null, "next": null}}),
    )
}

//! Roles, implied roles, grants (project, domain and system; users and groups) and role assignments.

use super::{body_json, collection, created, no_content, ok, App, S};
use crate::error::{IdentityError, Result};
use crate::store::{self, AssignmentRow, RoleRow};
use crate::{policy, validate};
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::{MatchedPath, Path, Query};
use axum::response::Response;
use http::HeaderMap;
use serde_json::{json, Map, Value};
use std::collections::{BTreeSet, HashMap};
use tessera_http::auth::Caller;
use tessera_types::new_hex_id;

type Q = Query<HashMap<String, String>>;

fn role_json(base: &str, r: &RoleRow) -> Value {
    json!({"id": r.id, "name": r.name, "domain_id": r.domain_id, "description": r.description,
           "options": r.options, "links": {"self": format!("{base}/v3/roles/{}", r.id)}})
}

fn role_ref(base: &str, r: &RoleRow) -> Value {
    json!({"id": r.id, "name": r.name, "links": {"self": format!("{base}/v3/roles/{}", r.id)}})
}

async fn role_or_404(app: &App, id: &str) -> Result<RoleRow> {
    store::role_get(&app.id.db, id)
        .await?
        .ok_or_else(|| IdentityError::not_found("role", id))
}

const ROLE_KNOWN: &[&str] = &["id", "name", "domain_id", "description", "options", "links"];

pub async fn list_roles(State(app): S, Caller(ctx): Caller, Query(q): Q) -> Result<Response> {
    policy::require_reader_of_domain(&ctx, ctx.domain_id(), "list_roles")?;
    let rows = store::role_list(
        &app.id.db,
        q.get("name").map(String::as_str),
        q.get("domain_id").map(String::as_str),
    )
    .await?;
    collection(
        &app,
        "roles",
        "roles",
        rows.iter().map(|r| role_json(&app.base, r)).collect(),
    )
}

pub async fn get_role(State(app): S, Caller(ctx): Caller, Path(id): Path<String>) -> Result<Response> {
    policy::require_reader_of_domain(&ctx, ctx.domain_id(), "get_role")?;
    let r = role_or_404(&app, &id).await?;
    ok(json!({"role": role_json(&app.base, &r)}))
}

fn options(m: &Map<String, Value>) -> Result<Map<String, Value>> {
    match m.get("options") {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(o)) => {
            for (k, v) in o {
                if k != "immutable" || !(v.is_boolean() || v.is_null()) {
                    return Err(IdentityError::Validation(format!(
                        "Invalid input for field 'options': unsupported option '{k}'"
                    )));
                }
            }
            Ok(o.clone())
        }
        Some(_) => Err(IdentityError::Validation(
            "Invalid input for field 'options': not of type 'object'".into(),
        )),
    }
}

pub async fn create_role(
    State(app): S,
    Caller(ctx): Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    policy::require_admin(&ctx, "create_role")?;
    let v = body_json(&headers, &body)?;
    let m = validate::entity(&v, "role")?;
    let r = RoleRow {
        id: new_hex_id(),
        name: validate::req_str(m, "name", 255)?,
        domain_id: validate::opt_str(m, "domain_id", 64)?,
        description: validate::opt_text(m, "description")?.flatten(),
        options: options(m)?,
    };
    let _ = validate::extras(m, ROLE_KNOWN);
    if let Some(d) = &r.domain_id {
        store::domain_get(&app.id.db, d)
            .await?
            .ok_or_else(|| IdentityError::not_found("domain", d))?;
    }
    store::role_put(&app.id.db, &r, true).await?;
    app.id.changed();
    created(json!({"role": role_json(&app.base, &r)}))
}

fn immutable(r: &RoleRow) -> bool {
    r.options.get("immutable") == Some(&Value::Bool(true))
}

pub async fn update_role(
    State(app): S,
    Caller(ctx): Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    policy::require_admin(&ctx, "update_role")?;
    let v = body_json(&headers, &body)?;
    let m = validate::entity(&v, "role")?;
    validate::no_readonly(m, &["id", "domain_id"])?;
    let mut r = role_or_404(&app, &id).await?;
    let new_opts = if m.contains_key("options") {
        Some(options(m)?)
    } else {
        None
    };
    let unlocking = new_opts
        .as_ref()
        .is_some_and(|o| o.get("immutable") != Some(&Value::Bool(true)));
    if immutable(&r) && !(unlocking && m.len() == 1) {
        return Err(IdentityError::ForbiddenNotSecret(format!(
            "Role {id} is immutable; set options.immutable to false first."
        )));
    }
    if let Some(n) = validate::opt_str(m, "name", 255)? {
        r.name = n;
    }
    if let Some(d) = validate::opt_text(m, "description")? {
        r.description = d;
    }
    if let Some(o) = new_opts {
        r.options = o;
    }
    store::role_put(&app.id.db, &r, false).await?;
    app.id.changed();
    ok(json!({"role": role_json(&app.base, &r)}))
}

pub async fn delete_role(State(app): S, Caller(ctx): Caller, Path(id): Path<String>) -> Result<Response> {
    policy::require_admin(&ctx, "delete_role")?;
    let r = role_or_404(&app, &id).await?;
    if immutable(&r) {
        return Err(IdentityError::ForbiddenNotSecret(format!(
            "Role {id} is immutable and cannot be deleted."
        )));
    }
    store::role_delete(&app.id.db, &id).await?;
    app.id.changed();
    no_content()
}

// ---------------------------------------------------------------- implied roles

pub async fn list_implied(State(app): S, Caller(ctx): Caller, Path(prior): Path<String>) -> Result<Response> {
    policy::require_admin_or_system_reader(&ctx, "list_implied_roles")?;
    let p = role_or_404(&app, &prior).await?;
    let mut implies = Vec::new();
    for (a, b) in store::implied_all(&app.id.db).await? {
        if a == prior {
            if let Some(r) = store::role_get(&app.id.db, &b).await? {
                implies.push(role_ref(&app.base, &r));
            }
        }
    }
    ok(
        json!({"role_inference": {"prior_role": role_ref(&app.base, &p), "implies": implies},
              "links": {"self": format!("{}/v3/roles/{prior}/implies", app.base)}}),
    )
}

async fn inference_body(app: &App, prior: &str, implied: &str) -> Result<Value> {
    let p = role_or_404(app, prior).await?;
    let i = role_or_404(app, implied).await?;
    Ok(
        json!({"role_inference": {"prior_role": role_ref(&app.base, &p), "implies": role_ref(&app.base, &i)},
              "links": {"self": format!("{}/v3/roles/{prior}/implies/{implied}", app.base)}}),
    )
}

pub async fn create_implied(
    State(app): S,
    Caller(ctx): Caller,
    Path((prior, implied)): Path<(String, String)>,
) -> Result<Response> {
    policy::require_admin(&ctx, "create_implied_role")?;
    let body = inference_body(&app, &prior, &implied).await?;
    if prior == implied {
        return Err(IdentityError::Validation("A role cannot imply itself.".into()));
    }
    store::implied_set(&app.id.db, &prior, &implied, true).await?;
    app.id.changed();
    created(body)
}

async fn implied_exists(app: &App, prior: &str, implied: &str) -> Result<()> {
    if store::implied_all(&app.id.db)
        .await?
        .iter()
        .any(|(a, b)| a == prior && b == implied)
    {
        Ok(())
    } else {
        Err(IdentityError::NotFound {
            kind: "implied role",
            id: format!("{prior} implies {implied}"),
        })
    }
}

pub async fn get_implied(
    State(app): S,
    Caller(ctx): Caller,
    Path((prior, implied)): Path<(String, String)>,
) -> Result<Response> {
    policy::require_admin_or_system_reader(&ctx, "get_implied_role")?;
    let body = inference_body(&app, &prior, &implied).await?;
    implied_exists(&app, &prior, &implied).await?;
    ok(body)
}

pub async fn check_implied(
    State(app): S,
    Caller(ctx): Caller,
    Path((prior, implied)): Path<(String, String)>,
) -> Result<Response> {
    policy::require_admin_or_system_reader(&ctx, "check_implied_role")?;
    implied_exists(&app, &prior, &implied).await?;
    no_content()
}

pub async fn delete_implied(
    State(app): S,
    Caller(ctx): Caller,
    Path((prior, implied)): Path<(String, String)>,
) -> Result<Response> {
    policy::require_admin(&ctx, "delete_implied_role")?;
    implied_exists(&app, &prior, &implied).await?;
    store::implied_set(&app.id.db, &prior, &implied, false).await?;
    app.id.changed();
    no_content()
}

pub async fn role_inferences(State(app): S, Caller(ctx): Caller) -> Result<Response> {
    policy::require_admin_or_system_reader(&ctx, "list_role_inference_rules")?;
    let roles: HashMap<String, RoleRow> = store::role_all(&app.id.db)
        .await?
        .into_iter()
        .map(|r| (r.id.clone(), r))
        .collect();
    let mut by_prior: std::collections::BTreeMap<String, Vec<Value>> = Default::default();
    for (a, b) in store::implied_all(&app.id.db).await? {
        if let Some(r) = roles.get(&b) {
            by_prior.entry(a).or_default().push(role_ref(&app.base, r));
        }
    }
    let items: Vec<Value> = by_prior
        .into_iter()
        .filter_map(|(p, implies)| {
            roles
                .get(&p)
                .map(|r| json!({"prior_role": role_ref(&app.base, r), "implies": implies}))
        })
        .collect();
    ok(json!({"role_inferences": items, "links": {"self": format!("{}/v3/role_inferences", app.base)}}))
}

// ---------------------------------------------------------------- grants

/// Which kind of grant a matched route is about.
struct GrantKind {
    target_is_project: bool,
    actor_is_user: bool,
}

fn grant_kind(path: &MatchedPath) -> GrantKind {
    let p = path.as_str();
    GrantKind {
        target_is_project: p.starts_with("/v3/projects/"),
        actor_is_user: p.contains("/users/"),
    }
}

fn assignment_type(target: &str, user: bool) -> String {
    format!("{}{}", if user { "User" } else { "Group" }, target)
}

async fn check_actor(app: &App, user: bool, actor: &str) -> Result<()> {
    if user {
        store::user_get(&app.id.db, actor)
            .await?
            .ok_or_else(|| IdentityError::not_found("user", actor))?;
    } else {
        store::group_get(&app.id.db, actor)
            .await?
            .ok_or_else(|| IdentityError::not_found("group", actor))?;
    }
    Ok(())
}

async fn grant_row(app: &App, k: &GrantKind, target: &str, actor: &str, role: &str) -> Result<AssignmentRow> {
    if k.target_is_project {
        store::project_get(&app.id.db, target)
            .await?
            .ok_or_else(|| IdentityError::not_found("project", target))?;
    } else {
        store::domain_get(&app.id.db, target)
            .await?
            .ok_or_else(|| IdentityError::not_found("domain", target))?;
    }
    check_actor(app, k.actor_is_user, actor).await?;
    role_or_404(app, role).await?;
    Ok(AssignmentRow {
        kind: assignment_type(
            if k.target_is_project { "Project" } else { "Domain" },
            k.actor_is_user,
        ),
        actor_id: actor.to_string(),
        target_id: target.to_string(),
        role_id: role.to_string(),
        inherited: false,
    })
}

type GrantPath = Path<(String, String, String)>;

pub async fn grant(
    State(app): S,
    Caller(ctx): Caller,
    mp: MatchedPath,
    Path((t, a, r)): GrantPath,
) -> Result<Response> {
    policy::require_admin(&ctx, "create_grant")?;
    let row = grant_row(&app, &grant_kind(&mp), &t, &a, &r).await?;
    store::assignment_set(&app.id.db, &row, true).await?;
    app.id.changed();
    no_content()
}

async fn grant_exists(app: &App, row: &AssignmentRow) -> Result<()> {
    let rows = store::assignment_list(
        &app.id.db,
        Some(std::slice::from_ref(&row.actor_id)),
        Some(std::slice::from_ref(&row.target_id)),
    )
    .await?;
    if rows.contains(row) {
        Ok(())
    } else {
        Err(IdentityError::NotFound {
            kind: "role assignment",
            id: format!("role {} for {} on {}", row.role_id, row.actor_id, row.target_id),
        })
    }
}

pub async fn check_grant(
    State(app): S,
    Caller(ctx): Caller,
    mp: MatchedPath,
    Path((t, a, r)): GrantPath,
) -> Result<Response> {
    policy::require_admin_or_system_reader(&ctx, "check_grant")?;
    let row = grant_row(&app, &grant_kind(&mp), &t, &a, &r).await?;
    grant_exists(&app, &row).await?;
    no_content()
}

pub async fn revoke_grant(
    State(app): S,
    Caller(ctx): Caller,
    mp: MatchedPath,
    Path((t, a, r)): GrantPath,
) -> Result<Response> {
    policy::require_admin(&ctx, "revoke_grant")?;
    let row = grant_row(&app, &grant_kind(&mp), &t, &a, &r).await?;
    grant_exists(&app, &row).await?;
    store::assignment_set(&app.id.db, &row, false).await?;
    app.id.changed();
    no_content()
}

async fn list_roles_of(app: &App, kind: String, target: &str, actor: &str) -> Result<Vec<Value>> {
    let rows = store::assignment_list(
        &app.id.db,
        Some(&[actor.to_string()]),
        Some(&[target.to_string()]),
    )
    .await?;
    let mut out = Vec::new();
    for a in rows.into_iter().filter(|a| a.kind == kind && !a.inherited) {
        if let Some(r) = store::role_get(&app.id.db, &a.role_id).await? {
            out.push(role_json(&app.base, &r));
        }
    }
    Ok(out)
}

pub async fn list_grants(
    State(app): S,
    Caller(ctx): Caller,
    mp: MatchedPath,
    Path((t, a)): Path<(String, String)>,
) -> Result<Response> {
    policy::require_admin_or_system_reader(&ctx, "list_grants")?;
    let k = grant_kind(&mp);
    if k.target_is_project {
        store::project_get(&app.id.db, &t)
            .await?
            .ok_or_else(|| IdentityError::not_found("project", &t))?;
    } else {
        store::domain_get(&app.id.db, &t)
            .await?
            .ok_or_else(|| IdentityError::not_found("domain", &t))?;
    }
    check_actor(&app, k.actor_is_user, &a).await?;
    let items = list_roles_of(
        &app,
        assignment_type(
            if k.target_is_project { "Project" } else { "Domain" },
            k.actor_is_user,
        ),
        &t,
        &a,
    )
    .await?;
    collection(&app, "roles", mp.as_str().trim_start_matches("/v3/"), items)
}

async fn system_row(app: &App, mp: &MatchedPath, actor: &str, role: &str) -> Result<AssignmentRow> {
    let user = mp.as_str().starts_with("/v3/system/users/");
    check_actor(app, user, actor).await?;
    role_or_404(app, role).await?;
    Ok(AssignmentRow {
        kind: assignment_type("System", user),
        actor_id: actor.to_string(),
        target_id: "system".into(),
        role_id: role.to_string(),
        inherited: false,
    })
}

pub async fn system_grant(
    State(app): S,
    Caller(ctx): Caller,
    mp: MatchedPath,
    Path((a, r)): Path<(String, String)>,
) -> Result<Response> {
    policy::require_admin(&ctx, "create_system_grant")?;
    let row = system_row(&app, &mp, &a, &r).await?;
    store::assignment_set(&app.id.db, &row, true).await?;
    app.id.changed();
    no_content()
}

pub async fn system_check(
    State(app): S,
    Caller(ctx): Caller,
    mp: MatchedPath,
    Path((a, r)): Path<(String, String)>,
) -> Result<Response> {
    policy::require_admin_or_system_reader(&ctx, "check_system_grant")?;
    let row = system_row(&app, &mp, &a, &r).await?;
    grant_exists(&app, &row).await?;
    no_content()
}

pub async fn system_revoke(
    State(app): S,
    Caller(ctx): Caller,
    mp: MatchedPath,
    Path((a, r)): Path<(String, String)>,
) -> Result<Response> {
    policy::require_admin(&ctx, "revoke_system_grant")?;
    let row = system_row(&app, &mp, &a, &r).await?;
    grant_exists(&app, &row).await?;
    store::assignment_set(&app.id.db, &row, false).await?;
    app.id.changed();
    no_content()
}

pub async fn list_system_grants(
    State(app): S,
    Caller(ctx): Caller,
    mp: MatchedPath,
    Path(a): Path<String>,
) -> Result<Response> {
    policy::require_admin_or_system_reader(&ctx, "list_system_grants")?;
    let user = mp.as_str().starts_with("/v3/system/users/");
    check_actor(&app, user, &a).await?;
    let items = list_roles_of(&app, assignment_type("System", user), "system", &a).await?;
    collection(&app, "roles", mp.as_str().trim_start_matches("/v3/"), items)
}

// ---------------------------------------------------------------- role assignments

/// One assignment as listed: who, what role, where; `via` is set for effective entries that came through a
/// group, an inherited domain grant or an implied role.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Listed {
    user: bool,
    actor: String,
    role: String,
    /// "project", "domain" or "system"
    scope_kind: &'static str,
    target: String,
    inherited: bool,
}

pub async fn list_assignments(State(app): S, Caller(ctx): Caller, Query(q): Q) -> Result<Response> {
    policy::require_reader_of_domain(&ctx, ctx.domain_id(), "list_role_assignments")?;
    let truthy = |k: &str| q.get(k).is_some_and(|v| validate::query_bool(v) == Some(true));
    let effective = q.contains_key("effective")
        && q.get("effective")
            .is_none_or(|v| validate::query_bool(v) != Some(false));
    let names = truthy("include_names");
    let f_user = q.get("user.id");
    let f_group = q.get("group.id");
    let f_role = q.get("role.id");
    let f_project = q.get("scope.project.id");
    let f_domain = q.get("scope.domain.id");
    let f_system = q.get("scope.system");
    if effective && f_group.is_some() {
        return Err(IdentityError::Validation(
            "Combining effective and group filter will always result in an empty list.".into(),
        ));
    }
    let mut listed: BTreeSet<Listed> = BTreeSet::new();
    for a in store::assignment_list(&app.id.db, None, None).await? {
        let user = a.kind.starts_with("User");
        let scope_kind = if a.kind.ends_with("Project") {
            "project"
        } else if a.kind.ends_with("Domain") {
            "domain"
        } else {
            "system"
        };
        listed.insert(Listed {
            user,
            actor: a.actor_id,
            role: a.role_id,
            scope_kind,
            target: a.target_id,
            inherited: a.inherited,
        });
    }
    if effective {
        // Groups expand to their members; inherited domain grants to the domain's projects; implied roles are added.
        let mut out = BTreeSet::new();
        let implied = store::implied_all(&app.id.db).await?;
        for l in listed {
            let actors = if l.user {
                vec![l.actor.clone()]
            } else {
                store::user_list(&app.id.db, None, None, None, Some(&l.actor))
                    .await?
                    .into_iter()
                    .map(|u| u.id)
                    .collect()
            };
            let targets: Vec<(&'static str, String)> = if l.inherited && l.scope_kind == "domain" {
                let f = store::ProjectFilter {
                    domain_id: Some(l.target.clone()),
                    ..Default::default()
                };
                store::project_list(&app.id.db, &f)
                    .await?
                    .into_iter()
                    .map(|p| ("project", p.id))
                    .collect()
            } else if l.inherited {
                Vec::new()
            } else {
                vec![(l.scope_kind, l.target.clone())]
            };
            let roles = crate::token::close_over_implied(&implied, BTreeSet::from([l.role.clone()]));
            for actor in &actors {
                for (sk, t) in &targets {
                    for r in &roles {
                        out.insert(Listed {
                            user: true,
                            actor: actor.clone(),
                            role: r.clone(),
                            scope_kind: sk,
                            target: t.clone(),
                            inherited: false,
                        });
                    }
                }
            }
        }
        listed = out;
    }
    let keep = |l: &Listed| {
        f_user.is_none_or(|u| l.user && l.actor == *u)
            && f_group.is_none_or(|g| !l.user && l.actor == *g)
            && f_role.is_none_or(|r| l.role == *r)
            && f_project.is_none_or(|p| l.scope_kind == "project" && l.target == *p)
            && f_domain.is_none_or(|d| l.scope_kind == "domain" && l.target == *d)
            && f_system.is_none_or(|_| l.scope_kind == "system")
    };
    let domain_reader_only = !(policy::admin(&ctx) || policy::system_reader(&ctx));
    let mut name_cache: HashMap<String, Value> = HashMap::new();
    let mut items = Vec::new();
    for l in listed.iter().filter(|l| keep(l)) {
        let mut role = json!({"id": l.role});
        let mut actor = json!({"id": l.actor});
        let mut scope_ref = json!({"id": l.target});
        if domain_reader_only || names {
            if l.scope_kind == "project" {
                let p = store::project_get(&app.id.db, &l.target).await?;
                if domain_reader_only && p.as_ref().map(|p| p.domain_id.as_str()) != ctx.domain_id() {
                    continue;
                }
                if let (true, Some(p)) = (names, p) {
                    scope_ref = json!({"id": p.id, "name": p.name, "domain": domain_ref(&app, &p.domain_id, &mut name_cache).await?});
                }
            } else if l.scope_kind == "domain" {
                if domain_reader_only && Some(l.target.as_str()) != ctx.domain_id() {
                    continue;
                }
                if names {
                    scope_ref = domain_ref(&app, &l.target, &mut name_cache).await?;
                }
            } else if domain_reader_only {
                continue;
            }
        }
        if names {
            if let Some(r) = store::role_get(&app.id.db, &l.role).await? {
                role = json!({"id": r.id, "name": r.name});
                if let Some(d) = &r.domain_id {
                    role["domain"] = domain_ref(&app, d, &mut name_cache).await?;
                }
            }
            if l.user {
                if let Some(u) = store::user_get(&app.id.db, &l.actor).await? {
                    actor = json!({"id": u.id, "name": u.name, "domain": domain_ref(&app, &u.domain_id, &mut name_cache).await?});
                }
            } else if let Some(g) = store::group_get(&app.id.db, &l.actor).await? {
                actor = json!({"id": g.id, "name": g.name, "domain": domain_ref(&app, &g.domain_id, &mut name_cache).await?});
            }
        }
        let scope = match l.scope_kind {
            "system" => json!({"system": {"all": true}}),
            k => {
                let mut s = json!({ k: scope_ref });
                if l.inherited {
                    s["OS-INHERIT:inherited_to"] = json!("projects");
                }
                s
            }
        };
        let actor_kind = if l.user { "users" } else { "groups" };
        let link = match l.scope_kind {
            "system" => format!("{}/v3/system/{actor_kind}/{}/roles/{}", app.base, l.actor, l.role),
            k => format!(
                "{}/v3/{k}s/{}/{actor_kind}/{}/roles/{}",
                app.base, l.target, l.actor, l.role
            ),
        };
        let mut item = json!({"role": role, "scope": scope, "links": {"assignment": link}});
        item[if l.user { "user" } else { "group" }] = actor;
        items.push(item);
    }
    collection(&app, "role_assignments", "role_assignments", items)
}

async fn domain_ref(app: &App, id: &str, cache: &mut HashMap<String, Value>) -> Result<Value> {
    if let Some(v) = cache.get(id) {
        return Ok(v.clone());
    }
    let v = match store::domain_get(&app.id.db, id).await? {
        Some(d) => json!({"id": d.id, "name": d.name}),
        None => json!({"id": id}),
    };
    cache.insert(id.to_string(), v.clone());
    Ok(v)
}

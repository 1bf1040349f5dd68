//! Regions, services and endpoints: the catalog put into every scoped token.

use super::{body_json, collection, created, no_content, ok, S};
use crate::error::{IdentityError, Result};
use crate::store::{self, EndpointRow, RegionRow, ServiceRow};
use crate::{policy, validate};
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::{Path, Query};
use axum::response::Response;
use http::HeaderMap;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use tessera_http::auth::Caller;
use tessera_types::new_hex_id;

type Q = Query<HashMap<String, String>>;

fn region_json(base: &str, r: &RegionRow) -> Value {
    json!({"id": r.id, "description": r.description.clone().unwrap_or_default(), "parent_region_id": r.parent_region_id,
           "links": {"self": format!("{base}/v3/regions/{}", r.id)}})
}

fn service_json(base: &str, s: &ServiceRow) -> Value {
    let mut v = json!({"id": s.id, "type": s.type_, "enabled": s.enabled, "links": {"self": format!("{base}/v3/services/{}", s.id)}});
    if let Some(n) = &s.name {
        v["name"] = json!(n);
    }
    if let Some(d) = &s.description {
        v["description"] = json!(d);
    }
    v
}

fn endpoint_json(base: &str, e: &EndpointRow) -> Value {
    json!({"id": e.id, "service_id": e.service_id, "interface": e.interface, "region_id": e.region_id, "region": e.region_id,
           "url": e.url, "enabled": e.enabled, "links": {"self": format!("{base}/v3/endpoints/{}", e.id)}})
}

// ---------------------------------------------------------------- regions

const REGION_KNOWN: &[&str] = &["id", "description", "parent_region_id", "links"];

pub async fn list_regions(State(app): S, Caller(_ctx): Caller, Query(q): Q) -> Result<Response> {
    let rows = store::region_list(&app.id.db, q.get("parent_region_id").map(String::as_str)).await?;
    collection(
        &app,
        "regions",
        "regions",
        rows.iter().map(|r| region_json(&app.base, r)).collect(),
    )
}

pub async fn get_region(State(app): S, Caller(_ctx): Caller, Path(id): Path<String>) -> Result<Response> {
    let r = store::region_get(&app.id.db, &id)
        .await?
        .ok_or_else(|| IdentityError::not_found("region", &id))?;
    ok(json!({"region": region_json(&app.base, &r)}))
}

async fn new_region(app: &super::App, m: &Map<String, Value>, id: Option<String>) -> Result<RegionRow> {
    let parent = validate::opt_str(m, "parent_region_id", 255)?;
    if let Some(p) = &parent {
        store::region_get(&app.id.db, p).await?.ok_or_else(|| {
            IdentityError::Validation(format!(
                "Invalid input for field 'parent_region_id': region {p} does not exist"
            ))
        })?;
    }
    Ok(RegionRow {
        id: id.unwrap_or_else(new_hex_id),
        description: validate::opt_text(m, "description")?.flatten(),
        parent_region_id: parent,
        extra: validate::extras(m, REGION_KNOWN),
    })
}

pub async fn create_region(
    State(app): S,
    Caller(ctx): Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    policy::require_admin(&ctx, "create_region")?;
    let v = body_json(&headers, &body)?;
    let m = validate::entity(&v, "region")?;
    let id = validate::opt_str(m, "id", 255)?;
    let r = new_region(&app, m, id).await?;
    store::region_put(&app.id.db, &r, true).await?;
    app.id.changed();
    created(json!({"region": region_json(&app.base, &r)}))
}

/// `PUT /v3/regions/{id}`: create with a chosen id.
pub async fn put_region(
    State(app): S,
    Caller(ctx): Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    policy::require_admin(&ctx, "create_region")?;
    let v = body_json(&headers, &body)?;
    let m = validate::entity(&v, "region")?;
    if validate::opt_str(m, "id", 255)?.is_some_and(|b| b != id) {
        return Err(IdentityError::Validation(
            "Invalid input for field 'id': does not match the URL".into(),
        ));
    }
    let r = new_region(&app, m, Some(id)).await?;
    store::region_put(&app.id.db, &r, true).await?;
    app.id.changed();
    created(json!({"region": region_json(&app.base, &r)}))
}

pub async fn update_region(
    State(app): S,
    Caller(ctx): Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    policy::require_admin(&ctx, "update_region")?;
    let v = body_json(&headers, &body)?;
    let m = validate::entity(&v, "region")?;
    validate::no_readonly(m, &["id"])?;
    let mut r = store::region_get(&app.id.db, &id)
        .await?
        .ok_or_else(|| IdentityError::not_found("region", &id))?;
    if let Some(d) = validate::opt_text(m, "description")? {
        r.description = d;
    }
    if m.contains_key("parent_region_id") {
        let p = validate::opt_str(m, "parent_region_id", 255)?;
        if p.as_deref() == Some(id.as_str()) {
            return Err(IdentityError::Validation(
                "Invalid input for field 'parent_region_id': a region cannot be its own parent".into(),
            ));
        }
        r.parent_region_id = p;
    }
    r.extra.extend(validate::extras(m, REGION_KNOWN));
    store::region_put(&app.id.db, &r, false).await?;
    app.id.changed();
    ok(json!({"region": region_json(&app.base, &r)}))
}

pub async fn delete_region(State(app): S, Caller(ctx): Caller, Path(id): Path<String>) -> Result<Response> {
    policy::require_admin(&ctx, "delete_region")?;
    store::region_get(&app.id.db, &id)
        .await?
        .ok_or_else(|| IdentityError::not_found("region", &id))?;
    if store::region_in_use(&app.id.db, &id).await? {
        return Err(IdentityError::ForbiddenNotSecret(format!(
            "Unable to delete region {id} because it or its child regions have associated endpoints."
        )));
    }
    store::simple_delete(&app.id.db, "regions", &id).await?;
    app.id.changed();
    no_content()
}

// ---------------------------------------------------------------- services

const SERVICE_KNOWN: &[&str] = &["id", "type", "name", "description", "enabled", "links"];

pub async fn list_services(State(app): S, Caller(ctx): Caller, Query(q): Q) -> Result<Response> {
    policy::require_admin_or_system_reader(&ctx, "list_services")?;
    let rows = store::service_list(
        &app.id.db,
        q.get("type").map(String::as_str),
        q.get("name").map(String::as_str),
    )
    .await?;
    collection(
        &app,
        "services",
        "services",
        rows.iter().map(|s| service_json(&app.base, s)).collect(),
    )
}

pub async fn get_service(State(app): S, Caller(ctx): Caller, Path(id): Path<String>) -> Result<Response> {
    policy::require_admin_or_system_reader(&ctx, "get_service")?;
    let s = store::service_get(&app.id.db, &id)
        .await?
        .ok_or_else(|| IdentityError::not_found("service", &id))?;
    ok(json!({"service": service_json(&app.base, &s)}))
}

pub async fn create_service(
    State(app): S,
    Caller(ctx): Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    policy::require_admin(&ctx, "create_service")?;
    let v = body_json(&headers, &body)?;
    let m = validate::entity(&v, "service")?;
    let s = ServiceRow {
        id: new_hex_id(),
        type_: validate::req_str(m, "type", 255)?,
        name: validate::opt_str(m, "name", 255)?,
        description: validate::opt_text(m, "description")?.flatten(),
        enabled: validate::opt_bool(m, "enabled")?.unwrap_or(true),
        extra: validate::extras(m, SERVICE_KNOWN),
    };
    store::service_put(&app.id.db, &s, true).await?;
    app.id.changed();
    created(json!({"service": service_json(&app.base, &s)}))
}

pub async fn update_service(
    State(app): S,
    Caller(ctx): Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    policy::require_admin(&ctx, "update_service")?;
    let v = body_json(&headers, &body)?;
    let m = validate::entity(&v, "service")?;
    validate::no_readonly(m, &["id"])?;
    let mut s = store::service_get(&app.id.db, &id)
        .await?
        .ok_or_else(|| IdentityError::not_found("service", &id))?;
    if let Some(t) = validate::opt_str(m, "type", 255)? {
        s.type_ = t;
    }
    if m.contains_key("name") {
        s.name = validate::opt_str(m, "name", 255)?;
    }
    if let Some(d) = validate::opt_text(m, "description")? {
        s.description = d;
    }
    if let Some(e) = validate::opt_bool(m, "enabled")? {
        s.enabled = e;
    }
    s.extra.extend(validate::extras(m, SERVICE_KNOWN));
    store::service_put(&app.id.db, &s, false).await?;
    app.id.changed();
    ok(json!({"service": service_json(&app.base, &s)}))
}

pub async fn delete_service(State(app): S, Caller(ctx): Caller, Path(id): Path<String>) -> Result<Response> {
    policy::require_admin(&ctx, "delete_service")?;
    store::service_get(&app.id.db, &id)
        .await?
        .ok_or_else(|| IdentityError::not_found("service", &id))?;
    store::service_delete(&app.id.db, &id).await?;
    app.id.changed();
    no_content()
}

// ---------------------------------------------------------------- endpoints

const ENDPOINT_KNOWN: &[&str] = &[
    "id",
    "service_id",
    "interface",
    "region_id",
    "region",
    "url",
    "enabled",
    "links",
];

fn interface(m: &Map<String, Value>) -> Result<Option<String>> {
    let i = validate::opt_str(m, "interface", 8)?;
    if let Some(x) = &i {
        if !["public", "internal", "admin"].contains(&x.as_str()) {
            return Err(IdentityError::Validation(format!(
                "Invalid input for field 'interface': '{x}' does not match '^(admin|internal|public)$'"
            )));
        }
    }
    Ok(i)
}

async fn region_field(app: &super::App, m: &Map<String, Value>) -> Result<Option<Option<String>>> {
    let key = if m.contains_key("region_id") {
        "region_id"
    } else if m.contains_key("region") {
        "region"
    } else {
        return Ok(None);
    };
    let r = validate::opt_str(m, key, 255)?;
    if let Some(id) = &r {
        store::region_get(&app.id.db, id).await?.ok_or_else(|| {
            IdentityError::Validation(format!(
                "Invalid input for field 'region_id': region {id} does not exist"
            ))
        })?;
    }
    Ok(Some(r))
}

fn check_url(u: &str) -> Result<()> {
    if u.starts_with("http://") || u.starts_with("https://") {
        Ok(())
    } else {
        Err(IdentityError::Validation(format!(
            "Invalid input for field 'url': '{u}' is not a valid URL"
        )))
    }
}

pub async fn list_endpoints(State(app): S, Caller(ctx): Caller, Query(q): Q) -> Result<Response> {
    policy::require_admin_or_system_reader(&ctx, "list_endpoints")?;
    let rows = store::endpoint_list(
        &app.id.db,
        q.get("interface").map(String::as_str),
        q.get("service_id").map(String::as_str),
        q.get("region_id").or(q.get("region")).map(String::as_str),
    )
    .await?;
    collection(
        &app,
        "endpoints",
        "endpoints",
        rows.iter().map(|e| endpoint_json(&app.base, e)).collect(),
    )
}

pub async fn get_endpoint(State(app): S, Caller(ctx): Caller, Path(id): Path<String>) -> Result<Response> {
    policy::require_admin_or_system_reader(&ctx, "get_endpoint")?;
    let e = store::endpoint_get(&app.id.db, &id)
        .await?
        .ok_or_else(|| IdentityError::not_found("endpoint", &id))?;
    ok(json!({"endpoint": endpoint_json(&app.base, &e)}))
}

pub async fn create_endpoint(
    State(app): S,
    Caller(ctx): Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    policy::require_admin(&ctx, "create_endpoint")?;
    let v = body_json(&headers, &body)?;
    let m = validate::entity(&v, "endpoint")?;
    let service_id = validate::req_str(m, "service_id", 64)?;
    let interface = interface(m)?
        .ok_or_else(|| IdentityError::Validation("'interface' is a required property".into()))?;
    let url = validate::req_str(m, "url", 1024)?;
    check_url(&url)?;
    let enabled = validate::opt_bool(m, "enabled")?.unwrap_or(true);
    let region_id = region_field(&app, m).await?.flatten();
    store::service_get(&app.id.db, &service_id)
        .await?
        .ok_or_else(|| {
            IdentityError::Validation(format!(
                "Invalid input for field 'service_id': service {service_id} does not exist"
            ))
        })?;
    let e = EndpointRow {
        id: new_hex_id(),
        service_id,
        interface,
        region_id,
        url,
        enabled,
        extra: validate::extras(m, ENDPOINT_KNOWN),
    };
    store::endpoint_put(&app.id.db, &e, true).await?;
    app.id.changed();
    created(json!({"endpoint": endpoint_json(&app.base, &e)}))
}

pub async fn update_endpoint(
    State(app): S,
    Caller(ctx): Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    policy::require_admin(&ctx, "update_endpoint")?;
    let v = body_json(&headers, &body)?;
    let m = validate::entity(&v, "endpoint")?;
    validate::no_readonly(m, &["id"])?;
    let mut e = store::endpoint_get(&app.id.db, &id)
        .await?
        .ok_or_else(|| IdentityError::not_found("endpoint", &id))?;
    if let Some(s) = validate::opt_str(m, "service_id", 64)? {
        store::service_get(&app.id.db, &s).await?.ok_or_else(|| {
            IdentityError::Validation(format!(
                "Invalid input for field 'service_id': service {s} does not exist"
            ))
        })?;
        e.service_id = s;
    }
    if let Some(i) = interface(m)? {
        e.interface = i;
    }
    if let Some(u) = validate::opt_str(m, "url", 1024)? {
        check_url(&u)?;
        e.url = u;
    }
    if let Some(r) = region_field(&app, m).await? {
        e.region_id = r;
    }
    if let Some(en) = validate::opt_bool(m, "enabled")? {
        e.enabled = en;
    }
    e.extra.extend(validate::extras(m, ENDPOINT_KNOWN));
    store::endpoint_put(&app.id.db, &e, false).await?;
    app.id.changed();
    ok(json!({"endpoint": endpoint_json(&app.base, &e)}))
}

pub async fn delete_endpoint(State(app): S, Caller(ctx): Caller, Path(id): Path<String>) -> Result<Response> {
    policy::require_admin(&ctx, "delete_endpoint")?;
    if !store::simple_delete(&app.id.db, "endpoints", &id).await? {
        return Err(IdentityError::not_found("endpoint", &id));
    }
    app.id.changed();
    no_content()
}

//! Placement routes (one table), shared request helpers, resource classes and traits.

mod allocations;
mod candidates;
mod providers;

use crate::error::{bad, conflict, PlacementError, Result};
use crate::microversion::{self, Mv};
use crate::store::NameDelete;
use crate::{is_custom_name, store, PlacementService};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::middleware::{from_fn, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use http::{HeaderMap, HeaderValue, StatusCode};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use tessera_http::auth::{require_token, AuthLayer, Caller, TokenValidator};
use tessera_http::observe::{metrics_handler, observe, Metrics};
use tessera_http::Family;
use tessera_types::RequestContext;

pub(crate) type S = State<Arc<PlacementService>>;
pub(crate) type V = Extension<Mv>;

/// Build the Placement API behind the auth layer.
pub fn router(svc: Arc<PlacementService>, validator: Arc<dyn TokenValidator>, identity_uri: &str) -> Router {
    let layer = AuthLayer {
        validator,
        family: Family::Placement,
        identity_uri: identity_uri.to_string(),
    };
    let metrics = Metrics::new("placement");
    #[rustfmt::skip]
    let protected = Router::new()
        .route("/resource_providers", get(providers::list).post(providers::create))
        .route("/resource_providers/{uuid}", get(providers::show).put(providers::update).delete(providers::delete))
        .route("/resource_providers/{uuid}/inventories",
            get(providers::inventories_get).put(providers::inventories_put)
                .post(providers::inventory_post).delete(providers::inventories_delete))
        .route("/resource_providers/{uuid}/inventories/{rc}",
            get(providers::inventory_get).put(providers::inventory_put).delete(providers::inventory_delete))
        .route("/resource_providers/{uuid}/usages", get(providers::usages))
        .route("/resource_providers/{uuid}/aggregates", get(providers::aggregates_get).put(providers::aggregates_put))
        .route("/resource_providers/{uuid}/traits",
            get(providers::traits_get).put(providers::traits_put).delete(providers::traits_delete))
        .route("/resource_providers/{uuid}/allocations", get(providers::allocations))
        .route("/resource_classes", get(classes_list).post(class_create))
        .route("/resource_classes/{name}", get(class_show).put(class_put).delete(class_delete))
        .route("/traits", get(traits_list))
        .route("/traits/{name}", get(trait_show).put(trait_put).delete(trait_delete))
        .route("/allocations", axum::routing::post(allocations::post))
        .route("/allocations/{consumer}",
            get(allocations::get_one).put(allocations::put_one).delete(allocations::delete_one))
        .route("/usages", get(allocations::project_usages))
        .route("/allocation_candidates", get(candidates::list))
        .route("/reshaper", axum::routing::post(allocations::reshaper))
        .route_layer(from_fn_with_state(layer, require_token))
        .layer(from_fn(microversion::layer))
        .with_state(svc);
    Router::new()
        .route("/", get(versions))
        .merge(protected)
        .route_service("/metrics", get(metrics_handler).with_state(metrics.clone()))
        .layer(from_fn_with_state(metrics, observe))
}

async fn versions() -> Response {
    let mut r = axum::Json(json!({"versions": [{
        "id": "v1.0", "min_version": format!("1.{}", microversion::MIN),
        "max_version": format!("1.{}", microversion::MAX), "status": "CURRENT",
        "links": [{"rel": "self", "href": ""}],
    }]}))
    .into_response();
    r.headers_mut()
        .insert(http::header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// Default policy: everything needs the `admin` or `service` role.
pub(crate) fn admin(ctx: &RequestContext, action: &str) -> Result<()> {
    if ctx.roles.iter().any(|r| r == "admin" || r == "service") {
        Ok(())
    } else {
        Err(PlacementError::Forbidden(format!(
            "Policy does not allow placement:{action} to be performed."
        )))
    }
}

/// Routes that exist only from a microversion on answer 404 below it.
pub(crate) fn need(mv: Mv, minor: u32) -> Result<()> {
    if mv.at_least(minor) {
        Ok(())
    } else {
        Err(PlacementError::NotFound(
            "The resource could not be found.".into(),
        ))
    }
}

/// A JSON request body (any JSON value; handlers check its shape).
pub(crate) fn json_body(headers: &HeaderMap, body: &Bytes) -> Result<Value> {
    let ct = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if !ct.starts_with("application/json") {
        return Err(PlacementError::Http(tessera_http::ApiError::new(
            Family::Placement,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("The media type {ct:?} is not supported, use application/json"),
        )));
    }
    serde_json::from_slice(body).map_err(|e| bad(format!("Malformed JSON: {e}")))
}

/// A JSON object body.
pub(crate) fn object_body(headers: &HeaderMap, body: &Bytes) -> Result<serde_json::Map<String, Value>> {
    match json_body(headers, body)? {
        Value::Object(m) => Ok(m),
        _ => Err(bad("JSON does not validate: the body must be an object")),
    }
}

/// Refuse properties the schema does not allow.
pub(crate) fn only_keys(m: &serde_json::Map<String, Value>, allowed: &[&str]) -> Result<()> {
    for k in m.keys() {
        if !allowed.contains(&k.as_str()) {
            return Err(bad(format!(
                "JSON does not validate: Additional properties are not allowed ('{k}' was unexpected)"
            )));
        }
    }
    Ok(())
}

pub(crate) fn require<'a>(m: &'a serde_json::Map<String, Value>, k: &str) -> Result<&'a Value> {
    m.get(k)
        .ok_or_else(|| bad(format!("JSON does not validate: '{k}' is a required property")))
}

/// An integer in [min, max].
pub(crate) fn int_in(v: &Value, what: &str, min: i64, max: i64) -> Result<i64> {
    match v.as_i64() {
        Some(n) if (min..=max).contains(&n) && !v.is_f64() => Ok(n),
        _ => Err(bad(format!(
            "JSON does not validate: {v} is not a valid {what} (an integer from {min} to {max})"
        ))),
    }
}

pub(crate) fn is_uuid(s: &str) -> bool {
    uuid::Uuid::try_parse(s).is_ok()
}

/// Normalise a uuid as upstream does (hyphenated lower case), or 400.
pub(crate) fn uuid_value(v: &Value, what: &str) -> Result<String> {
    v.as_str()
        .and_then(|s| uuid::Uuid::try_parse(s).ok())
        .map(|u| u.hyphenated().to_string())
        .ok_or_else(|| {
            bad(format!(
                "JSON does not validate: {v} is not a valid uuid for '{what}'"
            ))
        })
}

/// Query parameters with the keys a route accepts; repeated keys only where `repeatable`.
pub(crate) struct Params(pub BTreeMap<String, Vec<String>>);

impl Params {
    pub fn parse(raw: Vec<(String, String)>, allowed: &[&str], repeatable: &[&str]) -> Result<Self> {
        let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let matches = |list: &[&str], k: &str| {
            list.iter().any(|a| match a.strip_suffix('*') {
                Some(prefix) => k.starts_with(prefix),
                None => *a == k,
            })
        };
        for (k, v) in raw {
            if !matches(allowed, &k) {
                return Err(bad(format!(
                    "Invalid query string parameters: Additional properties are not allowed ('{k}' was unexpected)"
                )));
            }
            let e = m.entry(k.clone()).or_default();
            if !e.is_empty() && !matches(repeatable, &k) {
                return Err(PlacementError::BadRequest(
                    format!("Query parameter {k:?} can be provided only once"),
                    Some(crate::error::QUERY_DUPLICATE_KEY),
                ));
            }
            e.push(v);
        }
        Ok(Self(m))
    }
    pub fn one(&self, k: &str) -> Option<&str> {
        self.0.get(k).and_then(|v| v.first()).map(String::as_str)
    }
    pub fn all(&self, k: &str) -> &[String] {
        self.0.get(k).map(Vec::as_slice).unwrap_or(&[])
    }
}

/// PUT of a name: 201 when it was created, 204 when it existed; `Location` either way.
fn created_or_found(created: bool, location: &str) -> Response {
    let mut r = if created {
        StatusCode::CREATED.into_response()
    } else {
        StatusCode::NO_CONTENT.into_response()
    };
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(http::header::LOCATION, v);
    }
    r
}

// ---------------------------------------------------------------- resource classes

fn class_json(name: &str) -> Value {
    json!({"name": name, "links": [{"rel": "self", "href": format!("/resource_classes/{name}")}]})
}

async fn classes_list(State(svc): S, Caller(ctx): Caller, Extension(mv): V) -> Result<Response> {
    need(mv, 2)?;
    admin(&ctx, "resource_classes:list")?;
    let all = store::names(&svc.db, "resource_classes").await?;
    // Standard classes first in upstream's order, then custom ones by name.
    let mut out: Vec<Value> = crate::STANDARD_CLASSES
        .iter()
        .filter(|c| all.iter().any(|(n, _)| n == *c))
        .map(|c| class_json(c))
        .collect();
    out.extend(all.iter().filter(|(_, s)| !s).map(|(n, _)| class_json(n)));
    Ok(axum::Json(json!({"resource_classes": out})).into_response())
}

async fn class_create(
    State(svc): S,
    Caller(ctx): Caller,
    Extension(mv): V,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    need(mv, 2)?;
    admin(&ctx, "resource_classes:create")?;
    let m = object_body(&headers, &body)?;
    only_keys(&m, &["name"])?;
    let name = require(&m, "name")?
        .as_str()
        .filter(|n| is_custom_name(n))
        .ok_or_else(|| bad("JSON does not validate: 'name' must match '^CUSTOM_[A-Z0-9_]+$'"))?
        .to_string();
    if !store::name_create(&svc.db, "resource_classes", &name).await? {
        return Err(conflict(format!(
            "Conflicting resource class already exists: {name}"
        )));
    }
    let mut r = StatusCode::CREATED.into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("/resource_classes/{name}")) {
        r.headers_mut().insert(http::header::LOCATION, v);
    }
    Ok(r)
}

async fn class_show(
    State(svc): S,
    Caller(ctx): Caller,
    Extension(mv): V,
    Path(name): Path<String>,
) -> Result<Response> {
    need(mv, 2)?;
    admin(&ctx, "resource_classes:show")?;
    match store::name_get(&svc.db, "resource_classes", &name).await? {
        Some(_) => Ok(axum::Json(class_json(&name)).into_response()),
        None => Err(PlacementError::NotFound(format!(
            "No such resource class {name}."
        ))),
    }
}

async fn class_put(
    State(svc): S,
    Caller(ctx): Caller,
    Extension(mv): V,
    Path(name): Path<String>,
) -> Result<Response> {
    need(mv, 2)?;
    admin(&ctx, "resource_classes:update")?;
    if !mv.at_least(7) {
        // Before 1.7 PUT renamed a custom class; upstream discourages it and Tessera does not offer it.
        return Err(bad(
            "Renaming resource classes is not supported; use microversion 1.7 or later to create one with PUT.",
        ));
    }
    if !is_custom_name(&name) {
        return Err(bad(format!(
            "Failed validating 'pattern': {name} does not match '^CUSTOM_[A-Z0-9_]+$'"
        )));
    }
    let created = store::name_create(&svc.db, "resource_classes", &name).await?;
    Ok(created_or_found(created, &format!("/resource_classes/{name}")))
}

async fn class_delete(
    State(svc): S,
    Caller(ctx): Caller,
    Extension(mv): V,
    Path(name): Path<String>,
) -> Result<Response> {
    need(mv, 2)?;
    admin(&ctx, "resource_classes:delete")?;
    match store::name_delete(
        &svc.db,
        "resource_classes",
        &name,
        "SELECT COUNT(*) FROM inventories WHERE resource_class = ?",
    )
    .await?
    {
        NameDelete::Deleted => {}
        NameDelete::Missing => {
            return Err(PlacementError::NotFound(format!(
                "No such resource class {name}."
            )))
        }
        NameDelete::Standard => return Err(bad(format!("Cannot delete standard resource class {name}"))),
        NameDelete::InUse => {
            return Err(conflict(format!(
                "Unable to delete resource class {name}. Resource class is in use in inventory."
            )))
        }
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

// ---------------------------------------------------------------- traits

async fn traits_list(
    State(svc): S,
    Caller(ctx): Caller,
    Extension(mv): V,
    Query(q): Query<Vec<(String, String)>>,
) -> Result<Response> {
    need(mv, 6)?;
    admin(&ctx, "traits:list")?;
    let p = Params::parse(q, &["name", "associated"], &[])?;
    let mut names: Vec<String> = store::names(&svc.db, "traits")
        .await?
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    if let Some(f) = p.one("name") {
        if let Some(prefix) = f.strip_prefix("startswith:") {
            names.retain(|n| n.starts_with(prefix));
        } else if let Some(list) = f.strip_prefix("in:") {
            let want: BTreeSet<&str> = list.split(',').collect();
            names.retain(|n| want.contains(n.as_str()));
        } else {
            return Err(bad(format!(
                "Badly formatted name parameter. Expected name query string parameter in form: ?name=[in|startswith]:[name1,name2|prefix]. Got: \"{f}\""
            )));
        }
    }
    if let Some(a) = p.one("associated") {
        let want = match a.to_ascii_lowercase().as_str() {
            "true" => true,
            "false" => false,
            _ => {
                return Err(bad(format!(
                    "The query parameter 'associated' only accepts 'true' or 'false'; got {a:?}"
                )))
            }
        };
        let assoc: BTreeSet<String> = sqlx::query("SELECT DISTINCT trait FROM rp_traits")
            .fetch_all(svc.db.pool())
            .await?
            .iter()
            .map(|r| tessera_db::get_text(r, "trait"))
            .collect::<Result<_, _>>()?;
        names.retain(|n| assoc.contains(n) == want);
    }
    Ok(axum::Json(json!({"traits": names})).into_response())
}

async fn trait_show(
    State(svc): S,
    Caller(ctx): Caller,
    Extension(mv): V,
    Path(name): Path<String>,
) -> Result<Response> {
    need(mv, 6)?;
    admin(&ctx, "traits:show")?;
    match store::name_get(&svc.db, "traits", &name).await? {
        Some(_) => Ok(StatusCode::NO_CONTENT.into_response()),
        None => Err(PlacementError::NotFound(format!("No such trait(s): {name}."))),
    }
}

async fn trait_put(
    State(svc): S,
    Caller(ctx): Caller,
    Extension(mv): V,
    Path(name): Path<String>,
) -> Result<Response> {
    need(mv, 6)?;
    admin(&ctx, "traits:update")?;
    if !is_custom_name(&name) {
        return Err(bad(
            "The trait is invalid. A valid trait must be no longer than 255 characters, start with the prefix \"CUSTOM_\" and use following characters: \"A\"-\"Z\", \"0\"-\"9\" and \"_\""
        ));
    }
    let created = store::name_create(&svc.db, "traits", &name).await?;
    Ok(created_or_found(created, &format!("/traits/{name}")))
}

async fn trait_delete(
    State(svc): S,
    Caller(ctx): Caller,
    Extension(mv): V,
    Path(name): Path<String>,
) -> Result<Response> {
    need(mv, 6)?;
    admin(&ctx, "traits:delete")?;
    match store::name_delete(
        &svc.db,
        "traits",
        &name,
        "SELECT COUNT(*) FROM rp_traits WHERE trait = ?",
    )
    .await?
    {
        NameDelete::Deleted => {}
        NameDelete::Missing => return Err(PlacementError::NotFound(format!("No such trait(s): {name}."))),
        NameDelete::Standard => return Err(bad(format!("Cannot delete standard trait {name}."))),
        NameDelete::InUse => {
            return Err(conflict(format!(
                "The trait {name} is in use by a resource provider."
            )))
        }
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

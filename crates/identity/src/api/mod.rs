//! The Identity API's routes (one table) and the helpers every handler shares: base URLs and links,
//! collection bodies with `list_limit` truncation, JSON bodies.

mod app_creds;
mod auth;
mod catalog;
mod resources;
mod roles;

use crate::error::{IdentityError, Result};
use crate::Identity;
use axum::body::Bytes;
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::Router;
use http::{HeaderMap, StatusCode};
use serde_json::{json, Value};
use std::sync::Arc;
use tessera_http::auth::{require_token, AuthLayer};
use tessera_http::observe::{metrics_handler, observe, Metrics};
use tessera_http::Family;

pub type S = axum::extract::State<App>;

/// Build the Identity API. `public_base` (`http://host:port`) is used for links and `WWW-Authenticate`
/// when `[identity] public_endpoint` is not set.
pub fn router(id: Arc<Identity>, public_base: &str) -> Router {
    let base = id
        .settings
        .public_endpoint
        .clone()
        .unwrap_or_else(|| public_base.trim_end_matches('/').to_string());
    let www_authenticate = http::HeaderValue::from_str(&format!("Keystone uri=\"{base}/v3\""))
        .unwrap_or_else(|_| http::HeaderValue::from_static("Keystone"));
    let layer = AuthLayer {
        validator: id.validator(),
        family: Family::Keystone,
        identity_uri: format!("{base}/v3"),
    };
    let metrics = Metrics::new("identity");

    let protected = Router::new()
        .route(
            "/v3/auth/tokens",
            get(auth::validate).head(auth::check).delete(auth::revoke),
        )
        .route("/v3/auth/catalog", get(auth::auth_catalog))
        .route("/v3/auth/projects", get(auth::auth_projects))
        .route("/v3/auth/domains", get(auth::auth_domains))
        .route("/v3/auth/system", get(auth::auth_system))
        .route(
            "/v3/domains",
            get(resources::list_domains).post(resources::create_domain),
        )
        .route(
            "/v3/domains/{id}",
            get(resources::get_domain)
                .patch(resources::update_domain)
                .delete(resources::delete_domain),
        )
        .route(
            "/v3/projects",
            get(resources::list_projects).post(resources::create_project),
        )
        .route(
            "/v3/projects/{id}",
            get(resources::get_project)
                .patch(resources::update_project)
                .delete(resources::delete_project),
        )
        .route(
            "/v3/users",
            get(resources::list_users).post(resources::create_user),
        )
        .route(
            "/v3/users/{id}",
            get(resources::get_user)
                .patch(resources::update_user)
                .delete(resources::delete_user),
        )
        .route("/v3/users/{id}/projects", get(resources::user_projects))
        .route("/v3/users/{id}/groups", get(resources::user_groups))
        .route(
            "/v3/groups",
            get(resources::list_groups).post(resources::create_group),
        )
        .route(
            "/v3/groups/{id}",
            get(resources::get_group)
                .patch(resources::update_group)
                .delete(resources::delete_group),
        )
        .route("/v3/groups/{id}/users", get(resources::group_users))
        .route(
            "/v3/groups/{gid}/users/{uid}",
            put(resources::add_member)
                .head(resources::check_member)
                .get(resources::check_member)
                .delete(resources::remove_member),
        )
        .route("/v3/roles", get(roles::list_roles).post(roles::create_role))
        .route(
            "/v3/roles/{id}",
            get(roles::get_role)
                .patch(roles::update_role)
                .delete(roles::delete_role),
        )
        .route("/v3/roles/{id}/implies", get(roles::list_implied))
        .route(
            "/v3/roles/{prior}/implies/{implied}",
            put(roles::create_implied)
                .get(roles::get_implied)
                .head(roles::check_implied)
                .delete(roles::delete_implied),
        )
        .route("/v3/role_inferences", get(roles::role_inferences))
        .route("/v3/role_assignments", get(roles::list_assignments))
        .route(
            "/v3/projects/{target}/users/{actor}/roles",
            get(roles::list_grants),
        )
        .route(
            "/v3/projects/{target}/groups/{actor}/roles",
            get(roles::list_grants),
        )
        .route(
            "/v3/domains/{target}/users/{actor}/roles",
            get(roles::list_grants),
        )
        .route(
            "/v3/domains/{target}/groups/{actor}/roles",
            get(roles::list_grants),
        )
        .route("/v3/projects/{target}/users/{actor}/roles/{role}", grant_routes())
        .route(
            "/v3/projects/{target}/groups/{actor}/roles/{role}",
            grant_routes(),
        )
        .route("/v3/domains/{target}/users/{actor}/roles/{role}", grant_routes())
        .route("/v3/domains/{target}/groups/{actor}/roles/{role}", grant_routes())
        .route("/v3/system/users/{actor}/roles", get(roles::list_system_grants))
        .route("/v3/system/groups/{actor}/roles", get(roles::list_system_grants))
        .route("/v3/system/users/{actor}/roles/{role}", system_grant_routes())
        .route("/v3/system/groups/{actor}/roles/{role}", system_grant_routes())
        .route(
            "/v3/regions",
            get(catalog::list_regions).post(catalog::create_region),
        )
        .route(
            "/v3/regions/{id}",
            get(catalog::get_region)
                .patch(catalog::update_region)
                .delete(catalog::delete_region)
                .put(catalog::put_region),
        )
        .route(
            "/v3/services",
            get(catalog::list_services).post(catalog::create_service),
        )
        .route(
            "/v3/services/{id}",
            get(catalog::get_service)
                .patch(catalog::update_service)
                .delete(catalog::delete_service),
        )
        .route(
            "/v3/endpoints",
            get(catalog::list_endpoints).post(catalog::create_endpoint),
        )
        .route(
            "/v3/endpoints/{id}",
            get(catalog::get_endpoint)
                .patch(catalog::update_endpoint)
                .delete(catalog::delete_endpoint),
        )
        .route(
            "/v3/users/{id}/application_credentials",
            get(app_creds::list).post(app_creds::create),
        )
        .route(
            "/v3/users/{id}/application_credentials/{cred}",
            get(app_creds::get).delete(app_creds::delete),
        )
        .route_layer(from_fn_with_state(layer, require_token));

    let public = Router::new()
        .route("/", get(auth::versions))
        .route("/v3", get(auth::version))
        .route("/v3/", get(auth::version))
        .route("/v3/auth/tokens", post(auth::issue))
        .route("/v3/users/{id}/password", post(resources::change_password));

    Router::new()
        .merge(protected)
        .merge(public)
        .fallback(not_found)
        .with_state(App { id, base })
        .route_service("/metrics", get(metrics_handler).with_state(metrics.clone()))
        .layer(axum::middleware::map_response(move |mut r: Response| {
            let v = www_authenticate.clone();
            async move {
                if r.status() == StatusCode::UNAUTHORIZED {
                    r.headers_mut().insert(http::header::WWW_AUTHENTICATE, v);
                }
                r
            }
        }))
        .layer(from_fn_with_state(metrics, observe))
}

fn grant_routes() -> axum::routing::MethodRouter<App> {
    put(roles::grant)
        .head(roles::check_grant)
        .get(roles::check_grant)
        .delete(roles::revoke_grant)
}

fn system_grant_routes() -> axum::routing::MethodRouter<App> {
    put(roles::system_grant)
        .head(roles::system_check)
        .get(roles::system_check)
        .delete(roles::system_revoke)
}

/// Handler state: the service and its public base URL (`http://host:port`).
#[derive(Clone)]
pub struct App {
    pub id: Arc<Identity>,
    pub base: String,
}

async fn not_found() -> Response {
    IdentityError::NotFound {
        kind: "resource",
        id: "the requested URL".into(),
    }
    .into_response()
}

/// Parse a JSON request body.
pub fn body_json(headers: &HeaderMap, body: &Bytes) -> Result<Value> {
    tessera_http::body::parse_json::<Value>(Family::Keystone, headers, body).map_err(IdentityError::Http)
}

pub fn ok(v: Value) -> Result<Response> {
    Ok((StatusCode::OK, axum::Json(v)).into_response())
}

pub fn created(v: Value) -> Result<Response> {
    Ok((StatusCode::CREATED, axum::Json(v)).into_response())
}

pub fn no_content() -> Result<Response> {
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `{"<plural>": [...], "links": {...}}`, truncated to `list_limit` with `truncated: true`.
pub fn collection(app: &App, plural: &str, path: &str, mut items: Vec<Value>) -> Result<Response> {
    let mut body =
        json!({"links": {"self": format!("{}/v3/{path}", app.base), "previous": null, "next": null}});
    let limit = app.id.settings.list_limit;
    if limit > 0 && items.len() > limit {
        items.truncate(limit);
        body["truncated"] = json!(true);
    }
    body[plural] = Value::Array(items);
    ok(body)
}

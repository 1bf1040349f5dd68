//! The Compute API (v2.1 with microversions): version documents, and — growing with the Cells v2 issue —
//! `os-services`, `os-hypervisors` and `os-availability-zone`, read across every cell.

mod aggregates;
mod flavors;
mod hypervisors;
pub(crate) use hypervisors::uuid_like;
mod events;
mod interfaces;
mod keypairs;
pub mod microversion;
mod server_groups;
pub mod servers;
pub mod services;
mod zones;

use crate::cells::{self, CellMapping};
use crate::{celldb, ComputeError};
use axum::extract::State;
use axum::middleware::{from_fn, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use http::StatusCode;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tessera_db::Db;
use tessera_http::auth::{require_token, AuthLayer, TokenValidator};
use tessera_http::observe::{metrics_handler, observe, Metrics};
use tessera_http::{ApiError, Family};
use tessera_types::RequestContext;

pub use microversion::Mv;

#[derive(Debug, Clone)]
pub struct ApiSettings {
    /// A service whose last heartbeat is older than this is down.
    pub service_down_time: Duration,
    /// How long one cell may take to answer a read before it counts as down.
    pub cell_timeout: Duration,
    pub default_availability_zone: String,
    pub internal_service_availability_zone: String,
}

/// The Compute API's state: the API database and a connection pool per cell, opened on first use.
pub struct ComputeApi {
    pub api_db: Db,
    pub settings: ApiSettings,
    /// For mirroring host aggregates into placement (None: not mirrored).
    pub placement: Option<Arc<crate::placement_client::PlacementClient>>,
    /// Quotas and server options.
    pub servers: servers::ServerSettings,
    /// The boot pipeline (set once the buses exist; POST /servers answers 503 until then).
    pub boot: std::sync::OnceLock<servers::BootWiring>,
    /// For reading images from the Image API with the caller's token.
    pub(crate) http: reqwest::Client,
    cell_dbs: celldb::CellDbs,
}

type S = State<Arc<ComputeApi>>;

pub(crate) fn nova(status: StatusCode, message: impl Into<String>) -> ApiError {
    ApiError::new(Family::Nova, status, message)
}

/// A 400 with Nova's body.
pub(crate) fn bad(m: impl Into<String>) -> ApiError {
    nova(StatusCode::BAD_REQUEST, m)
}

pub(crate) fn internal(e: impl std::fmt::Display) -> ApiError {
    tracing::error!(error = %e, "compute API error");
    nova(StatusCode::INTERNAL_SERVER_ERROR, "Unexpected API Error. Please report this at https://bugs.launchpad.net/nova/ and attach the Nova API log if possible.")
}

impl From<ComputeError> for ApiError {
    fn from(e: ComputeError) -> Self {
        internal(e)
    }
}

/// The object of a `{"<key>": {...}}` body, holding only `allowed` members (Nova's schemas forbid others).
pub(crate) fn wrapped<'a>(
    v: &'a serde_json::Value,
    key: &str,
    allowed: &[&str],
) -> Result<&'a serde_json::Map<String, serde_json::Value>, ApiError> {
    let m = v
        .get(key)
        .and_then(serde_json::Value::as_object)
        .filter(|_| v.as_object().is_some_and(|o| o.len() == 1))
        .ok_or_else(|| {
            nova(
                StatusCode::BAD_REQUEST,
                format!(
                    "Invalid input for field/attribute {key}. Value: the body must be {{\"{key}\": {{...}}}}"
                ),
            )
        })?;
    if let Some(k) = m.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(nova(
            StatusCode::BAD_REQUEST,
            format!("Invalid input for field/attribute {key}. Additional properties are not allowed ('{k}' was unexpected)"),
        ));
    }
    Ok(m)
}

/// The one `{"action": {...}}` of an action body.
pub(crate) fn single_action(v: &serde_json::Value) -> Result<(&String, &serde_json::Value), ApiError> {
    v.as_object()
        .filter(|o| o.len() == 1)
        .and_then(|o| o.iter().next())
        .ok_or_else(|| nova(StatusCode::BAD_REQUEST, "There is no such action"))
}

/// Admin-only rules (hypervisors, services, zone details).
pub(crate) fn admin(ctx: &RequestContext, rule: &str) -> Result<(), ApiError> {
    if ctx.is_admin() {
        Ok(())
    } else {
        Err(nova(
            StatusCode::FORBIDDEN,
            format!("Policy doesn't allow {rule} to be performed."),
        ))
    }
}

/// Naive ISO-8601 with microseconds (Nova's format for service and hypervisor times).
pub(crate) fn naive_time(micros: i64) -> String {
    let mut out = String::with_capacity(26);
    push_time(&mut out, micros, true);
    out
}

/// UTC calendar fields (year, month, day, hour, minute, second, microsecond) of a time in microseconds
/// since the epoch (the civil-from-days conversion, exact over the proleptic Gregorian calendar).
fn utc_fields(micros: i64) -> (i64, u32, u32, u32, u32, u32, u32) {
    let secs = micros.div_euclid(1_000_000);
    let us = micros.rem_euclid(1_000_000) as u32;
    let sod = secs.rem_euclid(86_400) as u32;
    let z = secs.div_euclid(86_400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = (z - era * 146_097) as u32;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe as i64 + era * 400 + i64::from(month <= 2);
    (year, month, day, sod / 3600, sod / 60 % 60, sod % 60, us)
}

/// Append `YYYY-MM-DDTHH:MM:SS` (then `.ffffff` when `fraction`) without the formatting machinery: a
/// listing of a thousand servers writes three of these per server.
pub(crate) fn push_time(out: &mut String, micros: i64, fraction: bool) {
    let (y, mo, d, h, mi, s, us) = utc_fields(micros);
    if !(0..10_000).contains(&y) {
        use std::fmt::Write;
        let _ = write!(out, "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}");
        if fraction {
            let _ = write!(out, ".{us:06}");
        }
        return;
    }
    let mut buf = *b"0000-00-00T00:00:00.000000";
    let mut put = |at: usize, width: usize, mut n: u32| {
        for i in (at..at + width).rev() {
            buf[i] = b'0' + (n % 10) as u8;
            n /= 10;
        }
    };
    put(0, 4, y as u32);
    put(5, 2, mo);
    put(8, 2, d);
    put(11, 2, h);
    put(14, 2, mi);
    put(17, 2, s);
    put(20, 6, us);
    let len = if fraction { 26 } else { 19 };
    out.push_str(std::str::from_utf8(&buf[..len]).unwrap_or_default());
}

impl ComputeApi {
    pub fn new(
        api_db: Db,
        settings: ApiSettings,
        placement: Option<Arc<crate::placement_client::PlacementClient>>,
    ) -> Arc<Self> {
        Self::with_servers(api_db, settings, placement, servers::ServerSettings::default())
    }

    /// Like [`ComputeApi::new`] with server settings (quotas) from the configuration.
    pub fn with_servers(
        api_db: Db,
        settings: ApiSettings,
        placement: Option<Arc<crate::placement_client::PlacementClient>>,
        servers: servers::ServerSettings,
    ) -> Arc<Self> {
        Arc::new(ComputeApi {
            api_db,
            settings,
            placement,
            servers,
            boot: std::sync::OnceLock::new(),
            http: reqwest::Client::new(),
            cell_dbs: celldb::CellDbs::new(),
        })
    }

    /// Connect the API to the boot pipeline (once).
    pub fn wire_boot(&self, w: servers::BootWiring) {
        if self.boot.set(w).is_err() {
            tracing::warn!("the boot pipeline was wired twice; keeping the first");
        }
    }

    /// The pool of one cell's database.
    pub async fn cell_db(&self, cell: &CellMapping) -> Result<Db, ComputeError> {
        self.cell_dbs.get(cell).await
    }

    /// Every cell mapping (cell0 included), read fresh: a new cell is seen without a restart.
    pub async fn cells(&self) -> Result<Vec<CellMapping>, ComputeError> {
        cells::cell_list(&self.api_db).await
    }

    /// Run `f` against every cell (all at once, each within the cell timeout). A cell that fails or is too
    /// slow is logged and left out (the caller gets what the others answered).
    pub async fn each_cell<T, F, Fut>(&self, f: F) -> Result<Vec<(CellMapping, T)>, ComputeError>
    where
        F: Fn(CellMapping, Db) -> Fut,
        Fut: std::future::Future<Output = Result<T, ComputeError>>,
    {
        let cells = self.cells().await?;
        let mut futs = Vec::new();
        for c in cells {
            let timeout = self.settings.cell_timeout;
            let db = self.cell_db(&c).await;
            let f = &f;
            futs.push(async move {
                let r = match db {
                    Ok(db) => match tokio::time::timeout(timeout, f(c.clone(), db)).await {
                        Ok(r) => r,
                        Err(_) => Err(ComputeError::NotFound(format!("cell {} timed out", c.uuid))),
                    },
                    Err(e) => Err(e),
                };
                (c, r)
            });
        }
        let mut out = Vec::new();
        for (c, r) in futures_util::future::join_all(futs).await {
            match r {
                Ok(v) => out.push((c, v)),
                Err(e) => tracing::warn!(cell = %c.uuid, error = %e, "cell did not answer; left out"),
            }
        }
        Ok(out)
    }
}

fn version_doc(base: &str) -> serde_json::Value {
    json!({
        "id": "v2.1",
        "status": "CURRENT",
        "version": format!("2.{}", microversion::MAX),
        "min_version": format!("2.{}", microversion::MIN),
        "updated": "2013-07-23T11:33:21Z",
        "links": [{"rel": "self", "href": format!("{base}/v2.1/")}],
    })
}

pub(crate) fn base_url(headers: &http::HeaderMap) -> String {
    let host = headers
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("localhost");
    format!("http://{host}")
}

async fn versions(headers: http::HeaderMap) -> Response {
    let base = base_url(&headers);
    let v20 = json!({
        "id": "v2.0", "status": "DEPRECATED", "version": "", "min_version": "",
        "updated": "2025-07-04T12:00:00Z", "links": [{"rel": "self", "href": format!("{base}/v2/")}],
    });
    (
        StatusCode::OK,
        axum::Json(json!({"versions": [v20, version_doc(&base)]})),
    )
        .into_response()
}

async fn version_v21(headers: http::HeaderMap) -> Response {
    let base = base_url(&headers);
    let mut v = version_doc(&base);
    v["links"] = json!([
        {"rel": "self", "href": format!("{base}/v2.1/")},
        {"rel": "describedby", "type": "text/html", "href": "http://docs.openstack.org/"}
    ]);
    v["media-types"] =
        json!([{"base": "application/json", "type": "application/vnd.openstack.compute+json;version=2.1"}]);
    axum::Json(json!({ "version": v })).into_response()
}

/// The Compute API router behind the auth layer.
pub fn router(api: Arc<ComputeApi>, validator: Arc<dyn TokenValidator>, identity_uri: &str) -> Router {
    let layer = AuthLayer {
        validator,
        family: Family::Nova,
        identity_uri: identity_uri.to_string(),
    };
    let metrics = Metrics::new("compute");
    #[rustfmt::skip]
    let protected = Router::new()
        .route("/v2.1/servers", get(servers::list).post(servers::create))
        .route("/v2.1/servers/detail", get(servers::detail))
        .route("/v2.1/servers/{id}", get(servers::show).delete(servers::delete))
        .route("/v2.1/servers/{id}/action", axum::routing::post(servers::action))
        .route("/v2.1/os-server-external-events", axum::routing::post(events::create))
        .route("/v2.1/servers/{id}/os-interface", get(interfaces::list).post(interfaces::create))
        .route(
            "/v2.1/servers/{id}/os-interface/{port_id}",
            get(interfaces::show).delete(interfaces::delete),
        )
        .route("/v2.1/os-services", get(services::list))
        .route("/v2.1/os-services/{id}", axum::routing::put(services::update).delete(services::delete))
        .route("/v2.1/os-aggregates", get(aggregates::list).post(aggregates::create))
        .route("/v2.1/os-aggregates/{id}", get(aggregates::show).put(aggregates::update).delete(aggregates::delete))
        .route("/v2.1/os-aggregates/{id}/action", axum::routing::post(aggregates::action))
        .route("/v2.1/os-server-groups", get(server_groups::list).post(server_groups::create))
        .route("/v2.1/os-server-groups/{id}", get(server_groups::show).delete(server_groups::delete))
        .route("/v2.1/os-keypairs", get(keypairs::list).post(keypairs::create))
        .route("/v2.1/os-keypairs/{name}", get(keypairs::show).delete(keypairs::delete))
        .route("/v2.1/flavors", get(flavors::list).post(flavors::create))
        .route("/v2.1/flavors/detail", get(flavors::detail))
        .route("/v2.1/flavors/{id}", get(flavors::show).put(flavors::update).delete(flavors::delete))
        .route("/v2.1/flavors/{id}/action", axum::routing::post(flavors::action))
        .route("/v2.1/flavors/{id}/os-flavor-access", get(flavors::access_list))
        .route("/v2.1/flavors/{id}/os-extra_specs", get(flavors::specs_list).post(flavors::specs_create))
        .route("/v2.1/flavors/{id}/os-extra_specs/{key}",
            get(flavors::spec_show).put(flavors::spec_update).delete(flavors::spec_delete))
        .route("/v2.1/os-hypervisors", get(hypervisors::list))
        .route("/v2.1/os-hypervisors/detail", get(hypervisors::detail))
        .route("/v2.1/os-hypervisors/{id}", get(hypervisors::show))
        .route("/v2.1/os-availability-zone", get(zones::list))
        .route("/v2.1/os-availability-zone/detail", get(zones::detail))
        .route_layer(from_fn_with_state(layer, require_token))
        .with_state(api);
    Router::new()
        .route("/", get(versions))
        .route("/v2.1", get(version_v21))
        .route("/v2.1/", get(version_v21))
        .merge(protected)
        .layer(from_fn(microversion::layer))
        .route_service("/metrics", get(metrics_handler).with_state(metrics.clone()))
        .layer(from_fn_with_state(metrics, observe))
}

#[cfg(test)]
mod tests {
    #[test]
    fn times_match_the_calendar() {
        let mut t = -62_135_596_800_000_000i64; // 0001-01-01
        let step = 7_919_000_003_331i64; // about three months, odd microseconds
        while t < 253_402_300_799_000_000 {
            let d = time::OffsetDateTime::from_unix_timestamp_nanos(t as i128 * 1000).unwrap();
            let want = format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}",
                d.year(),
                d.month() as u8,
                d.day(),
                d.hour(),
                d.minute(),
                d.second(),
                d.microsecond()
            );
            assert_eq!(super::naive_time(t), want, "{t}");
            t += step;
        }
        assert_eq!(super::naive_time(0), "1970-01-01T00:00:00.000000");
        assert_eq!(super::servers::iso(951_782_400_000_001), "2000-02-29T00:00:00Z");
        assert_eq!(super::servers::iso(-1), "1969-12-31T23:59:59Z");
    }
}

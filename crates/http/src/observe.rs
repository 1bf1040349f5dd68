//! Request ids and metrics for every API service.
//!
//! Each request gets an id (`req-<uuid>`), or keeps the one a calling Tessera service sent in
//! `X-OpenStack-Request-ID`, so one id follows a request across services and cells. The id is put in the
//! request's extensions, in a tracing span around the handler, and in the `x-openstack-request-id`
//! response header. [`Metrics`] counts requests per method, route and status, with a latency histogram,
//! rendered in the Prometheus text format at `/metrics`.

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::HeaderValue;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tracing::Instrument;

pub const REQUEST_ID_HEADER: &str = "x-openstack-request-id";

/// The request id, in request extensions.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

fn valid_incoming(id: &str) -> bool {
    id.len() == 40 && id.starts_with("req-") && id[4..].chars().all(|c| c.is_ascii_hexdigit() || c == '-')
}

const BUCKETS: [f64; 10] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.5];

#[derive(Default)]
struct Series {
    count: u64,
    sum: f64,
    buckets: [u64; BUCKETS.len()],
}

/// Per-service request metrics.
pub struct Metrics {
    service: &'static str,
    series: Mutex<BTreeMap<(String, String, u16), Series>>,
}

impl Metrics {
    pub fn new(service: &'static str) -> Arc<Self> {
        Arc::new(Self {
            service,
            series: Mutex::new(BTreeMap::new()),
        })
    }

    fn observe(&self, method: &str, route: &str, status: u16, secs: f64) {
        if let Ok(mut m) = self.series.lock() {
            let s = m
                .entry((method.to_string(), route.to_string(), status))
                .or_default();
            s.count += 1;
            s.sum += secs;
            for (i, b) in BUCKETS.iter().enumerate() {
                if secs <= *b {
                    s.buckets[i] += 1;
                }
            }
        }
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let svc = self.service;
        let _ = writeln!(out, "# HELP tessera_http_requests_total HTTP requests handled.");
        let _ = writeln!(out, "# TYPE tessera_http_requests_total counter");
        let Ok(m) = self.series.lock() else { return out };
        for ((method, route, status), s) in m.iter() {
            let _ = writeln!(
                out,
                "tessera_http_requests_total{{service=\"{svc}\",method=\"{method}\",route=\"{route}\",status=\"{status}\"}} {}",
                s.count
            );
        }
        let _ = writeln!(
            out,
            "# HELP tessera_http_request_duration_seconds HTTP request latency."
        );
        let _ = writeln!(out, "# TYPE tessera_http_request_duration_seconds histogram");
        for ((method, route, status), s) in m.iter() {
            let labels =
                format!("service=\"{svc}\",method=\"{method}\",route=\"{route}\",status=\"{status}\"");
            for (i, b) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "tessera_http_request_duration_seconds_bucket{{{labels},le=\"{b}\"}} {}",
                    s.buckets[i]
                );
            }
            let _ = writeln!(
                out,
                "tessera_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}",
                s.count
            );
            let _ = writeln!(
                out,
                "tessera_http_request_duration_seconds_sum{{{labels}}} {}",
                s.sum
            );
            let _ = writeln!(
                out,
                "tessera_http_request_duration_seconds_count{{{labels}}} {}",
                s.count
            );
        }
        out
    }
}

/// Handler for `GET /metrics`.
pub async fn metrics_handler(State(m): State<Arc<Metrics>>) -> Response {
    (
        [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        m.render(),
    )
        .into_response()
}

/// Middleware: request id, tracing span, access log line and metrics.
pub async fn observe(State(metrics): State<Arc<Metrics>>, mut req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| valid_incoming(v))
        .map(str::to_string)
        .unwrap_or_else(tessera_types::new_request_id);
    req.extensions_mut().insert(RequestId(id.clone()));
    let method = req.method().to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let path = req.uri().path().to_string();
    let span = tracing::info_span!("request", request_id = %id, service = metrics.service);
    let start = Instant::now();
    let mut resp = next.run(req).instrument(span.clone()).await;
    let secs = start.elapsed().as_secs_f64();
    let status = resp.status().as_u16();
    span.in_scope(|| {
        tracing::debug!(%method, %path, status, elapsed_ms = secs * 1000.0, "request");
    });
    metrics.observe(&method, &route, status, secs);
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incoming_ids_are_checked() {
        assert!(valid_incoming("req-123e4567-e89b-12d3-a456-426614174000"));
        assert!(!valid_incoming("req-<script>"));
        assert!(!valid_incoming("123e4567-e89b-12d3-a456-426614174000"));
    }

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::new("identity");
        m.observe("GET", "/v3", 200, 0.002);
        let t = m.render();
        assert!(t.contains(
            "tessera_http_requests_total{service=\"identity\",method=\"GET\",route=\"/v3\",status=\"200\"} 1"
        ));
        assert!(t.contains("le=\"0.0025\"} 1"));
        assert!(t.contains("le=\"0.001\"} 0"));
    }
}

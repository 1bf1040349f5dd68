//! Compute microversions: `OpenStack-API-Version: compute 2.N` or the legacy `X-OpenStack-Nova-API-Version:
//! 2.N` (the new header wins), 2.1 when absent, `latest` = the maximum, 406 outside the range, 400 when
//! malformed. Every response (errors too) names the version used in both headers and varies on both.

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, StatusCode};
use tessera_http::{ApiError, Family};

pub const MIN: u32 = 1;
/// The highest microversion served (2025.x's maximum).
pub const MAX: u32 = 100;

/// The negotiated minor version (major is always 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Mv(pub u32);

impl Mv {
    pub fn at_least(self, minor: u32) -> bool {
        self.0 >= minor
    }
}

fn requested(headers: &HeaderMap) -> Option<String> {
    let new = headers
        .get_all("openstack-api-version")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|h| h.split(','))
        .find_map(|part| {
            let (svc, v) = part.trim().split_once(char::is_whitespace)?;
            svc.eq_ignore_ascii_case("compute").then(|| v.trim().to_string())
        });
    new.or_else(|| {
        headers
            .get("x-openstack-nova-api-version")
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().to_string())
    })
}

/// The version a request asks for, or the error answer.
pub fn negotiate(headers: &HeaderMap) -> Result<Mv, ApiError> {
    let Some(v) = requested(headers) else {
        return Ok(Mv(MIN));
    };
    if v.eq_ignore_ascii_case("latest") {
        return Ok(Mv(MAX));
    }
    let parsed = v.split_once('.').and_then(|(a, b)| {
        let ok = |s: &str| {
            !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()) && (s == "0" || !s.starts_with('0'))
        };
        (ok(a) && ok(b) && a != "0").then_some(())?;
        Some((a.parse::<u32>().ok()?, b.parse::<u32>().ok()?))
    });
    match parsed {
        Some((2, minor)) if (MIN..=MAX).contains(&minor) => Ok(Mv(minor)),
        Some(_) => Err(ApiError::new(
            Family::Nova,
            StatusCode::NOT_ACCEPTABLE,
            format!("Version {v} is not supported by the API. Minimum is 2.{MIN} and maximum is 2.{MAX}."),
        )),
        None => Err(ApiError::new(
            Family::Nova,
            StatusCode::BAD_REQUEST,
            format!("API Version String {v} is of invalid format. Must be of format MajorNum.MinorNum."),
        )),
    }
}

fn stamp(r: &mut Response, mv: Mv) {
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&format!("compute 2.{}", mv.0)) {
        h.insert("openstack-api-version", v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("2.{}", mv.0)) {
        h.insert("x-openstack-nova-api-version", v);
    }
    h.append(
        http::header::VARY,
        HeaderValue::from_static("OpenStack-API-Version"),
    );
    h.append(
        http::header::VARY,
        HeaderValue::from_static("X-OpenStack-Nova-API-Version"),
    );
}

/// Middleware: negotiate, hand the version to handlers as an extension, stamp the answer.
pub async fn layer(mut req: Request, next: Next) -> Response {
    match negotiate(req.headers()) {
        Ok(mv) => {
            req.extensions_mut().insert(mv);
            let mut r = next.run(req).await;
            stamp(&mut r, mv);
            r
        }
        Err(e) => {
            let mut r = e.into_response();
            stamp(&mut r, Mv(MIN));
            r
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(*k, HeaderValue::from_static(v));
        }
        m
    }

    #[test]
    fn negotiation() {
        assert_eq!(negotiate(&h(&[])).ok(), Some(Mv(1)));
        assert_eq!(
            negotiate(&h(&[("openstack-api-version", "compute 2.53")])).ok(),
            Some(Mv(53))
        );
        assert_eq!(
            negotiate(&h(&[("openstack-api-version", "placement 1.3, compute latest")])).ok(),
            Some(Mv(MAX))
        );
        assert_eq!(
            negotiate(&h(&[("x-openstack-nova-api-version", "2.11")])).ok(),
            Some(Mv(11))
        );
        assert_eq!(
            negotiate(&h(&[
                ("x-openstack-nova-api-version", "2.11"),
                ("openstack-api-version", "compute 2.60")
            ]))
            .ok(),
            Some(Mv(60))
        );
        assert_eq!(
            negotiate(&h(&[("openstack-api-version", "compute 2.999")]))
                .err()
                .map(|e| e.status),
            Some(StatusCode::NOT_ACCEPTABLE)
        );
        assert_eq!(
            negotiate(&h(&[("openstack-api-version", "compute 3.0")]))
                .err()
                .map(|e| e.status),
            Some(StatusCode::NOT_ACCEPTABLE)
        );
        for bad in ["compute 2.x", "compute 2.01", "compute 2"] {
            let mut m = HeaderMap::new();
            m.insert("openstack-api-version", HeaderValue::from_static(bad));
            assert_eq!(
                negotiate(&m).err().map(|e| e.status),
                Some(StatusCode::BAD_REQUEST),
                "{bad}"
            );
        }
    }
}

//! Microversions: `OpenStack-API-Version: placement 1.N`, 1.0 when absent, `latest` = 1.39, 406 outside the
//! range, 400 when unparseable. Every response says which version served it; successful ones add
//! `Vary: openstack-api-version`.

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode};
use serde_json::json;

pub const MIN: u32 = 0;
pub const MAX: u32 = 39;
pub const HEADER: &str = "openstack-api-version";

/// The negotiated minor version (major is always 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Mv(pub u32);

impl Mv {
    pub fn at_least(self, minor: u32) -> bool {
        self.0 >= minor
    }
}

/// The placement entry of an `OpenStack-API-Version` header (which may name several services).
fn requested(h: &str) -> Option<&str> {
    h.split(',').map(str::trim).find_map(|part| {
        let (svc, v) = part.split_once(char::is_whitespace)?;
        svc.eq_ignore_ascii_case("placement").then(|| v.trim())
    })
}

pub enum Negotiated {
    Ok(Mv),
    Unacceptable(String),
    Bad(String),
}

pub fn negotiate(header: Option<&str>) -> Negotiated {
    let Some(v) = header.and_then(requested) else {
        return Negotiated::Ok(Mv(MIN));
    };
    if v.eq_ignore_ascii_case("latest") {
        return Negotiated::Ok(Mv(MAX));
    }
    let parsed = v
        .split_once('.')
        .and_then(|(a, b)| Some((a.parse::<u32>().ok()?, b.parse::<u32>().ok()?)));
    match parsed {
        Some((1, minor)) if minor <= MAX => Negotiated::Ok(Mv(minor)),
        Some(_) => Negotiated::Unacceptable(format!("Unacceptable version header: {v}")),
        None => Negotiated::Bad(format!("invalid version string: {v}")),
    }
}

fn version_header(mv: Mv) -> HeaderValue {
    HeaderValue::from_str(&format!("placement 1.{}", mv.0))
        .unwrap_or(HeaderValue::from_static("placement 1.0"))
}

/// Middleware: negotiate, put [`Mv`] in the request, label the response.
pub async fn layer(mut req: Request, next: Next) -> Response {
    let h = req.headers().get(HEADER).and_then(|v| v.to_str().ok());
    let mv = match negotiate(h) {
        Negotiated::Ok(mv) => mv,
        Negotiated::Unacceptable(m) => {
            let body = json!({"errors": [{
                "status": 406, "title": "Not Acceptable", "detail": m,
                "code": "placement.undefined_code",
                "max_version": format!("1.{MAX}"), "min_version": format!("1.{MIN}"),
            }]});
            return (StatusCode::NOT_ACCEPTABLE, axum::Json(body)).into_response();
        }
        Negotiated::Bad(m) => {
            return crate::error::bad(m).into_response();
        }
    };
    req.extensions_mut().insert(mv);
    let mut resp = next.run(req).await;
    let ok = resp.status().is_success();
    let h = resp.headers_mut();
    h.insert(HEADER, version_header(mv));
    if ok {
        h.insert(http::header::VARY, HeaderValue::from_static(HEADER));
        if mv.at_least(15) {
            h.insert(http::header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            if let Ok(v) = HeaderValue::from_str(&http_date(std::time::SystemTime::now())) {
                h.insert(http::header::LAST_MODIFIED, v);
            }
        }
    }
    resp
}

/// An IMF-fixdate (`Tue, 24 Nov 2026 04:30:00 GMT`).
fn http_date(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0) as i64;
    let dt = time::OffsetDateTime::from_unix_timestamp(secs).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} GMT",
        DAYS[dt.weekday().number_days_from_monday() as usize],
        dt.day(),
        MONTHS[dt.month() as usize - 1],
        dt.year(),
        dt.hour(),
        dt.minute(),
        dt.second()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(h: Option<&str>) -> Option<u32> {
        match negotiate(h) {
            Negotiated::Ok(m) => Some(m.0),
            _ => None,
        }
    }

    #[test]
    fn dates() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_795_000_000);
        assert_eq!(http_date(t), "Wed, 18 Nov 2026 11:06:40 GMT");
    }

    #[test]
    fn negotiation() {
        assert_eq!(ok(None), Some(0));
        assert_eq!(ok(Some("placement 1.30")), Some(30));
        assert_eq!(ok(Some("compute 2.1, placement 1.17")), Some(17));
        assert_eq!(ok(Some("placement latest")), Some(MAX));
        assert_eq!(ok(Some("compute 2.90")), Some(0));
        assert!(matches!(
            negotiate(Some("placement 1.99")),
            Negotiated::Unacceptable(_)
        ));
        assert!(matches!(
            negotiate(Some("placement 2.0")),
            Negotiated::Unacceptable(_)
        ));
        assert!(matches!(negotiate(Some("placement one")), Negotiated::Bad(_)));
    }
}

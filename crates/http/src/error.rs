//! The one place where error bodies are built. Each API family has its own shape:
//! Keystone `{"error": {"code", "title", "message"}}` (401s carry `WWW-Authenticate`), Nova
//! `{"<kind>": {"code", "message"}}`, Placement `{"errors": [{"status", "title", "detail", "code",
//! "request_id"}]}`, Neutron `{"NeutronError": {"type", "message", "detail"}}`, Glance's plain text pages.

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode};
use serde_json::json;

/// The API family a service belongs to, which decides the error body shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Keystone,
    Nova,
    Placement,
    Glance,
    Neutron,
}

/// An error as the user sees it. What only the log should see is logged where the error is made.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub family: Family,
    pub status: StatusCode,
    pub message: String,
    /// Family-specific kind: Nova's `itemNotFound`, Neutron's `NetworkNotFound`, Placement's error code.
    pub kind: Option<String>,
    /// For Keystone 401s: the identity URI put in `WWW-Authenticate`.
    pub www_authenticate: Option<String>,
}

impl ApiError {
    pub fn new(family: Family, status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            family,
            status,
            message: message.into(),
            kind: None,
            www_authenticate: None,
        }
    }
    pub fn with_kind(mut self, kind: impl Into<String>) -> Self {
        self.kind = Some(kind.into());
        self
    }
    pub fn with_www_authenticate(mut self, uri: impl Into<String>) -> Self {
        self.www_authenticate = Some(uri.into());
        self
    }

    /// The JSON body for this error.
    pub fn body(&self) -> serde_json::Value {
        let code = self.status.as_u16();
        let title = self.status.canonical_reason().unwrap_or("Error");
        match self.family {
            Family::Keystone => json!({"error": {"code": code, "title": title, "message": self.message}}),
            Family::Nova => {
                let kind = self
                    .kind
                    .clone()
                    .unwrap_or_else(|| nova_kind(self.status).to_string());
                json!({ kind: {"code": code, "message": self.message} })
            }
            Family::Placement => json!({"errors": [{
                "status": code, "title": title, "detail": self.message,
                "code": self.kind.clone().unwrap_or_else(|| "placement.undefined_code".into()),
            }]}),
            Family::Neutron => json!({"NeutronError": {
                "type": self.kind.clone().unwrap_or_else(|| title.replace(' ', "")),
                "message": self.message, "detail": ""
            }}),
            Family::Glance => json!({"code": code, "title": title, "message": self.message}),
        }
    }
}

fn nova_kind(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "badRequest",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "itemNotFound",
        405 => "badMethod",
        409 => "conflictingRequest",
        413 => "overLimit",
        415 => "badMediaType",
        501 => "notImplemented",
        503 => "serviceUnavailable",
        _ => "computeFault",
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = self.body();
        let mut resp = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            if let Some(uri) = &self.www_authenticate {
                if let Ok(v) = HeaderValue::from_str(&format!("Keystone uri=\"{uri}\"")) {
                    resp.headers_mut().insert(http::header::WWW_AUTHENTICATE, v);
                }
            }
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_per_family() {
        let e = ApiError::new(
            Family::Keystone,
            StatusCode::UNAUTHORIZED,
            "The request you have made requires authentication.",
        );
        assert_eq!(e.body()["error"]["title"], "Unauthorized");
        assert_eq!(e.body()["error"]["code"], 401);
        let e = ApiError::new(
            Family::Nova,
            StatusCode::NOT_FOUND,
            "Instance x could not be found.",
        );
        assert_eq!(e.body()["itemNotFound"]["code"], 404);
        let e = ApiError::new(Family::Placement, StatusCode::CONFLICT, "x")
            .with_kind("placement.concurrent_update");
        assert_eq!(e.body()["errors"][0]["code"], "placement.concurrent_update");
    }

    #[test]
    fn unauthorized_carries_www_authenticate() {
        let r = ApiError::new(Family::Keystone, StatusCode::UNAUTHORIZED, "x")
            .with_www_authenticate("http://127.0.0.1:5000/v3")
            .into_response();
        assert_eq!(
            r.headers()[http::header::WWW_AUTHENTICATE],
            "Keystone uri=\"http://127.0.0.1:5000/v3\""
        );
    }
}

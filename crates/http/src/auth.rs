//! The auth layer (our keystonemiddleware): every service puts [`require_token`] in front of its protected
//! routes. It reads `X-Auth-Token`, asks a [`TokenValidator`] — the Identity service's own validator in the
//! same process (keys from the shared Fernet repository, revocations and roles from the identity database,
//! cached) — and hands the handler a [`RequestContext`] with user, project, roles and request id. Missing or
//! bad tokens get a 401 in the service's error family, with `WWW-Authenticate: Keystone uri=…`.

use crate::error::{ApiError, Family};
use crate::observe::RequestId;
use axum::extract::{FromRequestParts, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::request::Parts;
use http::StatusCode;
use std::sync::Arc;
use tessera_types::RequestContext;

/// Why a token was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TokenError {
    #[error("The request you have made requires authentication.")]
    Missing,
    #[error("The token is invalid, expired or revoked.")]
    Invalid,
    #[error("identity backend unavailable: {0}")]
    Backend(String),
}

/// Validates a token and returns who it speaks for. `request_id` of the result is left empty; the layer
/// fills it in.
#[async_trait::async_trait]
pub trait TokenValidator: Send + Sync + 'static {
    async fn validate(&self, token: &str, allow_expired: bool) -> Result<RequestContext, TokenError>;
}

/// State of the auth middleware.
#[derive(Clone)]
pub struct AuthLayer {
    pub validator: Arc<dyn TokenValidator>,
    pub family: Family,
    /// Identity URI for `WWW-Authenticate`.
    pub identity_uri: String,
}

impl AuthLayer {
    pub fn unauthorized(&self, message: impl Into<String>) -> ApiError {
        ApiError::new(self.family, StatusCode::UNAUTHORIZED, message)
            .with_www_authenticate(self.identity_uri.clone())
    }
}

/// Middleware: validate `X-Auth-Token`, insert the [`RequestContext`] into the request.
pub async fn require_token(State(layer): State<AuthLayer>, mut req: Request, next: Next) -> Response {
    let token = req
        .headers()
        .get("x-auth-token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        return layer
            .unauthorized(TokenError::Missing.to_string())
            .into_response();
    };
    match layer.validator.validate(&token, false).await {
        Ok(mut ctx) => {
            if let Some(RequestId(id)) = req.extensions().get::<RequestId>() {
                ctx.request_id = id.clone();
            }
            tracing::debug!(user_id = %ctx.user_id, project_id = ?ctx.project_id(), "authenticated");
            req.extensions_mut().insert(Arc::new(ctx));
            next.run(req).await
        }
        Err(TokenError::Backend(e)) => {
            tracing::error!(error = %e, "token validation failed on the backend");
            ApiError::new(
                layer.family,
                StatusCode::SERVICE_UNAVAILABLE,
                "The identity service is unavailable.",
            )
            .into_response()
        }
        Err(e) => layer.unauthorized(e.to_string()).into_response(),
    }
}

/// Extractor for the authenticated caller (present on routes behind [`require_token`]).
#[derive(Debug, Clone)]
pub struct Caller(pub Arc<RequestContext>);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Arc<RequestContext>>()
            .cloned()
            .map(Caller)
            .ok_or_else(|| {
                tracing::error!("route reached without the auth layer");
                StatusCode::INTERNAL_SERVER_ERROR.into_response()
            })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::observe::{observe, Metrics};
    use axum::body::Body;
    use axum::middleware::from_fn_with_state;
    use axum::routing::get;
    use axum::Router;
    use tower::ServiceExt as _;

    struct Fake;

    #[async_trait::async_trait]
    impl TokenValidator for Fake {
        async fn validate(&self, token: &str, _allow_expired: bool) -> Result<RequestContext, TokenError> {
            match token {
                "good" => Ok(RequestContext {
                    request_id: String::new(),
                    user_id: "u1".into(),
                    user_name: "alice".into(),
                    user_domain_id: "default".into(),
                    user_domain_name: "Default".into(),
                    scope: tessera_types::Scope::Project {
                        id: "p1".into(),
                        name: "demo".into(),
                        domain_id: "default".into(),
                        domain_name: "Default".into(),
                    },
                    roles: vec!["member".into(), "reader".into()],
                    audit_id: "a".into(),
                    application_credential_id: None,
                    expires_at: 0,
                }),
                "down" => Err(TokenError::Backend("db gone".into())),
                _ => Err(TokenError::Invalid),
            }
        }
    }

    fn app(family: Family) -> Router {
        let layer = AuthLayer {
            validator: Arc::new(Fake),
            family,
            identity_uri: "http://id/v3".into(),
        };
        Router::new()
            .route(
                "/who",
                get(|Caller(c): Caller| async move {
                    format!(
                        "{} {:?} {} {}",
                        c.user_id,
                        c.project_id(),
                        c.roles.join(","),
                        c.request_id
                    )
                }),
            )
            .route_layer(from_fn_with_state(layer, require_token))
            .layer(from_fn_with_state(Metrics::new("test"), observe))
    }

    async fn call(r: Router, token: Option<&str>) -> (StatusCode, http::HeaderMap, String) {
        let mut req = http::Request::get("/who");
        if let Some(t) = token {
            req = req.header("x-auth-token", t);
        }
        let resp = r.oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
        (status, headers, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn handlers_get_the_caller_and_request_id() {
        let (s, h, body) = call(app(Family::Placement), Some("good")).await;
        assert_eq!(s, StatusCode::OK);
        let rid = h.get("x-openstack-request-id").unwrap().to_str().unwrap();
        assert_eq!(body, format!("u1 Some(\"p1\") member,reader {rid}"));
    }

    #[tokio::test]
    async fn refusals_use_the_service_family() {
        let (s, h, body) = call(app(Family::Placement), None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        assert_eq!(
            h.get("www-authenticate").unwrap(),
            "Keystone uri=\"http://id/v3\""
        );
        assert!(body.contains("\"errors\""), "{body}");
        let (s, _, body) = call(app(Family::Nova), Some("bad")).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        assert!(body.contains("\"unauthorized\""), "{body}");
        let (s, _, _) = call(app(Family::Keystone), Some("down")).await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    }
}

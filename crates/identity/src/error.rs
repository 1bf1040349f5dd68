//! Identity errors and how they are shown: Keystone's `{"error": {"code", "title", "message"}}`, with
//! `WWW-Authenticate` on every 401.

use axum::response::{IntoResponse, Response};
use http::StatusCode;
use tessera_http::{ApiError, Family};

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{0}")]
    Validation(String),
    #[error("The request you have made requires authentication.")]
    Unauthorized,
    #[error("{0}")]
    UnauthorizedWith(String),
    #[error("You are not authorized to perform the requested action: {0}.")]
    Forbidden(String),
    #[error("{0}")]
    ForbiddenNotSecret(String),
    #[error("Could not find {kind}: {id}.")]
    NotFound { kind: &'static str, id: String },
    #[error("Conflict occurred attempting to store {kind} - {message}.")]
    Conflict { kind: &'static str, message: String },
    #[error("Failed to validate token")]
    TokenNotFound,
    #[error("database error")]
    Db(#[from] tessera_db::DbError),
    #[error("internal error: {0}")]
    Internal(String),
    /// An error already shaped by the shared HTTP plumbing (content type, malformed JSON).
    #[error("{}", .0.message)]
    Http(tessera_http::ApiError),
}

impl From<sqlx::Error> for IdentityError {
    fn from(e: sqlx::Error) -> Self {
        IdentityError::Db(tessera_db::DbError::Sqlx(e))
    }
}

pub type Result<T, E = IdentityError> = std::result::Result<T, E>;

impl IdentityError {
    pub fn not_found(kind: &'static str, id: impl Into<String>) -> Self {
        IdentityError::NotFound { kind, id: id.into() }
    }
    pub fn forbidden(action: &str) -> Self {
        IdentityError::Forbidden(format!("identity:{action}"))
    }
    pub fn status(&self) -> StatusCode {
        match self {
            IdentityError::Validation(_) => StatusCode::BAD_REQUEST,
            IdentityError::Unauthorized | IdentityError::UnauthorizedWith(_) => StatusCode::UNAUTHORIZED,
            IdentityError::Forbidden(_) | IdentityError::ForbiddenNotSecret(_) => StatusCode::FORBIDDEN,
            IdentityError::NotFound { .. } | IdentityError::TokenNotFound => StatusCode::NOT_FOUND,
            IdentityError::Conflict { .. } => StatusCode::CONFLICT,
            IdentityError::Db(_) | IdentityError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            IdentityError::Http(e) => e.status,
        }
    }
}

impl IntoResponse for IdentityError {
    fn into_response(self) -> Response {
        let status = self.status();
        let message = match &self {
            IdentityError::Db(e) => {
                tracing::error!(error = ?e, "identity database error");
                "An unexpected error prevented the server from fulfilling your request.".to_string()
            }
            IdentityError::Internal(m) => {
                tracing::error!(error = %m, "identity internal error");
                "An unexpected error prevented the server from fulfilling your request.".to_string()
            }
            other => other.to_string(),
        };
        // The router adds `WWW-Authenticate` to every 401 (it knows the service's URI).
        ApiError::new(Family::Keystone, status, message).into_response()
    }
}

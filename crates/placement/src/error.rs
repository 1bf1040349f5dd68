//! Placement errors: `{"errors": [{"status", "title", "detail", "code", "request_id"}]}` with upstream's codes.

use axum::response::{IntoResponse, Response};
use http::StatusCode;
use tessera_http::{ApiError, Family};

pub const CONCURRENT_UPDATE: &str = "placement.concurrent_update";
pub const DUPLICATE_NAME: &str = "placement.duplicate_name";
pub const INVENTORY_INUSE: &str = "placement.inventory.inuse";
pub const PROVIDER_INUSE: &str = "placement.resource_provider.inuse";
pub const CANNOT_DELETE_PARENT: &str = "placement.resource_provider.cannot_delete_parent";
pub const PROVIDER_NOT_FOUND: &str = "placement.resource_provider.not_found";
pub const QUERY_DUPLICATE_KEY: &str = "placement.query.duplicate_key";
pub const QUERY_BAD_VALUE: &str = "placement.query.bad_value";
pub const QUERY_MISSING_VALUE: &str = "placement.query.missing_value";

#[derive(Debug, thiserror::Error)]
pub enum PlacementError {
    /// 400 with an optional code.
    #[error("{0}")]
    BadRequest(String, Option<&'static str>),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    /// 409 with an optional code (default `placement.undefined_code`).
    #[error("{0}")]
    Conflict(String, Option<&'static str>),
    #[error("{0}")]
    NotAcceptable(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("database error")]
    Db(#[from] tessera_db::DbError),
    #[error("{}", .0.message)]
    Http(ApiError),
}

impl From<sqlx::Error> for PlacementError {
    fn from(e: sqlx::Error) -> Self {
        PlacementError::Db(tessera_db::DbError::Sqlx(e))
    }
}

pub type Result<T, E = PlacementError> = std::result::Result<T, E>;

pub fn bad(m: impl Into<String>) -> PlacementError {
    PlacementError::BadRequest(m.into(), None)
}

pub fn conflict(m: impl Into<String>) -> PlacementError {
    PlacementError::Conflict(m.into(), None)
}

pub fn concurrent(m: impl Into<String>) -> PlacementError {
    PlacementError::Conflict(m.into(), Some(CONCURRENT_UPDATE))
}

impl PlacementError {
    pub fn api(self) -> ApiError {
        let (status, code) = match &self {
            PlacementError::BadRequest(_, c) => (StatusCode::BAD_REQUEST, *c),
            PlacementError::Forbidden(_) => (StatusCode::FORBIDDEN, None),
            PlacementError::NotFound(_) => (StatusCode::NOT_FOUND, None),
            PlacementError::Conflict(_, c) => (StatusCode::CONFLICT, *c),
            PlacementError::NotAcceptable(_) => (StatusCode::NOT_ACCEPTABLE, None),
            PlacementError::MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, None),
            PlacementError::Http(e) => return e.clone(),
            PlacementError::Db(e) => {
                tracing::error!(error = ?e, "placement database error");
                return ApiError::new(
                    Family::Placement,
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "The server has either erred or is incapable of performing the requested operation.",
                );
            }
        };
        let e = ApiError::new(Family::Placement, status, self.to_string());
        match code {
            Some(c) => e.with_kind(c),
            None => e,
        }
    }
}

impl IntoResponse for PlacementError {
    fn into_response(self) -> Response {
        self.api().into_response()
    }
}

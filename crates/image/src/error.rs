//! Image errors. Glance's error bodies are plain pages; clients read the status and show the message, so we
//! send `{"code", "title", "message"}` JSON with the status Glance uses.

use axum::response::{IntoResponse, Response};
use http::StatusCode;
use tessera_http::{ApiError, Family};

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("No image found with ID {0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    RangeNotSatisfiable(String),
    #[error("database error")]
    Db(#[from] tessera_db::DbError),
    #[error("storage error: {0}")]
    Io(#[from] std::io::Error),
    #[error("{}", .0.message)]
    Http(ApiError),
}

impl From<sqlx::Error> for ImageError {
    fn from(e: sqlx::Error) -> Self {
        ImageError::Db(tessera_db::DbError::Sqlx(e))
    }
}

pub type Result<T, E = ImageError> = std::result::Result<T, E>;

impl IntoResponse for ImageError {
    fn into_response(self) -> Response {
        let status = match &self {
            ImageError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ImageError::Forbidden(_) => StatusCode::FORBIDDEN,
            ImageError::NotFound(_) => StatusCode::NOT_FOUND,
            ImageError::Conflict(_) => StatusCode::CONFLICT,
            ImageError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ImageError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ImageError::RangeNotSatisfiable(_) => StatusCode::RANGE_NOT_SATISFIABLE,
            ImageError::Http(e) => e.status,
            ImageError::Db(_) | ImageError::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let message = match &self {
            ImageError::Db(e) => {
                tracing::error!(error = ?e, "image database error");
                "The server has either erred or is incapable of performing the requested operation."
                    .to_string()
            }
            ImageError::Io(e) => {
                tracing::error!(error = %e, "image store error");
                "The server has either erred or is incapable of performing the requested operation."
                    .to_string()
            }
            other => other.to_string(),
        };
        ApiError::new(Family::Glance, status, message).into_response()
    }
}

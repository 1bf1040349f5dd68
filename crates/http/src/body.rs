//! JSON request bodies with the checks every OpenStack API makes before a handler runs: a JSON content type,
//! well-formed JSON, and a body of the expected shape (serde with `deny_unknown_fields` where upstream's
//! schemas forbid extra properties). Failures become 400s (415 for a wrong content type) in the service's
//! error family, before anything is written.

use crate::error::{ApiError, Family};
use axum::body::Bytes;
use http::{HeaderMap, StatusCode};
use serde::de::DeserializeOwned;

/// Parse a request body as JSON of type `T`.
pub fn parse_json<T: DeserializeOwned>(
    family: Family,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<T, ApiError> {
    if let Some(ct) = headers.get(http::header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or("").to_ascii_lowercase();
        if !(ct.starts_with("application/json") || ct.contains("+json") || ct.is_empty()) {
            return Err(ApiError::new(
                family,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("The media type {ct} is not supported, use application/json"),
            ));
        }
    }
    if body.is_empty() {
        return Err(ApiError::new(
            family,
            StatusCode::BAD_REQUEST,
            "The request body is empty; a JSON object is required.",
        ));
    }
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            family,
            StatusCode::BAD_REQUEST,
            format!("Malformed JSON in request body: {e}"),
        )
    })?;
    if !value.is_object() {
        return Err(ApiError::new(
            family,
            StatusCode::BAD_REQUEST,
            "Invalid input: the request body must be a JSON object.",
        ));
    }
    serde_json::from_value(value).map_err(|e| {
        ApiError::new(
            family,
            StatusCode::BAD_REQUEST,
            format!("Invalid input for the request body: {e}"),
        )
    })
}

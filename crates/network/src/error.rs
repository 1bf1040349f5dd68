//! Neutron's errors: `{"NeutronError": {"type", "message", "detail"}}` with the exception names neutron-lib
//! gives them (clients and Tempest match on `type`).

use axum::response::{IntoResponse, Response};
use http::StatusCode;
use tessera_http::{ApiError, Family};

#[derive(Debug)]
pub enum NetError {
    Api(ApiError),
    Db(tessera_db::DbError),
}

pub type Result<T, E = NetError> = std::result::Result<T, E>;

fn api(status: StatusCode, kind: &str, message: impl Into<String>) -> NetError {
    NetError::Api(ApiError::new(Family::Neutron, status, message).with_kind(kind))
}

impl NetError {
    /// A malformed request (body or query): `HTTPBadRequest`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        api(StatusCode::BAD_REQUEST, "HTTPBadRequest", message)
    }
    /// neutron-lib's `InvalidInput`.
    pub fn invalid_input(message: impl std::fmt::Display) -> Self {
        api(
            StatusCode::BAD_REQUEST,
            "InvalidInput",
            format!("Invalid input for operation: {message}."),
        )
    }
    pub fn bad(status: StatusCode, kind: &str, message: impl Into<String>) -> Self {
        api(status, kind, message)
    }
    pub fn not_found(kind: &str, message: impl Into<String>) -> Self {
        api(StatusCode::NOT_FOUND, kind, message)
    }
    pub fn conflict(kind: &str, message: impl Into<String>) -> Self {
        api(StatusCode::CONFLICT, kind, message)
    }
    /// A policy refusal: 403 `PolicyNotAuthorized`.
    pub fn policy(rule: &str) -> Self {
        api(
            StatusCode::FORBIDDEN,
            "PolicyNotAuthorized",
            format!("({rule}) is disallowed by policy"),
        )
    }
    pub fn network_not_found(id: &str) -> Self {
        Self::not_found("NetworkNotFound", format!("Network {id} could not be found."))
    }
    pub fn subnet_not_found(id: &str) -> Self {
        Self::not_found("SubnetNotFound", format!("Subnet {id} could not be found."))
    }
    pub fn port_not_found(id: &str) -> Self {
        Self::not_found("PortNotFound", format!("Port {id} could not be found."))
    }
    pub fn sg_not_found(id: &str) -> Self {
        Self::not_found(
            "SecurityGroupNotFound",
            format!("Security group {id} does not exist"),
        )
    }
    pub fn sg_rule_not_found(id: &str) -> Self {
        Self::not_found(
            "SecurityGroupRuleNotFound",
            format!("Security group rule {id} does not exist"),
        )
    }
    pub fn over_quota(resource: &str) -> Self {
        Self::conflict(
            "OverQuota",
            format!("Quota exceeded for resources: ['{resource}']."),
        )
    }
}

impl From<tessera_db::DbError> for NetError {
    fn from(e: tessera_db::DbError) -> Self {
        NetError::Db(e)
    }
}

impl From<sqlx::Error> for NetError {
    fn from(e: sqlx::Error) -> Self {
        NetError::Db(tessera_db::DbError::Sqlx(e))
    }
}

impl From<serde_json::Error> for NetError {
    fn from(e: serde_json::Error) -> Self {
        NetError::Db(tessera_db::DbError::Batch(format!("stored document: {e}")))
    }
}

impl IntoResponse for NetError {
    fn into_response(self) -> Response {
        match self {
            NetError::Api(e) => e.into_response(),
            NetError::Db(e) => {
                tracing::error!(error = ?e, "network database error");
                ApiError::new(
                    Family::Neutron,
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Request Failed: internal server error while processing your request.",
                )
                .with_kind("HTTPInternalServerError")
                .into_response()
            }
        }
    }
}

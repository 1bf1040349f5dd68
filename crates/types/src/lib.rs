//! Types shared by every Tessera crate: the request context that handlers receive from the auth layer,
//! id helpers and timestamp formatting in the forms OpenStack APIs use.

pub mod qcow2;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// A new OpenStack-style id: 32 lowercase hex characters, no dashes (Keystone's form).
pub fn new_hex_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// A new dashed UUID (Nova, Glance, Placement and Neutron ids).
pub fn new_uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A new request id in the `req-<uuid>` form every OpenStack service returns.
pub fn new_request_id() -> String {
    format!("req-{}", uuid::Uuid::new_v4())
}

/// Seconds since the Unix epoch, as stored in our databases.
pub fn now_epoch() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

/// Microseconds since the Unix epoch.
pub fn now_epoch_micros() -> i64 {
    (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000) as i64
}

/// Keystone's timestamp form: `2026-01-01T12:00:00.000000Z`.
pub fn iso_micros(epoch_micros: i64) -> String {
    let t = OffsetDateTime::from_unix_timestamp_nanos(epoch_micros as i128 * 1000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.microsecond()
    )
}

/// Parse an ISO 8601 timestamp as clients send them (`2026-01-01T12:00:00Z`, with or without fraction or
/// offset, or without zone meaning UTC) into epoch microseconds.
pub fn parse_iso(s: &str) -> Option<i64> {
    use time::format_description::well_known::Iso8601;
    let s = s.trim();
    if let Ok(t) = OffsetDateTime::parse(s, &Iso8601::DEFAULT) {
        return Some((t.unix_timestamp_nanos() / 1000) as i64);
    }
    // No zone: treat as UTC.
    let with_z = format!("{s}Z");
    OffsetDateTime::parse(&with_z, &Iso8601::DEFAULT)
        .ok()
        .map(|t| (t.unix_timestamp_nanos() / 1000) as i64)
}

/// Mask the password in a URL such as `mysql://user:secret@host/db` → `mysql://user:****@host/db`, for logs
/// and listings.
pub fn mask_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let rest = &url[scheme_end + 3..];
    let Some(at) = rest.rfind('@') else {
        return url.to_string();
    };
    match rest[..at].split_once(':') {
        Some((user, _)) => format!("{}{}:****@{}", &url[..scheme_end + 3], user, &rest[at + 1..]),
        None => url.to_string(),
    }
}

/// Where a token's authority applies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    Unscoped,
    Project {
        id: String,
        name: String,
        domain_id: String,
        domain_name: String,
    },
    Domain {
        id: String,
        name: String,
    },
    System,
}

/// Who is calling, as established by the auth layer: what every handler authorizes against.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RequestContext {
    pub request_id: String,
    pub user_id: String,
    pub user_name: String,
    pub user_domain_id: String,
    pub user_domain_name: String,
    pub scope: Scope,
    /// Effective role names (implied roles included).
    pub roles: Vec<String>,
    /// Audit id of the token that authenticated the request.
    pub audit_id: String,
    /// Set when the token came from an application credential.
    pub application_credential_id: Option<String>,
    /// Epoch microseconds when the token expires.
    pub expires_at: i64,
}

impl RequestContext {
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }
    pub fn is_admin(&self) -> bool {
        self.has_role("admin")
    }
    pub fn project_id(&self) -> Option<&str> {
        match &self.scope {
            Scope::Project { id, .. } => Some(id),
            _ => None,
        }
    }
    pub fn domain_id(&self) -> Option<&str> {
        match &self.scope {
            Scope::Domain { id, .. } => Some(id),
            _ => None,
        }
    }
    pub fn is_system(&self) -> bool {
        matches!(self.scope, Scope::System)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_round_trip() {
        let m = 1_767_225_600_123_456;
        let s = iso_micros(m);
        assert_eq!(s, "2026-01-01T00:00:00.123456Z");
        assert_eq!(parse_iso(&s), Some(m));
        assert_eq!(parse_iso("2026-01-01T00:00:00"), Some(1_767_225_600_000_000));
        assert_eq!(parse_iso("garbage"), None);
    }

    #[test]
    fn ids_have_openstack_shapes() {
        assert_eq!(new_hex_id().len(), 32);
        assert_eq!(new_uuid().len(), 36);
        assert!(new_request_id().starts_with("req-"));
    }
}

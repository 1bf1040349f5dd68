//! Keystone's default policies, in code: `admin` on any scope may do everything (Keystone's
//! `rule:admin_required`), a system-scoped `reader` may read everything, a domain-scoped `reader` may read
//! inside its domain, and users may read and manage what is their own (their user, tokens, projects,
//! application credentials).

use crate::error::{IdentityError, Result};
use tessera_types::RequestContext;

pub fn admin(ctx: &RequestContext) -> bool {
    ctx.is_admin()
}

pub fn system_reader(ctx: &RequestContext) -> bool {
    ctx.is_system() && ctx.has_role("reader")
}

pub fn domain_reader(ctx: &RequestContext, domain_id: &str) -> bool {
    ctx.domain_id() == Some(domain_id) && ctx.has_role("reader")
}

/// `rule:admin_required`.
pub fn require_admin(ctx: &RequestContext, action: &str) -> Result<()> {
    if admin(ctx) {
        Ok(())
    } else {
        Err(IdentityError::forbidden(action))
    }
}

/// Reads of deployment-wide data: admin or system reader.
pub fn require_admin_or_system_reader(ctx: &RequestContext, action: &str) -> Result<()> {
    if admin(ctx) || system_reader(ctx) {
        Ok(())
    } else {
        Err(IdentityError::forbidden(action))
    }
}

/// Reads of data that belongs to a domain: admin, system reader, or reader of that domain.
pub fn require_reader_of_domain(ctx: &RequestContext, domain_id: Option<&str>, action: &str) -> Result<()> {
    if admin(ctx) || system_reader(ctx) || domain_id.is_some_and(|d| domain_reader(ctx, d)) {
        Ok(())
    } else {
        Err(IdentityError::forbidden(action))
    }
}

/// Admins, system readers, and the user itself.
pub fn require_reader_or_owner(
    ctx: &RequestContext,
    user_id: &str,
    domain_id: Option<&str>,
    action: &str,
) -> Result<()> {
    if ctx.user_id == user_id {
        return Ok(());
    }
    require_reader_of_domain(ctx, domain_id, action)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_types::Scope;

    fn ctx(roles: &[&str], scope: Scope) -> RequestContext {
        RequestContext {
            request_id: "r".into(),
            user_id: "u".into(),
            user_name: "u".into(),
            user_domain_id: "default".into(),
            user_domain_name: "Default".into(),
            scope,
            roles: roles.iter().map(|s| s.to_string()).collect(),
            audit_id: "a".into(),
            application_credential_id: None,
            expires_at: 0,
        }
    }

    #[test]
    fn defaults() {
        let proj = Scope::Project {
            id: "p".into(),
            name: "p".into(),
            domain_id: "default".into(),
            domain_name: "Default".into(),
        };
        let member = ctx(&["member", "reader"], proj.clone());
        assert!(require_admin(&member, "list_users").is_err());
        assert!(require_admin_or_system_reader(&member, "list_users").is_err());
        assert!(require_reader_or_owner(&member, "u", Some("default"), "get_user").is_ok());
        assert!(require_reader_or_owner(&member, "other", Some("default"), "get_user").is_err());
        let adm = ctx(&["admin", "manager", "member", "reader"], proj);
        assert!(require_admin(&adm, "create_user").is_ok());
        let sysreader = ctx(&["reader"], Scope::System);
        assert!(require_admin_or_system_reader(&sysreader, "list_users").is_ok());
        assert!(require_admin(&sysreader, "create_user").is_err());
        let dom = ctx(
            &["reader"],
            Scope::Domain {
                id: "d1".into(),
                name: "d1".into(),
            },
        );
        assert!(require_reader_of_domain(&dom, Some("d1"), "list_users").is_ok());
        assert!(require_reader_of_domain(&dom, Some("d2"), "list_users").is_err());
    }
}

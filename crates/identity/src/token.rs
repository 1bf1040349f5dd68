//! Tokens: issuing (`POST /v3/auth/tokens`), validating (with the in-memory validation cache), revoking,
//! and the token model rebuilt from the database on every cache miss — user, scope, effective roles
//! (groups, inheritance and implied roles expanded) and the catalog.

use crate::error::{IdentityError, Result};
use crate::fernet::{self, Payload};
use crate::store::{self, ProjectRow, RevocationEvent};
use crate::Identity;
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;
use tessera_types::{iso_micros, now_epoch_micros, RequestContext, Scope};

pub const SCOPE_UNSCOPED: u8 = 0;
pub const SCOPE_DOMAIN: u8 = 1;
pub const SCOPE_PROJECT: u8 = 2;
pub const SCOPE_SYSTEM: u8 = 8;
pub const SCOPE_APP_CRED: u8 = 9;

/// A validated token with everything its body shows.
#[derive(Debug, Clone)]
pub struct TokenModel {
    pub payload: Payload,
    pub user_id: String,
    pub user_name: String,
    pub user_domain_id: String,
    pub user_domain_name: String,
    pub scope: Scope,
    /// (id, name), effective.
    pub roles: Vec<(String, String)>,
    pub catalog: Vec<Value>,
    pub app_cred: Option<(String, String, bool)>,
}

impl TokenModel {
    pub fn expires_at(&self) -> i64 {
        self.payload.4
    }
    pub fn issued_at(&self) -> i64 {
        self.payload.7
    }
    pub fn audit_ids(&self) -> &[String] {
        &self.payload.5
    }

    /// The token body, as Keystone renders it.
    pub fn to_json(&self, nocatalog: bool) -> Value {
        let mut t = json!({
            "methods": fernet::methods_list(self.payload.2),
            "user": {
                "id": self.user_id, "name": self.user_name,
                "domain": {"id": self.user_domain_id, "name": self.user_domain_name},
                "password_expires_at": null,
            },
            "audit_ids": self.payload.5,
            "expires_at": iso_micros(self.expires_at()),
            "issued_at": iso_micros(self.issued_at()),
        });
        let scoped = !matches!(self.scope, Scope::Unscoped);
        match &self.scope {
            Scope::Unscoped => {}
            Scope::Project {
                id,
                name,
                domain_id,
                domain_name,
            } => {
                t["project"] =
                    json!({"id": id, "name": name, "domain": {"id": domain_id, "name": domain_name}});
                t["is_domain"] = json!(false);
            }
            Scope::Domain { id, name } => t["domain"] = json!({"id": id, "name": name}),
            Scope::System => t["system"] = json!({"all": true}),
        }
        if scoped {
            t["roles"] = Value::Array(
                self.roles
                    .iter()
                    .map(|(id, name)| json!({"id": id, "name": name}))
                    .collect(),
            );
            if !nocatalog {
                t["catalog"] = Value::Array(self.catalog.clone());
            }
        }
        if let Some((id, name, restricted)) = &self.app_cred {
            t["application_credential"] = json!({"id": id, "name": name, "restricted": restricted});
        }
        json!({ "token": t })
    }

    pub fn context(&self) -> RequestContext {
        RequestContext {
            request_id: String::new(),
            user_id: self.user_id.clone(),
            user_name: self.user_name.clone(),
            user_domain_id: self.user_domain_id.clone(),
            user_domain_name: self.user_domain_name.clone(),
            scope: self.scope.clone(),
            roles: self.roles.iter().map(|(_, n)| n.clone()).collect(),
            audit_id: self.payload.5.first().cloned().unwrap_or_default(),
            application_credential_id: self.app_cred.as_ref().map(|a| a.0.clone()),
            expires_at: self.expires_at(),
        }
    }
}

pub(crate) struct CacheEntry {
    model: Arc<TokenModel>,
    generation: u64,
    at: Instant,
}

pub(crate) type TokenCache = HashMap<String, CacheEntry>;

const CACHE_MAX: usize = 200_000;

/// Where roles are looked up.
pub enum RoleTarget<'a> {
    Project(&'a ProjectRow),
    Domain(&'a str),
    System,
}

impl Identity {
    /// Validate a token; `allow_expired` accepts tokens expired within `allow_expired_window`.
    pub async fn validate_token(&self, token: &str, allow_expired: bool) -> Result<Arc<TokenModel>> {
        let gen = self.current_generation();
        let cache_time = self.settings.cache_time;
        let hit = self.cache.read().ok().and_then(|c| {
            c.get(token)
                .filter(|e| e.generation == gen && e.at.elapsed() < cache_time)
                .map(|e| e.model.clone())
        });
        let model = match hit {
            Some(m) => m,
            None => {
                let m = Arc::new(self.validate_uncached(token).await?);
                if !cache_time.is_zero() {
                    if let Ok(mut c) = self.cache.write() {
                        if c.len() >= CACHE_MAX {
                            c.clear();
                        }
                        c.insert(
                            token.to_string(),
                            CacheEntry {
                                model: m.clone(),
                                generation: gen,
                                at: Instant::now(),
                            },
                        );
                    }
                }
                m
            }
        };
        let now = now_epoch_micros();
        if model.expires_at() <= now {
            let window = self.settings.allow_expired_window.as_micros() as i64;
            if !(allow_expired && model.expires_at() + window > now) {
                return Err(IdentityError::TokenNotFound);
            }
        }
        Ok(model)
    }

    async fn validate_uncached(&self, token: &str) -> Result<TokenModel> {
        let (bytes, _ts) = self.keys.decrypt(token).ok_or(IdentityError::TokenNotFound)?;
        let payload = Payload::decode(&bytes).ok_or(IdentityError::TokenNotFound)?;
        if self.is_revoked(&payload).await? {
            return Err(IdentityError::TokenNotFound);
        }
        self.build_model(payload).await
    }

    async fn is_revoked(&self, p: &Payload) -> Result<bool> {
        let events = self.revocation_events().await?;
        let issued_at = p.7;
        let project_or_domain = p.3.as_deref();
        Ok(events.iter().any(|e| {
            issued_at <= e.issued_before
                && e.audit_id
                    .as_deref()
                    .is_none_or(|a| p.5.first().map(String::as_str) == Some(a))
                && e.user_id.as_deref().is_none_or(|u| u == p.1)
                && e.project_id
                    .as_deref()
                    .is_none_or(|x| project_or_domain == Some(x))
                && e.domain_id
                    .as_deref()
                    .is_none_or(|x| project_or_domain == Some(x))
        }))
    }

    async fn revocation_events(&self) -> Result<Arc<Vec<RevocationEvent>>> {
        let gen = self.current_generation();
        if let Ok(r) = self.revocations.read() {
            if r.0 == gen {
                return Ok(r.1.clone());
            }
        }
        let events = Arc::new(store::revocation_list(&self.db, self.revocation_horizon()).await?);
        if let Ok(mut r) = self.revocations.write() {
            *r = (gen, events.clone());
        }
        Ok(events)
    }

    /// Rebuild everything a token shows from the database; fails if the user, scope target or roles are
    /// gone or disabled.
    pub(crate) async fn build_model(&self, payload: Payload) -> Result<TokenModel> {
        let invalid = || IdentityError::TokenNotFound;
        let user = store::user_get(&self.db, &payload.1)
            .await?
            .filter(|u| u.enabled)
            .ok_or_else(invalid)?;
        let udom = store::domain_get(&self.db, &user.domain_id)
            .await?
            .filter(|d| d.enabled)
            .ok_or_else(invalid)?;
        let mut app_cred = None;
        let mut app_cred_roles: Option<HashSet<String>> = None;
        if let Some(ac_id) = &payload.6 {
            let ac = store::app_cred_get(&self.db, ac_id).await?.ok_or_else(invalid)?;
            if ac.user_id != user.id || ac.expires_at.is_some_and(|e| e <= now_epoch_micros()) {
                return Err(invalid());
            }
            app_cred_roles = Some(ac.role_ids.iter().cloned().collect());
            app_cred = Some((ac.id, ac.name, !ac.unrestricted));
        }
        let (scope, role_ids) = match payload.0 {
            SCOPE_UNSCOPED => (Scope::Unscoped, Vec::new()),
            SCOPE_PROJECT | SCOPE_APP_CRED => {
                let pid = payload.3.as_deref().ok_or_else(invalid)?;
                let p = store::project_get(&self.db, pid)
                    .await?
                    .filter(|p| p.enabled)
                    .ok_or_else(invalid)?;
                let pdom = store::domain_get(&self.db, &p.domain_id)
                    .await?
                    .filter(|d| d.enabled)
                    .ok_or_else(invalid)?;
                let roles = self.effective_role_ids(&user.id, RoleTarget::Project(&p)).await?;
                (
                    Scope::Project {
                        id: p.id.clone(),
                        name: p.name.clone(),
                        domain_id: pdom.id,
                        domain_name: pdom.name,
                    },
                    roles,
                )
            }
            SCOPE_DOMAIN => {
                let did = payload.3.as_deref().ok_or_else(invalid)?;
                let d = store::domain_get(&self.db, did)
                    .await?
                    .filter(|d| d.enabled)
                    .ok_or_else(invalid)?;
                let roles = self
                    .effective_role_ids(&user.id, RoleTarget::Domain(&d.id))
                    .await?;
                (
                    Scope::Domain {
                        id: d.id,
                        name: d.name,
                    },
                    roles,
                )
            }
            SCOPE_SYSTEM => (
                Scope::System,
                self.effective_role_ids(&user.id, RoleTarget::System).await?,
            ),
            _ => return Err(invalid()),
        };
        let role_ids: Vec<String> = match &app_cred_roles {
            // An application credential carries a subset of its creator's roles, still held.
            Some(allowed) => {
                let expanded = self.expand_implied(allowed.iter().cloned().collect()).await?;
                role_ids.into_iter().filter(|r| expanded.contains(r)).collect()
            }
            None => role_ids,
        };
        if !matches!(scope, Scope::Unscoped) && role_ids.is_empty() {
            return Err(invalid());
        }
        let names: HashMap<String, String> = store::role_all(&self.db)
            .await?
            .into_iter()
            .map(|r| (r.id, r.name))
            .collect();
        let mut roles: Vec<(String, String)> = role_ids
            .into_iter()
            .filter_map(|id| names.get(&id).map(|n| (id.clone(), n.clone())))
            .collect();
        roles.sort_by(|a, b| a.1.cmp(&b.1));
        let catalog = if matches!(scope, Scope::Unscoped) {
            Vec::new()
        } else {
            self.catalog(match &scope {
                Scope::Project { id, .. } => Some(id.as_str()),
                _ => None,
            })
            .await?
        };
        Ok(TokenModel {
            user_id: user.id,
            user_name: user.name,
            user_domain_id: udom.id,
            user_domain_name: udom.name,
            scope,
            roles,
            catalog,
            app_cred,
            payload,
        })
    }

    /// Effective role ids of a user on a target: direct and group assignments, assignments inherited from
    /// the project's domain and parents, and implied roles.
    pub async fn effective_role_ids(&self, user_id: &str, target: RoleTarget<'_>) -> Result<Vec<String>> {
        let mut actors = vec![user_id.to_string()];
        actors.extend(store::user_group_ids(&self.db, user_id).await?);
        let (direct, inherited_from): (Vec<String>, Vec<String>) = match target {
            RoleTarget::Project(p) => {
                let mut up = vec![p.domain_id.clone()];
                let mut parent = p.parent_id.clone();
                let mut guard = 0;
                while let Some(pid) = parent.filter(|_| guard < 32) {
                    guard += 1;
                    up.push(pid.clone());
                    parent = store::project_get(&self.db, &pid)
                        .await?
                        .and_then(|x| x.parent_id);
                }
                (vec![p.id.clone()], up)
            }
            RoleTarget::Domain(d) => (vec![d.to_string()], Vec::new()),
            RoleTarget::System => (vec!["system".to_string()], Vec::new()),
        };
        let mut targets = direct.clone();
        targets.extend(inherited_from.iter().cloned());
        let rows = store::assignment_list(&self.db, Some(&actors), Some(&targets)).await?;
        let system = matches!(target, RoleTarget::System);
        let ids: BTreeSet<String> = rows
            .into_iter()
            .filter(|a| {
                let is_system = a.kind.ends_with("System");
                if system != is_system {
                    return false;
                }
                if direct.contains(&a.target_id) && !a.inherited {
                    return true;
                }
                a.inherited && inherited_from.contains(&a.target_id)
            })
            .map(|a| a.role_id)
            .collect();
        Ok(self
            .expand_implied(ids.into_iter().collect())
            .await?
            .into_iter()
            .collect())
    }

    /// Add every role implied, transitively, by `ids`.
    pub async fn expand_implied(&self, ids: Vec<String>) -> Result<BTreeSet<String>> {
        let rules = store::implied_all(&self.db).await?;
        Ok(close_over_implied(&rules, ids.into_iter().collect()))
    }

    /// The service catalog, with project id templates filled in.
    pub async fn catalog(&self, project_id: Option<&str>) -> Result<Vec<Value>> {
        let services = store::service_list(&self.db, None, None).await?;
        let endpoints = store::endpoint_list(&self.db, None, None, None).await?;
        let mut out = Vec::new();
        for s in services.into_iter().filter(|s| s.enabled) {
            let eps: Vec<Value> = endpoints
                .iter()
                .filter(|e| e.enabled && e.service_id == s.id)
                .filter_map(|e| {
                    let url = substitute(&e.url, project_id)?;
                    Some(json!({"id": e.id, "interface": e.interface, "region": e.region_id, "region_id": e.region_id, "url": url}))
                })
                .collect();
            out.push(json!({"id": s.id, "type": s.type_, "name": s.name.clone().unwrap_or_default(), "endpoints": eps}));
        }
        Ok(out)
    }

    /// Mint a token for a payload and return it with its model.
    pub(crate) async fn mint(&self, payload: Payload) -> Result<(String, Arc<TokenModel>)> {
        let model = Arc::new(self.build_model(payload.clone()).await?);
        let token = self
            .keys
            .encrypt(&payload.encode(), (payload.7 / 1_000_000) as u64);
        Ok((token, model))
    }

    /// Events revoked before this instant cannot match any token that is still valid (even with
    /// `allow_expired`).
    fn revocation_horizon(&self) -> i64 {
        now_epoch_micros()
            - (self.settings.expiration + self.settings.allow_expired_window).as_micros() as i64
    }

    /// Revoke one token (by its audit id).
    pub async fn revoke_token(&self, model: &TokenModel) -> Result<()> {
        let ev = RevocationEvent {
            audit_id: model.audit_ids().first().cloned(),
            issued_before: now_epoch_micros(),
            ..Default::default()
        };
        store::revoke(&self.db, &ev, self.revocation_horizon()).await?;
        self.changed();
        Ok(())
    }

    /// Revoke every token of a user issued until now.
    pub async fn revoke_user_tokens(&self, user_id: &str) -> Result<()> {
        let ev = RevocationEvent {
            user_id: Some(user_id.to_string()),
            issued_before: now_epoch_micros(),
            ..Default::default()
        };
        store::revoke(&self.db, &ev, self.revocation_horizon()).await?;
        self.changed();
        Ok(())
    }

    pub(crate) fn new_payload(
        &self,
        scope_kind: u8,
        user_id: &str,
        methods: u8,
        target: Option<String>,
    ) -> Payload {
        let now = now_epoch_micros();
        Payload(
            scope_kind,
            user_id.to_string(),
            methods,
            target,
            now + self.settings.expiration.as_micros() as i64,
            vec![fernet::new_audit_id()],
            None,
            now,
        )
    }
}

/// `roles` plus every role the `(prior, implied)` rules imply from them, transitively.
pub fn close_over_implied(rules: &[(String, String)], mut roles: BTreeSet<String>) -> BTreeSet<String> {
    loop {
        let before = roles.len();
        for (prior, implied) in rules {
            if roles.contains(prior) {
                roles.insert(implied.clone());
            }
        }
        if roles.len() == before {
            return roles;
        }
    }
}

fn substitute(url: &str, project_id: Option<&str>) -> Option<String> {
    let templates = [
        "$(project_id)s",
        "$(tenant_id)s",
        "%(project_id)s",
        "%(tenant_id)s",
    ];
    if !templates.iter().any(|t| url.contains(t)) {
        return Some(url.to_string());
    }
    // Endpoints needing a project are left out of tokens without one, as Keystone does.
    let p = project_id?;
    let mut u = url.to_string();
    for t in templates {
        u = u.replace(t, p);
    }
    Some(u)
}

#[cfg(test)]
mod tests {
    use super::substitute;

    #[test]
    fn url_templates() {
        assert_eq!(
            substitute("http://h/v2.1/$(project_id)s", Some("p1")).unwrap(),
            "http://h/v2.1/p1"
        );
        assert_eq!(
            substitute("http://h/v2.1/%(tenant_id)s", Some("p1")).unwrap(),
            "http://h/v2.1/p1"
        );
        assert_eq!(substitute("http://h/v2.1/$(project_id)s", None), None);
        assert_eq!(substitute("http://h/v3", None).unwrap(), "http://h/v3");
    }
}

//! `keystone-manage bootstrap`: the default domain, the default roles with their implications
//! (admin → manager → member → reader, plus service), the admin project and user with the admin role on the
//! project and on the system, the region and the catalog entries. Safe to run again: what exists is kept
//! (the admin password is reset to the one given, as Keystone does).

use crate::error::Result;
use crate::store::{
    self, AssignmentRow, DomainRow, EndpointRow, ProjectRow, RegionRow, RoleRow, ServiceRow, UserRow,
};
use crate::{BootstrapParams, CatalogService, Identity};
use serde_json::{json, Map};
use tessera_types::new_hex_id;

/// Ids of what bootstrap made or found.
#[derive(Debug, Clone)]
pub struct BootstrapResult {
    pub user_id: String,
    pub project_id: String,
    pub admin_role_id: String,
}

impl Identity {
    pub async fn bootstrap(&self, p: &BootstrapParams) -> Result<BootstrapResult> {
        let db = &self.db;
        let dom = self.settings.default_domain_id.clone();
        if store::domain_get(db, &dom).await?.is_none() {
            let row = DomainRow {
                id: dom.clone(),
                name: "Default".into(),
                description: Some("The default domain".into()),
                enabled: true,
                tags: vec![],
                extra: Map::new(),
            };
            store::domain_put(db, &row, true).await?;
        }
        let mut role_ids = std::collections::HashMap::new();
        for name in ["reader", "member", "manager", "admin", "service"] {
            let id = match store::role_list(db, Some(name), None).await?.into_iter().next() {
                Some(r) => r.id,
                None => {
                    let mut options = Map::new();
                    options.insert("immutable".into(), json!(true));
                    let r = RoleRow {
                        id: new_hex_id(),
                        name: name.into(),
                        domain_id: None,
                        description: None,
                        options,
                    };
                    store::role_put(db, &r, true).await?;
                    r.id
                }
            };
            role_ids.insert(name, id);
        }
        let existing = store::implied_all(db).await?;
        for (prior, implied) in [("admin", "manager"), ("manager", "member"), ("member", "reader")] {
            let (a, b) = (role_ids[prior].clone(), role_ids[implied].clone());
            if !existing.iter().any(|(x, y)| *x == a && *y == b) {
                store::implied_set(db, &a, &b, true).await?;
            }
        }
        let project = match store::project_get_by_name(db, &dom, &p.project_name).await? {
            Some(pr) => pr,
            None => {
                let pr = ProjectRow {
                    id: new_hex_id(),
                    name: p.project_name.clone(),
                    domain_id: dom.clone(),
                    parent_id: None,
                    description: Some("Bootstrap project for initializing the cloud.".into()),
                    enabled: true,
                    tags: vec![],
                    extra: Map::new(),
                };
                store::project_put(db, &pr, true).await?;
                pr
            }
        };
        let user = match store::user_get_by_name(db, &dom, &p.admin_username).await? {
            Some(mut u) => {
                let same = match &u.password_hash {
                    Some(h) => crate::hash::verify(p.admin_password.clone(), h.clone()).await,
                    None => false,
                };
                if !same || !u.enabled {
                    u.password_hash = Some(self.hash_password(&p.admin_password).await?);
                    u.password_created_at = Some(tessera_types::now_epoch_micros());
                    u.enabled = true;
                    store::user_put(db, &u, false).await?;
                }
                u
            }
            None => {
                let u = UserRow {
                    id: new_hex_id(),
                    name: p.admin_username.clone(),
                    domain_id: dom.clone(),
                    enabled: true,
                    default_project_id: None,
                    password_hash: Some(self.hash_password(&p.admin_password).await?),
                    password_created_at: Some(tessera_types::now_epoch_micros()),
                    extra: Map::new(),
                };
                store::user_put(db, &u, true).await?;
                u
            }
        };
        let admin_role = role_ids["admin"].clone();
        for (kind, target) in [
            ("UserProject", project.id.clone()),
            ("UserSystem", "system".to_string()),
        ] {
            let a = AssignmentRow {
                kind: kind.into(),
                actor_id: user.id.clone(),
                target_id: target,
                role_id: admin_role.clone(),
                inherited: false,
            };
            store::assignment_set(db, &a, true).await?;
        }
        if store::region_get(db, &p.region_id).await?.is_none() {
            let r = RegionRow {
                id: p.region_id.clone(),
                description: Some(String::new()),
                parent_region_id: None,
                extra: Map::new(),
            };
            store::region_put(db, &r, true).await?;
        }
        let mut services = vec![CatalogService {
            service_type: "identity".into(),
            name: "keystone".into(),
            endpoints: p.identity_endpoints.clone(),
        }];
        services.extend(p.services.iter().cloned());
        for CatalogService {
            service_type: stype,
            name: sname,
            endpoints,
        } in services
        {
            if endpoints.is_empty() {
                continue;
            }
            let service = match store::service_list(db, Some(&stype), Some(&sname))
                .await?
                .into_iter()
                .next()
            {
                Some(s) => s,
                None => {
                    let s = ServiceRow {
                        id: new_hex_id(),
                        type_: stype.clone(),
                        name: Some(sname.clone()),
                        description: None,
                        enabled: true,
                        extra: Map::new(),
                    };
                    store::service_put(db, &s, true).await?;
                    s
                }
            };
            let existing = store::endpoint_list(db, None, Some(&service.id), Some(&p.region_id)).await?;
            for (interface, url) in endpoints {
                match existing.iter().find(|e| e.interface == interface) {
                    Some(e) if e.url == url => {}
                    Some(e) => {
                        let mut e = e.clone();
                        e.url = url;
                        store::endpoint_put(db, &e, false).await?;
                    }
                    None => {
                        let e = EndpointRow {
                            id: new_hex_id(),
                            service_id: service.id.clone(),
                            interface,
                            region_id: Some(p.region_id.clone()),
                            url,
                            enabled: true,
                            extra: Map::new(),
                        };
                        store::endpoint_put(db, &e, true).await?;
                    }
                }
            }
        }
        self.changed();
        Ok(BootstrapResult {
            user_id: user.id,
            project_id: project.id,
            admin_role_id: admin_role,
        })
    }
}

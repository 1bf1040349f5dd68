//! Nova's side of networking (its `network.neutron` API): the networks a boot asks for are checked at the API,
//! recorded with the instance, and turned into ports by the compute host that builds it — created for the
//! instance, or pre-existing ones bound to it (`device_id`, `device_owner`, `binding:host_id`). The ports
//! become the instance's VIFs, whose addresses the API shows. On delete, ports Nova made are deleted and
//! pre-existing ones unbound; that works from the request alone, so a build that died half way cleans up too.

use crate::placement_client::PlacementClient;
use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::sync::Arc;

/// One entry of a boot's `networks`, resolved: a network (with an optional fixed IP) or a port.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RequestedNetwork {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fixed_ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

/// One address of a VIF.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VifIp {
    pub address: String,
    pub version: u8,
    pub subnet_id: String,
}

/// A port plugged into the instance.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Vif {
    pub port_id: String,
    pub network_id: String,
    pub network_name: String,
    pub mac: String,
    pub ips: Vec<VifIp>,
    /// A port the user brought: unbound, not deleted, when the instance goes.
    pub preserve_on_delete: bool,
    #[serde(default)]
    pub vif_type: String,
    /// The tap device name (`tap` + the port id's first 11 characters, as Nova names it).
    #[serde(default)]
    pub devname: String,
    #[serde(default)]
    pub bridge: Option<String>,
    /// Floating IPs pointing at this port's fixed addresses.
    #[serde(default)]
    pub floating_ips: Vec<String>,
    /// The port was ACTIVE when read (its host's agent had wired it already).
    #[serde(default)]
    pub active: bool,
}

/// What an instance asked for and what it got (stored as the instance's `network_info`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NetworkRequest {
    #[serde(default)]
    pub requested: Vec<RequestedNetwork>,
    /// Security group ids for the ports Nova creates (empty: the project's default group).
    #[serde(default)]
    pub security_groups: Vec<String>,
    #[serde(default)]
    pub vifs: Vec<Vif>,
}

impl NetworkRequest {
    /// From an instance's `network_info` column (anything else — empty, or an older format — is nothing).
    pub fn from_info(s: Option<&str>) -> NetworkRequest {
        s.and_then(|s| serde_json::from_str::<NetworkRequest>(s).ok())
            .unwrap_or_default()
    }

    pub fn to_info(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{}".into())
    }

    /// Ports the user brought (unbound rather than deleted).
    pub fn preserved(&self) -> Vec<String> {
        self.requested
            .iter()
            .filter_map(|r| r.port_id.clone())
            .chain(
                self.vifs
                    .iter()
                    .filter(|v| v.preserve_on_delete)
                    .map(|v| v.port_id.clone()),
            )
            .collect()
    }
}

/// Why the Networking service refused a boot's networks (the API answers with the status).
#[derive(Debug, Clone, PartialEq)]
pub enum NetworkCheck {
    BadRequest(String),
    Conflict(String),
    Unavailable(String),
}

/// The Networking API as Nova calls it, with the service credentials' session (`[neutron]`).
pub struct NetworkClient {
    session: Arc<PlacementClient>,
}

type R<T> = Result<T, String>;

impl NetworkClient {
    pub fn new(session: Arc<PlacementClient>) -> Self {
        NetworkClient { session }
    }

    async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> R<(u16, Value)> {
        self.session
            .service_call("network", method, path, body)
            .await
            .map(|(s, v)| (s.as_u16(), v))
            .map_err(|e| format!("networking service: {e}"))
    }

    fn message(v: &Value) -> String {
        v["NeutronError"]["message"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| v.to_string())
    }

    pub async fn network(&self, id: &str) -> R<Option<Value>> {
        match self
            .call(Method::GET, &format!("/v2.0/networks/{id}"), None)
            .await?
        {
            (200, v) => Ok(Some(v["network"].clone())),
            (404, _) => Ok(None),
            (s, v) => Err(format!("GET network {id}: {s} {}", Self::message(&v))),
        }
    }

    pub async fn port(&self, id: &str) -> R<Option<Value>> {
        match self.call(Method::GET, &format!("/v2.0/ports/{id}"), None).await? {
            (200, v) => Ok(Some(v["port"].clone())),
            (404, _) => Ok(None),
            (s, v) => Err(format!("GET port {id}: {s} {}", Self::message(&v))),
        }
    }

    async fn list(&self, path: &str, key: &str) -> R<Vec<Value>> {
        match self.call(Method::GET, path, None).await? {
            (200, v) => Ok(v[key].as_array().cloned().unwrap_or_default()),
            (s, v) => Err(format!("GET {path}: {s} {}", Self::message(&v))),
        }
    }

    /// Networks a project may boot on without naming one: its own and the shared ones, not external.
    pub async fn available_networks(&self, project_id: &str) -> R<Vec<Value>> {
        let mut nets = self
            .list(
                &format!("/v2.0/networks?project_id={project_id}&shared=False"),
                "networks",
            )
            .await?;
        nets.extend(self.list("/v2.0/networks?shared=True", "networks").await?);
        nets.retain(|n| n["router:external"] != json!(true));
        Ok(nets)
    }

    /// The project's auto-allocated network (made on first use); None when the deployment has none to give.
    pub async fn auto_allocate(&self, project_id: &str) -> R<Option<String>> {
        match self
            .call(
                Method::GET,
                &format!("/v2.0/auto-allocated-topology/{project_id}"),
                None,
            )
            .await?
        {
            (200, v) => Ok(v["auto_allocated_topology"]["id"].as_str().map(str::to_string)),
            (409, _) | (404, _) => Ok(None),
            (s, v) => Err(format!("auto-allocated topology: {s} {}", Self::message(&v))),
        }
    }

    /// Security group names or ids of the project → ids.
    pub async fn security_group_ids(
        &self,
        project_id: &str,
        names: &[String],
    ) -> Result<Vec<String>, NetworkCheck> {
        let groups = self
            .list(
                &format!("/v2.0/security-groups?project_id={project_id}"),
                "security_groups",
            )
            .await
            .map_err(NetworkCheck::Unavailable)?;
        let mut out = Vec::new();
        for n in names {
            let found: Vec<&Value> = groups
                .iter()
                .filter(|g| g["id"].as_str() == Some(n) || g["name"].as_str() == Some(n))
                .collect();
            match found.as_slice() {
                [one] => out.push(one["id"].as_str().unwrap_or_default().to_string()),
                [] => {
                    return Err(NetworkCheck::BadRequest(format!(
                        "Unable to find security_group with name or id '{n}'"
                    )))
                }
                _ => {
                    return Err(NetworkCheck::Conflict(format!(
                        "Multiple security groups found matching '{n}'. Use an ID to be more specific."
                    )))
                }
            }
        }
        Ok(out)
    }

    /// Check a boot's networks before anything is recorded (Nova's `validate_networks`) and resolve
    /// `auto`: the one network the project may use, else its auto-allocated one. `count` servers.
    pub async fn validate(
        &self,
        project_id: &str,
        is_admin: bool,
        requested: Option<Vec<RequestedNetwork>>,
        count: i64,
    ) -> Result<Vec<RequestedNetwork>, NetworkCheck> {
        let unavailable = NetworkCheck::Unavailable;
        let Some(requested) = requested else {
            let nets = self.available_networks(project_id).await.map_err(unavailable)?;
            return match nets.as_slice() {
                [one] => Ok(vec![RequestedNetwork {
                    network_id: one["id"].as_str().map(str::to_string),
                    ..Default::default()
                }]),
                [] => match self
                    .auto_allocate(project_id)
                    .await
                    .map_err(NetworkCheck::Unavailable)?
                {
                    Some(id) => Ok(vec![RequestedNetwork {
                        network_id: Some(id),
                        ..Default::default()
                    }]),
                    None => Err(NetworkCheck::BadRequest(format!(
                        "Unable to automatically allocate a network for project {project_id}"
                    ))),
                },
                _ => Err(NetworkCheck::Conflict(
                    "Multiple possible networks found, use a Network ID to be more specific.".into(),
                )),
            };
        };
        for r in &requested {
            if let Some(pid) = &r.port_id {
                if count > 1 {
                    return Err(NetworkCheck::BadRequest(
                        "Unable to launch multiple instances with a single configured port ID. Please launch your instance one by one with different ports.".into(),
                    ));
                }
                let p = self
                    .port(pid)
                    .await
                    .map_err(NetworkCheck::Unavailable)?
                    .filter(|p| is_admin || p["project_id"].as_str() == Some(project_id))
                    .ok_or_else(|| NetworkCheck::BadRequest(format!("Port id {pid} could not be found.")))?;
                if !p["device_id"].as_str().unwrap_or("").is_empty() {
                    return Err(NetworkCheck::Conflict(format!("Port {pid} is still in use.")));
                }
            } else if let Some(nid) = &r.network_id {
                let n = self
                    .network(nid)
                    .await
                    .map_err(NetworkCheck::Unavailable)?
                    .filter(|n| {
                        is_admin
                            || n["project_id"].as_str() == Some(project_id)
                            || n["shared"] == json!(true)
                            || n["router:external"] == json!(true)
                    })
                    .ok_or_else(|| NetworkCheck::BadRequest(format!("Network {nid} could not be found.")))?;
                if n["router:external"] == json!(true) && n["shared"] != json!(true) && !is_admin {
                    return Err(NetworkCheck::Conflict(format!(
                        "It is not allowed to create an interface on external network {nid}"
                    )));
                }
                if n["subnets"].as_array().is_none_or(|s| s.is_empty()) && r.fixed_ip.is_some() {
                    return Err(NetworkCheck::BadRequest(format!(
                        "Network {nid} has no subnet for fixed IP {}",
                        r.fixed_ip.clone().unwrap_or_default()
                    )));
                }
                if r.fixed_ip.is_some() && count > 1 {
                    return Err(NetworkCheck::BadRequest(
                        "max_count cannot be greater than 1 if an fixed_ip is specified.".into(),
                    ));
                }
            }
        }
        Ok(requested)
    }

    pub(crate) fn vif_of(port: &Value, network_name: &str, preserve: bool) -> Vif {
        let id = port["id"].as_str().unwrap_or_default().to_string();
        Vif {
            devname: format!("tap{}", &id[..id.len().min(11)]),
            port_id: id,
            network_id: port["network_id"].as_str().unwrap_or_default().to_string(),
            network_name: network_name.to_string(),
            mac: port["mac_address"].as_str().unwrap_or_default().to_string(),
            ips: port["fixed_ips"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|f| {
                            let address = f["ip_address"].as_str().unwrap_or_default().to_string();
                            VifIp {
                                version: if address.contains(':') { 6 } else { 4 },
                                address,
                                subnet_id: f["subnet_id"].as_str().unwrap_or_default().to_string(),
                            }
                        })
                        .collect()
                })
                .unwrap_or_default(),
            preserve_on_delete: preserve,
            vif_type: port["binding:vif_type"].as_str().unwrap_or("unbound").to_string(),
            bridge: port["binding:vif_details"]["bridge_name"]
                .as_str()
                .map(str::to_string),
            floating_ips: Vec::new(),
            active: port["status"].as_str() == Some("ACTIVE"),
        }
    }

    /// Whether a live network agent on `host` wires ports there: it plugs their taps into bridges and
    /// reports them ACTIVE, so a build waits for `network-vif-plugged`. Unknown (no agent, or the agents
    /// cannot be listed with this session): no.
    pub async fn host_wires_ports(&self, host: &str) -> bool {
        let host: String = form_urlencoded::byte_serialize(host.as_bytes()).collect();
        match self
            .list(
                &format!("/v2.0/agents?host={host}&agent_type=Linux%20bridge%20agent"),
                "agents",
            )
            .await
        {
            Ok(agents) => agents.iter().any(|a| {
                a["alive"] == Value::Bool(true)
                    && a["admin_state_up"] != Value::Bool(false)
                    && a["configurations"]["data_plane"] == Value::Bool(true)
            }),
            Err(e) => {
                tracing::debug!(%host, error = %e, "cannot list network agents");
                false
            }
        }
    }

    /// The floating addresses pointing at a port.
    pub async fn floating_ips_of(&self, port_id: &str) -> R<Vec<String>> {
        Ok(self
            .list(&format!("/v2.0/floatingips?port_id={port_id}"), "floatingips")
            .await?
            .iter()
            .filter_map(|f| f["floating_ip_address"].as_str().map(str::to_string))
            .collect())
    }

    /// The instance's VIFs as its ports are now (addresses, floating IPs); ports bound to it that `current`
    /// does not know are added, ports gone are dropped (Nova's info-cache refresh on `network-changed`).
    pub async fn refresh(&self, instance: &str, current: &NetworkRequest) -> R<Vec<Vif>> {
        let ports = self.ports_of(instance).await?;
        let mut vifs = Vec::new();
        for v in &current.vifs {
            if let Some(p) = ports
                .iter()
                .find(|p| p["id"].as_str() == Some(v.port_id.as_str()))
            {
                let mut nv = Self::vif_of(p, &v.network_name, v.preserve_on_delete);
                nv.floating_ips = self.floating_ips_of(&nv.port_id).await?;
                vifs.push(nv);
            }
        }
        for p in &ports {
            let id = p["id"].as_str().unwrap_or_default();
            if !current.vifs.iter().any(|v| v.port_id == id) {
                let name = self
                    .network_name(p["network_id"].as_str().unwrap_or_default())
                    .await;
                let mut nv = Self::vif_of(p, &name, true);
                nv.floating_ips = self.floating_ips_of(id).await?;
                vifs.push(nv);
            }
        }
        Ok(vifs)
    }

    async fn network_name(&self, id: &str) -> String {
        match self.network(id).await {
            Ok(Some(n)) => n["name"].as_str().unwrap_or_default().to_string(),
            _ => String::new(),
        }
    }

    /// Create or bind the instance's ports on `host` (Nova's `allocate_for_instance`). A failure removes the
    /// ports this call made and unbinds the ones it bound.
    pub async fn allocate_for_instance(
        &self,
        instance: &str,
        project_id: &str,
        host: &str,
        req: &NetworkRequest,
    ) -> R<Vec<Vif>> {
        let mut vifs: Vec<Vif> = Vec::new();
        let owner = "compute:nova";
        for r in &req.requested {
            let result = if let Some(pid) = &r.port_id {
                let body =
                    json!({"port": {"device_id": instance, "device_owner": owner, "binding:host_id": host}});
                match self
                    .call(Method::PUT, &format!("/v2.0/ports/{pid}"), Some(&body))
                    .await
                {
                    Ok((200, v)) => Ok((v["port"].clone(), true)),
                    Ok((s, v)) => Err(format!("binding port {pid}: {s} {}", Self::message(&v))),
                    Err(e) => Err(e),
                }
            } else {
                let nid = r.network_id.clone().unwrap_or_default();
                let mut port = json!({"network_id": nid, "device_id": instance, "device_owner": owner,
                                      "binding:host_id": host, "project_id": project_id, "admin_state_up": true});
                if let Some(ip) = &r.fixed_ip {
                    port["fixed_ips"] = json!([{"ip_address": ip}]);
                }
                if !req.security_groups.is_empty() {
                    port["security_groups"] = json!(req.security_groups);
                }
                match self
                    .call(Method::POST, "/v2.0/ports", Some(&json!({ "port": port })))
                    .await
                {
                    Ok((201, v)) => Ok((v["port"].clone(), false)),
                    Ok((s, v)) => Err(format!(
                        "creating a port on network {nid}: {s} {}",
                        Self::message(&v)
                    )),
                    Err(e) => Err(e),
                }
            };
            match result {
                Ok((port, preserve)) => {
                    let name = self
                        .network_name(port["network_id"].as_str().unwrap_or_default())
                        .await;
                    vifs.push(Self::vif_of(&port, &name, preserve));
                }
                Err(e) => {
                    let partial = NetworkRequest {
                        requested: req.requested.clone(),
                        security_groups: Vec::new(),
                        vifs: vifs.clone(),
                    };
                    if let Err(e2) = self.deallocate_for_instance(instance, &partial).await {
                        tracing::warn!(instance, error = %e2, "cannot roll back the ports of a failed allocation");
                    }
                    return Err(e);
                }
            }
        }
        Ok(vifs)
    }

    /// The ports bound to an instance, as the Networking service has them now.
    pub async fn ports_of(&self, instance: &str) -> R<Vec<Value>> {
        self.list(&format!("/v2.0/ports?device_id={instance}"), "ports")
            .await
    }

    /// Let one port go: deleted when Nova made it, unbound when the user brought it.
    pub async fn release_port(&self, port_id: &str, preserve: bool) -> R<()> {
        let r = if preserve {
            let body = json!({"port": {"device_id": "", "device_owner": "", "binding:host_id": "", "binding:profile": {}}});
            self.call(Method::PUT, &format!("/v2.0/ports/{port_id}"), Some(&body))
                .await?
        } else {
            self.call(Method::DELETE, &format!("/v2.0/ports/{port_id}"), None)
                .await?
        };
        match r {
            (200, _) | (204, _) | (404, _) => Ok(()),
            (s, v) => Err(format!("releasing port {port_id}: {s} {}", Self::message(&v))),
        }
    }

    /// Remove the instance's ports: the ones Nova made are deleted, the ones the user brought unbound. Ports
    /// are found by `device_id`, so ports made by an allocation that never got recorded go too.
    pub async fn deallocate_for_instance(&self, instance: &str, req: &NetworkRequest) -> R<()> {
        let preserved = req.preserved();
        let ports = self
            .list(&format!("/v2.0/ports?device_id={instance}"), "ports")
            .await?;
        for p in ports {
            let id = p["id"].as_str().unwrap_or_default().to_string();
            if preserved.contains(&id) {
                let body = json!({"port": {"device_id": "", "device_owner": "", "binding:host_id": "", "binding:profile": {}}});
                match self
                    .call(Method::PUT, &format!("/v2.0/ports/{id}"), Some(&body))
                    .await?
                {
                    (200, _) | (404, _) => {}
                    (s, v) => return Err(format!("unbinding port {id}: {s} {}", Self::message(&v))),
                }
            } else {
                match self
                    .call(Method::DELETE, &format!("/v2.0/ports/{id}"), None)
                    .await?
                {
                    (204, _) | (404, _) => {}
                    (s, v) => return Err(format!("deleting port {id}: {s} {}", Self::message(&v))),
                }
            }
        }
        Ok(())
    }
}

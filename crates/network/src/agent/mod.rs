//! The network agent of a host (role `network-agent`): the data plane Neutron's Linux bridge, DHCP and L3
//! agents build, driven by the Networking service. It reports its state (the agents listed by `GET
//! /v2.0/agents`), long-polls the service for what its host must wire up, makes the host match it, and
//! reports ports plugged (ACTIVE) or gone (DOWN), which tells the Compute service `network-vif-plugged`.
//!
//! - **L2**: a bridge `brq<network>` per network on the host; the taps of the ports bound here (`tap<port>`,
//!   made by the compute host's VIF plugging or by whatever plays the guest) join it; a flat or VLAN network
//!   whose physical network is mapped (`physical_interface_mappings`) bridges that interface (or its VLAN).
//! - **Security groups** as iptables rules on the taps ([`firewall`]).
//! - **DHCP** in a namespace per network ([`dhcp`]).
//! - **Routers** as namespaces with NAT ([`l3`]); on an external network with no interface mapped, the host
//!   takes the subnet's gateway address on the bridge (as devstack's `br-ex`), so routers reach it and it
//!   reaches floating IPs.
//!
//! Where the host cannot do this (not root, no network namespaces, no bridges) the agent still reports, with
//! `data_plane: false` and why, and wires nothing; ports then stay DOWN and compute hosts do not wait for them.

pub mod dhcp;
pub mod firewall;
pub mod l3;
pub mod linux;

use crate::api::agents::{DHCP_AGENT, L2_AGENT, L3_AGENT};
use linux::dev_name;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tessera_config::Config;

pub const BINARY: &str = "tessera-network-agent";

#[derive(Debug, Clone)]
pub struct AgentSettings {
    pub host: String,
    /// The compute hosts whose ports this agent plugs: `host`, or several where one machine plays several
    /// compute hosts (all-in-one).
    pub hosts: Vec<String>,
    /// `auto`, `true` or `false` (`[network_agent] data_plane`).
    pub data_plane: String,
    pub enable_dhcp: bool,
    pub enable_l3: bool,
    /// Physical network → host interface.
    pub physical_interface_mappings: Vec<(String, String)>,
    pub external_gateway_on_bridge: bool,
    /// This host's tunnel endpoint: VXLAN networks reach the other hosts' bridges from it (empty: VXLAN
    /// networks stay on this host).
    pub local_ip: String,
    pub state_dir: PathBuf,
    pub report_interval: Duration,
    pub dhcp_lease_duration: i64,
}

impl AgentSettings {
    pub fn from_config(cfg: &Config, host: &str) -> Self {
        let mappings = cfg
            .get_str("network_agent", "physical_interface_mappings")
            .split(',')
            .filter_map(|m| m.trim().split_once(':'))
            .map(|(p, i)| (p.trim().to_string(), i.trim().to_string()))
            .filter(|(p, i)| !p.is_empty() && !i.is_empty())
            .collect();
        AgentSettings {
            host: host.to_string(),
            hosts: vec![host.to_string()],
            data_plane: cfg.get_str("network_agent", "data_plane"),
            enable_dhcp: cfg.get_bool("network_agent", "enable_dhcp"),
            enable_l3: cfg.get_bool("network_agent", "enable_l3"),
            physical_interface_mappings: mappings,
            external_gateway_on_bridge: cfg.get_bool("network_agent", "external_gateway_on_bridge"),
            local_ip: cfg.get_str("network_agent", "local_ip"),
            state_dir: PathBuf::from(cfg.get_str("network_agent", "state_dir")),
            report_interval: Duration::from_secs(
                cfg.get_int("network_agent", "report_interval").max(1) as u64
            ),
            dhcp_lease_duration: cfg.get_int("network_agent", "dhcp_lease_duration").max(120),
        }
    }
}

/// How the agent reaches the Networking service (the agent RPC, over REST with a service token).
#[async_trait::async_trait]
pub trait AgentRpc: Send + Sync {
    /// `POST /v2.0/agent-rpc/<method>` with `body`; the decoded answer.
    async fn call(&self, method: &str, body: Value) -> Result<Value, String>;
}

/// What this host can do.
#[derive(Debug, Clone, Default)]
pub struct Capabilities {
    pub data_plane: bool,
    pub dhcp: bool,
    pub l3: bool,
    pub filtering: bool,
    /// Why a part is off.
    pub notes: Vec<String>,
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// Find out, by trying, what this host lets the agent do.
pub async fn probe(s: &AgentSettings) -> Capabilities {
    let mut c = Capabilities::default();
    match s.data_plane.as_str() {
        "false" => {
            c.notes.push("[network_agent] data_plane = false".into());
            return c;
        }
        _ if !is_root() => {
            c.notes.push("not running as root".into());
            return c;
        }
        _ => {}
    }
    let tag = std::process::id() % 100_000;
    let (br, ns) = (format!("tsrprobe{tag}"), format!("tsrprobe-{tag}"));
    let bridge = async {
        linux::ip(None, &["link", "add", &br, "type", "bridge"]).await?;
        linux::ip(None, &["link", "del", &br]).await
    };
    if let Err(e) = bridge.await {
        c.notes.push(format!("cannot make bridges: {e}"));
        return c;
    }
    let netns = async {
        linux::run(&["ip", "netns", "add", &ns]).await?;
        linux::run(&["ip", "netns", "del", &ns]).await
    };
    if let Err(e) = netns.await {
        c.notes.push(format!("cannot make network namespaces: {e}"));
        return c;
    }
    c.data_plane = true;
    match linux::run(&["dnsmasq", "--version"]).await {
        Ok(_) => c.dhcp = s.enable_dhcp,
        Err(e) => c.notes.push(format!("DHCP off: no dnsmasq ({e})")),
    }
    if !s.enable_dhcp {
        c.notes
            .push("DHCP off: [network_agent] enable_dhcp = false".into());
    }
    match linux::run(&["nft", "--version"]).await {
        Ok(_) => c.l3 = s.enable_l3,
        Err(e) => c.notes.push(format!("routers off: no nft ({e})")),
    }
    if !s.enable_l3 {
        c.notes
            .push("routers off: [network_agent] enable_l3 = false".into());
    }
    let brnf = std::path::Path::new("/proc/sys/net/bridge/bridge-nf-call-iptables");
    let nft = linux::run(&["nft", "--version"]).await.is_ok();
    match linux::run(&["iptables-restore", "--version"]).await {
        Ok(_) if !nft => c
            .notes
            .push("security groups off: no nft (ARP protection)".into()),
        Ok(_) if brnf.exists() => {
            for f in ["bridge-nf-call-iptables", "bridge-nf-call-ip6tables"] {
                let _ = std::fs::write(format!("/proc/sys/net/bridge/{f}"), "1");
            }
            c.filtering = true;
        }
        Ok(_) => c
            .notes
            .push("security groups off: bridged traffic does not reach iptables (no br_netfilter)".into()),
        Err(e) => c
            .notes
            .push(format!("security groups off: no iptables-restore ({e})")),
    }
    c
}

/// The running agent: its settings, its link to the service, and what it applied last.
pub struct Agent {
    pub settings: AgentSettings,
    pub caps: Capabilities,
    rpc: Arc<dyn AgentRpc>,
    /// Last applied iptables text per family and ARP table, NAT script per router.
    firewall: [Option<String>; 3],
    /// The chains each family's last load made (None: the next load hooks FORWARD and sweeps).
    chains: [Option<Vec<String>>; 2],
    nat: HashMap<String, String>,
    /// Namespaces checked (or made) by this process.
    namespaces_ok: HashSet<String>,
    /// The other hosts' tunnel endpoints, and the bridges already set up in this pass.
    peers: Vec<String>,
    bridges_done: HashSet<String>,
}

/// What one pass found (errors are logged; the pass after a failed one comes sooner).
struct Pass {
    statuses: BTreeMap<String, &'static str>,
    errors: Vec<String>,
}

/// The tap devices on the host (guests' ends of their ports).
fn tap_devices() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir("/sys/class/net")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.starts_with("tap"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Note a port's status when it differs from what the service has.
fn set_status(pass: &mut Pass, port: &Value, st: &'static str) {
    if text(port, "status") != st {
        pass.statuses.insert(text(port, "id").to_string(), st);
    }
}

fn text<'a>(v: &'a Value, k: &str) -> &'a str {
    v[k].as_str().unwrap_or_default()
}

impl Agent {
    pub fn new(settings: AgentSettings, caps: Capabilities, rpc: Arc<dyn AgentRpc>) -> Self {
        Agent {
            settings,
            caps,
            rpc,
            firewall: [None, None, None],
            chains: [None, None],
            nat: HashMap::new(),
            namespaces_ok: HashSet::new(),
            peers: Vec::new(),
            bridges_done: HashSet::new(),
        }
    }

    fn report_body(&self, start: bool) -> Value {
        let mappings: Map<String, Value> = self
            .settings
            .physical_interface_mappings
            .iter()
            .map(|(p, i)| (p.clone(), json!(i)))
            .collect();
        let mut conf = json!({
            "data_plane": self.caps.data_plane, "notes": self.caps.notes,
            "interface_mappings": mappings, "security_groups": self.caps.filtering,
            "tunnel_types": if self.settings.local_ip.is_empty() { json!([]) } else { json!(["vxlan"]) },
        });
        if self.caps.data_plane && !self.settings.local_ip.is_empty() {
            conf["tunnel_ip"] = json!(self.settings.local_ip);
        }
        let mut agents = Vec::new();
        let report = |host: &str, a: Value| {
            let mut a = a;
            a["host"] = json!(host);
            a
        };
        for h in &self.settings.hosts {
            agents.push(report(h, json!({"agent_type": L2_AGENT, "binary": BINARY, "configurations": conf, "start_flag": start})));
        }
        if self.caps.dhcp {
            agents.push(json!({"agent_type": DHCP_AGENT, "binary": BINARY, "start_flag": start,
                "availability_zone": "nova", "configurations": {"dhcp_driver": "dnsmasq", "dhcp_lease_duration": self.settings.dhcp_lease_duration}}));
        }
        if self.caps.l3 {
            agents.push(json!({"agent_type": L3_AGENT, "binary": BINARY, "start_flag": start,
                "availability_zone": "nova", "configurations": {"agent_mode": "legacy", "external_gateway_on_bridge": self.settings.external_gateway_on_bridge}}));
        }
        json!({"report": {"host": self.settings.host, "agents": agents}})
    }

    /// Report, then wire the host until `shutdown`.
    pub fn spawn(mut self, mut shutdown: tokio::sync::watch::Receiver<bool>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let host = self.settings.host.clone();
            if self.caps.data_plane {
                tracing::info!(%host, dhcp = self.caps.dhcp, routers = self.caps.l3, security_groups = self.caps.filtering,
                               notes = ?self.caps.notes, "network agent: data plane on");
            } else {
                tracing::warn!(%host, why = ?self.caps.notes, "network agent: data plane OFF (the API works; ports stay DOWN)");
            }
            // Heartbeats.
            let rpc = self.rpc.clone();
            let (first, every) = (self.report_body(true), self.report_body(false));
            let interval = self.settings.report_interval;
            let mut stop = shutdown.clone();
            tokio::spawn(async move {
                let mut body = first;
                loop {
                    match rpc.call("report_state", body.clone()).await {
                        Ok(_) => body = every.clone(),
                        Err(e) => tracing::warn!(error = %e, "network agent: cannot report its state"),
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(interval) => {}
                        _ = stop.changed() => return,
                    }
                }
            });
            if !self.caps.data_plane {
                let _ = shutdown.changed().await;
                return;
            }
            let mut since: Option<u64> = None;
            let mut last: Option<Value> = None;
            let mut taps = tap_devices();
            // Taps are looked for four times a second (a directory read).
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            let mut not_before = tokio::time::Instant::now();
            loop {
                let body = json!({"sync": {"host": host, "hosts": self.settings.hosts, "since": since, "wait": 20, "l2": true,
                                           "dhcp": self.caps.dhcp, "l3": self.caps.l3}});
                let rpc = self.rpc.clone();
                let start_at = not_before;
                let call = async move {
                    tokio::time::sleep_until(start_at).await;
                    tokio::time::timeout(Duration::from_secs(60), rpc.call("sync", body)).await
                };
                tokio::pin!(call);
                // While the service has nothing new, taps appearing or going on the host (a guest plugged or
                // unplugged) are wired from the last state.
                let r = loop {
                    tokio::select! {
                        r = &mut call => break r,
                        _ = tick.tick() => {
                            let now = tap_devices();
                            if now != taps {
                                taps = now;
                                if let Some(state) = last.clone() {
                                    self.pass(&host, &state).await;
                                }
                            }
                        }
                        _ = shutdown.changed() => return,
                    }
                };
                let retry = match r {
                    Ok(Ok(state)) => {
                        let rev = state["revision"].as_u64();
                        taps = tap_devices();
                        let failed = !self.pass(&host, &state).await;
                        last = Some(state);
                        since = rev;
                        failed
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "network agent: cannot fetch its work");
                        true
                    }
                    Err(_) => true,
                };
                // A burst of changes (a thousand ports made one after another) is taken in a few passes, not
                // one each; after a failure, the next try comes a little later. Taps are still watched meanwhile.
                let pause = if retry {
                    Duration::from_secs(2)
                } else {
                    Duration::from_millis(200)
                };
                if retry {
                    since = None;
                }
                not_before = tokio::time::Instant::now() + pause;
            }
        })
    }

    /// One pass over `state`, its port statuses reported; false when some wiring failed.
    async fn pass(&mut self, host: &str, state: &Value) -> bool {
        let pass = self.apply(state).await;
        for e in &pass.errors {
            tracing::warn!(%host, error = %e, "network agent: wiring failed");
        }
        if !pass.statuses.is_empty() {
            let body = json!({"status": {"host": host, "ports": pass.statuses}});
            if let Err(e) = self.rpc.call("port_status", body).await {
                tracing::warn!(error = %e, "network agent: cannot report port status");
            }
        }
        pass.errors.is_empty()
    }

    /// Make the host match `state`; the port statuses that changed.
    async fn apply(&mut self, state: &Value) -> Pass {
        let mut pass = Pass {
            statuses: BTreeMap::new(),
            errors: Vec::new(),
        };
        let empty = Map::new();
        let mut peers: Vec<String> = state["peers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["tunnel_ip"].as_str().map(str::to_string))
            .filter(|ip| *ip != self.settings.local_ip)
            .collect();
        peers.sort();
        peers.dedup();
        self.peers = peers;
        self.bridges_done.clear();
        let networks = state["networks"].as_object().unwrap_or(&empty);
        let subnets = state["subnets"].as_object().unwrap_or(&empty);
        let mut links = match linux::links(None).await {
            Ok(l) => l,
            Err(e) => {
                pass.errors.push(e);
                return pass;
            }
        };
        let mut namespaces = match linux::netns_list().await {
            Ok(n) => n,
            Err(e) => {
                pass.errors.push(e);
                return pass;
            }
        };
        let mut bridges: HashSet<String> = HashSet::new();

        // L2: the ports bound here.
        let mut filters = Vec::new();
        for p in state["ports"].as_array().into_iter().flatten() {
            let (id, net_id) = (text(p, "id"), text(p, "network_id"));
            let Some(net) = networks.get(net_id) else { continue };
            let br = match self.ensure_bridge(net, subnets, &mut links).await {
                Ok(b) => b,
                Err(e) => {
                    pass.errors.push(e);
                    continue;
                }
            };
            bridges.insert(br.clone());
            let tap = dev_name("tap", id);
            let Some(link) = links.get(&tap).cloned() else {
                set_status(&mut pass, p, "DOWN");
                continue;
            };
            let up = p["admin_state_up"] != json!(false);
            let r = async {
                if link.master.as_deref() != Some(br.as_str()) {
                    linux::ip(None, &["link", "set", &tap, "master", &br]).await?;
                }
                if link.up != up {
                    linux::ip(None, &["link", "set", &tap, if up { "up" } else { "down" }]).await?;
                }
                Ok::<_, String>(())
            };
            match r.await {
                Ok(()) => set_status(&mut pass, p, if up { "ACTIVE" } else { "DOWN" }),
                Err(e) => pass.errors.push(e),
            }
            if p["port_security_enabled"] != json!(false) {
                filters.push(self.port_filter(p, state));
            }
        }
        if self.caps.filtering {
            let remote = state["remote_groups"].as_object().unwrap_or(&empty);
            for (i, v6) in [false, true].into_iter().enumerate() {
                let (rules, chains) = firewall::ruleset(&filters, remote, v6);
                if self.firewall[i].as_deref() == Some(rules.as_str()) {
                    continue;
                }
                match firewall::apply(&rules, &chains, self.chains[i].as_deref(), v6).await {
                    Ok(()) => {
                        self.firewall[i] = Some(rules);
                        self.chains[i] = Some(chains);
                    }
                    Err(e) => {
                        // The next load sweeps again.
                        self.chains[i] = None;
                        pass.errors.push(e);
                    }
                }
            }
            let arp = firewall::arp_script(&filters);
            if self.firewall[2].as_deref() != Some(arp.as_str()) {
                match linux::run_input(&["nft", "-f", "-"], Some(&arp)).await {
                    Ok(_) => self.firewall[2] = Some(arp),
                    Err(e) => pass.errors.push(format!("ARP protection: {e}")),
                }
            }
        }

        // DHCP.
        let mut wanted_ns: HashSet<String> = HashSet::new();
        for d in state["dhcp"].as_array().into_iter().flatten() {
            let net_id = text(d, "network_id");
            let port = &d["port"];
            let Some(net) = networks.get(net_id) else { continue };
            let ns = format!("qdhcp-{net_id}");
            wanted_ns.insert(ns.clone());
            let r = async {
                let br = self.ensure_bridge(net, subnets, &mut links).await?;
                bridges.insert(br.clone());
                let made = linux::ensure_netns(&ns, &namespaces, self.namespaces_ok.contains(&ns)).await?;
                if made {
                    // A dnsmasq left in a namespace that is gone serves nobody.
                    dhcp::stop(&dhcp::dir_of(&self.settings.state_dir, net_id)).await;
                    namespaces.push(ns.clone());
                }
                self.namespaces_ok.insert(ns.clone());
                let pid = text(port, "id");
                let ns_dev = dev_name("ns-", pid);
                let mtu = net["mtu"].as_i64().unwrap_or(1500);
                let addrs = port_addrs(port, subnets);
                self.ensure_veth(
                    &ns,
                    &dev_name("tap", pid),
                    &ns_dev,
                    &br,
                    text(port, "mac_address"),
                    mtu,
                    &addrs,
                    &links,
                )
                .await?;
                let hosts = d["hosts"].as_array().cloned().unwrap_or_default();
                let dn = dhcp::DhcpNetwork {
                    network_id: net_id,
                    port: port.as_object().unwrap_or(&empty),
                    hosts: &hosts,
                    subnets,
                    mtu,
                    lease_seconds: self.settings.dhcp_lease_duration,
                };
                let dir = dhcp::dir_of(&self.settings.state_dir, net_id);
                let (h, o, a) = dhcp::files(&dn, &dir, &ns_dev);
                dhcp::serve(&dir, &ns, &h, &o, &a).await
            };
            match r.await {
                Ok(()) => set_status(&mut pass, port, "ACTIVE"),
                Err(e) => pass.errors.push(format!("DHCP for network {net_id}: {e}")),
            }
        }

        // Routers.
        for r in state["routers"].as_array().into_iter().flatten() {
            let rid = text(&r["router"], "id").to_string();
            let ns = format!("qrouter-{rid}");
            wanted_ns.insert(ns.clone());
            match self
                .ensure_router(
                    r,
                    networks,
                    subnets,
                    &ns,
                    &mut links,
                    &mut namespaces,
                    &mut bridges,
                )
                .await
            {
                Ok(ports) => {
                    for p in r["ports"].as_array().into_iter().flatten() {
                        if ports.iter().any(|id| id == text(p, "id")) {
                            set_status(&mut pass, p, "ACTIVE");
                        }
                    }
                }
                Err(e) => pass.errors.push(format!("router {rid}: {e}")),
            }
        }

        // What is no longer wanted goes — only what this agent made (the names are the machine's: another
        // agent on the same machine, say for a second all-in-one, keeps its own).
        for ns in &wanted_ns {
            self.mark_namespace(ns, true);
        }
        for ns in &namespaces {
            let (dhcp_ns, router_ns) = (ns.strip_prefix("qdhcp-"), ns.strip_prefix("qrouter-"));
            if wanted_ns.contains(ns)
                || (dhcp_ns.is_none() && router_ns.is_none())
                || !self.made_namespace(ns)
            {
                continue;
            }
            if let Some(net) = dhcp_ns {
                dhcp::stop(&dhcp::dir_of(&self.settings.state_dir, net)).await;
            }
            if let Some(r) = router_ns {
                self.nat.remove(r);
            }
            self.namespaces_ok.remove(ns);
            match linux::run(&["ip", "netns", "del", ns]).await {
                Ok(_) => {
                    self.mark_namespace(ns, false);
                    tracing::info!(namespace = %ns, "namespace removed");
                }
                Err(e) => pass.errors.push(e),
            }
        }
        if let Ok(now) = linux::links(None).await {
            for (name, _) in now
                .iter()
                .filter(|(n, l)| n.starts_with("brq") && l.kind == "bridge")
            {
                let members = now
                    .values()
                    .filter(|l| l.master.as_deref() == Some(name.as_str()));
                let in_use = members.into_iter().any(|l| l.name.starts_with("tap"));
                if !bridges.contains(name) && !in_use {
                    // Its tunnel goes with it.
                    let tunnels: Vec<String> = now
                        .values()
                        .filter(|l| l.master.as_deref() == Some(name.as_str()) && l.kind == "vxlan")
                        .map(|l| l.name.clone())
                        .collect();
                    for t in tunnels {
                        if let Err(e) = linux::ip(None, &["link", "del", &t]).await {
                            pass.errors.push(e);
                        }
                    }
                    match linux::ip(None, &["link", "del", name]).await {
                        Ok(_) => tracing::info!(bridge = %name, "bridge removed"),
                        Err(e) => pass.errors.push(e),
                    }
                }
            }
        }
        pass
    }

    /// Record (or forget) that this agent made namespace `ns`, in its state directory.
    fn mark_namespace(&self, ns: &str, made: bool) {
        let dir = self.settings.state_dir.join("namespaces");
        let path = dir.join(ns);
        let r = if made {
            if path.exists() {
                return;
            }
            std::fs::create_dir_all(&dir).and_then(|_| std::fs::write(&path, b""))
        } else {
            std::fs::remove_file(&path)
        };
        if let Err(e) = r {
            tracing::warn!(namespace = %ns, error = %e, "cannot record the namespace in the state directory");
        }
    }

    fn made_namespace(&self, ns: &str) -> bool {
        self.settings.state_dir.join("namespaces").join(ns).exists()
    }

    /// The filter of one port: its addresses (and allowed pairs) and its groups' rules.
    fn port_filter(&self, p: &Value, state: &Value) -> firewall::PortFilter {
        let mac = text(p, "mac_address").to_string();
        let mut sources: Vec<(String, String)> = p["fixed_ips"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|f| (text(f, "ip_address").to_string(), mac.clone()))
            .collect();
        for a in p["allowed_address_pairs"].as_array().into_iter().flatten() {
            let m = a["mac_address"].as_str().unwrap_or(&mac).to_string();
            sources.push((text(a, "ip_address").to_string(), m));
        }
        let rules = p["security_groups"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .flat_map(|g| {
                state["security_groups"][g]["rules"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .collect();
        firewall::PortFilter {
            id: text(p, "id").to_string(),
            tap: dev_name("tap", text(p, "id")),
            mac,
            sources,
            rules,
        }
    }

    /// The network's bridge, made when missing, with its physical interface or the host's gateway address.
    async fn ensure_bridge(
        &mut self,
        net: &Value,
        subnets: &Map<String, Value>,
        links: &mut HashMap<String, linux::Link>,
    ) -> Result<String, String> {
        let id = text(net, "id");
        let br = dev_name("brq", id);
        if self.bridges_done.contains(&br) {
            return Ok(br);
        }
        if !links.contains_key(&br) {
            linux::ip(None, &["link", "add", &br, "type", "bridge"]).await?;
            linux::ip(None, &["link", "set", &br, "up"]).await?;
            tracing::info!(bridge = %br, network_id = %id, "bridge made");
            links.insert(
                br.clone(),
                linux::Link {
                    name: br.clone(),
                    up: true,
                    kind: "bridge".into(),
                    ..Default::default()
                },
            );
        }
        let physnet = net["provider:physical_network"].as_str();
        let iface = physnet.and_then(|p| {
            self.settings
                .physical_interface_mappings
                .iter()
                .find(|(n, _)| n == p)
                .map(|(_, i)| i.clone())
        });
        match (text(net, "provider:network_type"), iface) {
            ("flat", Some(iface))
                if links.get(&iface).and_then(|l| l.master.as_deref()) != Some(br.as_str()) =>
            {
                linux::ip(None, &["link", "set", &iface, "master", &br, "up"]).await?;
            }
            ("vlan", Some(iface)) => {
                let vid = net["provider:segmentation_id"].as_i64().unwrap_or(0).to_string();
                let mut sub = format!("{iface}.{vid}");
                sub.truncate(15);
                if !links.contains_key(&sub) {
                    linux::ip(
                        None,
                        &[
                            "link", "add", "link", &iface, "name", &sub, "type", "vlan", "id", &vid,
                        ],
                    )
                    .await?;
                }
                if links.get(&sub).and_then(|l| l.master.as_deref()) != Some(br.as_str()) {
                    linux::ip(None, &["link", "set", &sub, "master", &br, "up"]).await?;
                }
            }
            ("vxlan", _) if !self.settings.local_ip.is_empty() => {
                let vni = net["provider:segmentation_id"].as_i64().unwrap_or(0).to_string();
                self.ensure_vxlan(&br, &vni, net["mtu"].as_i64().unwrap_or(1450), links)
                    .await?;
            }
            (_, None)
                if net["router:external"] == json!(true) && self.settings.external_gateway_on_bridge =>
            {
                let want: Vec<String> = subnets
                    .values()
                    .filter(|s| text(s, "network_id") == id)
                    .filter_map(|s| {
                        Some(format!(
                            "{}/{}",
                            s["gateway_ip"].as_str()?,
                            linux::prefix_len(text(s, "cidr"))
                        ))
                    })
                    .collect();
                let have = linux::addrs(None, &br).await?;
                for a in want.iter().filter(|a| !have.contains(a)) {
                    linux::ip(None, &["addr", "replace", a, "dev", &br]).await?;
                }
            }
            _ => {}
        }
        self.bridges_done.insert(br.clone());
        Ok(br)
    }

    /// The network's VXLAN device in its bridge, flooding to every other host's tunnel endpoint (remote MACs
    /// are learnt from what arrives, as Neutron's Linux bridge agent does without l2population).
    async fn ensure_vxlan(
        &self,
        br: &str,
        vni: &str,
        mtu: i64,
        links: &HashMap<String, linux::Link>,
    ) -> Result<(), String> {
        let dev = format!("vxlan-{vni}");
        let mtu = mtu.to_string();
        if !links.contains_key(&dev) {
            linux::ip(
                None,
                &[
                    "link",
                    "add",
                    &dev,
                    "mtu",
                    &mtu,
                    "type",
                    "vxlan",
                    "id",
                    vni,
                    "local",
                    &self.settings.local_ip,
                    "dstport",
                    "4789",
                ],
            )
            .await?;
            tracing::info!(device = %dev, "VXLAN made");
        }
        if links.get(&dev).and_then(|l| l.master.as_deref()) != Some(br) {
            linux::ip(None, &["link", "set", &dev, "master", br]).await?;
        }
        linux::ip(None, &["link", "set", &dev, "up"]).await?;
        let listed = linux::run(&["bridge", "-j", "fdb", "show", "dev", &dev]).await?;
        let listed: Value = serde_json::from_str(&listed).unwrap_or(json!([]));
        let flood: Vec<String> = listed
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["mac"] == "00:00:00:00:00:00")
            .filter_map(|e| e["dst"].as_str().map(str::to_string))
            .collect();
        for p in self.peers.iter().filter(|p| !flood.contains(p)) {
            linux::run(&[
                "bridge",
                "fdb",
                "append",
                "00:00:00:00:00:00",
                "dev",
                &dev,
                "dst",
                p,
            ])
            .await?;
        }
        for old in flood.iter().filter(|d| !self.peers.contains(d)) {
            linux::run(&[
                "bridge",
                "fdb",
                "del",
                "00:00:00:00:00:00",
                "dev",
                &dev,
                "dst",
                old,
            ])
            .await?;
        }
        Ok(())
    }

    /// A veth pair: `host_dev` in `bridge`, `ns_dev` in namespace `ns` with the port's MAC and addresses.
    #[allow(clippy::too_many_arguments)]
    async fn ensure_veth(
        &self,
        ns: &str,
        host_dev: &str,
        ns_dev: &str,
        bridge: &str,
        mac: &str,
        mtu: i64,
        addrs: &[String],
        links: &HashMap<String, linux::Link>,
    ) -> Result<(), String> {
        let inside = linux::links(Some(ns)).await?;
        let mtu = mtu.to_string();
        if !links.contains_key(host_dev) || !inside.contains_key(ns_dev) {
            if links.contains_key(host_dev) {
                // Half a pair (its other end went with a namespace): it may be gone by now too.
                let _ = linux::ip(None, &["link", "del", host_dev]).await;
            }
            linux::ip(
                None,
                &[
                    "link", "add", host_dev, "mtu", &mtu, "type", "veth", "peer", "name", ns_dev, "mtu",
                    &mtu, "netns", ns,
                ],
            )
            .await?;
            linux::ip(Some(ns), &["link", "set", ns_dev, "address", mac]).await?;
        }
        if links.get(host_dev).and_then(|l| l.master.as_deref()) != Some(bridge) {
            linux::ip(None, &["link", "set", host_dev, "master", bridge]).await?;
        }
        if !links.get(host_dev).is_some_and(|l| l.up) {
            linux::ip(None, &["link", "set", host_dev, "up"]).await?;
        }
        if !inside.get(ns_dev).is_some_and(|l| l.up) {
            linux::ip(Some(ns), &["link", "set", ns_dev, "up"]).await?;
        }
        linux::set_addrs(Some(ns), ns_dev, addrs).await
    }

    /// One router's namespace; the ids of the ports it plugged.
    #[allow(clippy::too_many_arguments)]
    async fn ensure_router(
        &mut self,
        r: &Value,
        networks: &Map<String, Value>,
        subnets: &Map<String, Value>,
        ns: &str,
        links: &mut HashMap<String, linux::Link>,
        namespaces: &mut Vec<String>,
        bridges: &mut HashSet<String>,
    ) -> Result<Vec<String>, String> {
        let router = &r["router"];
        let rid = text(router, "id").to_string();
        if linux::ensure_netns(ns, namespaces, self.namespaces_ok.contains(ns)).await? {
            namespaces.push(ns.to_string());
            self.nat.remove(&rid);
        }
        if self.namespaces_ok.insert(ns.to_string()) {
            linux::in_ns(ns, &["sysctl", "-qw", "net.ipv4.ip_forward=1"], None).await?;
            let _ = linux::in_ns(ns, &["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"], None).await;
        }
        let fips: Vec<l3::FloatingIp> = r["floatingips"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|f| {
                Some(l3::FloatingIp {
                    floating: f["floating_ip_address"].as_str()?.to_string(),
                    fixed: f["fixed_ip_address"].as_str()?.to_string(),
                })
            })
            .collect();
        let mut plugged = Vec::new();
        let mut devs = Vec::new();
        let mut gateway: Option<(String, Option<String>, Option<String>)> = None;
        let mut internal = Vec::new();
        for p in r["ports"].as_array().into_iter().flatten() {
            let owner = text(p, "device_owner");
            let prefix = if owner == "network:router_gateway" {
                "qg-"
            } else if owner.starts_with("network:router_interface") {
                "qr-"
            } else {
                continue;
            };
            let Some(net) = networks.get(text(p, "network_id")) else {
                continue;
            };
            let br = self.ensure_bridge(net, subnets, links).await?;
            bridges.insert(br.clone());
            let pid = text(p, "id");
            let ns_dev = dev_name(prefix, pid);
            let gw = prefix == "qg-";
            let mut addrs = port_addrs(p, subnets);
            if gw {
                addrs.extend(fips.iter().map(|f| format!("{}/32", f.floating)));
                let v4 = p["fixed_ips"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|f| !text(f, "ip_address").contains(':'));
                let own = v4.map(|f| text(f, "ip_address").to_string());
                let next = v4
                    .and_then(|f| subnets.get(text(f, "subnet_id")))
                    .and_then(|s| s["gateway_ip"].as_str().map(str::to_string));
                gateway = Some((ns_dev.clone(), own, next));
            } else {
                for f in p["fixed_ips"].as_array().into_iter().flatten() {
                    if let Some(s) = subnets.get(text(f, "subnet_id")) {
                        internal.push(text(s, "cidr").to_string());
                    }
                }
            }
            let mtu = net["mtu"].as_i64().unwrap_or(1500);
            self.ensure_veth(
                ns,
                &dev_name("tap", pid),
                &ns_dev,
                &br,
                text(p, "mac_address"),
                mtu,
                &addrs,
                links,
            )
            .await?;
            devs.push(ns_dev);
            plugged.push(pid.to_string());
        }
        // Interfaces removed from the router.
        for name in linux::links(Some(ns)).await?.into_keys() {
            if (name.starts_with("qr-") || name.starts_with("qg-")) && !devs.contains(&name) {
                linux::ip(Some(ns), &["link", "del", &name]).await?;
            }
        }
        // Routes: the default through the external subnet's gateway, and the router's extra routes.
        if let Some((dev, _, Some(next))) = &gateway {
            linux::ip(
                Some(ns),
                &["route", "replace", "default", "via", next, "dev", dev],
            )
            .await?;
        }
        let extra: Vec<(String, String)> = router["routes"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|x| (text(x, "destination").to_string(), text(x, "nexthop").to_string()))
            .filter(|(d, _)| !d.contains(':'))
            .collect();
        let listed = linux::ip(Some(ns), &["-j", "route", "show", "proto", "static"]).await?;
        let listed: Value = serde_json::from_str(&listed).unwrap_or(json!([]));
        for old in listed.as_array().into_iter().flatten() {
            let dst = text(old, "dst");
            if !extra
                .iter()
                .any(|(d, _)| d == dst || d.trim_end_matches("/32") == dst)
            {
                let _ = linux::ip(Some(ns), &["route", "del", dst, "proto", "static"]).await;
            }
        }
        for (dst, hop) in &extra {
            linux::ip(
                Some(ns),
                &["route", "replace", dst, "via", hop, "proto", "static"],
            )
            .await?;
        }
        // NAT.
        let snat = router["external_gateway_info"]["enable_snat"] != json!(false);
        let (gw_dev, gw_ip) = match &gateway {
            Some((d, ip, _)) => (Some(d.as_str()), ip.as_deref()),
            None => (None, None),
        };
        let script = l3::nat_script(gw_dev, gw_ip, snat, &internal, &fips);
        if self.nat.get(&rid) != Some(&script) {
            linux::in_ns(ns, &["nft", "-f", "-"], Some(&script)).await?;
            self.nat.insert(rid, script);
        }
        Ok(plugged)
    }
}

/// A port's addresses with their subnets' prefix lengths (`10.0.0.2/24`).
fn port_addrs(p: &Value, subnets: &Map<String, Value>) -> Vec<String> {
    p["fixed_ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| {
            let ip = f["ip_address"].as_str()?;
            let s = subnets.get(f["subnet_id"].as_str()?)?;
            Some(format!("{ip}/{}", linux::prefix_len(text(s, "cidr"))))
        })
        .collect()
}

//! The scheduler, as Nova's filter scheduler works: ask placement for allocation candidates (VCPU,
//! MEMORY_MB, DISK_GB of the flavor; disabled computes excluded with `!COMPUTE_STATUS_DISABLED`; a
//! requested zone turned into `member_of` its aggregates), build the state of each candidate host from its
//! cell, run the enabled filters, weigh what is left (free RAM, CPU, disk, with multipliers), and claim the
//! best host's allocation in placement — the next best if that claim loses a race. It returns, per
//! instance, the chosen host and alternates from the same cell (with their allocation requests, unclaimed)
//! for reschedules.

use crate::aggregates::{self, Aggregate};
use crate::api::services::is_up_at;
use crate::celldb::{self, NodeRow, ServiceRecord};
use crate::cells::{self, CellMapping};
use crate::placement_client::PlacementClient;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tessera_db::Db;

pub const DEFAULT_FILTERS: &[&str] = &[
    "ComputeFilter",
    "AvailabilityZoneFilter",
    "ComputeCapabilitiesFilter",
    "ImagePropertiesFilter",
    "ServerGroupAntiAffinityFilter",
    "ServerGroupAffinityFilter",
];

pub const KNOWN_FILTERS: &[&str] = &[
    "ComputeFilter",
    "AvailabilityZoneFilter",
    "ComputeCapabilitiesFilter",
    "ImagePropertiesFilter",
    "AggregateInstanceExtraSpecsFilter",
    "ServerGroupAntiAffinityFilter",
    "ServerGroupAffinityFilter",
];

#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    pub enabled_filters: Vec<String>,
    pub ram_weight_multiplier: f64,
    pub cpu_weight_multiplier: f64,
    pub disk_weight_multiplier: f64,
    /// Tries per instance (the chosen host plus alternates).
    pub max_attempts: usize,
    pub service_down_time: Duration,
    pub default_availability_zone: String,
    /// How many allocation candidates to ask placement for.
    pub max_placement_results: usize,
}

/// What one boot asks for (the parts of Nova's RequestSpec the scheduler reads).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct RequestSpec {
    pub project_id: String,
    pub user_id: String,
    pub vcpus: i64,
    pub memory_mb: i64,
    /// root + ephemeral + swap (GB, swap rounded up).
    pub disk_gb: i64,
    pub extra_specs: BTreeMap<String, String>,
    pub image_properties: BTreeMap<String, String>,
    pub availability_zone: Option<String>,
    /// `affinity`, `anti-affinity`, `soft-affinity`, `soft-anti-affinity`.
    pub group_policy: Option<String>,
    /// Hosts the group's members are on already (a host once per member).
    pub group_hosts: Vec<String>,
    /// The server group the boot joins (`os:scheduler_hints` `group`); its policy, rule and members' hosts
    /// are filled in when scheduling.
    #[serde(default)]
    pub instance_group: Option<String>,
    /// Anti-affinity's `max_server_per_host` (1 unless the group's rules say more).
    #[serde(default)]
    pub group_max_per_host: Option<i64>,
    pub ignore_hosts: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Selection {
    pub host: String,
    pub nodename: String,
    pub compute_node_uuid: String,
    pub cell_uuid: String,
    /// The allocation request (`{"allocations": {rp: {"resources": …}}}`) for this host.
    pub allocation_request: Value,
}

#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error("No valid host was found. {0}")]
    NoValidHost(String),
    #[error(transparent)]
    Compute(#[from] crate::ComputeError),
    #[error(transparent)]
    Placement(#[from] crate::placement_client::PlacementClientError),
}

/// The parts of a `GET /allocation_candidates` answer the scheduler reads (the rest is skipped unparsed).
#[derive(serde::Deserialize)]
struct Candidates {
    #[serde(default)]
    allocation_requests: Vec<Value>,
    #[serde(default)]
    provider_summaries: HashMap<String, Summary>,
}

#[derive(serde::Deserialize)]
struct Summary {
    #[serde(default)]
    resources: HashMap<String, Usage>,
}

#[derive(serde::Deserialize)]
struct Usage {
    #[serde(default)]
    capacity: f64,
    #[serde(default)]
    used: f64,
}

/// A candidate host as the filters and weighers see it.
#[derive(Debug, Clone)]
pub struct HostState {
    pub cell: CellMapping,
    pub node: NodeRow,
    pub service: Option<ServiceRecord>,
    pub aggregates: Vec<Aggregate>,
    pub zone: String,
    pub allocation_request: Value,
    pub free_ram_mb: f64,
    pub free_vcpus: f64,
    pub free_disk_gb: f64,
}

pub struct Scheduler {
    pub api_db: Db,
    pub placement: Arc<PlacementClient>,
    pub cfg: SchedulerConfig,
    cell_dbs: celldb::CellDbs,
}

impl Scheduler {
    pub fn new(api_db: Db, placement: Arc<PlacementClient>, cfg: SchedulerConfig) -> Self {
        Scheduler {
            api_db,
            placement,
            cfg,
            cell_dbs: celldb::CellDbs::new(),
        }
    }

    async fn cell_db(&self, c: &CellMapping) -> Result<Db, crate::ComputeError> {
        self.cell_dbs.get(c).await
    }

    fn placement_query(&self, spec: &RequestSpec, aggs: &[Aggregate]) -> Result<String, SchedulerError> {
        let mut res = vec![
            format!("VCPU:{}", spec.vcpus),
            format!("MEMORY_MB:{}", spec.memory_mb),
        ];
        if spec.disk_gb > 0 {
            res.push(format!("DISK_GB:{}", spec.disk_gb));
        }
        let mut q = format!(
            "resources={}&required=!COMPUTE_STATUS_DISABLED&limit={}",
            res.join(","),
            self.cfg.max_placement_results
        );
        if let Some(z) = spec
            .availability_zone
            .as_deref()
            .filter(|z| *z != self.cfg.default_availability_zone)
        {
            let in_zone: Vec<&str> = aggs
                .iter()
                .filter(|a| a.availability_zone() == Some(z))
                .map(|a| a.uuid.as_str())
                .collect();
            if in_zone.is_empty() {
                return Err(SchedulerError::NoValidHost(format!(
                    "No host is in availability zone {z}."
                )));
            }
            q.push_str(&format!("&member_of=in:{}", in_zone.join(",")));
        }
        Ok(q)
    }

    /// Candidate hosts for `spec`, from placement and the enabled cells.
    pub async fn host_states(&self, spec: &RequestSpec) -> Result<Vec<HostState>, SchedulerError> {
        let t = std::time::Instant::now();
        let aggs = aggregates::list(&self.api_db).await?;
        let q = self.placement_query(spec, &aggs)?;
        let cands: Candidates = self.placement.allocation_candidates_as(&q).await?;
        tracing::debug!(ms = t.elapsed().as_secs_f64() * 1000.0, "allocation candidates");
        // Provider uuid → its first allocation request (a compute node's own resources).
        let mut requests: HashMap<String, Value> = HashMap::new();
        for ar in cands.allocation_requests {
            if let Some(allocs) = ar["allocations"].as_object() {
                if allocs.len() == 1 {
                    if let Some(rp) = allocs.keys().next().cloned() {
                        requests.entry(rp).or_insert(ar);
                    }
                }
            }
        }
        let summaries = &cands.provider_summaries;
        let mut out = Vec::new();
        for cell in cells::cell_list(&self.api_db).await? {
            if cell.is_cell0() || cell.disabled {
                continue;
            }
            let db = match self.cell_db(&cell).await {
                Ok(db) => db,
                Err(e) => {
                    tracing::warn!(cell = %cell.uuid, error = %e, "cell unreachable; its hosts are not candidates");
                    continue;
                }
            };
            let nodes = celldb::compute_nodes_full(&db).await?;
            let services = celldb::services(&db).await?;
            for node in nodes {
                let Some(ar) = requests.get(&node.uuid) else {
                    continue;
                };
                if spec.ignore_hosts.contains(&node.host) {
                    continue;
                }
                let service = services
                    .iter()
                    .find(|s| Some(s.id) == node.service_id)
                    .or_else(|| {
                        services
                            .iter()
                            .find(|s| s.binary == "nova-compute" && s.host == node.host)
                    })
                    .cloned();
                let host_aggs: Vec<Aggregate> = aggs
                    .iter()
                    .filter(|a| a.hosts.contains(&node.host))
                    .cloned()
                    .collect();
                let zone = host_aggs
                    .iter()
                    .find_map(|a| a.availability_zone().map(str::to_string))
                    .unwrap_or_else(|| self.cfg.default_availability_zone.clone());
                let free = |rc: &str| -> f64 {
                    match summaries.get(&node.uuid).and_then(|s| s.resources.get(rc)) {
                        Some(r) => (r.capacity - r.used).max(0.0),
                        None => 0.0,
                    }
                };
                out.push(HostState {
                    free_ram_mb: free("MEMORY_MB"),
                    free_vcpus: free("VCPU"),
                    free_disk_gb: free("DISK_GB"),
                    cell: cell.clone(),
                    node,
                    service,
                    aggregates: host_aggs,
                    zone,
                    allocation_request: ar.clone(),
                });
            }
        }
        Ok(out)
    }

    fn passes(&self, filter: &str, h: &HostState, spec: &RequestSpec, chosen: &[String]) -> bool {
        match filter {
            "ComputeFilter" => h.service.as_ref().is_some_and(|s| {
                !s.disabled && is_up_at(s, self.cfg.service_down_time, tessera_types::now_epoch_micros())
            }),
            "AvailabilityZoneFilter" => spec.availability_zone.as_deref().is_none_or(|z| z == h.zone),
            "ComputeCapabilitiesFilter" => spec.extra_specs.iter().all(|(k, v)| {
                let key = match k.split_once(':') {
                    Some(("capabilities", rest)) => rest,
                    _ => return true,
                };
                let actual = match key {
                    "hypervisor_type" => h.node.hypervisor_type.clone(),
                    "hypervisor_hostname" => h.node.hypervisor_hostname.clone(),
                    "vcpus" => h.node.vcpus.to_string(),
                    "memory_mb" => h.node.memory_mb.to_string(),
                    "local_gb" => h.node.local_gb.to_string(),
                    "host" => h.node.host.clone(),
                    _ => return false,
                };
                extra_spec_matches(&actual, v)
            }),
            "AggregateInstanceExtraSpecsFilter" => spec.extra_specs.iter().all(|(k, v)| {
                let key = match k.split_once(':') {
                    Some(("aggregate_instance_extra_specs", rest)) => rest,
                    Some(_) => return true,
                    None => k.as_str(),
                };
                let values: Vec<&str> = h
                    .aggregates
                    .iter()
                    .filter_map(|a| a.metadata.get(key).map(String::as_str))
                    .collect();
                !values.is_empty()
                    && values
                        .iter()
                        .any(|a| a.split(',').any(|x| extra_spec_matches(x.trim(), v)))
            }),
            "ImagePropertiesFilter" => {
                let arch_ok = spec
                    .image_properties
                    .get("hw_architecture")
                    .or_else(|| spec.image_properties.get("architecture"))
                    .is_none_or(|a| ["x86_64", "i686"].contains(&a.as_str()));
                let hv_ok = spec
                    .image_properties
                    .get("img_hv_type")
                    .or_else(|| spec.image_properties.get("hypervisor_type"))
                    .is_none_or(|t| {
                        t.eq_ignore_ascii_case(&h.node.hypervisor_type)
                            || (t == "qemu" && h.node.hypervisor_type == "fake")
                    });
                let mode_ok = spec.image_properties.get("hw_vm_mode").is_none_or(|m| m == "hvm");
                arch_ok && hv_ok && mode_ok
            }
            "ServerGroupAntiAffinityFilter" => {
                // At most `max_server_per_host` (2.64 rules; 1 by default) of the group's servers per host,
                // counting those placed earlier in this same request.
                spec.group_policy.as_deref() != Some("anti-affinity") || {
                    let here = spec
                        .group_hosts
                        .iter()
                        .chain(chosen)
                        .filter(|x| **x == h.node.host)
                        .count() as i64;
                    here < spec.group_max_per_host.unwrap_or(1).max(1)
                }
            }
            "ServerGroupAffinityFilter" => {
                spec.group_policy.as_deref() != Some("affinity")
                    || match spec.group_hosts.first().or(chosen.first()) {
                        Some(g) => *g == h.node.host,
                        None => true,
                    }
            }
            _ => true,
        }
    }

    /// Filter and weigh: indices into `hosts`, best first.
    fn rank(&self, hosts: &[HostState], spec: &RequestSpec, chosen: &[String]) -> Vec<usize> {
        let passing: Vec<usize> = (0..hosts.len())
            .filter(|&i| {
                self.cfg
                    .enabled_filters
                    .iter()
                    .all(|f| self.passes(f, &hosts[i], spec, chosen))
            })
            .collect();
        let ok: Vec<&HostState> = passing.iter().map(|&i| &hosts[i]).collect();
        let norm = |vals: Vec<f64>| -> Vec<f64> {
            let (min, max) = vals
                .iter()
                .fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(*v), b.max(*v)));
            vals.iter()
                .map(|v| if max > min { (v - min) / (max - min) } else { 0.0 })
                .collect()
        };
        let ram = norm(ok.iter().map(|h| h.free_ram_mb).collect());
        let cpu = norm(ok.iter().map(|h| h.free_vcpus).collect());
        let disk = norm(ok.iter().map(|h| h.free_disk_gb).collect());
        let soft: Vec<f64> = ok
            .iter()
            .map(|h| {
                let n = spec
                    .group_hosts
                    .iter()
                    .chain(chosen)
                    .filter(|x| **x == h.node.host)
                    .count() as f64;
                match spec.group_policy.as_deref() {
                    Some("soft-affinity") => n,
                    Some("soft-anti-affinity") => -n,
                    _ => 0.0,
                }
            })
            .collect();
        let soft = norm(soft);
        let mut scored: Vec<(f64, usize)> = (0..ok.len())
            .map(|i| {
                let w = ram[i] * self.cfg.ram_weight_multiplier
                    + cpu[i] * self.cfg.cpu_weight_multiplier
                    + disk[i] * self.cfg.disk_weight_multiplier
                    + soft[i];
                (w, i)
            })
            .collect();
        // Best weight first; ties by host name for a stable order.
        scored.sort_by(|a, b| {
            b.0.partial_cmp(&a.0)
                .unwrap_or(std::cmp::Ordering::Equal)
                .then_with(|| ok[a.1].node.host.cmp(&ok[b.1].node.host))
        });
        scored.into_iter().map(|(_, i)| passing[i]).collect()
    }

    /// Choose and claim a host for each instance (allocations made in placement under the instance's uuid),
    /// with up to `max_attempts - 1` alternates from the chosen host's cell. If any instance cannot be
    /// placed, the claims already made for this request are released and the error is NoValidHost.
    pub async fn select_destinations(
        &self,
        spec: &RequestSpec,
        instances: &[String],
    ) -> Result<Vec<Vec<Selection>>, SchedulerError> {
        let started = std::time::Instant::now();
        let mut hosts = self.host_states(spec).await?;
        let states_ms = started.elapsed().as_secs_f64() * 1000.0;
        let mut chosen: Vec<String> = Vec::new();
        let mut out = Vec::new();
        for uuid in instances {
            let ranked = self.rank(&hosts, spec, &chosen);
            let mut picked: Option<usize> = None;
            for (i, h) in ranked.iter().map(|&j| &hosts[j]).enumerate() {
                if self
                    .placement
                    .claim(
                        uuid,
                        &h.allocation_request["allocations"],
                        &spec.project_id,
                        &spec.user_id,
                    )
                    .await?
                {
                    picked = Some(i);
                    break;
                }
            }
            let Some(i) = picked else {
                for done in instances.iter().take(out.len()) {
                    if let Err(e) = self.placement.release(done).await {
                        tracing::warn!(instance = %done, error = %e, "cannot release a claim after a failed schedule");
                    }
                }
                let why = if hosts.is_empty() {
                    "There are not enough hosts available."
                } else {
                    "No host passed the filters or had room."
                };
                return Err(SchedulerError::NoValidHost(why.into()));
            };
            let hi = ranked[i];
            chosen.push(hosts[hi].node.host.clone());
            let sel = |h: &HostState| Selection {
                host: h.node.host.clone(),
                nodename: h.node.hypervisor_hostname.clone(),
                compute_node_uuid: h.node.uuid.clone(),
                cell_uuid: h.cell.uuid.clone(),
                allocation_request: h.allocation_request.clone(),
            };
            let host = &hosts[hi];
            let mut list = vec![sel(host)];
            list.extend(
                ranked
                    .iter()
                    .enumerate()
                    .filter(|(j, &k)| *j != i && hosts[k].cell.uuid == host.cell.uuid)
                    .take(self.cfg.max_attempts.saturating_sub(1))
                    .map(|(_, &k)| sel(&hosts[k])),
            );
            out.push(list);
            // What this instance takes is gone for the next one (placement has it; our copy must too).
            let h = &mut hosts[hi];
            h.free_ram_mb -= spec.memory_mb as f64;
            h.free_vcpus -= spec.vcpus as f64;
            h.free_disk_gb -= spec.disk_gb as f64;
        }
        tracing::debug!(
            instances = instances.len(),
            candidates = hosts.len(),
            host_states_ms = states_ms,
            total_ms = started.elapsed().as_secs_f64() * 1000.0,
            "scheduled"
        );
        Ok(out)
    }
}

/// Nova's extra-spec comparison: `s==`, `s!=`, `s>=`, `s<=`, `<in>`, `<or>`, `==`, `!=`, `>=`, `<=`, or a
/// plain value (equality, numeric `>=` when both are numbers).
pub fn extra_spec_matches(actual: &str, want: &str) -> bool {
    let w = want.trim();
    let num = |s: &str| s.trim().parse::<f64>().ok();
    if let Some(rest) = w.strip_prefix("<or>") {
        return rest.split("<or>").any(|x| x.trim() == actual);
    }
    if let Some(rest) = w.strip_prefix("<in>") {
        return actual.contains(rest.trim());
    }
    for (op, f) in [
        (
            "s==",
            Box::new(|a: &str, b: &str| a == b) as Box<dyn Fn(&str, &str) -> bool>,
        ),
        ("s!=", Box::new(|a: &str, b: &str| a != b)),
        ("s>=", Box::new(|a: &str, b: &str| a >= b)),
        ("s<=", Box::new(|a: &str, b: &str| a <= b)),
    ] {
        if let Some(rest) = w.strip_prefix(op) {
            return f(actual, rest.trim());
        }
    }
    for op in ["==", "!=", ">=", "<="] {
        if let Some(rest) = w.strip_prefix(op) {
            let (Some(a), Some(b)) = (num(actual), num(rest)) else {
                return false;
            };
            return match op {
                "==" => a == b,
                "!=" => a != b,
                ">=" => a >= b,
                _ => a <= b,
            };
        }
    }
    match (num(actual), num(w)) {
        (Some(a), Some(b)) => a >= b,
        _ => actual == w,
    }
}

#[cfg(test)]
mod tests {
    use super::extra_spec_matches as m;

    #[test]
    fn extra_spec_operators() {
        assert!(m("fake", "fake"));
        assert!(m("fake", "s== fake"));
        assert!(!m("fake", "s!= fake"));
        assert!(m("16", ">= 8"));
        assert!(!m("4", ">= 8"));
        assert!(m("16", "8"), "a plain number means at least");
        assert!(m("ssd", "<or> hdd <or> ssd"));
        assert!(m("x86_64,i686", "<in> i686"));
        assert!(!m("abc", "== 3"));
    }
}

//! DHCP for a network, as Neutron's DHCP agent serves it: a namespace `qdhcp-<network>` holding the
//! network's DHCP port (`ns-…`, its host end `tap…` in the network's bridge) and one dnsmasq that hands out
//! exactly the addresses the ports hold (static ranges, a hosts file of MAC → address), with each subnet's
//! gateway, DNS servers, host routes and MTU as options. Changes rewrite the files and send SIGHUP; a change
//! of ranges restarts dnsmasq.

use super::linux::{self, Result};
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

/// One network's DHCP service as the server describes it.
pub struct DhcpNetwork<'a> {
    pub network_id: &'a str,
    pub port: &'a Map<String, Value>,
    /// The network's other ports (`id`, `mac_address`, `fixed_ips`, `extra_dhcp_opts`).
    pub hosts: &'a [Value],
    /// Subnets by id.
    pub subnets: &'a Map<String, Value>,
    pub mtu: i64,
    pub lease_seconds: i64,
}

fn dhcp_subnet(s: &Value) -> bool {
    s["enable_dhcp"] == Value::Bool(true)
        && (s["ip_version"] == 4 || s["ipv6_address_mode"].as_str() == Some("dhcpv6-stateful"))
}

/// The IPv4 netmask of a prefix length.
fn netmask(prefix: u32) -> String {
    let m: u32 = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix.min(32))
    };
    std::net::Ipv4Addr::from(m).to_string()
}

fn host_name(ip: &str) -> String {
    format!("host-{}", ip.replace(['.', ':'], "-"))
}

/// The hosts file, options file and command-line arguments (after the binary) of one network's dnsmasq.
pub fn files(n: &DhcpNetwork, dir: &Path, interface: &str) -> (String, String, Vec<String>) {
    let mut hosts = String::new();
    let mut opts = String::new();
    let mut served: Vec<&Value> = n
        .port
        .get("fixed_ips")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|f| n.subnets.get(f["subnet_id"].as_str().unwrap_or_default()))
        .filter(|s| dhcp_subnet(s))
        .collect();
    served.sort_by_key(|s| s["id"].as_str().unwrap_or_default().to_string());
    served.dedup_by_key(|s| s["id"].as_str().unwrap_or_default().to_string());
    let is_served = |sid: &str| served.iter().any(|s| s["id"].as_str() == Some(sid));
    for h in n.hosts {
        let mac = h["mac_address"].as_str().unwrap_or_default();
        let id = h["id"].as_str().unwrap_or_default();
        let has_opts = h["extra_dhcp_opts"].as_array().is_some_and(|a| !a.is_empty());
        for f in h["fixed_ips"].as_array().into_iter().flatten() {
            let (Some(sid), Some(ip)) = (f["subnet_id"].as_str(), f["ip_address"].as_str()) else {
                continue;
            };
            if !is_served(sid) {
                continue;
            }
            let tag = if has_opts {
                format!("set:port-{id},")
            } else {
                String::new()
            };
            let addr = if ip.contains(':') {
                format!("[{ip}]")
            } else {
                ip.to_string()
            };
            hosts.push_str(&format!("{mac},{tag}{},{addr}\n", host_name(ip)));
        }
        for o in h["extra_dhcp_opts"].as_array().into_iter().flatten() {
            let (Some(name), Some(value)) = (o["opt_name"].as_str(), o["opt_value"].as_str()) else {
                continue;
            };
            let v6 = o["ip_version"].as_i64() == Some(6);
            let opt = if name.chars().all(|c| c.is_ascii_digit()) {
                if v6 {
                    format!("option6:{name}")
                } else {
                    name.to_string()
                }
            } else if v6 {
                format!("option6:{name}")
            } else {
                format!("option:{name}")
            };
            opts.push_str(&format!("tag:port-{id},{opt},{value}\n"));
        }
    }
    let mut args = vec![
        "--no-hosts".to_string(),
        "--no-resolv".into(),
        "--port=0".into(),
        format!("--pid-file={}", dir.join("pid").display()),
        format!("--dhcp-hostsfile={}", dir.join("host").display()),
        format!("--dhcp-optsfile={}", dir.join("opts").display()),
        format!("--dhcp-leasefile={}", dir.join("leases").display()),
        format!("--log-facility={}", dir.join("log").display()),
        // It rereads its files on SIGHUP; they live in the agent's state directory, which need not be open
        // to other users, so it keeps the agent's user rather than dropping to nobody.
        "--user=root".into(),
        "--bind-interfaces".into(),
        format!("--interface={interface}"),
        "--except-interface=lo".into(),
        "--dhcp-authoritative".into(),
        "--domain=openstacklocal".into(),
    ];
    for s in &served {
        let sid = s["id"].as_str().unwrap_or_default();
        let cidr = s["cidr"].as_str().unwrap_or_default();
        let (net, prefix) = cidr.split_once('/').unwrap_or((cidr, "32"));
        let tag = format!("tag:subnet-{sid}");
        if s["ip_version"] == 4 {
            let mask = netmask(prefix.parse().unwrap_or(32));
            args.push(format!(
                "--dhcp-range=set:subnet-{sid},{net},static,{mask},{}s",
                n.lease_seconds
            ));
            match s["gateway_ip"].as_str() {
                Some(gw) => opts.push_str(&format!("{tag},option:router,{gw}\n")),
                None => opts.push_str(&format!("{tag},option:router\n")),
            }
            let dns: Vec<&str> = s["dns_nameservers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            if !dns.is_empty() {
                opts.push_str(&format!("{tag},option:dns-server,{}\n", dns.join(",")));
            }
            let mut routes: Vec<String> = s["host_routes"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|r| {
                    Some(format!(
                        "{},{}",
                        r["destination"].as_str()?,
                        r["nexthop"].as_str()?
                    ))
                })
                .collect();
            if !routes.is_empty() {
                // A client taking classless routes ignores the router option: the default route goes too.
                if let Some(gw) = s["gateway_ip"].as_str() {
                    routes.push(format!("0.0.0.0/0,{gw}"));
                }
                opts.push_str(&format!(
                    "{tag},option:classless-static-route,{}\n",
                    routes.join(",")
                ));
            }
            if n.mtu > 0 {
                opts.push_str(&format!("{tag},option:mtu,{}\n", n.mtu));
            }
        } else {
            args.push(format!(
                "--dhcp-range=set:subnet-{sid},{net},static,{prefix},{}s",
                n.lease_seconds
            ));
            let dns: Vec<String> = s["dns_nameservers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(|d| format!("[{d}]"))
                .collect();
            if !dns.is_empty() {
                opts.push_str(&format!("{tag},option6:dns-server,{}\n", dns.join(",")));
            }
        }
    }
    args.push(format!("--dhcp-lease-max={}", 1 << 16));
    (hosts, opts, args)
}

/// Where one network's dnsmasq keeps its files.
pub fn dir_of(state: &Path, network_id: &str) -> PathBuf {
    state.join("dhcp").join(network_id)
}

fn read_pid(dir: &Path) -> Option<u32> {
    std::fs::read_to_string(dir.join("pid")).ok()?.trim().parse().ok()
}

/// Write the files and make dnsmasq serve them: started, told to reread (SIGHUP), or restarted when its
/// arguments changed.
pub async fn serve(dir: &Path, ns: &str, hosts: &str, opts: &str, args: &[String]) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let write = |name: &str, text: &str| -> Result<bool> {
        let p = dir.join(name);
        if std::fs::read_to_string(&p).ok().as_deref() == Some(text) {
            return Ok(false);
        }
        std::fs::write(&p, text).map_err(|e| format!("{}: {e}", p.display()))?;
        Ok(true)
    };
    let files_changed = write("host", hosts)? | write("opts", opts)?;
    let args_text = args.join("\n");
    let args_changed = write("args", &args_text)?;
    let marker = dir.join("pid").display().to_string();
    let running = read_pid(dir).filter(|p| linux::process_alive(*p, &marker));
    match running {
        Some(pid) if !args_changed => {
            if files_changed {
                linux::signal(pid, "HUP").await?;
            }
            return Ok(());
        }
        Some(pid) => {
            linux::signal(pid, "TERM").await?;
            for _ in 0..50 {
                if !linux::process_alive(pid, &marker) {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
        None => {}
    }
    let mut argv: Vec<&str> = vec!["dnsmasq"];
    argv.extend(args.iter().map(String::as_str));
    linux::in_ns(ns, &argv, None).await?;
    tracing::info!(namespace = %ns, "dnsmasq started");
    Ok(())
}

/// Stop a network's dnsmasq and forget its files.
pub async fn stop(dir: &Path) {
    let marker = dir.join("pid").display().to_string();
    if let Some(pid) = read_pid(dir).filter(|p| linux::process_alive(*p, &marker)) {
        let _ = linux::signal(pid, "TERM").await;
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn files_list_each_port_and_subnet() {
        let port = json!({"id": "dp", "fixed_ips": [{"subnet_id": "s4", "ip_address": "10.0.0.2"},
                                                   {"subnet_id": "s6", "ip_address": "fd00::2"}]});
        let subnets = json!({
            "s4": {"id": "s4", "ip_version": 4, "cidr": "10.0.0.0/24", "enable_dhcp": true, "gateway_ip": "10.0.0.1",
                   "dns_nameservers": ["192.0.2.53"], "host_routes": [{"destination": "192.0.2.0/24", "nexthop": "10.0.0.9"}]},
            "s6": {"id": "s6", "ip_version": 6, "cidr": "fd00::/64", "enable_dhcp": true, "ipv6_address_mode": "slaac"},
        });
        let hosts = vec![
            json!({"id": "p1", "mac_address": "fa:16:3e:00:00:01", "fixed_ips": [{"subnet_id": "s4", "ip_address": "10.0.0.5"},
                   {"subnet_id": "s6", "ip_address": "fd00::5"}], "extra_dhcp_opts": []}),
            json!({"id": "p2", "mac_address": "fa:16:3e:00:00:02", "fixed_ips": [{"subnet_id": "s4", "ip_address": "10.0.0.6"}],
                   "extra_dhcp_opts": [{"opt_name": "bootfile-name", "opt_value": "pxelinux.0", "ip_version": 4}]}),
        ];
        let n = DhcpNetwork {
            network_id: "n1",
            port: port.as_object().unwrap(),
            hosts: &hosts,
            subnets: subnets.as_object().unwrap(),
            mtu: 1450,
            lease_seconds: 600,
        };
        let (h, o, a) = files(&n, Path::new("/d"), "ns-dp");
        assert_eq!(
            h,
            "fa:16:3e:00:00:01,host-10-0-0-5,10.0.0.5\nfa:16:3e:00:00:02,set:port-p2,host-10-0-0-6,10.0.0.6\n"
        );
        assert!(o.contains("tag:port-p2,option:bootfile-name,pxelinux.0\n"), "{o}");
        assert!(o.contains("tag:subnet-s4,option:router,10.0.0.1\n"), "{o}");
        assert!(o.contains("tag:subnet-s4,option:dns-server,192.0.2.53\n"), "{o}");
        assert!(
            o.contains("option:classless-static-route,192.0.2.0/24,10.0.0.9,0.0.0.0/0,10.0.0.1\n"),
            "{o}"
        );
        assert!(o.contains("tag:subnet-s4,option:mtu,1450\n"), "{o}");
        assert!(
            a.contains(&"--dhcp-range=set:subnet-s4,10.0.0.0,static,255.255.255.0,600s".to_string()),
            "{a:?}"
        );
        assert!(a.contains(&"--interface=ns-dp".to_string()));
        // SLAAC addresses are not DHCP's.
        assert!(!a.iter().any(|x| x.contains("subnet-s6")), "{a:?}");
    }

    #[test]
    fn netmasks() {
        assert_eq!(netmask(24), "255.255.255.0");
        assert_eq!(netmask(0), "0.0.0.0");
        assert_eq!(netmask(32), "255.255.255.255");
        assert_eq!(netmask(26), "255.255.255.192");
    }
}

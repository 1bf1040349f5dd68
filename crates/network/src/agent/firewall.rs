//! Security groups as iptables rules on the taps of a host's ports, the way Neutron's iptables firewall
//! driver does it: bridged traffic (br_netfilter) passes `FORWARD`, which jumps to `tsr-fwd`; each filtered
//! port has an egress chain (`tsr-o…`: DHCP out, anti-spoofing by address and MAC in `tsr-s…`, then its
//! groups' egress rules), an ingress chain (`tsr-i…`: replies, DHCP in, its groups' ingress rules), and
//! everything else is dropped. Connection tracking makes the rules stateful. The same text, per family, goes
//! to `iptables-restore` and `ip6tables-restore` in one transaction each.

use super::linux::{self, Result};
use serde_json::{Map, Value};

/// One port to filter.
#[derive(Debug, Clone)]
pub struct PortFilter {
    pub id: String,
    pub tap: String,
    pub mac: String,
    /// Sources it may send from: (address or CIDR, MAC) — its fixed IPs and allowed address pairs.
    pub sources: Vec<(String, String)>,
    /// The rules of all its security groups.
    pub rules: Vec<Value>,
}

fn is_v6(addr: &str) -> bool {
    addr.contains(':')
}

/// A port's chain: `tsr-` and a kind letter before the first 11 characters of its id, as its tap has them.
fn chain(kind: char, id: &str) -> String {
    format!("tsr-{kind}{}", &id[..id.len().min(11)])
}

/// The `-p` of a rule's protocol in a family (None: any protocol).
fn protocol(p: &Value, v6: bool) -> Option<String> {
    let p = match p {
        Value::Null => return None,
        Value::String(s) => s.to_lowercase(),
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    Some(match p.as_str() {
        "any" | "" => return None,
        "tcp" | "6" => "tcp".into(),
        "udp" | "17" => "udp".into(),
        "icmp" | "1" if !v6 => "icmp".into(),
        "icmp" | "icmpv6" | "ipv6-icmp" | "58" => "ipv6-icmp".into(),
        "sctp" | "132" => "sctp".into(),
        other => other.into(),
    })
}

/// The iptables lines of one security group rule in `chain` (none when it is for the other family).
fn rule_lines(chain: &str, rule: &Value, v6: bool, remote: &Map<String, Value>) -> Vec<String> {
    let ethertype = rule["ethertype"].as_str().unwrap_or("IPv4");
    if (ethertype == "IPv6") != v6 {
        return Vec::new();
    }
    let ingress = rule["direction"].as_str() == Some("ingress");
    let mut m = String::new();
    if let Some(p) = protocol(&rule["protocol"], v6) {
        m.push_str(&format!(" -p {p}"));
        let (lo, hi) = (rule["port_range_min"].as_i64(), rule["port_range_max"].as_i64());
        match p.as_str() {
            "tcp" | "udp" | "sctp" => match (lo, hi) {
                (Some(l), Some(h)) if l != h => m.push_str(&format!(" --dport {l}:{h}")),
                (Some(l), _) => m.push_str(&format!(" --dport {l}")),
                _ => {}
            },
            "icmp" | "ipv6-icmp" => {
                let opt = if v6 { "--icmpv6-type" } else { "--icmp-type" };
                match (lo, hi) {
                    (Some(t), Some(c)) => m.push_str(&format!(
                        " -m {} {opt} {t}/{c}",
                        if v6 { "icmp6" } else { "icmp" }
                    )),
                    (Some(t), None) => {
                        m.push_str(&format!(" -m {} {opt} {t}", if v6 { "icmp6" } else { "icmp" }))
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }
    let flag = if ingress { "-s" } else { "-d" };
    let peers: Vec<String> = if let Some(prefix) = rule["remote_ip_prefix"].as_str() {
        if is_v6(prefix) != v6 {
            return Vec::new();
        }
        vec![format!(" {flag} {prefix}")]
    } else if let Some(g) = rule["remote_group_id"].as_str() {
        remote
            .get(g)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .filter(|ip| is_v6(ip) == v6)
            .map(|ip| format!(" {flag} {ip}/{}", if v6 { 128 } else { 32 }))
            .collect()
    } else {
        vec![String::new()]
    };
    peers
        .into_iter()
        .map(|peer| format!("-A {chain}{m}{peer} -j RETURN"))
        .collect()
}

/// The `iptables-restore --noflush` input for one family, and the chains it makes.
pub fn ruleset(ports: &[PortFilter], remote: &Map<String, Value>, v6: bool) -> (String, Vec<String>) {
    let mut chains = vec!["tsr-fwd".to_string()];
    let mut fwd = Vec::new();
    let mut body = Vec::new();
    for p in ports {
        let (i, o, s) = (chain('i', &p.id), chain('o', &p.id), chain('s', &p.id));
        chains.extend([i.clone(), o.clone(), s.clone()]);
        let tap = &p.tap;
        fwd.push(format!(
            "-A tsr-fwd -m physdev --physdev-in {tap} --physdev-is-bridged -j {o}"
        ));
        fwd.push(format!(
            "-A tsr-fwd -m physdev --physdev-out {tap} --physdev-is-bridged -j {i}"
        ));
        // Anti-spoofing: only its own addresses, from its own MAC.
        for (addr, mac) in p.sources.iter().filter(|(a, _)| is_v6(a) == v6) {
            body.push(format!("-A {s} -s {addr} -m mac --mac-source {mac} -j RETURN"));
        }
        if v6 {
            body.push(format!(
                "-A {s} -s fe80::/64 -m mac --mac-source {} -j RETURN",
                p.mac
            ));
        }
        body.push(format!("-A {s} -j DROP"));
        // Egress.
        if v6 {
            for t in [131, 133, 135, 136, 143] {
                body.push(format!(
                    "-A {o} -p ipv6-icmp -m icmp6 --icmpv6-type {t} -j RETURN"
                ));
            }
            body.push(format!("-A {o} -p udp --sport 546 --dport 547 -j RETURN"));
        } else {
            body.push(format!("-A {o} -p udp --sport 68 --dport 67 -j RETURN"));
        }
        body.push(format!("-A {o} -j {s}"));
        if v6 {
            body.push(format!("-A {o} -p udp --sport 547 --dport 546 -j DROP"));
            body.push(format!("-A {o} -p ipv6-icmp -m icmp6 --icmpv6-type 134 -j DROP"));
        } else {
            body.push(format!("-A {o} -p udp --sport 67 --dport 68 -j DROP"));
        }
        body.push(format!(
            "-A {o} -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN"
        ));
        body.push(format!("-A {o} -m conntrack --ctstate INVALID -j DROP"));
        for r in p
            .rules
            .iter()
            .filter(|r| r["direction"].as_str() == Some("egress"))
        {
            body.extend(rule_lines(&o, r, v6, remote));
        }
        body.push(format!("-A {o} -j DROP"));
        // Ingress.
        body.push(format!(
            "-A {i} -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN"
        ));
        if v6 {
            for t in [130, 131, 132, 134, 135, 136, 143] {
                body.push(format!(
                    "-A {i} -p ipv6-icmp -m icmp6 --icmpv6-type {t} -j RETURN"
                ));
            }
            body.push(format!("-A {i} -p udp --sport 547 --dport 546 -j RETURN"));
        } else {
            body.push(format!("-A {i} -p udp --sport 67 --dport 68 -j RETURN"));
        }
        body.push(format!("-A {i} -m conntrack --ctstate INVALID -j DROP"));
        for r in p
            .rules
            .iter()
            .filter(|r| r["direction"].as_str() == Some("ingress"))
        {
            body.extend(rule_lines(&i, r, v6, remote));
        }
        body.push(format!("-A {i} -j DROP"));
    }
    // What the port chains let through (and the bridges' other traffic: DHCP servers, routers) is accepted,
    // whatever FORWARD's policy is.
    fwd.push("-A tsr-fwd -i brq+ -m physdev --physdev-is-bridged -j ACCEPT".into());
    let mut text = String::from("*filter\n");
    for c in &chains {
        text.push_str(&format!(":{c} - [0:0]\n"));
    }
    for l in fwd.iter().chain(body.iter()) {
        text.push_str(l);
        text.push('\n');
    }
    text.push_str("COMMIT\n");
    (text, chains)
}

/// ARP spoofing protection (Neutron's `prevent_arp_spoofing`), as an nftables bridge table replaced in one
/// transaction: a filtered port's ARP must speak for its own addresses (fixed IPs and allowed address pairs)
/// from its own MACs, whether the frame is bridged on or goes to the host.
pub fn arp_script(ports: &[PortFilter]) -> String {
    let mut rules = Vec::new();
    for p in ports {
        let ips: Vec<&str> = p
            .sources
            .iter()
            .map(|(a, _)| a.as_str())
            .filter(|a| !is_v6(a))
            .collect();
        let mut macs: Vec<&str> = p.sources.iter().map(|(_, m)| m.as_str()).collect();
        macs.push(&p.mac);
        macs.sort();
        macs.dedup();
        let tap = &p.tap;
        if ips.is_empty() {
            rules.push(format!("iifname \"{tap}\" ether type arp drop"));
        } else {
            rules.push(format!(
                "iifname \"{tap}\" ether type arp arp saddr ip != {{ {} }} drop",
                ips.join(", ")
            ));
        }
        rules.push(format!(
            "iifname \"{tap}\" ether type arp arp saddr ether != {{ {} }} drop",
            macs.join(", ")
        ));
    }
    let chain = |name: &str| {
        let mut c = format!("  chain {name} {{\n    type filter hook {name} priority 0; policy accept;\n");
        for r in &rules {
            c.push_str(&format!("    {r}\n"));
        }
        c.push_str("  }\n");
        c
    };
    format!(
        "table bridge tessera_arp\ndelete table bridge tessera_arp\ntable bridge tessera_arp {{\n{}{}}}\n",
        chain("forward"),
        chain("input")
    )
}

/// Load a family's rules. `before` is what the previous load of this process made: its chains that are gone
/// now are dropped. Without it (the first load), `tsr-fwd` is hooked into `FORWARD` and every stale `tsr-`
/// chain on the host is swept.
pub async fn apply(text: &str, chains: &[String], before: Option<&[String]>, v6: bool) -> Result<()> {
    let (restore, tool) = if v6 {
        ("ip6tables-restore", "ip6tables")
    } else {
        ("iptables-restore", "iptables")
    };
    linux::run_input(&[restore, "-w", "--noflush"], Some(text)).await?;
    let stale: Vec<String> = match before {
        Some(b) => b.iter().filter(|c| !chains.contains(c)).cloned().collect(),
        None => {
            if linux::run(&[tool, "-w", "-C", "FORWARD", "-j", "tsr-fwd"])
                .await
                .is_err()
            {
                linux::run(&[tool, "-w", "-I", "FORWARD", "1", "-j", "tsr-fwd"]).await?;
            }
            linux::run(&[tool, "-w", "-S"])
                .await?
                .lines()
                .filter_map(|l| l.strip_prefix("-N "))
                .filter(|c| c.starts_with("tsr-") && !chains.iter().any(|k| k == c))
                .map(str::to_string)
                .collect()
        }
    };
    for c in &stale {
        linux::run(&[tool, "-w", "-F", c]).await?;
        linux::run(&[tool, "-w", "-X", c]).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn port() -> PortFilter {
        PortFilter {
            id: "0123456789ab-cdef".into(),
            tap: "tap0123456789a".into(),
            mac: "fa:16:3e:00:00:01".into(),
            sources: vec![
                ("10.0.0.5".into(), "fa:16:3e:00:00:01".into()),
                ("fd00::5".into(), "fa:16:3e:00:00:01".into()),
            ],
            rules: vec![
                json!({"direction": "egress", "ethertype": "IPv4", "protocol": null}),
                json!({"direction": "ingress", "ethertype": "IPv4", "protocol": "tcp", "port_range_min": 22,
                       "port_range_max": 22, "remote_ip_prefix": "0.0.0.0/0"}),
                json!({"direction": "ingress", "ethertype": "IPv4", "protocol": "icmp", "port_range_min": 8,
                       "port_range_max": null}),
                json!({"direction": "ingress", "ethertype": "IPv4", "protocol": null, "remote_group_id": "g1"}),
                json!({"direction": "ingress", "ethertype": "IPv6", "protocol": null, "remote_group_id": "g1"}),
                json!({"direction": "ingress", "ethertype": "IPv6", "protocol": "udp", "port_range_min": 1000,
                       "port_range_max": 2000}),
            ],
        }
    }

    #[test]
    fn v4_rules_filter_each_way() {
        let remote = json!({"g1": ["10.0.0.7", "10.0.0.8", "fd00::9"]});
        let (text, chains) = ruleset(&[port()], remote.as_object().unwrap(), false);
        assert_eq!(
            chains,
            [
                "tsr-fwd",
                "tsr-i0123456789a",
                "tsr-o0123456789a",
                "tsr-s0123456789a"
            ]
        );
        for line in [
            "-A tsr-fwd -m physdev --physdev-in tap0123456789a --physdev-is-bridged -j tsr-o0123456789a",
            "-A tsr-fwd -m physdev --physdev-out tap0123456789a --physdev-is-bridged -j tsr-i0123456789a",
            "-A tsr-s0123456789a -s 10.0.0.5 -m mac --mac-source fa:16:3e:00:00:01 -j RETURN",
            "-A tsr-o0123456789a -j RETURN",
            "-A tsr-i0123456789a -p tcp --dport 22 -s 0.0.0.0/0 -j RETURN",
            "-A tsr-i0123456789a -p icmp -m icmp --icmp-type 8 -j RETURN",
            "-A tsr-i0123456789a -s 10.0.0.7/32 -j RETURN",
            "-A tsr-i0123456789a -s 10.0.0.8/32 -j RETURN",
            "-A tsr-i0123456789a -j DROP",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line} in\n{text}");
        }
        assert!(!text.contains("fd00::"), "{text}");
        assert!(!text.contains("--dport 1000"), "{text}");
        // The drop comes after the rules that let traffic in.
        let drop = text.find("-A tsr-i0123456789a -j DROP").unwrap();
        assert!(text.find("--dport 22").unwrap() < drop);
    }

    #[test]
    fn v6_rules_keep_neighbour_discovery() {
        let remote = json!({"g1": ["10.0.0.7", "fd00::9"]});
        let (text, _) = ruleset(&[port()], remote.as_object().unwrap(), true);
        assert!(
            text.contains("-A tsr-i0123456789a -p udp --dport 1000:2000 -j RETURN"),
            "{text}"
        );
        assert!(
            text.contains("-A tsr-i0123456789a -s fd00::9/128 -j RETURN"),
            "{text}"
        );
        assert!(text.contains("--icmpv6-type 135 -j RETURN"), "{text}");
        assert!(!text.contains("10.0.0."), "{text}");
    }

    #[test]
    fn arp_speaks_only_for_the_ports_own_addresses() {
        let mut p = port();
        p.sources.push(("10.0.0.0/28".into(), "fa:16:3e:00:00:99".into()));
        let t = arp_script(&[p]);
        assert!(
            t.starts_with("table bridge tessera_arp\ndelete table bridge tessera_arp\n"),
            "{t}"
        );
        assert!(
            t.contains(
                "iifname \"tap0123456789a\" ether type arp arp saddr ip != { 10.0.0.5, 10.0.0.0/28 } drop"
            ),
            "{t}"
        );
        assert!(
            t.contains("arp saddr ether != { fa:16:3e:00:00:01, fa:16:3e:00:00:99 } drop"),
            "{t}"
        );
        assert_eq!(t.matches("type filter hook").count(), 2, "{t}");
        let empty = arp_script(&[]);
        assert!(!empty.contains("drop"), "{empty}");
    }

    #[test]
    fn no_ports_still_hooks_the_bridges() {
        let (text, chains) = ruleset(&[], &Map::new(), false);
        assert_eq!(chains, ["tsr-fwd"]);
        assert!(text.contains("-A tsr-fwd -i brq+ -m physdev --physdev-is-bridged -j ACCEPT"));
    }
}

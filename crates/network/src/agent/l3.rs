//! Routers, as Neutron's L3 agent builds them: a namespace `qrouter-<router>` that forwards between its
//! interfaces (`qr-…` in the internal networks' bridges, `qg-…` in the external network's), a default route
//! through the external subnet's gateway, the extra routes, and NAT as one nftables table: SNAT of the
//! internal subnets to the gateway address (when `enable_snat`), and each floating IP as DNAT to its fixed
//! IP plus SNAT back.

/// One floating IP the router carries.
#[derive(Debug, Clone, PartialEq)]
pub struct FloatingIp {
    pub floating: String,
    pub fixed: String,
}

/// The nftables script (for `nft -f -` inside the router's namespace) that replaces the router's NAT table.
pub fn nat_script(
    gateway_dev: Option<&str>,
    gateway_ip: Option<&str>,
    snat: bool,
    internal: &[String],
    fips: &[FloatingIp],
) -> String {
    let mut pre = Vec::new();
    let mut out = Vec::new();
    let mut post = Vec::new();
    if let Some(dev) = gateway_dev {
        for f in fips {
            pre.push(format!("ip daddr {} dnat to {}", f.floating, f.fixed));
            out.push(format!("ip daddr {} dnat to {}", f.floating, f.fixed));
            post.push(format!(
                "oifname \"{dev}\" ip saddr {} snat to {}",
                f.fixed, f.floating
            ));
        }
        if let (true, Some(gw)) = (snat, gateway_ip) {
            let v4: Vec<&String> = internal.iter().filter(|c| !c.contains(':')).collect();
            if !v4.is_empty() {
                let set = v4.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ");
                post.push(format!("oifname \"{dev}\" ip saddr {{ {set} }} snat to {gw}"));
            }
        }
    }
    let chain = |name: &str, hook: &str, prio: &str, rules: &[String]| {
        let mut s = format!("  chain {name} {{\n    type nat hook {hook} priority {prio}; policy accept;\n");
        for r in rules {
            s.push_str(&format!("    {r}\n"));
        }
        s.push_str("  }\n");
        s
    };
    let mut text = String::from("table ip tessera\ndelete table ip tessera\ntable ip tessera {\n");
    text.push_str(&chain("prerouting", "prerouting", "dstnat", &pre));
    text.push_str(&chain("output", "output", "-100", &out));
    text.push_str(&chain("postrouting", "postrouting", "srcnat", &post));
    text.push_str("}\n");
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nat_covers_snat_and_floating_ips() {
        let fips = vec![FloatingIp {
            floating: "172.24.4.10".into(),
            fixed: "10.0.0.5".into(),
        }];
        let t = nat_script(
            Some("qg-1234"),
            Some("172.24.4.3"),
            true,
            &["10.0.0.0/24".into(), "fd00::/64".into()],
            &fips,
        );
        assert!(
            t.starts_with("table ip tessera\ndelete table ip tessera\n"),
            "{t}"
        );
        assert!(t.contains("ip daddr 172.24.4.10 dnat to 10.0.0.5"), "{t}");
        assert!(
            t.contains("oifname \"qg-1234\" ip saddr 10.0.0.5 snat to 172.24.4.10"),
            "{t}"
        );
        assert!(
            t.contains("oifname \"qg-1234\" ip saddr { 10.0.0.0/24 } snat to 172.24.4.3"),
            "{t}"
        );
        // The floating IP's own SNAT comes before the router's.
        assert!(t.find("snat to 172.24.4.10").unwrap() < t.find("snat to 172.24.4.3").unwrap());
        let no_snat = nat_script(
            Some("qg-1234"),
            Some("172.24.4.3"),
            false,
            &["10.0.0.0/24".into()],
            &[],
        );
        assert!(!no_snat.contains("snat"), "{no_snat}");
        let no_gw = nat_script(None, None, true, &["10.0.0.0/24".into()], &fips);
        assert!(!no_gw.contains("dnat"), "{no_gw}");
    }
}

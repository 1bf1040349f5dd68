//! The Linux commands the agent wires hosts with: iproute2 (`ip`, `bridge`), `iptables-restore`, `nft` and
//! `dnsmasq`, each run with its output captured; an error carries the command and what it printed.

use serde_json::Value;
use std::collections::HashMap;
use std::process::Stdio;
use tokio::io::AsyncWriteExt;

pub type Result<T> = std::result::Result<T, String>;

/// Run `argv`, feeding `input` on stdin; its stdout, or an error naming the command.
pub async fn run_input(argv: &[&str], input: Option<&str>) -> Result<String> {
    let (prog, args) = argv.split_first().ok_or("empty command")?;
    let mut cmd = tokio::process::Command::new(prog);
    cmd.args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| format!("{}: {e}", argv.join(" ")))?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(text.as_bytes())
            .await
            .map_err(|e| format!("{}: writing its input: {e}", argv.join(" ")))?;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| format!("{}: {e}", argv.join(" ")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`{}` failed ({}): {}",
            argv.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

pub async fn run(argv: &[&str]) -> Result<String> {
    run_input(argv, None).await
}

/// `ip [-n ns] args…`
pub async fn ip(ns: Option<&str>, args: &[&str]) -> Result<String> {
    let mut argv = vec!["ip"];
    if let Some(ns) = ns {
        argv.extend(["-n", ns]);
    }
    argv.extend_from_slice(args);
    run(&argv).await
}

/// A command inside a network namespace (`ip netns exec ns …`).
pub async fn in_ns(ns: &str, args: &[&str], input: Option<&str>) -> Result<String> {
    let mut argv = vec!["ip", "netns", "exec", ns];
    argv.extend_from_slice(args);
    run_input(&argv, input).await
}

/// One network device as `ip -j -d link` shows it.
#[derive(Debug, Clone, Default)]
pub struct Link {
    pub name: String,
    pub master: Option<String>,
    pub up: bool,
    pub kind: String,
    pub mac: String,
    pub mtu: i64,
}

/// The devices of the host (`ns` None) or of a namespace, by name.
pub async fn links(ns: Option<&str>) -> Result<HashMap<String, Link>> {
    let out = ip(ns, &["-j", "-d", "link", "show"]).await?;
    let v: Value = serde_json::from_str(&out).map_err(|e| format!("ip -j link: {e}"))?;
    let mut map = HashMap::new();
    for l in v.as_array().into_iter().flatten() {
        let name = l["ifname"].as_str().unwrap_or_default().to_string();
        let flags: Vec<&str> = l["flags"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        map.insert(
            name.clone(),
            Link {
                name,
                master: l["master"].as_str().map(str::to_string),
                up: flags.contains(&"UP"),
                kind: l["linkinfo"]["info_kind"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                mac: l["address"].as_str().unwrap_or_default().to_string(),
                mtu: l["mtu"].as_i64().unwrap_or(0),
            },
        );
    }
    Ok(map)
}

/// The global addresses of a device (`address/prefixlen`).
pub async fn addrs(ns: Option<&str>, dev: &str) -> Result<Vec<String>> {
    let out = ip(ns, &["-j", "addr", "show", "dev", dev]).await?;
    let v: Value = serde_json::from_str(&out).map_err(|e| format!("ip -j addr: {e}"))?;
    let mut list = Vec::new();
    for l in v.as_array().into_iter().flatten() {
        for a in l["addr_info"].as_array().into_iter().flatten() {
            if a["scope"].as_str() == Some("link") {
                continue;
            }
            if let (Some(ip), Some(p)) = (a["local"].as_str(), a["prefixlen"].as_i64()) {
                list.push(format!("{ip}/{p}"));
            }
        }
    }
    Ok(list)
}

/// Give `dev` exactly the addresses `want` (`address/prefixlen`).
pub async fn set_addrs(ns: Option<&str>, dev: &str, want: &[String]) -> Result<()> {
    let have = addrs(ns, dev).await?;
    for a in want {
        if !have.contains(a) {
            ip(ns, &["addr", "replace", a, "dev", dev]).await?;
        }
    }
    for a in &have {
        if !want.contains(a) {
            ip(ns, &["addr", "del", a, "dev", dev]).await?;
        }
    }
    Ok(())
}

/// The named network namespaces.
pub async fn netns_list() -> Result<Vec<String>> {
    let out = run(&["ip", "netns", "list"]).await?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect())
}

/// Make a namespace (with its loopback up) unless it exists and works — `trusted` skips the check. A name
/// left without its namespace (its mount went with another mount namespace) is made again. True when made.
pub async fn ensure_netns(name: &str, existing: &[String], trusted: bool) -> Result<bool> {
    if existing.iter().any(|n| n == name) {
        if trusted || ip(Some(name), &["link", "show", "lo"]).await.is_ok() {
            return Ok(false);
        }
        tracing::warn!(namespace = %name, "namespace name left without its namespace: making it again");
        let _ = run(&["ip", "netns", "del", name]).await;
    }
    run(&["ip", "netns", "add", name]).await?;
    ip(Some(name), &["link", "set", "lo", "up"]).await?;
    Ok(true)
}

/// Whether a process with `pid` runs and its command line mentions `marker`.
pub fn process_alive(pid: u32, marker: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains(marker))
        .unwrap_or(false)
}

pub async fn signal(pid: u32, sig: &str) -> Result<()> {
    run(&["kill", &format!("-{sig}"), &pid.to_string()])
        .await
        .map(|_| ())
}

/// A device name as Neutron makes them: a prefix and the start of the resource's id, 14 bytes in all (the
/// kernel takes 15).
pub fn dev_name(prefix: &str, id: &str) -> String {
    let n = 14usize.saturating_sub(prefix.len()).min(id.len());
    format!("{prefix}{}", &id[..n])
}

/// The prefix length of a subnet's CIDR (`10.0.0.0/24` → 24).
pub fn prefix_len(cidr: &str) -> &str {
    cidr.rsplit_once('/').map(|(_, p)| p).unwrap_or("32")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_fit_the_kernel() {
        let id = "3f1a2b4c-5d6e-4f70-8192-a3b4c5d6e7f8";
        assert_eq!(dev_name("tap", id), "tap3f1a2b4c-5d");
        assert_eq!(dev_name("qr-", id), "qr-3f1a2b4c-5d");
        assert_eq!(dev_name("brq", id).len(), 14);
        assert_eq!(dev_name("tap", "ab"), "tapab");
        assert_eq!(prefix_len("10.0.0.0/24"), "24");
        assert_eq!(prefix_len("fd00::/64"), "64");
    }
}

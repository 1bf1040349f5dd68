//! Plugging VIFs on the host, os-vif's job for Linux bridge ports: the tap device `tap<port>` a guest's NIC
//! uses (QEMU opens it by name). The host's network agent puts it in its network's bridge, filters it, and
//! reports the port ACTIVE — which the Networking service tells Nova as `network-vif-plugged`.

use crate::network::Vif;

async fn ip(args: &[&str]) -> Result<(), String> {
    let out = tokio::process::Command::new("ip")
        .args(args)
        .output()
        .await
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn exists(dev: &str) -> bool {
    std::path::Path::new("/sys/class/net").join(dev).exists()
}

/// Whether the port is plugged by a tap on this host (a Linux bridge binding).
pub fn wants_tap(vif: &Vif) -> bool {
    vif.vif_type == "bridge" && !vif.devname.is_empty()
}

/// The host end of a guest NIC has the guest's MAC with `fe` first (as libvirt makes it), so the bridge
/// never takes the guest's own address for itself.
fn host_mac(guest: &str) -> Option<String> {
    let rest = guest.get(2..)?;
    Some(format!("fe{rest}"))
}

/// Make the VIF's tap device (persistent, up) unless it is there.
pub async fn plug(vif: &Vif) -> Result<(), String> {
    let dev = vif.devname.as_str();
    if !exists(dev) {
        ip(&["tuntap", "add", "dev", dev, "mode", "tap"]).await?;
        if let Some(mac) = host_mac(&vif.mac) {
            ip(&["link", "set", dev, "address", &mac]).await?;
        }
        tracing::info!(port = %vif.port_id, device = %dev, "VIF plugged");
    }
    ip(&["link", "set", dev, "up"]).await
}

/// Remove the VIF's tap device (nothing when it is gone).
pub async fn unplug(vif: &Vif) {
    if wants_tap(vif) && exists(&vif.devname) {
        match ip(&["link", "del", &vif.devname]).await {
            Ok(()) => tracing::info!(port = %vif.port_id, device = %vif.devname, "VIF unplugged"),
            Err(e) => tracing::warn!(port = %vif.port_id, error = %e, "cannot unplug VIF"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_side_mac_is_not_the_guests() {
        assert_eq!(
            host_mac("fa:16:3e:01:02:03").as_deref(),
            Some("fe:16:3e:01:02:03")
        );
        let v = Vif {
            vif_type: "bridge".into(),
            devname: "tap0123".into(),
            ..Default::default()
        };
        assert!(wants_tap(&v));
        assert!(!wants_tap(&Vif {
            vif_type: "unbound".into(),
            ..v
        }));
    }
}

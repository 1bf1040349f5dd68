//! The built-in flat network that `networks: "auto"` attaches servers to until the Networking service
//! exists: one IPv4 CIDR from the configuration, addresses handed out lowest-free-first and recorded in the
//! API database (the primary key on the address is what keeps two servers from sharing one), released when
//! the server is deleted. Address bookkeeping only: nothing is plugged.

use crate::{ComputeError, Result};
use serde_json::json;
use sqlx::{Any, Transaction};
use std::collections::HashSet;
use std::net::Ipv4Addr;
use tessera_db::{get_text, Db};

#[derive(Debug, Clone, PartialEq)]
pub struct FlatNetwork {
    pub name: String,
    base: u32,
    prefix: u8,
}

/// One handed-out address.
#[derive(Debug, Clone, PartialEq)]
pub struct FlatAddress {
    pub addr: Ipv4Addr,
    pub mac: String,
}

impl FlatNetwork {
    /// `name` with addresses from `cidr` (`10.0.0.0/16`); the first usable address is the gateway's.
    pub fn parse(name: &str, cidr: &str) -> std::result::Result<FlatNetwork, String> {
        let (ip, len) = cidr
            .split_once('/')
            .ok_or_else(|| format!("'{cidr}' is not an IPv4 CIDR (a.b.c.d/n)"))?;
        let ip: Ipv4Addr = ip.parse().map_err(|_| format!("'{cidr}': bad address"))?;
        let prefix: u8 = len.parse().map_err(|_| format!("'{cidr}': bad prefix length"))?;
        if !(8..=29).contains(&prefix) {
            return Err(format!("'{cidr}': the prefix length must be between 8 and 29"));
        }
        let mask = u32::MAX << (32 - prefix);
        Ok(FlatNetwork {
            name: name.to_string(),
            base: u32::from(ip) & mask,
            prefix,
        })
    }

    /// Addresses servers may get: after the network address and the gateway, before the broadcast.
    fn usable(&self) -> std::ops::Range<u32> {
        let size = 1u32 << (32 - self.prefix);
        self.base + 2..self.base + size - 1
    }

    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.base + 1)
    }

    /// `n` free addresses (lowest first), read inside the caller's write transaction.
    pub async fn allocate(
        &self,
        db: &Db,
        tx: &mut Transaction<'static, Any>,
        n: usize,
    ) -> Result<Vec<FlatAddress>> {
        let used: HashSet<u32> = sqlx::query(&db.sql("SELECT address FROM flat_addresses WHERE network = ?"))
            .bind(&self.name)
            .fetch_all(&mut **tx)
            .await?
            .iter()
            .filter_map(|r| get_text(r, "address").ok()?.parse::<Ipv4Addr>().ok())
            .map(u32::from)
            .collect();
        let free: Vec<FlatAddress> = self
            .usable()
            .filter(|a| !used.contains(a))
            .take(n)
            .map(|a| FlatAddress {
                addr: Ipv4Addr::from(a),
                mac: random_mac(),
            })
            .collect();
        if free.len() < n {
            return Err(ComputeError::Invalid(format!(
                "No more IP addresses available on network {}.",
                self.name
            )));
        }
        Ok(free)
    }

    /// Record an address as the instance's (Duplicate "address …" when another boot took it first).
    pub async fn record(
        &self,
        db: &Db,
        tx: &mut Transaction<'static, Any>,
        a: &FlatAddress,
        instance: &str,
    ) -> Result<()> {
        sqlx::query(&db.sql(
            "INSERT INTO flat_addresses (address, network, instance_uuid, mac_address, created_at) \
             VALUES (?, ?, ?, ?, ?)",
        ))
        .bind(a.addr.to_string())
        .bind(&self.name)
        .bind(instance)
        .bind(&a.mac)
        .bind(tessera_types::now_epoch_micros())
        .execute(&mut **tx)
        .await
        .map_err(|e| crate::dup_or(e, || format!("address {}", a.addr)))?;
        Ok(())
    }

    /// The instance's network info as the server views read it.
    pub fn network_info(&self, a: &FlatAddress) -> serde_json::Value {
        json!([{"network": self.name, "addr": a.addr.to_string(), "mac": a.mac, "version": 4}])
    }
}

/// Release whatever addresses an instance holds (idempotent).
pub async fn release(db: &Db, instance: &str) -> Result<u64> {
    Ok(
        sqlx::query(&db.sql("DELETE FROM flat_addresses WHERE instance_uuid = ?"))
            .bind(instance)
            .execute(db.pool())
            .await?
            .rows_affected(),
    )
}

/// A MAC in OpenStack's `fa:16:3e` prefix.
fn random_mac() -> String {
    let b: [u8; 3] = rand::random();
    format!("fa:16:3e:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_parse_and_skip_network_gateway_broadcast() {
        let n = FlatNetwork::parse("private", "10.1.2.77/24").expect("parse");
        assert_eq!(n.gateway(), Ipv4Addr::new(10, 1, 2, 1));
        let u = n.usable();
        assert_eq!(Ipv4Addr::from(u.start), Ipv4Addr::new(10, 1, 2, 2));
        assert_eq!(Ipv4Addr::from(u.end - 1), Ipv4Addr::new(10, 1, 2, 254));
        assert!(FlatNetwork::parse("x", "10.0.0.0").is_err());
        assert!(FlatNetwork::parse("x", "10.0.0.0/31").is_err());
        assert!(FlatNetwork::parse("x", "300.0.0.0/24").is_err());
    }

    #[tokio::test]
    async fn addresses_are_never_handed_out_twice_and_come_back_on_release() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Db::connect(&format!("sqlite:///{}/a.sqlite", dir.path().display()), 4)
            .await
            .expect("db");
        db.migrate(&tessera_db::compute::API_MIGRATIONS)
            .await
            .expect("migrate");
        let n = FlatNetwork::parse("private", "192.168.7.0/29").expect("parse");
        // /29: .2–.6 usable, five addresses.
        let mut got = Vec::new();
        for i in 0..5 {
            let mut tx = db.begin_write().await.expect("tx");
            let a = n.allocate(&db, &mut tx, 1).await.expect("allocate");
            n.record(&db, &mut tx, &a[0], &format!("vm{i}"))
                .await
                .expect("record");
            tx.commit().await.expect("commit");
            got.push(a[0].addr.to_string());
        }
        assert_eq!(
            got,
            [
                "192.168.7.2",
                "192.168.7.3",
                "192.168.7.4",
                "192.168.7.5",
                "192.168.7.6"
            ]
        );
        let mut tx = db.begin_write().await.expect("tx");
        assert!(matches!(
            n.allocate(&db, &mut tx, 1).await,
            Err(ComputeError::Invalid(_))
        ));
        // The same address twice is a duplicate.
        let dup = FlatAddress {
            addr: Ipv4Addr::new(192, 168, 7, 3),
            mac: random_mac(),
        };
        assert!(matches!(
            n.record(&db, &mut tx, &dup, "vmX").await,
            Err(ComputeError::Duplicate(_))
        ));
        drop(tx);
        assert_eq!(release(&db, "vm1").await.expect("release"), 1);
        let mut tx = db.begin_write().await.expect("tx");
        let a = n.allocate(&db, &mut tx, 1).await.expect("allocate");
        assert_eq!(a[0].addr, Ipv4Addr::new(192, 168, 7, 3));
    }
}

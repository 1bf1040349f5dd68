//! Address arithmetic for subnets: CIDRs, default gateways and allocation pools, and choosing a free address.
//! Addresses are handled as `u128` (IPv4 in the low 32 bits) and printed the way Neutron prints them
//! (dotted quads, compressed lowercase IPv6).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A network prefix: `addr` has no host bits set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub version: u8,
    pub addr: u128,
    pub prefix: u8,
}

fn bits(version: u8) -> u8 {
    if version == 4 {
        32
    } else {
        128
    }
}

/// Parse an address; its version and value.
pub fn parse_ip(s: &str) -> Option<(u8, u128)> {
    match s.trim().parse::<IpAddr>().ok()? {
        IpAddr::V4(a) => Some((4, u32::from(a) as u128)),
        IpAddr::V6(a) => Some((6, u128::from(a))),
    }
}

pub fn format_ip(version: u8, v: u128) -> String {
    if version == 4 {
        Ipv4Addr::from(v as u32).to_string()
    } else {
        Ipv6Addr::from(v).to_string()
    }
}

/// Normalize an address string (`10.0.0.05` is refused by the parser; `FE80::1` becomes `fe80::1`).
pub fn normalize_ip(s: &str) -> Option<String> {
    parse_ip(s).map(|(v, a)| format_ip(v, a))
}

impl Cidr {
    /// Parse `a.b.c.d/n` or `x::/n`. Host bits set are an error, as in Neutron ("isn't a recommended CIDR").
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (a, p) = s
            .split_once('/')
            .ok_or_else(|| format!("'{s}' is not a valid IP subnet"))?;
        let (version, addr) = parse_ip(a).ok_or_else(|| format!("'{s}' is not a valid IP subnet"))?;
        let prefix: u8 = p
            .parse()
            .ok()
            .filter(|p| *p <= bits(version))
            .ok_or_else(|| format!("'{s}' is not a valid IP subnet"))?;
        let c = Cidr {
            version,
            addr: addr & mask(version, prefix),
            prefix,
        };
        if c.addr != addr {
            return Err(format!("'{s}' isn't a recommended CIDR, use '{c}' instead"));
        }
        Ok(c)
    }

    pub fn first(&self) -> u128 {
        self.addr
    }

    pub fn last(&self) -> u128 {
        self.addr | !mask(self.version, self.prefix) & full(self.version)
    }

    pub fn contains(&self, version: u8, ip: u128) -> bool {
        version == self.version && ip & mask(self.version, self.prefix) == self.addr
    }

    pub fn overlaps(&self, other: &Cidr) -> bool {
        self.version == other.version && self.first() <= other.last() && other.first() <= self.last()
    }

    /// Number of addresses (saturating for huge IPv6 prefixes).
    pub fn size(&self) -> u128 {
        let host = bits(self.version) - self.prefix;
        if host >= 127 {
            u128::MAX
        } else {
            1u128 << host
        }
    }

    /// Neutron's default gateway: the first address after the network address.
    pub fn default_gateway(&self) -> Option<u128> {
        (self.size() > 2).then_some(self.first() + 1)
    }

    /// The usable range: without the network address, and for IPv4 without the broadcast address.
    pub fn usable(&self) -> Option<(u128, u128)> {
        if self.size() <= 2 {
            return Some((self.first(), self.last()));
        }
        let last = if self.version == 4 {
            self.last() - 1
        } else {
            self.last()
        };
        Some((self.first() + 1, last))
    }

    /// The default allocation pools: the usable range without `gateway`.
    pub fn default_pools(&self, gateway: Option<u128>) -> Vec<(u128, u128)> {
        let Some((lo, hi)) = self.usable() else {
            return Vec::new();
        };
        match gateway {
            Some(g) if g >= lo && g <= hi => {
                let mut v = Vec::new();
                if g > lo {
                    v.push((lo, g - 1));
                }
                if g < hi {
                    v.push((g + 1, hi));
                }
                v
            }
            _ => vec![(lo, hi)],
        }
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", format_ip(self.version, self.addr), self.prefix)
    }
}

fn full(version: u8) -> u128 {
    if version == 4 {
        u32::MAX as u128
    } else {
        u128::MAX
    }
}

fn mask(version: u8, prefix: u8) -> u128 {
    let b = bits(version);
    if prefix == 0 {
        0
    } else {
        (full(version) >> (b - prefix) << (b - prefix)) & full(version)
    }
}

/// Addresses in `pools` (inclusive ranges) not in `taken` (sorted), at most `want` of them, lowest first.
pub fn free_in_pools(pools: &[(u128, u128)], taken: &[u128], want: usize) -> Vec<u128> {
    let mut out = Vec::new();
    for &(lo, hi) in pools {
        let mut ip = lo;
        // Allocated addresses inside this pool, in order.
        let start = taken.partition_point(|t| *t < lo);
        let mut it = taken[start..].iter().copied().take_while(|t| *t <= hi).peekable();
        while ip <= hi && out.len() < want {
            match it.peek() {
                Some(&t) if t == ip => {
                    it.next();
                }
                Some(&t) if t < ip => {
                    it.next();
                    continue;
                }
                _ => out.push(ip),
            }
            if ip == u128::MAX {
                break;
            }
            ip += 1;
        }
        if out.len() >= want {
            break;
        }
    }
    out
}

/// The modified EUI-64 address of `mac` in a /64 IPv6 prefix (as SLAAC hosts configure themselves).
pub fn eui64(prefix: &Cidr, mac: &[u8; 6]) -> Option<u128> {
    if prefix.version != 6 || prefix.prefix != 64 {
        return None;
    }
    let iid = [mac[0] ^ 0x02, mac[1], mac[2], 0xff, 0xfe, mac[3], mac[4], mac[5]];
    Some(prefix.addr | u64::from_be_bytes(iid) as u128)
}

/// Total addresses in the pools (saturating).
pub fn pools_size(pools: &[(u128, u128)]) -> u128 {
    pools
        .iter()
        .fold(0u128, |a, (lo, hi)| a.saturating_add(hi - lo).saturating_add(1))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn cidrs_gateways_and_pools() {
        let c = Cidr::parse("10.0.0.0/24").unwrap();
        assert_eq!(format_ip(4, c.last()), "10.0.0.255");
        assert_eq!(c.default_gateway().map(|g| format_ip(4, g)).unwrap(), "10.0.0.1");
        let pools = c.default_pools(c.default_gateway());
        assert_eq!(pools.len(), 1);
        assert_eq!(format_ip(4, pools[0].0), "10.0.0.2");
        assert_eq!(format_ip(4, pools[0].1), "10.0.0.254");
        assert!(Cidr::parse("10.0.0.1/24").unwrap_err().contains("10.0.0.0/24"));
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        let v6 = Cidr::parse("2001:DB8::/64").unwrap();
        assert_eq!(v6.to_string(), "2001:db8::/64");
        let p6 = v6.default_pools(v6.default_gateway());
        assert_eq!(format_ip(6, p6[0].0), "2001:db8::2");
        assert_eq!(format_ip(6, p6[0].1), "2001:db8::ffff:ffff:ffff:ffff");
        assert!(c.overlaps(&Cidr::parse("10.0.0.128/25").unwrap()));
        assert!(!c.overlaps(&Cidr::parse("10.0.1.0/24").unwrap()));
        // A gateway in the middle splits the pool.
        let mid = c.default_pools(Some(c.first() + 100));
        assert_eq!(mid.len(), 2);
    }

    #[test]
    fn eui64_addresses() {
        let c = Cidr::parse("2001:db8::/64").unwrap();
        let a = eui64(&c, &[0xfa, 0x16, 0x3e, 0x12, 0x34, 0x56]).unwrap();
        assert_eq!(format_ip(6, a), "2001:db8::f816:3eff:fe12:3456");
        assert!(eui64(&Cidr::parse("2001:db8::/56").unwrap(), &[0; 6]).is_none());
    }

    #[test]
    fn free_addresses_skip_taken_ones() {
        let pools = [(10u128, 14u128), (20, 21)];
        assert_eq!(free_in_pools(&pools, &[10, 12, 14, 20], 10), vec![11, 13, 21]);
        assert_eq!(free_in_pools(&pools, &[], 2), vec![10, 11]);
        assert_eq!(pools_size(&pools), 7);
    }
}

//! The egress guard (`server.egress`): which addresses a delivery may connect to. Loopback,
//! private, link-local (cloud metadata services at 169.254.169.254 among them), CGNAT,
//! unique-local, site-local, reserved, unspecified and multicast addresses, and the IPv6
//! forms that carry one of them (IPv4-mapped and -compatible, NAT64, 6to4), are refused
//! unless inside `allow_networks`.
//!
//! The address checked is the one the connection was made to, after name resolution and
//! after whatever spelling the URL used (`127.1`, `0x7f000001`, `[::ffff:127.0.0.1]`), so
//! a name that resolves to a private address, at once or later (DNS rebinding), is refused
//! too. A refused connection is closed before a byte is sent on it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

#[derive(Debug, thiserror::Error)]
#[error("`{0}` is not a network in CIDR form (e.g. 10.1.0.0/16 or fd00::/8)")]
pub struct NetworkError(String);

/// A CIDR network: `10.1.0.0/16`, `fd00::/8`, or an address alone (all its bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    address: IpAddr,
    prefix: u8,
}

impl Network {
    pub fn parse(text: &str) -> Result<Network, NetworkError> {
        let refused = || NetworkError(text.to_string());
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let address: IpAddr = address.trim().parse().map_err(|_| refused())?;
        let bits = if address.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(prefix) => prefix.trim().parse::<u8>().map_err(|_| refused())?,
            None => bits,
        };
        if prefix > bits {
            return Err(refused());
        }
        Ok(Network { address, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.address, unmapped(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                same_prefix(u32::from(net).into(), u32::from(ip).into(), self.prefix, 32)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                same_prefix(u128::from(net), u128::from(ip), self.prefix, 128)
            }
            _ => false,
        }
    }
}

fn same_prefix(a: u128, b: u128, prefix: u8, bits: u8) -> bool {
    let shift = u32::from(bits - prefix);
    shift >= 128 || (a >> shift) == (b >> shift)
}

/// What a delivery may reach.
#[derive(Debug, Clone, Default)]
pub struct EgressGuard {
    allow: Vec<Network>,
}

impl EgressGuard {
    pub fn new(allow: Vec<Network>) -> EgressGuard {
        EgressGuard { allow }
    }

    /// Whether a connection to `ip` may be used.
    pub fn permits(&self, ip: IpAddr) -> bool {
        !is_internal(unmapped(ip)) || self.allow.iter().any(|n| n.contains(ip))
    }
}

/// An IPv4 address written as IPv6 (`::ffff:a.b.c.d`, or the old `::a.b.c.d`) as itself.
fn unmapped(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => match v6.segments() {
                [0, 0, 0, 0, 0, 0, _, _] if !v6.is_loopback() && !v6.is_unspecified() => {
                    IpAddr::V4(v6.to_ipv4().expect("compatible form"))
                }
                _ => ip,
            },
        },
        IpAddr::V4(_) => ip,
    }
}

/// Addresses that are not the public internet's.
fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => is_internal_v4(ip),
        IpAddr::V6(ip) => is_internal_v6(ip),
    }
}

fn is_internal_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_multicast()
        // 0.0.0.0/8 ("this network"), 100.64.0.0/10 (CGNAT), 192.0.0.0/24 (protocol
        // assignments), 198.18.0.0/15 (benchmarking), 240.0.0.0/4 (reserved, broadcast too).
        || a == 0
        || (a == 100 && (64..128).contains(&b))
        || (a == 192 && b == 0 && c == 0)
        || (a == 198 && (b & 0xfe) == 18)
        || a >= 240
}

fn is_internal_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    // IPv4 carried inside IPv6 reaches that IPv4 address: NAT64 (64:ff9b::/96) and 6to4
    // (2002::/16) are judged by it.
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return is_internal_v4(Ipv4Addr::new(
            (s[6] >> 8) as u8,
            s[6] as u8,
            (s[7] >> 8) as u8,
            s[7] as u8,
        ));
    }
    if s[0] == 0x2002 {
        return is_internal_v4(Ipv4Addr::new(
            (s[1] >> 8) as u8,
            s[1] as u8,
            (s[2] >> 8) as u8,
            s[2] as u8,
        ));
    }
    ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        // fc00::/7 unique-local, fe80::/10 link-local, fec0::/10 site-local, 64:ff9b:1::/48
        // local NAT64, 2001::/32 Teredo (whose server and client are not the address).
        || (s[0] & 0xfe00) == 0xfc00
        || (s[0] & 0xffc0) == 0xfe80
        || (s[0] & 0xffc0) == 0xfec0
        || (s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1)
        || (s[0] == 0x2001 && s[1] == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn internal_addresses_in_every_spelling_are_refused() {
        let guard = EgressGuard::default();
        for refused in [
            "127.0.0.1",
            "127.255.0.9",
            "10.0.0.1",
            "172.16.3.4",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b:1::1",
            "2002:7f00:1::1",
            "2001:0:4136:e378::1",
            "fec0::1",
            "198.18.0.1",
            "192.0.0.8",
            "255.255.255.255",
            "240.0.0.1",
        ] {
            assert!(!guard.permits(ip(refused)), "{refused} refused");
        }
        for permitted in [
            "93.184.215.14",
            "2606:2800:21f:cb07:6820:80da:af6b:8b2c",
            "100.128.0.1",
        ] {
            assert!(guard.permits(ip(permitted)), "{permitted} permitted");
        }
    }

    #[test]
    fn allowed_networks_open_their_addresses_only() {
        let guard = EgressGuard::new(vec![
            Network::parse("127.0.0.0/8").unwrap(),
            Network::parse("fd00:1::/32").unwrap(),
        ]);
        assert!(guard.permits(ip("127.0.0.1")));
        assert!(guard.permits(ip("::ffff:127.0.0.1")));
        assert!(guard.permits(ip("fd00:1::5")));
        assert!(!guard.permits(ip("fd00:2::5")));
        assert!(!guard.permits(ip("10.0.0.1")));
        assert!(Network::parse("10.0.0.0/33").is_err());
        assert!(Network::parse("10.0.0/8").is_err());
        assert!(
            Network::parse("0.0.0.0/0")
                .unwrap()
                .contains(ip("10.1.2.3"))
        );
        assert_eq!(
            Network::parse("10.1.2.3").unwrap(),
            Network::parse("10.1.2.3/32").unwrap()
        );
    }
}

//! Where webhooks may go (rule 26): in production an endpoint may not resolve to a
//! loopback, private, link-local or unspecified address, unless its host is listed
//! in DAYPASS_WEBHOOK_ALLOW_HOSTS. Checked when an endpoint is registered and again
//! at every delivery, on the addresses the delivery then connects to, so a name
//! that later resolves inward is refused too.

use crate::error::{DomainError, Result};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// How long a name may take to resolve (within an attempt's 10 seconds).
const RESOLVE_WITHIN: std::time::Duration = std::time::Duration::from_secs(5);

/// The process's policy, installed at start (development: anything goes).
#[derive(Debug, Clone, Default)]
pub struct AddressGuard {
    pub production: bool,
    /// Hosts (lower case) allowed although they resolve inward.
    pub allow_hosts: Vec<String>,
}

impl AddressGuard {
    /// The policy from DAYPASS_ENV and DAYPASS_WEBHOOK_ALLOW_HOSTS.
    pub fn new(env: &str, allow_hosts: Option<&str>) -> AddressGuard {
        AddressGuard {
            production: env == "production",
            allow_hosts: allow_hosts
                .unwrap_or("")
                .split(',')
                .map(|h| h.trim().trim_matches(['[', ']']).to_ascii_lowercase())
                .filter(|h| !h.is_empty())
                .collect(),
        }
    }

    fn allows_any_address(&self, host: &str) -> bool {
        let host = host.trim_matches(['[', ']']).to_ascii_lowercase();
        !self.production || self.allow_hosts.contains(&host)
    }

    /// The addresses `host` resolves to, each one allowed, or an error naming the
    /// first refused (nothing resolved: an error too).
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>> {
        let bare = host.trim_matches(['[', ']']);
        let addrs: Vec<SocketAddr> = match bare.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => tokio::time::timeout(RESOLVE_WITHIN, tokio::net::lookup_host((bare, port)))
                .await
                .map_err(|_| DomainError::bad_input(format!("resolving {bare} took too long")))?
                .map_err(|e| DomainError::bad_input(format!("cannot resolve {bare}: {e}")))?
                .collect(),
        };
        if addrs.is_empty() {
            return Err(DomainError::bad_input(format!(
                "{bare} resolves to no address"
            )));
        }
        // The message names no address: it would map the network to whoever asks.
        if !self.allows_any_address(bare) && addrs.iter().any(|a| is_internal(a.ip())) {
            return Err(DomainError::bad_input(format!(
                "{bare} resolves to a loopback, private or link-local address; \
                 list the host in DAYPASS_WEBHOOK_ALLOW_HOSTS to allow it"
            )));
        }
        Ok(addrs)
    }

    /// Checks a URL's host (at registration, and before a delivery to an address
    /// written in the URL, which no resolver sees).
    pub async fn check_url(&self, url: &url::Url) -> Result<()> {
        let host = url
            .host_str()
            .ok_or_else(|| DomainError::bad_input("the URL has no host"))?;
        let port = url.port_or_known_default().unwrap_or(443);
        self.resolve(host, port).await.map(|_| ())
    }
}

/// Loopback, private, link-local, unspecified and the like: addresses inside the
/// deployment's own network, for IPv4, IPv6 and IPv4 carried in IPv6.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => internal_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return internal_v4(v4);
            }
            internal_v6(v6)
        }
    }
}

fn internal_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        // 0.0.0.0/8 ("this network"), 100.64.0.0/10 (carrier-grade NAT),
        // 192.0.0.0/24 (protocol assignments), 198.18.0.0/15 (benchmarking),
        // 240.0.0.0/4 (reserved).
        || a == 0
        || (a == 100 && (64..128).contains(&b))
        || (a == 192 && b == 0 && ip.octets()[2] == 0)
        || (a == 198 && (b == 18 || b == 19))
        || a >= 240
}

fn internal_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        // fc00::/7 unique local, fe80::/10 link-local, fec0::/10 site-local.
        || (first & 0xfe00) == 0xfc00
        || (first & 0xffc0) == 0xfe80
        || (first & 0xffc0) == 0xfec0
        // ::ffff:0:0/96 is handled above; ::/96 (IPv4-compatible), 64:ff9b::/96 and
        // 64:ff9b:1::/48 (NAT64) and 2002::/16 (6to4) may carry an inward IPv4
        // address; 2001::/32 (Teredo) tunnels to anywhere.
        || ip.to_ipv4().is_some_and(internal_v4)
        || (ip.segments()[..2] == [0x64, 0xff9b] && internal_v4(low_v4(ip)))
        || (first == 0x2002
            && internal_v4(Ipv4Addr::from(
                (u32::from(ip.segments()[1]) << 16) | u32::from(ip.segments()[2]),
            )))
        || (first == 0x2001 && ip.segments()[1] == 0)
}

/// The IPv4 address in the last 32 bits.
fn low_v4(ip: Ipv6Addr) -> Ipv4Addr {
    Ipv4Addr::from((u32::from(ip.segments()[6]) << 16) | u32::from(ip.segments()[7]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inward_addresses_are_refused_and_public_ones_allowed() {
        for inward in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "::",
            "fe80::1",
            "fc00::1",
            "fd12:3456::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
            "::127.0.0.1",
        ] {
            assert!(is_internal(inward.parse().unwrap()), "{inward}");
        }
        for public in [
            "93.184.216.34",
            "8.8.8.8",
            "2606:2800:220:1::1",
            "::ffff:8.8.8.8",
        ] {
            assert!(!is_internal(public.parse().unwrap()), "{public}");
        }
    }

    #[tokio::test]
    async fn production_refuses_loopback_unless_the_host_is_allowed() {
        let strict = AddressGuard::new("production", None);
        for url in [
            "http://127.0.0.1:9/x",
            "http://localhost:9/x",
            "http://[::1]:9/x",
        ] {
            let url = url::Url::parse(url).unwrap();
            assert!(strict.check_url(&url).await.is_err(), "{url}");
        }
        let allowing = AddressGuard::new("production", Some("localhost, 127.0.0.1"));
        for url in ["http://127.0.0.1:9/x", "http://localhost:9/x"] {
            let url = url::Url::parse(url).unwrap();
            allowing.check_url(&url).await.unwrap();
        }
        let development = AddressGuard::new("development", None);
        development
            .check_url(&url::Url::parse("http://127.0.0.1:9/x").unwrap())
            .await
            .unwrap();
    }
}

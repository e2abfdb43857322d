//! The SSRF guard: billhook never connects to an internal address on a subscriber's behalf.
//!
//! Destinations that are, or resolve to, loopback, private, link-local, unique-local, multicast,
//! shared (CGNAT), unspecified or cloud-metadata addresses are refused when an endpoint is created
//! and again when connecting. At connect time the guard is the HTTP client's DNS resolver: it
//! resolves, drops every refused address, and the client connects only to what it returned, so a
//! name that resolved somewhere public at creation cannot be rebound to an internal address.
//! `allow_private_destinations` lists networks to allow regardless.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::client::legacy::connect::dns::Name;
use ipnet::IpNet;
use url::Url;

/// Why a destination is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "{address} is a {category} address; billhook delivers there only if it is in a range listed in delivery.allow_private_destinations"
    )]
    Blocked {
        address: IpAddr,
        category: &'static str,
    },
    /// A name that resolves to a refused address. The address is not told: an admin could
    /// otherwise learn what internal names resolve to, one endpoint at a time.
    #[error(
        "`{host}` resolves to a {category} address; billhook delivers there only if that address is in a range listed in delivery.allow_private_destinations"
    )]
    ResolvesBlocked {
        host: String,
        category: &'static str,
    },
    #[error("`{0}` does not resolve to any address")]
    Unresolvable(String),
    #[error("{0}")]
    BadUrl(String),
}

impl Refusal {
    /// This refusal of an address `host` resolved to, told without the address.
    fn of_resolved(self, host: &str) -> Self {
        match self {
            Refusal::Blocked { category, .. } => Refusal::ResolvesBlocked {
                host: host.to_owned(),
                category,
            },
            other => other,
        }
    }
}

/// Which destinations are allowed.
#[derive(Debug, Clone, Default)]
pub struct DestinationPolicy {
    allow: Vec<IpNet>,
}

impl DestinationPolicy {
    /// An allowance written IPv4-mapped (`::ffff:10.0.0.0/104`) stands for its IPv4 range, as
    /// addresses are judged in their IPv4 form.
    pub fn new(allow: Vec<IpNet>) -> Self {
        Self {
            allow: allow
                .into_iter()
                .map(billhook_providers::auth::canonical_net)
                .collect(),
        }
    }

    /// Refuses an address in a blocked category unless it is explicitly allowed: as the IPv4
    /// address it carries, or, for a NAT64 address, by an allowance within a NAT64 range as
    /// written (so a broad allowance, `::/0`, does not let mapped addresses through).
    pub fn check_ip(&self, address: IpAddr) -> Result<(), Refusal> {
        let written = address;
        let address = canonical(address);
        let nat64 = address != written && is_nat64(written);
        let unjudged = unjudged_ipv4_range(written);
        if self.allow.iter().any(|net| match unjudged {
            // An IPv4 address sits where billhook cannot read it: only an allowance within that
            // very range lets it through, never a broad one (`::/0`).
            Some((range, _)) => {
                matches!(net, IpNet::V6(net) if range.contains(net)) && net.contains(&written)
            }
            None => {
                net.contains(&address)
                    || (nat64 && is_nat64(net.network()) && net.contains(&written))
            }
        }) {
            return Ok(());
        }
        match blocked_category(address) {
            Some(category) => Err(Refusal::Blocked { address, category }),
            None => Ok(()),
        }
    }

    /// Checks an endpoint URL when it is created: http or https, a host, and every address the
    /// host resolves to allowed.
    pub async fn check_url(&self, url: &str) -> Result<Url, Refusal> {
        let parsed = parse_destination(url)?;
        let host = parsed
            .host_str()
            .ok_or_else(|| Refusal::BadUrl("the URL has no host".to_owned()))?;
        let port = parsed.port_or_known_default().unwrap_or(443);
        if let Ok(address) = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        {
            self.check_ip(address)?;
            return Ok(parsed);
        }
        let addresses: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
            .await
            .map_err(|_| Refusal::Unresolvable(host.to_owned()))?
            .collect();
        if addresses.is_empty() {
            return Err(Refusal::Unresolvable(host.to_owned()));
        }
        for address in addresses {
            self.check_ip(address.ip())
                .map_err(|refusal| refusal.of_resolved(host))?;
        }
        Ok(parsed)
    }
}

/// Parses and checks the shape of a destination URL.
pub fn parse_destination(url: &str) -> Result<Url, Refusal> {
    if url.len() > 2048 {
        return Err(Refusal::BadUrl(
            "the URL is longer than 2048 characters".to_owned(),
        ));
    }
    let parsed =
        Url::parse(url).map_err(|e| Refusal::BadUrl(format!("`{url}` is not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(Refusal::BadUrl(format!(
            "the URL must be http or https, not {}",
            parsed.scheme()
        )));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(Refusal::BadUrl(
            "credentials do not belong in the URL; send them as endpoint headers".to_owned(),
        ));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(Refusal::BadUrl("the URL has no host".to_owned()));
    }
    Ok(parsed)
}

/// IPv4 addresses embedded in IPv6 (`::ffff:a.b.c.d`, NAT64 `64:ff9b::a.b.c.d`) are judged as
/// the IPv4 address they carry.
fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return IpAddr::V4(v4);
            }
            if is_nat64(IpAddr::V6(v6)) {
                let octets = v6.octets();
                return IpAddr::V4(Ipv4Addr::new(
                    octets[12], octets[13], octets[14], octets[15],
                ));
            }
            IpAddr::V6(v6)
        }
        v4 => v4,
    }
}

/// The range, and the category, of an IPv6 address that may carry an IPv4 address billhook
/// cannot read out: local-use NAT64 laid out otherwise than as a /96 (where its IPv4 address
/// sits is the network's own choice), and the deprecated IPv4-compatible form (`::a.b.c.d`),
/// which some stacks still route as IPv4.
fn unjudged_ipv4_range(address: IpAddr) -> Option<(ipnet::Ipv6Net, &'static str)> {
    let IpAddr::V6(v6) = address else {
        return None;
    };
    if is_nat64(address) || v6.is_loopback() || v6.is_unspecified() {
        return None;
    }
    let segments = v6.segments();
    let (range, category) = if segments[..3] == [0x64, 0xff9b, 1] {
        ("64:ff9b:1::/48", "local NAT64")
    } else if segments[..6] == [0; 6] {
        ("::/96", "IPv4-compatible")
    } else {
        return None;
    };
    range.parse().ok().map(|range| (range, category))
}

/// Whether an address is in a NAT64 prefix billhook reads an IPv4 address out of: the
/// well-known prefix, and the local-use one laid out as a /96 (RFC 8215), as DNS64 writes a
/// public IPv4 address on an IPv6-only host.
fn is_nat64(address: IpAddr) -> bool {
    match address {
        IpAddr::V6(v6) => {
            let segments = v6.segments();
            segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0]
                || segments[..6] == [0x64, 0xff9b, 1, 0, 0, 0]
        }
        IpAddr::V4(_) => false,
    }
}

fn blocked_category(address: IpAddr) -> Option<&'static str> {
    match address {
        IpAddr::V4(v4) => v4_category(v4),
        IpAddr::V6(v6) => v6_category(v6),
    }
}

fn v4_category(v4: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = v4.octets();
    // AWS, GCP and Azure's metadata, Alibaba's, and Azure's WireServer (reachable from every
    // Azure VM).
    if v4 == Ipv4Addr::new(169, 254, 169, 254)
        || v4 == Ipv4Addr::new(100, 100, 100, 200)
        || v4 == Ipv4Addr::new(168, 63, 129, 16)
    {
        Some("cloud metadata")
    } else if v4.is_loopback() {
        Some("loopback")
    } else if v4.is_private() {
        Some("private")
    } else if v4.is_link_local() {
        Some("link-local")
    } else if v4.is_multicast() {
        Some("multicast")
    } else if v4.is_unspecified() || a == 0 {
        Some("unspecified")
    } else if v4.is_broadcast() {
        Some("broadcast")
    } else if a == 100 && (64..128).contains(&b) {
        Some("shared (carrier-grade NAT)")
    } else if a == 198 && (18..20).contains(&b) {
        // Benchmarking, and the fake-IP range of DNS proxies that map internal names into it.
        Some("benchmarking")
    } else if a == 192 && b == 0 && v4.octets()[2] == 0 {
        Some("protocol assignments")
    } else if a >= 240 {
        Some("reserved")
    } else {
        None
    }
}

fn v6_category(v6: Ipv6Addr) -> Option<&'static str> {
    let first = v6.segments()[0];
    if v6
        == "fd00:ec2::254"
            .parse::<Ipv6Addr>()
            .unwrap_or(Ipv6Addr::UNSPECIFIED)
    {
        Some("cloud metadata")
    } else if v6.is_loopback() {
        Some("loopback")
    } else if v6.is_unspecified() {
        Some("unspecified")
    } else if v6.is_multicast() {
        Some("multicast")
    } else if first & 0xfe00 == 0xfc00 {
        Some("unique-local")
    } else if first & 0xffc0 == 0xfe80 {
        Some("link-local")
    } else if first & 0xffc0 == 0xfec0 {
        Some("site-local")
    } else {
        unjudged_ipv4_range(IpAddr::V6(v6)).map(|(_, category)| category)
    }
}

/// The HTTP client's resolver: resolves, then keeps only allowed addresses.
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    pub policy: Arc<DestinationPolicy>,
}

type ResolverError = Box<dyn std::error::Error + Send + Sync>;

/// The HTTP connector's resolver: a name in, the allowed addresses out (the connector sets the
/// port), or the first refusal when none is allowed.
impl tower::Service<Name> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = ResolverError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, ResolverError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ResolverError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let policy = Arc::clone(&self.policy);
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let resolved: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await
                .map_err(|e| Box::new(e) as ResolverError)?
                .collect();
            let mut first_refusal = None;
            let allowed: Vec<SocketAddr> = resolved
                .into_iter()
                .filter(|address| match policy.check_ip(address.ip()) {
                    Ok(()) => true,
                    Err(refusal) => {
                        first_refusal.get_or_insert_with(|| refusal.of_resolved(&host));
                        false
                    }
                })
                .collect();
            if allowed.is_empty() {
                let refusal = first_refusal.unwrap_or(Refusal::Unresolvable(host));
                return Err(Box::new(refusal) as ResolverError);
            }
            Ok(allowed.into_iter())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(policy: &DestinationPolicy, address: &str) -> Option<&'static str> {
        match policy.check_ip(address.parse().unwrap()) {
            Ok(()) => None,
            Err(Refusal::Blocked { category, .. }) => Some(category),
            Err(other) => panic!("{other}"),
        }
    }

    #[test]
    fn internal_addresses_are_refused() {
        let policy = DestinationPolicy::default();
        for (address, category) in [
            ("127.0.0.1", "loopback"),
            ("10.0.0.1", "private"),
            ("172.16.5.4", "private"),
            ("192.168.1.1", "private"),
            ("169.254.169.254", "cloud metadata"),
            ("169.254.1.1", "link-local"),
            ("100.64.0.1", "shared (carrier-grade NAT)"),
            ("224.0.0.1", "multicast"),
            ("0.0.0.0", "unspecified"),
            ("::1", "loopback"),
            ("fd00:ec2::254", "cloud metadata"),
            ("fc00::1", "unique-local"),
            ("fe80::1", "link-local"),
            ("ff02::1", "multicast"),
            ("::ffff:127.0.0.1", "loopback"),
            ("64:ff9b::a00:1", "private"),
            ("168.63.129.16", "cloud metadata"),
            ("198.18.0.1", "benchmarking"),
            ("198.19.255.254", "benchmarking"),
            ("192.0.0.8", "protocol assignments"),
            ("64:ff9b:1::a00:1", "private"),
            ("64:ff9b:1:a00:1::", "local NAT64"),
            ("::a00:1", "IPv4-compatible"),
            ("fec0::1", "site-local"),
        ] {
            assert_eq!(refused(&policy, address), Some(category), "{address}");
        }
        for public in [
            "93.184.216.34",
            "2606:2800:220:1:248:1893:25c8:1946",
            "100.128.0.1",
            "198.20.0.1",
            "192.0.2.1",
            "64:ff9b:1::5db8:d822",
        ] {
            assert_eq!(refused(&policy, public), None, "{public}");
        }
    }

    #[test]
    fn the_allow_list_makes_exceptions() {
        let policy = DestinationPolicy::new(vec!["127.0.0.0/8".parse().unwrap()]);
        assert_eq!(refused(&policy, "127.0.0.1"), None);
        assert_eq!(refused(&policy, "::ffff:127.0.0.1"), None);
        assert_eq!(refused(&policy, "10.0.0.1"), Some("private"));
        let mapped = DestinationPolicy::new(vec!["::ffff:10.1.0.0/112".parse().unwrap()]);
        assert_eq!(
            refused(&mapped, "10.1.2.3"),
            None,
            "written mapped, judged as IPv4"
        );
        let nat64 = DestinationPolicy::new(vec!["64:ff9b::a01:0/112".parse().unwrap()]);
        assert_eq!(
            refused(&nat64, "64:ff9b::a01:203"),
            None,
            "allowed as written"
        );
        assert_eq!(refused(&nat64, "64:ff9b::a02:203"), Some("private"));
        // A broad allowance of IPv6 does not reach IPv4's blocked addresses through it.
        let every_v6 = DestinationPolicy::new(vec!["::/0".parse().unwrap()]);
        for mapped in [
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "::ffff:127.0.0.1",
        ] {
            assert!(refused(&every_v6, mapped).is_some(), "{mapped}");
        }
        assert_eq!(refused(&every_v6, "fd00::1"), None);
        // Nor to those carrying an IPv4 address where billhook cannot read it, which only an
        // allowance within their own range lets through.
        for unjudged in ["64:ff9b:1:a00:1::", "::a00:1"] {
            assert!(refused(&every_v6, unjudged).is_some(), "{unjudged}");
        }
        let local_nat64 = DestinationPolicy::new(vec!["64:ff9b:1::/48".parse().unwrap()]);
        assert_eq!(refused(&local_nat64, "64:ff9b:1:a00:1::"), None);
    }

    #[tokio::test]
    async fn urls_are_checked_by_scheme_credentials_and_resolution() {
        let policy = DestinationPolicy::default();
        assert!(matches!(
            policy.check_url("ftp://example.com/").await,
            Err(Refusal::BadUrl(_))
        ));
        assert!(matches!(
            policy.check_url("http://user:pw@93.184.216.34/").await,
            Err(Refusal::BadUrl(_))
        ));
        assert!(matches!(
            policy.check_url("http://169.254.169.254/latest").await,
            Err(Refusal::Blocked { .. })
        ));
        assert!(matches!(
            policy.check_url("http://[::1]:8080/").await,
            Err(Refusal::Blocked { .. })
        ));
        let refused = policy.check_url("http://localhost:9/").await.unwrap_err();
        assert_eq!(
            refused,
            Refusal::ResolvesBlocked {
                host: "localhost".to_owned(),
                category: "loopback"
            }
        );
        assert!(
            !refused.to_string().contains("127.0.0.1"),
            "the address a name resolves to is not told: {refused}"
        );
        assert!(
            policy
                .check_url("https://93.184.216.34/hooks")
                .await
                .is_ok()
        );
    }
}

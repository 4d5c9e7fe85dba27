//! From a stored `next_hop` to where to deliver: Maildir, an address to
//! connect to, or a name that needs DNS first.

use std::net::{IpAddr, SocketAddr};

use crate::config::{parse_route, RouteTarget};
use crate::dns::Target;
use crate::policy::LOCAL;

/// The SMTP port of MX hosts (RFC 5321 4.5.4.2 / 5.1).
pub const SMTP_PORT: u16 = 25;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hop {
    Local,
    Connect(SocketAddr),
    /// A host name (`host:port`: A/AAAA) or a domain (MX): the resolver
    /// finds the addresses, to be used with this port.
    Resolve(Target, u16),
}

/// `next_hop` as stored by the policy: `local`, a `[routes]` target as
/// written (`127.0.0.1:2526`, `[::1]:25`, `relay.example:25`,
/// `mx.example`), an address literal (`[192.0.2.1]`), or a domain.
pub fn hop(next_hop: &str) -> Hop {
    if next_hop == LOCAL {
        return Hop::Local;
    }
    match parse_route(next_hop) {
        Ok(RouteTarget::HostPort { host, port }) => match host.parse::<IpAddr>() {
            Ok(ip) => Hop::Connect(SocketAddr::new(ip, port)),
            Err(_) => Hop::Resolve(Target::Host(host), port),
        },
        Ok(RouteTarget::Mx(domain)) => Hop::Resolve(Target::Mx(domain), SMTP_PORT),
        // Not a plain host name (UTF-8 labels, say): let DNS say no.
        Err(_) => Hop::Resolve(Target::Mx(next_hop.to_lowercase()), SMTP_PORT),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_hops_map_to_delivery_targets() {
        let connect = |s: &str| Hop::Connect(s.parse().unwrap());
        assert_eq!(hop("local"), Hop::Local);
        assert_eq!(hop("127.0.0.1:2526"), connect("127.0.0.1:2526"));
        assert_eq!(hop("[::1]:2527"), connect("[::1]:2527"));
        assert_eq!(hop("[192.0.2.1]"), connect("192.0.2.1:25"));
        assert_eq!(hop("[2001:db8::1]"), connect("[2001:db8::1]:25"));
        assert_eq!(
            hop("Example.org"),
            Hop::Resolve(Target::Mx("example.org".into()), 25)
        );
        assert_eq!(
            hop("relay.example:587"),
            Hop::Resolve(Target::Host("relay.example".into()), 587)
        );
    }
}

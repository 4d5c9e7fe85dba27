//! Who may send where: the relay decision at RCPT time, source routes
//! (SPEC section 6) and the next hop each accepted recipient goes to
//! (SPEC section 5, without DNS: a domain with no route is stored as itself,
//! to be looked up by MX).

use std::net::IpAddr;

use hashbrown::HashSet;
use ipnet::IpNet;

use crate::config::{Config, Route, SourceRoutes};
use crate::message::Recipient;
use crate::smtp::address::{Domain, ForwardPath, Mailbox, Path};

/// The `next_hop` of mail delivered here, to Maildir.
pub const LOCAL: &str = "local";

/// Why a recipient is refused; each maps to one SMTP reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `550 5.1.1`: a local domain without that user.
    NoSuchUser,
    /// `554 5.7.1`: neither local nor relay, and the client may not relay.
    RelayDenied,
}

#[derive(Debug, Clone)]
pub struct Policy {
    hostname: String,
    relay_networks: Vec<IpNet>,
    relay_domains: HashSet<String>,
    local_domains: HashSet<String>,
    local_users: HashSet<String>,
    source_routes: SourceRoutes,
    routes: Vec<Route>,
}

impl Policy {
    pub fn new(config: &Config) -> Policy {
        Policy {
            hostname: config.hostname.to_lowercase(),
            relay_networks: config.relay_networks.clone(),
            relay_domains: config.relay_domains.iter().cloned().collect(),
            local_domains: config.local_domains.iter().cloned().collect(),
            local_users: config.local_users.iter().cloned().collect(),
            source_routes: config.source_routes,
            routes: config.routes.clone(),
        }
    }

    /// Clients in `relay_networks` may send anywhere.
    pub fn may_relay(&self, client: IpAddr) -> bool {
        let client = client.to_canonical();
        self.relay_networks.iter().any(|net| net.contains(&client))
    }

    /// Decides one `RCPT TO:` and, when accepted, where it goes next.
    pub fn recipient(&self, client: IpAddr, path: &ForwardPath) -> Result<Recipient, Refusal> {
        self.decide(self.may_relay(client), path)
    }

    /// Where mail we make ourselves (a bounce to a sender) goes: as from a
    /// trusted client, so only an unknown local user can refuse it.
    pub fn route(&self, path: &ForwardPath) -> Result<Recipient, Refusal> {
        self.decide(true, path)
    }

    fn decide(&self, trusted: bool, path: &ForwardPath) -> Result<Recipient, Refusal> {
        let path = match path {
            ForwardPath::Postmaster => {
                let mailbox = format!("postmaster@{}", self.hostname);
                return Ok(Recipient {
                    forward_path: mailbox.clone(),
                    mailbox,
                    next_hop: LOCAL.to_string(),
                    ..Recipient::default()
                });
            }
            ForwardPath::Path(path) => path,
        };
        let route: &[String] = match self.source_routes {
            SourceRoutes::Strip => &[],
            SourceRoutes::Honor => {
                let mine = path.route.iter().take_while(|h| self.is_me(h)).count();
                &path.route[mine..]
            }
        };
        match route.first() {
            None => self.mailbox(trusted, &path.mailbox),
            Some(next_host) => self.routed(trusted, path, route, next_host),
        }
    }

    /// A plain mailbox (no route left).
    fn mailbox(&self, trusted: bool, mailbox: &Mailbox) -> Result<Recipient, Refusal> {
        let written = mailbox.to_string();
        let next_hop = match &mailbox.domain {
            Domain::Name(name) => {
                let domain = name.to_lowercase();
                if self.local_domains.contains(&domain) {
                    if !self.is_local_user(&mailbox.local) {
                        return Err(Refusal::NoSuchUser);
                    }
                    LOCAL.to_string()
                } else if self.relay_domains.contains(&domain) || trusted {
                    self.next_hop(&domain)
                } else {
                    return Err(Refusal::RelayDenied);
                }
            }
            // Literals are never ours; only trusted clients may aim at one.
            // The next hop is the address itself: `[192.0.2.1]`, `[2001:db8::1]`.
            Domain::Literal(text) if trusted => {
                format!("[{}]", text.strip_prefix("IPv6:").unwrap_or(text))
            }
            Domain::Literal(_) => return Err(Refusal::RelayDenied),
        };
        Ok(Recipient {
            forward_path: written.clone(),
            mailbox: written,
            next_hop,
            ..Recipient::default()
        })
    }

    /// A source route with at least one host that is not us: the mail goes
    /// to that host, carrying the rest of the route.
    fn routed(
        &self,
        trusted: bool,
        path: &Path,
        route: &[String],
        next_host: &str,
    ) -> Result<Recipient, Refusal> {
        let next_host = next_host.to_lowercase();
        if !trusted {
            // Routing through a trusted neighbour to a foreign mailbox is
            // the classic open-relay trick: both ends must be ours to serve.
            let mailbox_ok = match &path.mailbox.domain {
                Domain::Name(name) => self.is_served(&name.to_lowercase()),
                Domain::Literal(_) => false,
            };
            if !(self.is_served(&next_host) && mailbox_ok) {
                return Err(Refusal::RelayDenied);
            }
        }
        let remaining = Path {
            route: route.to_vec(),
            mailbox: path.mailbox.clone(),
        };
        Ok(Recipient {
            mailbox: path.mailbox.to_string(),
            forward_path: remaining.to_string(),
            next_hop: self.next_hop(&next_host),
            ..Recipient::default()
        })
    }

    /// `[routes]`: the longest key equal to the domain or a parent of it at
    /// a label boundary, then `*`, else the domain itself (MX lookup).
    pub fn next_hop(&self, domain: &str) -> String {
        let mut best: Option<&Route> = None;
        for route in &self.routes {
            let matches = route.domain == "*"
                || domain == route.domain
                || (domain.len() > route.domain.len()
                    && domain.ends_with(route.domain.as_str())
                    && domain.as_bytes()[domain.len() - route.domain.len() - 1] == b'.');
            let better = match best {
                None => true,
                Some(b) => {
                    b.domain == "*" || (route.domain != "*" && route.domain.len() > b.domain.len())
                }
            };
            if matches && better {
                best = Some(route);
            }
        }
        best.map_or_else(|| domain.to_string(), |r| r.written.clone())
    }

    /// Route hosts naming this host are ours to strip (SPEC section 6).
    fn is_me(&self, host: &str) -> bool {
        let host = host.to_lowercase();
        host == self.hostname || self.local_domains.contains(&host)
    }

    fn is_served(&self, domain: &str) -> bool {
        self.local_domains.contains(domain) || self.relay_domains.contains(domain)
    }

    /// Local parts match case-insensitively; a quoted local part that only
    /// quotes an ordinary name (`"jones"`) is that name. Postmaster always
    /// exists (RFC 5321 4.5.1).
    pub fn is_local_user(&self, local: &str) -> bool {
        let user = local_user_name(local);
        user == "postmaster" || self.local_users.contains(&user)
    }
}

/// The mailbox name of a local part: quotes and quoted-pairs removed,
/// lowercased. Used for matching and for the Maildir folder name.
pub fn local_user_name(local: &str) -> String {
    let unquoted = match local.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
        Some(inner) => {
            let mut out = String::with_capacity(inner.len());
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                out.push(if c == '\\' {
                    chars.next().unwrap_or(c)
                } else {
                    c
                });
            }
            out
        }
        None => local.to_string(),
    };
    unquoted.to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::address::parse_forward_path;

    fn policy(extra: &str) -> Policy {
        let text = format!(
            "hostname = \"beta.example\"\n\
             local_domains = [\"beta.example\", \"Beta.ARPA\"]\n\
             local_users = [\"jones\", \"Brown\"]\n\
             relay_domains = [\"example.org\"]\n{extra}"
        );
        let config = Config::from_toml(&text, std::path::Path::new("/tmp"), "test.toml").unwrap();
        Policy::new(&config)
    }

    fn rcpt(policy: &Policy, client: &str, path: &str) -> Result<Recipient, Refusal> {
        let (path, rest) = parse_forward_path(path.as_bytes()).expect(path);
        assert!(rest.is_empty());
        policy.recipient(client.parse().unwrap(), &path)
    }

    const OUTSIDE: &str = "192.0.2.7";
    const INSIDE: &str = "127.0.0.1";

    #[test]
    fn local_users_match_case_insensitively_and_others_are_refused() {
        let p = policy("");
        let r = rcpt(&p, OUTSIDE, "<JONES@beta.arpa>").unwrap();
        assert_eq!(
            (r.mailbox.as_str(), r.next_hop.as_str()),
            ("JONES@beta.arpa", LOCAL)
        );
        assert!(rcpt(&p, OUTSIDE, "<brown@Beta.ARPA>").is_ok());
        assert!(rcpt(&p, OUTSIDE, "<\"jones\"@Beta.ARPA>").is_ok());
        assert!(rcpt(&p, OUTSIDE, "<Postmaster>").is_ok());
        assert!(rcpt(&p, OUTSIDE, "<postmaster@beta.arpa>").is_ok());
        assert_eq!(
            rcpt(&p, OUTSIDE, "<Green@Beta.ARPA>"),
            Err(Refusal::NoSuchUser)
        );
    }

    #[test]
    fn never_an_open_relay_for_outside_clients() {
        let p = policy("");
        for path in [
            "<user@evil.example>",
            "<user@[192.0.2.1]>",
            "<@beta.example:user@evil.example>",
            "<@evil.example:user@beta.example>",
            "<@example.org:user@evil.example>",
            "<@evil.example:user@example.org>",
            "<user@notexample.org>",
            "<user@sub.example.org>",
        ] {
            assert_eq!(rcpt(&p, OUTSIDE, path), Err(Refusal::RelayDenied), "{path}");
        }
        for path in [
            "<user%evil.example@beta.example>",
            "<\"user@evil.example\"@beta.example>",
        ] {
            assert_eq!(rcpt(&p, OUTSIDE, path), Err(Refusal::NoSuchUser), "{path}");
        }
        let r = rcpt(&p, OUTSIDE, "<user@Example.ORG>").unwrap();
        assert_eq!(r.next_hop, "example.org");
    }

    #[test]
    fn trusted_clients_relay_anywhere_and_ipv4_mapped_addresses_count() {
        let p = policy("");
        let r = rcpt(&p, INSIDE, "<user@evil.example>").unwrap();
        assert_eq!(r.next_hop, "evil.example");
        assert!(rcpt(&p, "::ffff:127.0.0.1", "<user@evil.example>").is_ok());
        assert!(rcpt(&p, "::1", "<user@evil.example>").is_ok());
        assert_eq!(
            rcpt(&p, INSIDE, "<u@[192.0.2.1]>").unwrap().next_hop,
            "[192.0.2.1]"
        );
    }

    #[test]
    fn honored_routes_strip_our_own_hops_and_go_to_the_next_host() {
        let p = policy("[routes]\n\"example.org\" = \"127.0.0.1:2526\"\n");
        let r = rcpt(&p, OUTSIDE, "<@beta.example,@Example.org:jones@beta.arpa>").unwrap();
        assert_eq!(r.forward_path, "@Example.org:jones@beta.arpa");
        assert_eq!(r.mailbox, "jones@beta.arpa");
        assert_eq!(r.next_hop, "127.0.0.1:2526");
        // Every hop ours: a plain local mailbox.
        let r = rcpt(&p, OUTSIDE, "<@beta.example:jones@beta.arpa>").unwrap();
        assert_eq!(
            (r.forward_path.as_str(), r.next_hop.as_str()),
            ("jones@beta.arpa", LOCAL)
        );
        let r = rcpt(&p, INSIDE, "<@ONE.test,@TWO.test:user@THREE.test>").unwrap();
        assert_eq!(
            (r.forward_path.as_str(), r.next_hop.as_str()),
            ("@ONE.test,@TWO.test:user@THREE.test", "one.test")
        );
    }

    #[test]
    fn stripped_routes_count_only_the_mailbox() {
        let p = policy("source_routes = \"strip\"\n");
        let r = rcpt(&p, OUTSIDE, "<@evil.example:jones@beta.arpa>").unwrap();
        assert_eq!(
            (r.forward_path.as_str(), r.next_hop.as_str()),
            ("jones@beta.arpa", LOCAL)
        );
        assert_eq!(
            rcpt(&p, OUTSIDE, "<@example.org:user@evil.example>"),
            Err(Refusal::RelayDenied)
        );
    }

    #[test]
    fn routes_match_at_label_boundaries_longest_first_then_star() {
        let p = policy(
            "[routes]\n\"example.org\" = \"127.0.0.1:2526\"\n\"mx.example.org\" = \"[::1]:2527\"\n\"*\" = \"smarthost.test:25\"\n",
        );
        assert_eq!(p.next_hop("example.org"), "127.0.0.1:2526");
        assert_eq!(p.next_hop("a.example.org"), "127.0.0.1:2526");
        assert_eq!(p.next_hop("a.mx.example.org"), "[::1]:2527");
        assert_eq!(p.next_hop("notexample.org"), "smarthost.test:25");
        let bare = policy("");
        assert_eq!(bare.next_hop("elsewhere.test"), "elsewhere.test");
    }
}

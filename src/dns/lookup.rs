//! One target's resolution (RFC 5321 section 5.1): MX, or the implicit MX,
//! then A and AAAA of each host; null MX (RFC 7505); this host among the MX
//! hosts cuts that preference and all worse ones.

use std::net::IpAddr;

use hickory_proto::rr::{Name, RecordType};

use super::cache::{Key, QResult};
use super::rng::Rng;
use super::wire::Data;
use super::{display, Answer, Candidate};

/// MX hosts tried at most, best first.
const MAX_MX_HOSTS: usize = 10;

/// This host, as MX records may name it.
pub(super) struct Local {
    pub(super) names: Vec<Name>,
    pub(super) addrs: Vec<IpAddr>,
}

impl Local {
    fn is_name(&self, name: &Name) -> bool {
        self.names.iter().any(|n| n.eq_ignore_root(name))
    }
}

struct Host {
    pref: u16,
    name: Name,
    a: Option<QResult>,
    aaaa: Option<QResult>,
}

impl Host {
    fn new(pref: u16, name: Name) -> Host {
        Host {
            pref,
            name,
            a: None,
            aaaa: None,
        }
    }

    /// IPv4 first: a broken IPv6 route is still the commoner failure.
    fn addrs(&self) -> Vec<IpAddr> {
        let mut out = Vec::new();
        for r in [&self.a, &self.aaaa] {
            if let Some(QResult::Found(Data::Addrs(v))) = r {
                for a in v {
                    if !out.contains(a) {
                        out.push(*a);
                    }
                }
            }
        }
        out
    }

    fn temp_failure(&self) -> Option<&str> {
        [&self.a, &self.aaaa].into_iter().find_map(|r| match r {
            Some(QResult::TempFail(why)) => Some(why.as_str()),
            _ => None,
        })
    }
}

pub(super) struct Lookup {
    /// The mail domain for `Target::Mx`; `None` for `Target::Host`.
    domain: Option<Name>,
    /// `Target::Txt`: the name whose TXT records are wanted (no hosts).
    txt: Option<Name>,
    /// Known once the MX answer is in (at once for a host).
    hosts: Option<Vec<Host>>,
    implicit: bool,
    done: Option<Answer>,
}

impl Lookup {
    pub(super) fn mx(domain: Name) -> Lookup {
        Lookup {
            domain: Some(domain),
            txt: None,
            hosts: None,
            implicit: false,
            done: None,
        }
    }

    pub(super) fn host(name: Name) -> Lookup {
        Lookup {
            domain: None,
            txt: None,
            hosts: Some(vec![Host::new(0, name)]),
            implicit: false,
            done: None,
        }
    }

    pub(super) fn txt(name: Name) -> Lookup {
        Lookup {
            domain: None,
            txt: Some(name),
            hosts: None,
            implicit: false,
            done: None,
        }
    }

    /// Questions whose results are still missing.
    pub(super) fn needs(&self) -> Vec<Key> {
        if self.done.is_some() {
            return Vec::new();
        }
        if let Some(name) = &self.txt {
            return vec![(name.clone(), RecordType::TXT)];
        }
        let Some(hosts) = &self.hosts else {
            let domain = self.domain.clone().expect("an MX lookup has a domain");
            return vec![(domain, RecordType::MX)];
        };
        let mut out = Vec::new();
        for h in hosts {
            if h.a.is_none() {
                out.push((h.name.clone(), RecordType::A));
            }
            if h.aaaa.is_none() {
                out.push((h.name.clone(), RecordType::AAAA));
            }
        }
        out
    }

    pub(super) fn feed(&mut self, key: &Key, result: &QResult, rng: &mut Rng, local: &Local) {
        if self.done.is_some() {
            return;
        }
        if let Some(name) = &self.txt {
            if key.1 == RecordType::TXT {
                self.done = Some(txt_answer(name, result));
            }
            return;
        }
        match (&mut self.hosts, key.1) {
            (None, RecordType::MX) => self.feed_mx(result, rng, local),
            (Some(hosts), RecordType::A | RecordType::AAAA) => {
                for h in hosts.iter_mut().filter(|h| h.name == key.0) {
                    let slot = if key.1 == RecordType::A {
                        &mut h.a
                    } else {
                        &mut h.aaaa
                    };
                    if slot.is_none() {
                        *slot = Some(result.clone());
                    }
                }
            }
            _ => {}
        }
    }

    fn feed_mx(&mut self, result: &QResult, rng: &mut Rng, local: &Local) {
        let domain = self.domain.clone().expect("an MX lookup has a domain");
        let shown = display(&domain);
        let (records, glue) = match result {
            QResult::NxDomain => {
                return self.done = Some(Answer::NotFound(format!("{shown}: no such domain")))
            }
            QResult::TempFail(why) => return self.done = Some(Answer::TempFail(why.clone())),
            QResult::NoData | QResult::Found(Data::Addrs(_)) => {
                self.implicit = true;
                self.hosts = Some(vec![Host::new(0, domain)]);
                return;
            }
            QResult::Found(Data::Mx { hosts, glue }) => (hosts, glue),
            // Not asked for: no records.
            QResult::Found(Data::Txt(_)) => {
                return self.done = Some(Answer::NotFound(format!("{shown}: no MX records")))
            }
        };
        // RFC 7505: "." as exchange means no mail; mixed with real MX
        // records (a misconfiguration) it is merely skipped.
        let mut hosts: Vec<Host> = Vec::new();
        for (pref, name) in records.iter().filter(|(_, n)| !n.is_root()) {
            let name = super::normalize(name);
            match hosts.iter_mut().find(|h| h.name == name) {
                Some(h) => h.pref = h.pref.min(*pref),
                None => hosts.push(Host::new(*pref, name)),
            }
        }
        if hosts.is_empty() {
            return self.done = Some(Answer::NullMx);
        }
        hosts.sort_by_key(|h| h.pref);
        for run in hosts.chunk_by_mut(|a, b| a.pref == b.pref) {
            rng.shuffle(run);
        }
        // An answer can list thousands of exchanges, each of which would
        // cost lookups and sockets; the best few are plenty (Postfix's
        // smtp_mx_address_limit is 5).
        hosts.truncate(MAX_MX_HOSTS);
        if let Some(cut) = hosts
            .iter()
            .filter(|h| local.is_name(&h.name))
            .map(|h| h.pref)
            .min()
        {
            hosts.retain(|h| h.pref < cut);
            if hosts.is_empty() {
                return self.done = Some(Answer::Loop(format!(
                    "{shown}: the best MX (preference {cut}) is this host"
                )));
            }
        }
        for h in &mut hosts {
            let (v4, v6): (Vec<IpAddr>, Vec<IpAddr>) = glue
                .iter()
                .filter(|(n, _)| n.eq_ignore_root(&h.name))
                .map(|(_, a)| *a)
                .partition(IpAddr::is_ipv4);
            if !v4.is_empty() {
                h.a = Some(QResult::Found(Data::Addrs(v4)));
            }
            if !v6.is_empty() {
                h.aaaa = Some(QResult::Found(Data::Addrs(v6)));
            }
        }
        self.hosts = Some(hosts);
    }

    /// The answer, once every needed result is in.
    pub(super) fn answer(&self, local: &Local) -> Option<Answer> {
        if let Some(done) = &self.done {
            return Some(done.clone());
        }
        let hosts = self.hosts.as_ref()?;
        if hosts.iter().any(|h| h.a.is_none() || h.aaaa.is_none()) {
            return None;
        }
        let mut hosts: Vec<&Host> = hosts.iter().collect();
        if let Some(domain) = &self.domain {
            let is_local = |h: &&&Host| h.addrs().iter().any(|a| local.addrs.contains(a));
            if let Some(cut) = hosts.iter().filter(is_local).map(|h| h.pref).min() {
                hosts.retain(|h| h.pref < cut);
                if hosts.is_empty() {
                    let shown = display(domain);
                    return Some(Answer::Loop(if self.implicit {
                        format!("{shown} (no MX) resolves to this host")
                    } else {
                        format!("{shown}: the best MX (preference {cut}) resolves to this host")
                    }));
                }
            }
        }
        let candidates: Vec<Candidate> = hosts
            .iter()
            .map(|h| Candidate {
                name: display(&h.name),
                addrs: h.addrs(),
            })
            .filter(|c| !c.addrs.is_empty())
            .collect();
        if !candidates.is_empty() {
            return Some(Answer::Hosts(candidates));
        }
        if let Some(why) = hosts.iter().find_map(|h| h.temp_failure()) {
            return Some(Answer::TempFail(why.to_string()));
        }
        let what = match &self.domain {
            Some(d) if self.implicit => format!("{}: no MX and no address", display(d)),
            Some(d) => format!("{}: no address for any MX host", display(d)),
            None => format!("{}: no address", display(&hosts[0].name)),
        };
        Some(Answer::NotFound(what))
    }
}

/// A TXT question's result as the answer; "none" (no such name, no
/// records) is `NotFound`, distinct from a failure to find out.
fn txt_answer(name: &Name, result: &QResult) -> Answer {
    match result {
        QResult::Found(Data::Txt(texts)) => Answer::Txt(texts.clone()),
        QResult::TempFail(why) => Answer::TempFail(why.clone()),
        QResult::NxDomain => Answer::NotFound(format!("{}: no such name", display(name))),
        QResult::NoData | QResult::Found(_) => {
            Answer::NotFound(format!("{}: no TXT records", display(name)))
        }
    }
}

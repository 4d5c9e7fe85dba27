//! MTA-STS (RFC 8461) on the loop, for mail delivered by MX: each
//! domain's policy looked up (`_mta-sts` TXT on the loop's resolver, the
//! policy fetched by `sts_fetch`), cached in the queue, and applied:
//! `enforce` uses only MX hosts the policy names, over TLS verified for
//! the MX name; `testing` delivers as before and says what enforce would
//! have refused. Each session's TLS outcome is logged, counted and goes
//! into the attempt's history (RFC 8460 result types).

use std::collections::HashMap;
use std::io;
use std::rc::Rc;
use std::sync::Arc;

use log::{debug, error, info, warn};
use rustls::pki_types::{ServerName, UnixTime};

use super::outbound::{Job, OutConn};
use super::Server;
use crate::dns::{Answer, Candidate, Target};
use crate::metrics::Metrics;
use crate::mta_sts::tracker::{Gate, Tracker, Txt, CAPACITY};
use crate::mta_sts::{self, Mode, Policy, TlsResult};
use crate::queue::PolicyUpdate;
use crate::smtp::reply::Reply;
use crate::tls::TlsSetup;

pub(super) struct Sts {
    /// `[outbound] mta_sts`.
    pub(super) on: bool,
    tracker: Tracker,
    /// Jobs waiting for their domain's first look, with their port
    /// (bounded by the jobs in memory, `scheduler::MAX_JOBS`).
    waiting: HashMap<String, Vec<(Job, u16)>>,
}

impl Sts {
    pub(super) fn new(on: bool) -> Sts {
        Sts {
            on,
            tracker: Tracker::new(CAPACITY),
            waiting: HashMap::new(),
        }
    }
}

/// A domain's policy as delivery applies it, shared by the connections
/// of its next hop.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Applied {
    pub(super) domain: String,
    pub(super) id: String,
    pub(super) policy: Policy,
}

/// All MX hosts refused by `enforce`: the reply, the host named in the
/// history, and what the attempt records.
pub(super) type Refused = (Reply, String, TlsNote);

/// A client config and the name to verify the server by.
type TlsClient = (Arc<rustls::ClientConfig>, ServerName<'static>);

/// What a job's attempt records of TLS under a policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct TlsNote {
    pub(super) mode: Mode,
    pub(super) result: TlsResult,
}

/// One connection to an MX host under a policy.
pub(super) struct StsConn {
    applied: Rc<Applied>,
    /// The MX host name: what the certificate must name.
    mx: String,
    /// Decided once per session: the first failure, or success.
    result: Option<TlsResult>,
}

impl StsConn {
    pub(super) fn enforce(&self) -> bool {
        self.applied.policy.mode == Mode::Enforce
    }

    pub(super) fn note(&self) -> Option<TlsNote> {
        Some(TlsNote {
            mode: self.applied.policy.mode,
            result: self.result?,
        })
    }
}

/// Records a session's outcome (the first one only): logged, counted.
fn decide(conn: &mut OutConn, metrics: &Metrics, result: TlsResult, why: &str) {
    let Some(sts) = conn.sts.as_mut() else {
        return;
    };
    if sts.result.is_some() {
        return;
    }
    sts.result = Some(result);
    let mode = sts.applied.policy.mode;
    metrics.mta_sts_result(mode.as_str(), result.as_str());
    let (domain, id, label) = (&sts.applied.domain, &sts.applied.id, &conn.label);
    match (mode, result) {
        (_, TlsResult::Success) => {
            debug!(
                "{domain}: MTA-STS ({}, id {id}): TLS with {label} verified",
                mode.as_str()
            )
        }
        (Mode::Enforce, r) => warn!(
            "{domain}: MTA-STS (enforce, id {id}): {label} not used: {}: {why}",
            r.as_str()
        ),
        (_, r) => warn!(
            "{domain}: MTA-STS (testing, id {id}): enforce would refuse {label}: {}: {why}; \
             delivering as without a policy",
            r.as_str()
        ),
    }
}

/// The 451 4.7.5 an enforced policy defers with: never a bounce (RFC 8461
/// forbids failing such mail for good before an updated policy has been
/// looked for), so the usual retries (which look again) and lifetime
/// apply.
fn refusal(applied: &Applied, what: &str) -> Reply {
    Reply::local(
        451,
        "4.7.5",
        &format!(
            "MTA-STS policy of {} (enforce, id {}): {what}",
            applied.domain, applied.id
        ),
    )
}

/// A handshake under a policy ended (`ok`: it finished). With `enforce`
/// a failure is refused with the MTA-STS reply returned here; `testing`
/// checks the certificate it took anyway, and only says what it found.
pub(super) fn after_handshake(
    conn: &mut OutConn,
    ok: bool,
    read: &io::Result<usize>,
    tls: &TlsSetup,
    metrics: &Metrics,
) -> Option<Reply> {
    let sts = conn.sts.as_ref()?;
    let enforce = sts.enforce();
    if ok {
        if enforce {
            // The verifying client checked chain and name already.
            decide(conn, metrics, TlsResult::Success, "");
            return None;
        }
        let checked = check_certificate(conn, tls);
        match checked {
            Ok(()) => decide(conn, metrics, TlsResult::Success, ""),
            Err(e) => decide(conn, metrics, TlsResult::of_tls_error(&e), &e.to_string()),
        }
        return None;
    }
    let (result, why) = match read {
        Err(e) => (TlsResult::of_io_error(e), e.to_string()),
        Ok(_) => (
            TlsResult::ValidationFailure,
            "closed by the server".to_string(),
        ),
    };
    decide(conn, metrics, result, &why);
    let applied = &conn.sts.as_ref()?.applied;
    enforce.then(|| {
        let what = format!("TLS with {} failed: {}: {why}", conn.label, result.as_str());
        refusal(applied, &what)
    })
}

/// `testing`: the certificate the handshake took, verified as `enforce`
/// would have (chain to a trusted root, the MX host's name).
fn check_certificate(conn: &OutConn, tls: &TlsSetup) -> Result<(), rustls::Error> {
    let Some(sts_tls) = &tls.sts else {
        return Err(rustls::Error::General("no trusted roots".into()));
    };
    let mx = conn.sts.as_ref().map_or("", |s| s.mx.as_str());
    let name = ServerName::try_from(mx.to_string())
        .map_err(|_| rustls::Error::General(format!("{mx} is not a TLS server name")))?;
    let certs = conn
        .transport
        .peer_certificates()
        .ok_or(rustls::Error::NoCertificatesPresented)?;
    let (end, intermediates) = certs
        .split_first()
        .ok_or(rustls::Error::NoCertificatesPresented)?;
    use rustls::client::danger::ServerCertVerifier;
    sts_tls
        .verifier
        .verify_server_cert(end, intermediates, &name, &[], UnixTime::now())
        .map(drop)
}

/// The first EHLO went through: a session still in clear had no STARTTLS
/// (only `testing` gets here so: `enforce` requires TLS).
pub(super) fn after_greeting(conn: &mut OutConn, metrics: &Metrics) {
    if conn.sts.as_ref().is_some_and(|s| s.result.is_none()) && conn.transport.is_plain() {
        decide(
            conn,
            metrics,
            TlsResult::StarttlsNotSupported,
            "STARTTLS not offered",
        );
    }
}

/// The client gave up before TLS under `enforce`: no STARTTLS offered
/// (its 4.7.10), or STARTTLS refused. Whatever the code, that is the
/// policy's refusal, deferred as 4.7.5, not a bounce.
pub(super) fn refused_before_tls(conn: &mut OutConn, reply: Reply, metrics: &Metrics) -> Reply {
    let Some(sts) = &conn.sts else {
        return reply;
    };
    let no_tls = reply.enhanced.as_deref() == Some("4.7.10") || conn.client.offered_starttls();
    if !sts.enforce() || conn.greeted || !conn.transport.is_plain() || !no_tls {
        return reply;
    }
    let applied = sts.applied.clone();
    let why = format!("no TLS with {}: {reply}", conn.label);
    decide(conn, metrics, TlsResult::StarttlsNotSupported, &why);
    refusal(&applied, &format!("starttls-not-supported: {why}"))
}

impl Server {
    /// Routes a job: one for an MX-delivered domain waits for the domain's
    /// first policy look (only that one: later jobs go on what is known
    /// while a look runs behind them); others are resolved at once.
    pub(super) fn resolve_under_policy(&mut self, job: Job, target: Target, port: u16) {
        let domain = match &target {
            Target::Mx(domain) if self.sts.on && port == crate::routing::SMTP_PORT => domain,
            _ => return self.resolve(job, target, port),
        };
        if !self.sts.tracker.contains(domain) {
            let cached = self.queue.sts_policy(domain).unwrap_or_else(|e| {
                error!("{e}");
                None
            });
            self.sts.tracker.insert(domain, cached, self.now);
        }
        let (gate, look) = self.sts.tracker.job(domain, self.now, self.wall);
        // The common case (known, no look due) costs no allocation.
        let to_look = look.then(|| domain.clone());
        match gate {
            Gate::Wait => {
                let domain = domain.clone();
                self.sts
                    .waiting
                    .entry(domain)
                    .or_default()
                    .push((job, port))
            }
            Gate::Go => self.resolve(job, target, port),
        }
        if let Some(domain) = to_look {
            let txt = Target::Txt(format!("_mta-sts.{domain}"));
            if let Some(answer) = self.resolver.lookup(txt, self.now) {
                self.sts_record(&domain, answer);
            }
            self.dns_flush();
        }
    }

    /// From `resolved`: the answer for `_mta-sts.<domain>`.
    pub(super) fn sts_txt_answer(&mut self, name: &str, answer: Answer) {
        if let Some(domain) = name.strip_prefix("_mta-sts.") {
            self.sts_record(domain, answer);
        }
    }

    fn sts_record(&mut self, domain: &str, answer: Answer) {
        let txt = match answer {
            Answer::Txt(texts) => match mta_sts::pick_record(&texts) {
                Some(Ok(record)) => Txt::Record(record.id),
                Some(Err(e)) => {
                    info!("{domain}: MTA-STS record ignored: {e}");
                    Txt::Absent
                }
                None => Txt::Absent,
            },
            Answer::TempFail(why) => {
                info!("{domain}: MTA-STS record not known: {why}");
                Txt::Failed
            }
            _ => Txt::Absent,
        };
        match self.sts.tracker.txt(domain, txt, self.now, self.wall) {
            Some(id) => {
                debug!("{domain}: MTA-STS record id {id}: fetching the policy");
                self.fetch_policy(domain, &id);
            }
            None => self.sts_release(domain),
        }
    }

    /// From `sts_fetch`: the policy text, or why there is none.
    pub(super) fn sts_fetched(&mut self, domain: &str, id: &str, text: Result<String, String>) {
        let parsed =
            text.and_then(|t| mta_sts::parse_policy(&t).map_err(|e| format!("bad policy: {e}")));
        self.metrics.mta_sts_fetch(parsed.is_ok());
        let error = parsed.as_ref().err().cloned();
        let stored = self
            .sts
            .tracker
            .fetched(domain, id, parsed, self.now, self.wall);
        match (stored, error) {
            (Some(cached), _) => {
                let p = &cached.policy;
                info!(
                    "{domain}: MTA-STS policy id {id}: mode {}, mx {}, max_age {}",
                    p.mode.as_str(),
                    p.mx_text(),
                    p.max_age
                );
                self.turn.policies.push(PolicyUpdate::Fetched {
                    domain: domain.to_string(),
                    cached,
                    at: self.wall,
                });
            }
            (None, Some(error)) => {
                let keeping = match self.sts.tracker.policy(domain, self.wall) {
                    Some(c) => format!("keeping the cached policy id {}", c.id),
                    None => "delivering as without a policy".to_string(),
                };
                warn!("{domain}: MTA-STS policy id {id} not fetched: {error}; {keeping}");
                self.turn.policies.push(PolicyUpdate::Failed {
                    domain: domain.to_string(),
                    id: id.to_string(),
                    error,
                    at: self.wall,
                });
            }
            (None, None) => {}
        }
        self.sts_release(domain);
    }

    /// The jobs that waited for the domain's look go on, when it is over.
    fn sts_release(&mut self, domain: &str) {
        if !self.sts.tracker.settled(domain) {
            return;
        }
        let Some(jobs) = self.sts.waiting.remove(domain) else {
            return;
        };
        for (job, port) in jobs {
            self.resolve(job, Target::Mx(domain.to_string()), port);
        }
    }

    /// The policy for the MX hosts of `target`, if one applies.
    pub(super) fn sts_applied(&self, target: &Target) -> Option<Rc<Applied>> {
        let Target::Mx(domain) = target else {
            return None;
        };
        if !self.sts.on {
            return None;
        }
        let cached = self.sts.tracker.policy(domain, self.wall)?;
        Some(Rc::new(Applied {
            domain: domain.clone(),
            id: cached.id.clone(),
            policy: cached.policy.clone(),
        }))
    }

    /// `enforce`: the MX hosts the policy names (RFC 8461 4.1), each other
    /// one logged and counted; none left is the policy's refusal (with the
    /// host named in the history and the note for it).
    pub(super) fn sts_filter(
        &self,
        applied: Option<&Rc<Applied>>,
        candidates: Vec<Candidate>,
    ) -> Result<Vec<Candidate>, Refused> {
        let Some(applied) = applied.filter(|a| a.policy.mode == Mode::Enforce) else {
            return Ok(candidates);
        };
        let (good, bad): (Vec<Candidate>, Vec<Candidate>) = candidates
            .into_iter()
            .partition(|c| applied.policy.matches(&c.name));
        for c in &bad {
            self.metrics.mta_sts_result(
                Mode::Enforce.as_str(),
                TlsResult::ValidationFailure.as_str(),
            );
            warn!(
                "{}: MTA-STS (enforce, id {}): MX {} matches none of mx {}; not used",
                applied.domain,
                applied.id,
                c.name,
                applied.policy.mx_text()
            );
        }
        if !good.is_empty() || bad.is_empty() {
            return Ok(good);
        }
        let names: Vec<&str> = bad.iter().map(|c| c.name.as_str()).collect();
        let what = format!(
            "validation-failure: no MX host matches the policy's mx {} (MX: {})",
            applied.policy.mx_text(),
            names.join(", ")
        );
        let note = TlsNote {
            mode: Mode::Enforce,
            result: TlsResult::ValidationFailure,
        };
        Err((refusal(applied, &what), names[0].to_string(), note))
    }

    /// A new connection's MTA-STS state, from its destination.
    pub(super) fn sts_conn(&self, hop: &str, label: &str) -> Option<StsConn> {
        let applied = self.destinations.get(hop)?.sts.clone()?;
        let mx = label.split_once('[').map_or(label, |(name, _)| name);
        Some(StsConn {
            applied,
            mx: mx.to_string(),
            result: None,
        })
    }

    /// `testing` connects to MX hosts the policy does not name, too:
    /// noted as what enforce would have refused.
    pub(super) fn sts_opened(&mut self, key: usize) {
        let Some(conn) = self.out.get_mut(key) else {
            return;
        };
        let mismatch = conn
            .sts
            .as_ref()
            .is_some_and(|s| !s.applied.policy.matches(&s.mx));
        if mismatch {
            let why = "the MX host matches none of the policy's mx patterns";
            decide(conn, &self.metrics, TlsResult::ValidationFailure, why);
        }
    }

    /// Under `enforce`: the verifying MTA-STS client and the MX host name
    /// for STARTTLS; `None` for any other session (as `tls_client` says).
    pub(super) fn sts_tls_client(&self, key: usize) -> Option<io::Result<TlsClient>> {
        let sts = self.out.get(key)?.sts.as_ref().filter(|s| s.enforce())?;
        let Some(sts_tls) = &self.tls.sts else {
            return Some(Err(io::Error::other(
                "no trusted root certificates to verify it by (MTA-STS)",
            )));
        };
        Some(
            crate::tls::server_name(&sts.mx)
                .map(|name| (sts_tls.client.clone(), name))
                .ok_or_else(|| io::Error::other(format!("{} is not a TLS server name", sts.mx))),
        )
    }
}

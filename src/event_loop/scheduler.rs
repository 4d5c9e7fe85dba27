//! Work from the queue: lease what is due, deliver locally or hand it to a
//! connection, and turn replies into outcomes, bounces and delay warnings
//! for the turn's commit.

use std::net::{IpAddr, Ipv4Addr};
use std::rc::Rc;
use std::time::{Duration, SystemTime};

use log::{error, info, warn};

use super::outbound::{Destination, Job};
use super::Server;
use crate::bounce::{self, Action, Original, ReportedRecipient};
use crate::delivery::{self, maildir, Settled};
use crate::message::Message;
use crate::policy::local_user_name;
use crate::queue::{Attempt, Lease, StoredMessage};
use crate::routing::{self, Hop};
use crate::smtp::address::parse_forward_path;
use crate::smtp::reply::Reply;

/// Leased jobs held in memory at once (waiting or in flight).
pub(super) const MAX_JOBS: usize = 2000;
/// New mail up to this size keeps its body in memory until delivered
/// (at most `MAX_JOBS` of them); bigger bodies are read back from the
/// queue as they are sent.
const KEEP_IN_MEMORY: usize = 16 * 1024;
/// While at least this many jobs are in memory, a backlog is leased only
/// once this much room has come free: each lease is a transaction of its
/// own (an fsync), which one per few finished jobs would make the pace.
const LEASE_CHUNK: usize = MAX_JOBS / 4;
/// Look at the queue at least this often, for changes made from outside
/// (`mailhop sendmail` writes there: its mail goes within a second).
const SCAN_EVERY: Duration = Duration::from_secs(1);
const PRUNE_EVERY: Duration = Duration::from_secs(60);
const PRUNE_ROWS: usize = 1000;

impl Server {
    /// Whether a scan may lease now (see `LEASE_CHUNK`); until then the
    /// scan waits for jobs to finish, which wakes the loop anyway.
    pub(super) fn room_to_lease(&self) -> bool {
        self.jobs_in_memory < LEASE_CHUNK
            || MAX_JOBS.saturating_sub(self.jobs_in_memory) >= LEASE_CHUNK
    }

    /// Leases due work when it is time, and starts it.
    pub(super) fn schedule(&mut self) {
        if self.shutdown.is_some() {
            return;
        }
        self.prune_when_due();
        if self.now < self.next_scan || !self.room_to_lease() {
            return;
        }
        let room = MAX_JOBS.saturating_sub(self.jobs_in_memory);
        let leases = if room == 0 {
            Vec::new()
        } else {
            match self.queue.lease_due(self.wall, room) {
                Ok(leases) => leases,
                Err(e) => {
                    error!("leasing due mail: {e}");
                    Vec::new()
                }
            }
        };
        let full = room > 0 && leases.iter().map(|l| l.recipients.len()).sum::<usize>() >= room;
        for r in leases.iter().flat_map(|l| &l.recipients) {
            if r.was_deferred {
                self.depth.deferred -= 1;
            } else {
                self.depth.queued -= 1;
            }
            self.depth.active += 1;
        }
        // After the lease, not before: `queue retry` makes recipients due
        // and sets their hop's retry time in one transaction, so a lease
        // that saw the one sees the other here. Looked at before, a retry
        // committed in between would meet the hop still failing and its
        // mail would go back to waiting for the old retry time.
        self.notice_operator_retries();
        let mut hops = Vec::new();
        for lease in leases {
            if let Some(hop) = self.start(lease) {
                if !hops.contains(&hop) {
                    hops.push(hop);
                }
            }
        }
        for hop in hops {
            self.dispatch(&hop);
        }
        self.next_scan = if full {
            self.now
        } else {
            let due = match self.queue.next_due() {
                Ok(due) => due,
                Err(e) => {
                    error!("reading the next due time: {e}");
                    None
                }
            };
            let wait = due.map_or(SCAN_EVERY, |t| {
                t.duration_since(self.wall)
                    .unwrap_or_default()
                    .min(SCAN_EVERY)
            });
            // Stored times have whole seconds: never spin inside one.
            self.now + wait.max(Duration::from_millis(200))
        };
    }

    /// History older than `history_retention` goes, a bounded slice at a
    /// time, once a minute.
    fn prune_when_due(&mut self) {
        if self.now < self.next_prune {
            return;
        }
        self.next_prune = self.now + PRUNE_EVERY;
        let before = self
            .wall
            .checked_sub(self.retry.history_retention)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        match self.queue.prune(before, PRUNE_ROWS) {
            Ok(0) => {}
            Ok(n) => info!("pruned {n} rows of history"),
            Err(e) => error!("pruning history: {e}"),
        }
    }

    /// `mailhop queue retry|release` set a failing hop's stored
    /// `next_retry` to now: take it when earlier than ours, so the
    /// operator's retry is not held back until the hop's own retry time.
    fn notice_operator_retries(&mut self) {
        match self.queue.changed_elsewhere() {
            Ok(true) => self.recount_depth(),
            Ok(false) => return,
            Err(e) => return error!("watching the queue: {e}"),
        }
        if self.hosts.is_empty() {
            return;
        }
        let retries = match self.queue.host_retries() {
            Ok(retries) => retries,
            Err(e) => return error!("reading next hop retry times: {e}"),
        };
        for (hop, at) in retries {
            if let Some(health) = self.hosts.get_mut(&hop) {
                if health.until.is_some_and(|until| at < until) {
                    info!("{hop}: retry asked from outside, trying it again");
                    health.until = Some(at);
                }
            }
        }
    }

    /// One lease: delivered here, queued for a connection (its hop is
    /// returned), or decided at once.
    fn start(&mut self, lease: Lease) -> Option<String> {
        let (message, body) = match self
            .queue
            .message_and_body(&lease.message_id, KEEP_IN_MEMORY as u64)
        {
            Ok(found) => found,
            Err(e) => {
                error!(
                    "{}: cannot load: {e}; left active until restart",
                    lease.message_id
                );
                return None;
            }
        };
        self.start_job(Job {
            lease,
            message: Rc::new(message),
            body: body.map(Rc::from),
            next_piece: 0,
            dsn_passed: false,
            started_at: self.wall,
            tls: None,
        })
    }

    /// Messages just committed with their recipients already leased
    /// (`Queue::commit_and_lease`): they start from memory, without a
    /// lease query or a reload of the body.
    pub(super) fn start_committed(&mut self, messages: Vec<Message>, leases: Vec<Lease>) {
        let mut hops = Vec::new();
        let mut leases = leases.into_iter().peekable();
        for message in messages {
            let stored = Rc::new(StoredMessage {
                id: message.id,
                sender: message.sender,
                reverse_path: message.reverse_path,
                received_at: message.received_at,
                eight_bit: message.eight_bit,
                smtputf8: message.smtputf8,
                warned: false,
                size: message.size,
                chunks: message.chunks,
                ret: message.ret,
                envid: message.envid,
            });
            // A small body stays in memory for its hops; a bigger one is
            // read back piece by piece (of a streamed one, only its end
            // is here anyway).
            let body: Option<Rc<[u8]>> = (message.chunks == 0
                && message.body.len() <= KEEP_IN_MEMORY)
                .then(|| message.body.into());
            while let Some(lease) = leases.next_if(|l| l.message_id == stored.id) {
                let job = Job {
                    lease,
                    message: stored.clone(),
                    body: body.clone(),
                    next_piece: 0,
                    dsn_passed: false,
                    started_at: self.wall,
                    tls: None,
                };
                if let Some(hop) = self.start_job(job) {
                    if !hops.contains(&hop) {
                        hops.push(hop);
                    }
                }
            }
        }
        for hop in hops {
            self.dispatch(&hop);
        }
    }

    /// Routes one job: delivered here, parked for DNS, or queued for a
    /// connection (its hop is returned, to be dispatched).
    fn start_job(&mut self, job: Job) -> Option<String> {
        self.jobs_in_memory += 1;
        match routing::hop(&job.lease.next_hop) {
            Hop::Local => {
                self.deliver_locally(job);
                None
            }
            Hop::Resolve(target, port) => {
                self.resolve_under_policy(job, target, port);
                None
            }
            Hop::Connect(addr) => {
                let hop = job.lease.next_hop.clone();
                self.destinations
                    .entry(hop.clone())
                    .or_insert_with(|| Destination::single(addr));
                self.jobs.entry(hop.clone()).or_default().push_back(job);
                Some(hop)
            }
        }
    }

    fn deliver_locally(&mut self, job: Job) {
        let mut replies = Vec::with_capacity(job.lease.recipients.len());
        for recipient in &job.lease.recipients {
            let local = recipient
                .mailbox
                .rsplit_once('@')
                .map_or(recipient.mailbox.as_str(), |(l, _)| l);
            let reply = if !self.settings.policy.is_local_user(local) {
                Reply::local(
                    550,
                    "5.1.1",
                    &format!("<{}>: no such user here", recipient.mailbox),
                )
            } else {
                let user = local_user_name(local);
                let mut body = JobBody {
                    job: &job,
                    queue: &self.queue,
                    next: 0,
                };
                match maildir::deliver_pieces(
                    &self.maildir,
                    &user,
                    &job.message.sender,
                    &recipient.mailbox,
                    &mut body,
                    &self.settings.hostname,
                    self.wall,
                ) {
                    Ok(_) => Reply::local(250, "2.0.0", &format!("delivered to maildir {user}")),
                    Err(e) => Reply::local(451, "4.3.0", &format!("maildir {user}: {e}")),
                }
            };
            replies.push(reply);
        }
        self.settle_job(
            job,
            &replies,
            Reply::local(451, "4.3.0", "not delivered"),
            Some("local"),
            None,
        );
    }

    /// Records what happened to a job's recipients: `replies` in recipient
    /// order, `fallback` for any without one. `remote` is where it was
    /// tried (None: not tried); `retry_at` overrides the schedule.
    pub(super) fn settle_job(
        &mut self,
        job: Job,
        replies: &[Reply],
        fallback: Reply,
        remote: Option<&str>,
        retry_at: Option<SystemTime>,
    ) {
        self.jobs_in_memory -= 1;
        if remote.is_some() {
            self.shaping_reply(&job.lease.next_hop, replies, &fallback);
        }
        let replies: Vec<Reply> = (0..job.lease.recipients.len())
            .map(|i| replies.get(i).cloned().unwrap_or_else(|| fallback.clone()))
            .collect();
        let attempt = remote.map(|host| Attempt {
            host: host.to_string(),
            started_at: job.started_at,
            finished_at: self.wall,
        });
        let settled = delivery::settle(
            &job.lease,
            &job.message,
            &replies,
            attempt.as_ref(),
            remote,
            retry_at,
            self.wall,
            &self.retry,
            job.dsn_passed,
        );
        if let Some(note) = job.tls {
            // Their indices once `report` has added them to the turn.
            let first = self.turn.outcomes.len();
            for (i, outcome) in settled.outcomes.iter().enumerate() {
                if outcome.attempt.is_some() {
                    self.turn.tls.push(crate::queue::AttemptTls {
                        outcome: first + i,
                        mode: note.mode.as_str(),
                        result: note.result.as_str(),
                    });
                }
            }
        }
        for outcome in &settled.outcomes {
            info!(
                "{}: to=<{}> relay={} status={} ({})",
                outcome.message_id,
                outcome.recipient,
                outcome.next_hop,
                status_word(&outcome.state),
                outcome.reply
            );
        }
        self.report(&job, settled);
    }

    /// Queues the outcomes, and tells the sender what failed (a bounce) or,
    /// once per message, what is late (a delay warning). Mail from `<>` is
    /// never reported on.
    fn report(&mut self, job: &Job, settled: Settled) {
        if self.turn.outcomes.is_empty() {
            self.turn.since = Some(self.now);
        }
        self.turn.outcomes.extend(settled.outcomes);
        let message = &job.message;
        if message.sender.is_empty() {
            return;
        }
        if !settled.failed.is_empty() {
            self.send_report(job, &settled.failed);
        }
        if !settled.succeeded.is_empty() {
            self.send_report(job, &settled.succeeded);
        }
        let warning = self.retry.delay_warning;
        let late = self
            .wall
            .duration_since(message.received_at)
            .unwrap_or_default()
            >= warning;
        if !settled.delayed.is_empty()
            && !warning.is_zero()
            && late
            && !message.warned
            && self.warned.insert(message.id.clone())
        {
            self.send_report(job, &settled.delayed);
            self.turn.warned.push(message.id.clone());
        }
    }

    fn send_report(&mut self, job: &Job, recipients: &[ReportedRecipient]) {
        let message = &job.message;
        let path = format!("<{}>", message.reverse_path);
        let recipient = match parse_forward_path(path.as_bytes()) {
            Ok((path, _)) => self.settings.policy.route(&path),
            Err(_) => {
                warn!("{}: no report: cannot parse the sender {path}", message.id);
                return;
            }
        };
        let Ok(recipient) = recipient else {
            warn!(
                "{}: no report: sender {path} is an unknown local user",
                message.id
            );
            return;
        };
        // The original headers are in the first piece (a bounce quotes
        // 64 KiB of them at most).
        let mut first = Vec::new();
        let head = match &job.body {
            Some(body) => &body[..],
            None => match self
                .queue
                .read_piece(&message.id, 0, message.chunks, &mut first)
            {
                Ok(()) => &first[..],
                Err(e) => {
                    warn!("{}: report without the original headers: {e}", message.id);
                    &[]
                }
            },
        };
        let failure = recipients.iter().any(|r| r.action == Action::Failed);
        let original = Original {
            id: &message.id,
            sender: &message.sender,
            received_at: message.received_at,
            message: head,
            // RET=FULL: the whole message, if it is one piece (64 KiB);
            // a bigger one comes back as its headers.
            full: failure
                && message.ret == Some(crate::smtp::dsn::Ret::Full)
                && head.len() as u64 == message.size,
            envid: message.envid.as_deref(),
        };
        let body = bounce::report(&self.settings.hostname, &original, recipients, self.wall);
        let id = self.ids.next(self.wall);
        let kind = if failure {
            "bounce"
        } else if recipients.iter().any(|r| r.action == Action::Delayed) {
            "delay warning"
        } else {
            "success report"
        };
        info!(
            "{}: {kind} to <{}> queued as {id}",
            message.id, message.sender
        );
        self.turn.generated.push(Message {
            id,
            sender: String::new(),
            reverse_path: String::new(),
            recipients: vec![recipient],
            client_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            helo: self.settings.hostname.clone(),
            received_at: self.wall,
            eight_bit: !body.is_ascii(),
            smtputf8: false,
            ret: None,
            envid: None,
            chunks: 0,
            size: body.len() as u64,
            body,
        });
    }

    pub(super) fn failing_until(&self, hop: &str) -> Option<SystemTime> {
        self.hosts
            .get(hop)
            .and_then(|h| h.until)
            .filter(|until| *until > self.wall)
    }

    pub(super) fn host_error(&self, hop: &str) -> Reply {
        let text = self
            .hosts
            .get(hop)
            .map_or("next hop is failing", |h| h.last_error.as_str());
        Reply::local(
            451,
            "4.4.1",
            &format!("held back, {hop} is failing: {text}"),
        )
    }
}

fn status_word(state: &crate::queue::RecipientState) -> &'static str {
    use crate::queue::RecipientState::*;
    match state {
        Delivered => "sent",
        Deferred { .. } => "deferred",
        Bounced => "bounced",
        Expired => "expired",
        Deleted => "deleted",
    }
}

/// A next hop that could not be reached: until when its mail waits.
#[derive(Debug, Default)]
pub(super) struct HostHealth {
    pub(super) failures: u32,
    pub(super) until: Option<SystemTime>,
    pub(super) last_error: String,
}

/// What the turn has decided beyond the inbound messages; committed with
/// them, kept for the next turn if the commit fails.
#[derive(Debug, Default)]
pub(super) struct Turn {
    pub(super) outcomes: Vec<crate::queue::Outcome>,
    pub(super) hosts: Vec<crate::queue::HostUpdate>,
    pub(super) hold_backs: Vec<crate::queue::HoldBack>,
    pub(super) warned: Vec<String>,
    /// Limits in force on next hops that changed (`hosts` view).
    pub(super) shaping: Vec<crate::queue::ShapeUpdate>,
    /// MTA-STS policies fetched, or failed to be (`policies` view).
    pub(super) policies: Vec<crate::queue::PolicyUpdate>,
    /// TLS results of `outcomes` under a policy, in their order.
    pub(super) tls: Vec<crate::queue::AttemptTls>,
    /// Bounces and delay warnings we made.
    pub(super) generated: Vec<Message>,
    /// When the oldest uncommitted outcome was decided.
    pub(super) since: Option<std::time::Instant>,
}

/// How long delivery outcomes may wait to share a commit, and how many.
const OUTCOMES_WAIT: Duration = Duration::from_millis(5);
const OUTCOMES_BATCH: usize = 256;

impl Turn {
    /// Something that should not wait: mail we made, host states, or a
    /// full batch of outcomes.
    pub(super) fn urgent(&self) -> bool {
        !self.generated.is_empty()
            || !self.hosts.is_empty()
            || !self.hold_backs.is_empty()
            || !self.warned.is_empty()
            || !self.shaping.is_empty()
            || !self.policies.is_empty()
            || self.outcomes.len() >= OUTCOMES_BATCH
    }

    /// When waiting outcomes must be committed at the latest.
    pub(super) fn due(&self) -> Option<std::time::Instant> {
        self.since
            .filter(|_| !self.outcomes.is_empty())
            .map(|t| t + OUTCOMES_WAIT)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.outcomes.is_empty()
            && self.hosts.is_empty()
            && self.hold_backs.is_empty()
            && self.warned.is_empty()
            && self.shaping.is_empty()
            && self.policies.is_empty()
            && self.generated.is_empty()
    }
}

/// A job's body for local delivery, piece by piece: from memory, or from
/// the queue.
struct JobBody<'a> {
    job: &'a Job,
    queue: &'a crate::queue::Queue,
    next: u32,
}

impl maildir::Pieces for JobBody<'_> {
    fn next_piece(&mut self, buf: &mut Vec<u8>) -> std::io::Result<bool> {
        let message = &self.job.message;
        if self.next > message.chunks {
            return Ok(false);
        }
        match &self.job.body {
            Some(body) => {
                buf.clear();
                buf.extend_from_slice(body);
                self.next = message.chunks + 1;
            }
            None => {
                self.queue
                    .read_piece(&message.id, self.next, message.chunks, buf)
                    .map_err(|e| std::io::Error::other(e.0))?;
                self.next += 1;
            }
        }
        Ok(true)
    }
}

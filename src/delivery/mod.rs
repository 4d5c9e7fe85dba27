//! Delivery decisions that need no socket: what a reply means for each
//! recipient (delivered, retried when, bounced, expired), what the sender
//! is told, and local Maildir delivery.

pub mod maildir;

use std::time::{Duration, SystemTime};

use crate::bounce::{Action, ReportedRecipient};
use crate::config::Retry;
use crate::queue::{Attempt, Lease, Outcome, RecipientState, StoredMessage};
use crate::smtp::dsn::Notify;
use crate::smtp::reply::{Class, Reply};

/// The wait after the `attempts`-th failed attempt: the schedule's slot,
/// its last slot repeating (RFC 5321 4.5.4.1).
pub fn retry_delay(schedule: &[Duration], attempts: u32) -> Duration {
    let slot = (attempts.max(1) as usize - 1).min(schedule.len().saturating_sub(1));
    schedule
        .get(slot)
        .copied()
        .unwrap_or(Duration::from_secs(300))
}

/// The reply class decides (DESIGN pattern 4): 2xx delivered, 5xx bounced,
/// anything else retried, until the message outlives `max_lifetime`.
pub fn state_after(
    reply: &Reply,
    attempts: u32,
    received_at: SystemTime,
    now: SystemTime,
    retry: &Retry,
) -> RecipientState {
    match reply.class() {
        Class::Positive => RecipientState::Delivered,
        Class::Permanent => RecipientState::Bounced,
        Class::Transient | Class::Intermediate => {
            if now >= received_at + retry.max_lifetime {
                RecipientState::Expired
            } else {
                RecipientState::Deferred {
                    next_attempt: now + retry_delay(&retry.schedule, attempts),
                }
            }
        }
    }
}

/// What settling one lease produced: the queue updates, and the recipients
/// the sender should hear about.
#[derive(Debug, Default)]
pub struct Settled {
    pub outcomes: Vec<Outcome>,
    pub failed: Vec<ReportedRecipient>,
    pub delayed: Vec<ReportedRecipient>,
    /// Delivered or relayed, and the sender asked to hear so (RFC 3461).
    pub succeeded: Vec<ReportedRecipient>,
}

/// Turns one reply per leased recipient into outcomes. `attempt` is `None`
/// for decisions taken without trying (a failing host held back); those
/// do not count as attempts. `remote` names the host that answered
/// (`local` for Maildir); `retry_at` overrides the schedule (the held-back
/// host's retry time). `dsn_passed`: the next hop took the DSN parameters,
/// so it reports success, not we. Who hears of what follows `NOTIFY`
/// (RFC 3461 4.1): failures and delays unless the sender said otherwise,
/// successes only when asked.
#[allow(clippy::too_many_arguments)]
pub fn settle(
    lease: &Lease,
    message: &StoredMessage,
    replies: &[Reply],
    attempt: Option<&Attempt>,
    remote: Option<&str>,
    retry_at: Option<SystemTime>,
    now: SystemTime,
    retry: &Retry,
    dsn_passed: bool,
) -> Settled {
    let mut settled = Settled::default();
    for (recipient, reply) in lease.recipients.iter().zip(replies) {
        let attempts = recipient.attempts + u32::from(attempt.is_some());
        let mut state = state_after(reply, attempts, message.received_at, now, retry);
        if let (RecipientState::Deferred { next_attempt }, Some(at)) = (&mut state, retry_at) {
            *next_attempt = at;
        }
        let mut reply_text = reply.to_string();
        if state == RecipientState::Expired {
            reply_text = format!("{reply_text} (gave up: message older than the maximum lifetime)");
        }
        let report = |action, status: String| ReportedRecipient {
            mailbox: recipient.mailbox.clone(),
            action,
            status,
            remote_mta: remote.map(str::to_string),
            diagnostic: Some(reply.to_string()),
            last_attempt: attempt.map(|a| a.finished_at),
            original_recipient: recipient.orcpt.clone(),
        };
        let notify = recipient.notify.unwrap_or(Notify::DEFAULT);
        match &state {
            RecipientState::Bounced if notify.failure => {
                settled.failed.push(report(Action::Failed, reply.status()))
            }
            // RFC 3463 4.4.7: delivery time expired.
            RecipientState::Expired if notify.failure => settled
                .failed
                .push(report(Action::Failed, "4.4.7".to_string())),
            RecipientState::Deferred { .. } if notify.delay => settled
                .delayed
                .push(report(Action::Delayed, reply.status())),
            RecipientState::Delivered if notify.success && remote == Some("local") => settled
                .succeeded
                .push(report(Action::Delivered, reply.status())),
            RecipientState::Delivered if notify.success && !dsn_passed => settled
                .succeeded
                .push(report(Action::Relayed, reply.status())),
            _ => {}
        }
        settled.outcomes.push(Outcome {
            row: recipient.row,
            message_id: lease.message_id.clone(),
            recipient: recipient.mailbox.clone(),
            next_hop: lease.next_hop.clone(),
            state,
            reply: reply_text,
            attempt: attempt.cloned(),
            at: now,
        });
    }
    settled
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::LeasedRecipient;

    fn retry() -> Retry {
        Retry {
            schedule: vec![Duration::from_secs(60), Duration::from_secs(600)],
            max_lifetime: Duration::from_secs(3600),
            delay_warning: Duration::from_secs(1800),
            history_retention: Duration::from_secs(86400),
        }
    }

    #[test]
    fn the_schedule_repeats_its_last_slot() {
        let s = retry().schedule;
        assert_eq!(retry_delay(&s, 1), Duration::from_secs(60));
        assert_eq!(retry_delay(&s, 2), Duration::from_secs(600));
        assert_eq!(retry_delay(&s, 9), Duration::from_secs(600));
    }

    #[test]
    fn replies_decide_each_recipient() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let lease = Lease {
            message_id: "M".into(),
            next_hop: "127.0.0.1:25".into(),
            recipients: (0..3)
                .map(|i| LeasedRecipient {
                    row: i,
                    mailbox: format!("r{i}@example.org"),
                    forward_path: format!("r{i}@example.org"),
                    attempts: 0,
                    notify: None,
                    orcpt: None,
                    was_deferred: false,
                })
                .collect(),
        };
        let message = StoredMessage {
            id: "M".into(),
            sender: "s@example.com".into(),
            reverse_path: "s@example.com".into(),
            received_at: t0,
            eight_bit: false,
            smtputf8: false,
            warned: false,
            size: 0,
            chunks: 0,
            ret: None,
            envid: None,
        };
        let replies = [
            Reply::local(250, "2.0.0", "ok"),
            Reply::local(451, "4.3.0", "later"),
            Reply::local(550, "5.1.1", "no such user"),
        ];
        let attempt = Attempt {
            host: "127.0.0.1:25".into(),
            started_at: t0,
            finished_at: t0,
        };
        let now = t0 + Duration::from_secs(10);
        let settled = settle(
            &lease,
            &message,
            &replies,
            Some(&attempt),
            Some("127.0.0.1"),
            None,
            now,
            &retry(),
            false,
        );
        let states: Vec<_> = settled.outcomes.iter().map(|o| o.state.clone()).collect();
        assert_eq!(
            states,
            [
                RecipientState::Delivered,
                RecipientState::Deferred {
                    next_attempt: now + Duration::from_secs(60)
                },
                RecipientState::Bounced
            ]
        );
        assert_eq!(settled.failed.len(), 1);
        assert_eq!(settled.failed[0].status, "5.1.1");
        assert_eq!(settled.delayed.len(), 1);
        // Past the lifetime a transient failure expires with 4.4.7.
        let late = t0 + Duration::from_secs(7200);
        let settled = settle(
            &lease,
            &message,
            &replies,
            Some(&attempt),
            None,
            None,
            late,
            &retry(),
            false,
        );
        assert_eq!(settled.outcomes[1].state, RecipientState::Expired);
        assert_eq!(
            settled
                .failed
                .iter()
                .map(|r| r.status.as_str())
                .collect::<Vec<_>>(),
            ["4.4.7", "5.1.1"]
        );
    }
}

#[cfg(test)]
mod notify_tests {
    use super::*;
    use crate::queue::LeasedRecipient;
    use crate::smtp::dsn::Notify;

    /// One recipient with `notify`, settled with `reply` at a relay that
    /// did (or did not) pass the DSN parameters on.
    fn reported(notify: Option<&str>, reply: Reply, remote: &str, passed: bool) -> [usize; 3] {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let lease = Lease {
            message_id: "M".into(),
            next_hop: "h".into(),
            recipients: vec![LeasedRecipient {
                row: 1,
                mailbox: "r@example.org".into(),
                forward_path: "r@example.org".into(),
                attempts: 0,
                notify: notify.map(|n| Notify::parse(n.as_bytes()).unwrap()),
                orcpt: None,
                was_deferred: false,
            }],
        };
        let message = StoredMessage {
            id: "M".into(),
            sender: "s@example.com".into(),
            reverse_path: "s@example.com".into(),
            received_at: t0,
            eight_bit: false,
            smtputf8: false,
            warned: false,
            size: 0,
            chunks: 0,
            ret: None,
            envid: None,
        };
        let retry = Retry {
            schedule: vec![Duration::from_secs(60)],
            max_lifetime: Duration::from_secs(3600),
            delay_warning: Duration::from_secs(0),
            history_retention: Duration::from_secs(86400),
        };
        let s = settle(
            &lease,
            &message,
            &[reply],
            None,
            Some(remote),
            None,
            t0,
            &retry,
            passed,
        );
        [s.failed.len(), s.delayed.len(), s.succeeded.len()]
    }

    #[test]
    fn notify_decides_what_the_sender_hears() {
        let bounce = || Reply::local(550, "5.1.1", "no");
        let later = || Reply::local(451, "4.4.1", "later");
        let ok = || Reply::local(250, "2.0.0", "ok");
        // Absent: failures and delays, not successes.
        assert_eq!(reported(None, bounce(), "mx", false), [1, 0, 0]);
        assert_eq!(reported(None, later(), "mx", false), [0, 1, 0]);
        assert_eq!(reported(None, ok(), "mx", false), [0, 0, 0]);
        // NEVER: nothing at all.
        assert_eq!(reported(Some("NEVER"), bounce(), "mx", false), [0, 0, 0]);
        assert_eq!(reported(Some("NEVER"), later(), "mx", false), [0, 0, 0]);
        // Without DELAY: no delay warning.
        assert_eq!(reported(Some("FAILURE"), later(), "mx", false), [0, 0, 0]);
        assert_eq!(
            reported(Some("SUCCESS,DELAY"), bounce(), "mx", false),
            [0, 0, 0]
        );
        // SUCCESS: delivered here, or relayed to a hop without DSN; a hop
        // that took the parameters reports by itself.
        assert_eq!(reported(Some("SUCCESS"), ok(), "local", false), [0, 0, 1]);
        assert_eq!(reported(Some("SUCCESS"), ok(), "mx", false), [0, 0, 1]);
        assert_eq!(reported(Some("SUCCESS"), ok(), "mx", true), [0, 0, 0]);
    }
}

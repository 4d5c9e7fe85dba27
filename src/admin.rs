//! `mailhop queue ...`: which queue file, and what the operator reads. The
//! SQL is in `queue::admin` and `queue::inspect`; this is only the text.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::SystemTime;

use mailhop::cli::{QueueCommand, QueueTarget};
use mailhop::config::Config;
use mailhop::queue::{
    Admin, Changed, MessageDetail, PendingMessage, QueueError, Stats, AGE_BUCKETS, STATUSES,
};

/// Runs one queue command: 0 done, 1 failed (unknown ID, no queue file),
/// 2 bad config.
pub fn run(command: QueueCommand) -> ExitCode {
    let path = match queue_path(command.target()) {
        Ok(path) => path,
        Err(e) => {
            eprintln!("mailhop: {e}");
            return ExitCode::from(2);
        }
    };
    match Admin::open(&path).and_then(|mut admin| execute(&mut admin, &command)) {
        // Not print!: it panics when a pager or `head` closes the pipe.
        Ok(text) => match std::io::stdout().write_all(text.as_bytes()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("mailhop: writing the output: {e}");
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprintln!("mailhop: {e}");
            ExitCode::FAILURE
        }
    }
}

fn queue_path(target: &QueueTarget) -> Result<PathBuf, String> {
    if let Some(path) = &target.queue {
        return Ok(path.clone());
    }
    Config::load(target.config.config.as_deref())
        .map(|config| config.queue)
        .map_err(|e| e.to_string())
}

fn execute(admin: &mut Admin, command: &QueueCommand) -> Result<String, QueueError> {
    let now = SystemTime::now();
    Ok(match command {
        QueueCommand::List { json: false, .. } => list(&admin.pending()?, now),
        QueueCommand::List { json: true, .. } => {
            let mut text = serde_json::to_string_pretty(&admin.pending()?)
                .map_err(|e| QueueError(format!("json: {e}")))?;
            text.push('\n');
            text
        }
        QueueCommand::Show { id, .. } => show(&admin.show(id)?),
        QueueCommand::Stats { .. } => stats(&admin.stats(now)?),
        QueueCommand::Retry { id, .. } => {
            let changed = admin.retry(id.as_deref(), now)?;
            match id {
                Some(id) => said("made", " due now", id, &changed, "; left as they are"),
                None => format!(
                    "made {} recipient(s) due now{}\n",
                    changed.recipients,
                    hops(&changed)
                ),
            }
        }
        QueueCommand::Hold { id, .. } => said("held", "", id, &admin.hold(id)?, "; not held"),
        QueueCommand::Release { id, .. } => said("released", "", id, &admin.release(id, now)?, ""),
        QueueCommand::Delete { id, .. } => said(
            "deleted",
            "",
            id,
            &admin.delete(id, now)?,
            "; they will be deleted when that attempt ends, unless it delivers or bounces them",
        ),
    })
}

/// `held 3 recipient(s) of ID`, and what was left alone.
fn said(verb: &str, how: &str, id: &str, changed: &Changed, about_active: &str) -> String {
    let mut text = format!(
        "{verb} {} recipient(s) of {id}{how}{}\n",
        changed.recipients,
        hops(changed)
    );
    if changed.active > 0 && !about_active.is_empty() {
        let _ = writeln!(
            text,
            "{} recipient(s) of {id} are being delivered right now{about_active}",
            changed.active
        );
    }
    text
}

fn hops(changed: &Changed) -> String {
    match changed.hops {
        0 => String::new(),
        n => format!(", and {n} failing next hop(s) will be tried again now"),
    }
}

/// `<>` for the null sender, as in SMTP.
fn sender(sender: &str) -> String {
    format!("<{sender}>")
}

/// Like `mailq`: a line per message, an indented line per recipient.
pub fn list(messages: &[PendingMessage], now: SystemTime) -> String {
    if messages.is_empty() {
        return "Mail queue is empty\n".to_string();
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<18} {:>9} {:<20} {:>5}  Sender / recipients",
        "Queue ID", "Size", "Arrival time", "Age"
    );
    let mut total = 0u64;
    for m in messages {
        total += m.size;
        let _ = writeln!(
            out,
            "{:<18} {:>9} {:<20} {:>5}  {}",
            m.id,
            m.size,
            m.received_at,
            age(&m.received_at, now),
            sender(&m.sender)
        );
        for r in &m.recipients {
            let when = match r.status.as_str() {
                "active" => "being delivered now".to_string(),
                "held" => "held by the operator".to_string(),
                _ => format!("next {}", r.next_attempt),
            };
            let _ = write!(
                out,
                "    {:<8}  {}  via {}  {when}  attempts {}",
                r.status, r.recipient, r.next_hop, r.attempts
            );
            if let Some(reply) = &r.last_reply {
                let _ = write!(out, "  ({reply})");
            }
            out.push('\n');
        }
    }
    let n = messages.len();
    let _ = writeln!(
        out,
        "\n-- {} Kbytes in {n} message{}.",
        total.div_ceil(1024),
        if n == 1 { "" } else { "s" }
    );
    out
}

/// How long ago a stored time was: `45s`, `12m`, `5h`, `3d`.
fn age(stored: &str, now: SystemTime) -> String {
    let Ok(then) = mailhop::queue::parse_time(stored) else {
        return "?".to_string();
    };
    let secs = now.duration_since(then).unwrap_or_default().as_secs();
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m", secs / 60),
        3600..172_800 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86_400),
    }
}

/// Everything known about one message, pending or done.
pub fn show(d: &MessageDetail) -> String {
    let mut out = String::new();
    let mut flags: Vec<&str> = Vec::new();
    if d.eight_bit {
        flags.push("8bit");
    }
    if d.smtputf8 {
        flags.push("smtputf8");
    }
    if d.warned {
        flags.push("delay-warning-sent");
    }
    let flags = if flags.is_empty() {
        "none".to_string()
    } else {
        flags.join(" ")
    };
    let _ = writeln!(out, "Message {}", d.id);
    let _ = writeln!(out, "  sender:        {}", sender(&d.sender));
    let _ = writeln!(out, "  reverse path:  {}", sender(&d.reverse_path));
    let _ = writeln!(out, "  client:        [{}] helo {}", d.client_ip, d.helo);
    let _ = writeln!(out, "  received at:   {}", d.received_at);
    let _ = writeln!(out, "  size:          {} octets", d.size);
    let _ = writeln!(out, "  flags:         {flags}");
    if d.ret.is_some() || d.envid.is_some() {
        let _ = writeln!(
            out,
            "  dsn:           RET={} ENVID={}",
            d.ret.as_deref().unwrap_or("-"),
            d.envid.as_deref().unwrap_or("-")
        );
    }
    let _ = writeln!(out, "\nRecipients ({}):", d.recipients.len());
    for r in &d.recipients {
        let _ = writeln!(out, "  {}", r.recipient);
        let _ = writeln!(out, "    status:        {}", r.status);
        if r.forward_path != r.recipient {
            let _ = writeln!(out, "    forward path:  <{}>", r.forward_path);
        }
        let _ = writeln!(out, "    next hop:      {}", r.next_hop);
        if r.notify.is_some() || r.orcpt.is_some() {
            let _ = writeln!(
                out,
                "    dsn:           NOTIFY={} ORCPT={}",
                r.notify.as_deref().unwrap_or("-"),
                r.orcpt.as_deref().unwrap_or("-")
            );
        }
        let _ = writeln!(out, "    attempts:      {}", r.attempts);
        match (&r.finished_at, r.status.as_str()) {
            (Some(at), _) => {
                let _ = writeln!(out, "    finished at:   {at}");
            }
            (None, "active") => {
                let _ = writeln!(out, "    next attempt:  being delivered now");
            }
            (None, "held") => {
                let _ = writeln!(out, "    next attempt:  none while held");
            }
            (None, _) => {
                let _ = writeln!(out, "    next attempt:  {}", r.next_attempt);
            }
        }
        if r.delete_requested && r.finished_at.is_none() {
            let _ = writeln!(out, "    deleting:      when the attempt in flight ends");
        }
        let _ = writeln!(
            out,
            "    last reply:    {}",
            r.last_reply.as_deref().unwrap_or("(none yet)")
        );
    }
    let _ = writeln!(out, "\nAttempts ({}):", d.attempts.len());
    for a in &d.attempts {
        let _ = writeln!(
            out,
            "  {} .. {}  {} via {} [{}]: {}",
            a.started_at, a.finished_at, a.recipient, a.next_hop, a.host, a.reply
        );
    }
    out.push_str("\nHeaders:\n");
    match &d.header {
        Some(header) => {
            for line in String::from_utf8_lossy(header).split("\r\n") {
                if !line.is_empty() {
                    let _ = writeln!(out, "  {line}");
                }
            }
        }
        None => out.push_str("  (body already removed: every recipient is final)\n"),
    }
    out
}

/// Counts by status, by next hop, and by age like `qshape`.
pub fn stats(s: &Stats) -> String {
    let mut out = String::from("Recipients by status:\n");
    for (status, n) in &s.by_status {
        let _ = writeln!(out, "  {status:<10} {n:>8}");
    }
    if s.hops.is_empty() {
        out.push_str("\nNo pending recipients.\n");
        return out;
    }
    let width = s
        .hops
        .iter()
        .map(|h| h.next_hop.len())
        .max()
        .unwrap_or(0)
        .max("next hop".len());
    let _ = write!(
        out,
        "\nPending by next hop:\n  {:<width$} {:>7}",
        "next hop", "total"
    );
    for status in &STATUSES[..4] {
        let _ = write!(out, " {status:>8}");
    }
    out.push('\n');
    for h in &s.hops {
        let _ = write!(out, "  {:<width$} {:>7}", h.next_hop, h.total());
        for n in h.by_status {
            let _ = write!(out, " {n:>8}");
        }
        out.push('\n');
    }
    let _ = write!(
        out,
        "\nPending by age in minutes (like qshape):\n  {:<width$} {:>7}",
        "next hop", "T"
    );
    for limit in AGE_BUCKETS {
        let _ = write!(out, " {limit:>5}");
    }
    let _ = writeln!(
        out,
        " {:>5}",
        format!("{}+", AGE_BUCKETS[AGE_BUCKETS.len() - 1])
    );
    let mut sum = [0u64; AGE_BUCKETS.len() + 1];
    for h in &s.hops {
        for (total, n) in sum.iter_mut().zip(h.by_age) {
            *total += n;
        }
    }
    let rows = std::iter::once(("TOTAL", sum))
        .chain(s.hops.iter().map(|h| (h.next_hop.as_str(), h.by_age)));
    for (hop, ages) in rows {
        let _ = write!(out, "  {hop:<width$} {:>7}", ages.iter().sum::<u64>());
        for n in ages {
            let _ = write!(out, " {n:>5}");
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use mailhop::queue::{HopStats, PendingRecipient, RecipientDetail};

    use super::*;

    /// 2023-11-14T22:13:20Z plus `secs`.
    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    fn pending(id: &str, sender: &str, size: u64, status: &str) -> PendingMessage {
        PendingMessage {
            id: id.into(),
            sender: sender.into(),
            size,
            received_at: "2023-11-14T22:13:20Z".into(),
            recipients: vec![PendingRecipient {
                recipient: "u@example.org".into(),
                next_hop: "127.0.0.1:2526".into(),
                status: status.into(),
                attempts: 2,
                next_attempt: "2023-11-14T23:13:20Z".into(),
                last_reply: Some("451 4.4.1 refused".into()),
            }],
        }
    }

    #[test]
    fn list_is_like_mailq() {
        assert_eq!(list(&[], at(0)), "Mail queue is empty\n");
        let text = list(
            &[
                pending("A1", "s@a.example", 1500, "deferred"),
                pending("B2", "", 700, "held"),
            ],
            at(720),
        );
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[1],
            "A1                      1500 2023-11-14T22:13:20Z   12m  <s@a.example>"
        );
        assert_eq!(
            lines[2],
            "    deferred  u@example.org  via 127.0.0.1:2526  next 2023-11-14T23:13:20Z  \
             attempts 2  (451 4.4.1 refused)"
        );
        assert!(lines[3].ends_with("<>"), "{text}");
        assert!(lines[4].contains("held by the operator"), "{text}");
        assert_eq!(lines[6], "-- 3 Kbytes in 2 messages.");
    }

    #[test]
    fn ages_read_at_a_glance() {
        let stored = "2023-11-14T22:13:20Z";
        assert_eq!(age(stored, at(59)), "59s");
        assert_eq!(age(stored, at(3599)), "59m");
        assert_eq!(age(stored, at(7200)), "2h");
        assert_eq!(age(stored, at(3 * 86_400)), "3d");
        assert_eq!(age("junk", at(0)), "?");
    }

    #[test]
    fn show_says_when_the_body_is_gone() {
        let detail = MessageDetail {
            id: "D1".into(),
            sender: String::new(),
            reverse_path: String::new(),
            client_ip: "192.0.2.1".into(),
            helo: "h.example".into(),
            received_at: "2023-11-14T22:13:20Z".into(),
            size: 10,
            eight_bit: true,
            smtputf8: false,
            warned: false,
            recipients: vec![RecipientDetail {
                recipient: "u@example.org".into(),
                forward_path: "@relay.example:u@example.org".into(),
                next_hop: "relay.example".into(),
                status: "deleted".into(),
                attempts: 1,
                next_attempt: "2023-11-14T22:13:20Z".into(),
                last_reply: Some("deleted by operator".into()),
                finished_at: Some("2023-11-14T22:20:00Z".into()),
                delete_requested: false,
                notify: Some("SUCCESS,FAILURE".into()),
                orcpt: None,
            }],
            attempts: Vec::new(),
            header: None,
            ret: None,
            envid: None,
        };
        let text = show(&detail);
        for want in [
            "  sender:        <>\n",
            "  flags:         8bit\n",
            "    forward path:  <@relay.example:u@example.org>\n",
            "    finished at:   2023-11-14T22:20:00Z\n",
            "Attempts (0):\n",
            "  (body already removed: every recipient is final)\n",
        ] {
            assert!(text.contains(want), "{want:?} not in\n{text}");
        }
    }

    #[test]
    fn stats_has_a_total_row_and_qshape_columns() {
        let hop = HopStats {
            next_hop: "127.0.0.1:2526".into(),
            by_status: [1, 2, 0, 0],
            by_age: [1, 0, 0, 2, 0, 0, 0, 0, 0, 0],
        };
        let text = stats(&Stats {
            by_status: STATUSES.iter().map(|s| (*s, 0)).collect(),
            hops: vec![hop],
        });
        let words = |prefix: &str| -> Vec<Vec<String>> {
            text.lines()
                .filter(|l| l.trim_start().starts_with(prefix))
                .map(|l| l.split_whitespace().map(String::from).collect())
                .collect()
        };
        assert_eq!(words("next hop")[1].last().unwrap(), "1280+");
        assert_eq!(words("TOTAL")[0][1..5], ["3", "1", "0", "0"]);
        assert_eq!(words("127.0.0.1")[0][1..4], ["3", "1", "2"]);
        assert!(stats(&Stats::default()).contains("No pending recipients."));
    }
}

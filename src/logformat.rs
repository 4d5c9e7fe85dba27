//! The two shapes of a log line, `--log-format text|json`. Text is
//! `env_logger`'s own; JSON is one object per line for log shippers:
//!
//! ```text
//! {"ts":"2026-12-03T15:10:27.123Z","level":"info","target":"mailhop::event_loop","queue_id":"0641A1B2C3D4E5F6","msg":"from=<a@b.example> size=312 nrcpt=1 client=[127.0.0.1] helo=me"}
//! ```
//!
//! `queue_id` is there when the message starts with a queue ID and `": "`
//! (as every line about one message does); `msg` is then what follows.
//! Either way lines go through [`crate::logbuf::Writer`], which batches
//! them per loop turn.

use std::io::Write;

use chrono::{DateTime, SecondsFormat, Utc};
use log::Level;
use serde::Serialize;

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// `[time LEVEL target] message` lines, as always.
    #[default]
    Text,
    /// One JSON object per line (ts, level, target, queue_id, msg).
    Json,
}

/// Installs the logger: `RUST_LOG` filters (default `info`), stderr by way
/// of [`crate::logbuf::Writer`].
/// `default_filter`: the level when `RUST_LOG` is not set.
pub fn init(format: LogFormat, default_filter: &str) {
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default_filter));
    builder.target(env_logger::Target::Pipe(Box::new(crate::logbuf::Writer)));
    if format == LogFormat::Json {
        builder.format(|out, record| {
            let message = record.args().to_string();
            let line = json_line(Utc::now(), record.level(), record.target(), &message);
            out.write_all(line.as_bytes())
        });
    }
    builder.init();
}

#[derive(Serialize)]
struct Line<'a> {
    ts: String,
    level: &'static str,
    target: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    queue_id: Option<&'a str>,
    msg: &'a str,
}

/// One JSON object and a newline (line breaks inside the message are
/// escaped, so it stays one line).
pub fn json_line(ts: DateTime<Utc>, level: Level, target: &str, message: &str) -> String {
    let (queue_id, msg) = split_queue_id(message);
    let line = Line {
        ts: ts.to_rfc3339_opts(SecondsFormat::Millis, true),
        level: match level {
            Level::Error => "error",
            Level::Warn => "warn",
            Level::Info => "info",
            Level::Debug => "debug",
            Level::Trace => "trace",
        },
        target,
        queue_id,
        msg,
    };
    let mut text = serde_json::to_string(&line).expect("strings always serialize");
    text.push('\n');
    text
}

/// `("0641A1B2C3D4E5F6", "rest")` for `"0641A1B2C3D4E5F6: rest"`: 16
/// upper-case hex digits, as [`crate::message::QueueIds`] makes them.
pub fn split_queue_id(message: &str) -> (Option<&str>, &str) {
    const LEN: usize = 16;
    let bytes = message.as_bytes();
    let is_id = bytes.len() >= LEN + 2
        && bytes[..LEN]
            .iter()
            .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(b))
        && &bytes[LEN..LEN + 2] == b": ";
    if is_id {
        (Some(&message[..LEN]), &message[LEN + 2..])
    } else {
        (None, message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::QueueIds;
    use std::time::SystemTime;

    fn ts() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-12-03T15:10:27.123456Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn queue_ids_are_taken_from_the_front_only() {
        let id = QueueIds::default().next(SystemTime::now());
        let line = format!("{id}: to=<a@b.example> relay=local status=delivered (250 ok)");
        assert_eq!(
            split_queue_id(&line),
            (
                Some(id.as_str()),
                "to=<a@b.example> relay=local status=delivered (250 ok)"
            )
        );
        for not_one in [
            "listening on 127.0.0.1:2525",
            "0641a1b2c3d4e5f6: lower case is not an ID",
            "0641A1B2C3D4E5F: fifteen digits",
            "0641A1B2C3D4E5F6A: seventeen",
            "0641A1B2C3D4E5F6 no colon",
            "0641A1B2C3D4E5F6:",
            "example.org: 421 4.4.2 timeout",
            "",
            "ééééééééééééééééé: not ASCII",
        ] {
            assert_eq!(split_queue_id(not_one), (None, not_one));
        }
        assert_eq!(
            split_queue_id("0641A1B2C3D4E5F6: "),
            (Some("0641A1B2C3D4E5F6"), "")
        );
    }

    #[test]
    fn a_line_is_one_json_object_with_the_documented_fields() {
        let line = json_line(
            ts(),
            Level::Info,
            "mailhop::event_loop",
            "0641A1B2C3D4E5F6: from=<a@b.example> size=312",
        );
        assert_eq!(
            line,
            "{\"ts\":\"2026-12-03T15:10:27.123Z\",\"level\":\"info\",\"target\":\"mailhop::event_loop\",\"queue_id\":\"0641A1B2C3D4E5F6\",\"msg\":\"from=<a@b.example> size=312\"}\n"
        );
        let line = json_line(ts(), Level::Warn, "mailhop", "listening on [::1]:25");
        assert_eq!(
            line,
            "{\"ts\":\"2026-12-03T15:10:27.123Z\",\"level\":\"warn\",\"target\":\"mailhop\",\"msg\":\"listening on [::1]:25\"}\n"
        );
    }

    #[test]
    fn quotes_control_characters_and_line_breaks_are_escaped() {
        let message = "a \"quoted\" \\ back\nslash\r\ttab \u{1b}[31m ünïcode";
        let line = json_line(ts(), Level::Error, "mailhop::x", message);
        assert_eq!(line.matches('\n').count(), 1, "{line}");
        assert!(line.ends_with('\n'));
        assert!(!line.contains('\u{1b}') && !line.contains('\r') && !line.contains('\t'));
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(value["msg"], message);
        assert_eq!(value["level"], "error");
        assert!(value.get("queue_id").is_none());
    }

    #[test]
    fn every_level_is_lower_case() {
        for (level, word) in [
            (Level::Error, "error"),
            (Level::Warn, "warn"),
            (Level::Info, "info"),
            (Level::Debug, "debug"),
            (Level::Trace, "trace"),
        ] {
            let value: serde_json::Value =
                serde_json::from_str(&json_line(ts(), level, "t", "m")).unwrap();
            assert_eq!(value["level"], word);
        }
    }
}

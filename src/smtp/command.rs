//! One command line (CRLF already removed) -> [`Command`].

use super::address::{parse_forward_path, parse_reverse_path, ForwardPath, ReversePath};
use super::dsn::{self, Notify, Ret};

/// `BODY=` of MAIL FROM (RFC 6152).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BodyType {
    #[default]
    SevenBit,
    EightBitMime,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MailParams {
    /// `SIZE=n` (RFC 1870).
    pub size: Option<u64>,
    pub body: BodyType,
    /// `SMTPUTF8` (RFC 6531), no value.
    pub smtputf8: bool,
    /// `RET=` (RFC 3461).
    pub ret: Option<Ret>,
    /// `ENVID=`, decoded from xtext.
    pub envid: Option<String>,
}

/// RCPT parameters (RFC 3461).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RcptParams {
    pub notify: Option<Notify>,
    /// `ORCPT=`, decoded: `addr-type;address`.
    pub orcpt: Option<String>,
}

/// ENVID is at most 100 characters (RFC 3461 4.4), ORCPT's address 500.
const MAX_ENVID: usize = 100;
const MAX_ORCPT: usize = 500;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command<'a> {
    /// The domain or address literal given (validated, not empty).
    Helo(&'a str),
    Ehlo(&'a str),
    Mail {
        path: ReversePath,
        params: MailParams,
    },
    Rcpt {
        path: ForwardPath,
        params: RcptParams,
    },
    Data,
    /// RFC 3030: `BDAT <size> [LAST]`; `size` octets of message follow
    /// the line at once.
    Bdat {
        size: u64,
        last: bool,
    },
    Rset,
    Noop,
    Quit,
    /// VRFY with any argument.
    Vrfy,
    Help,
    /// RFC 3207.
    StartTls,
    /// RFC 4954: the mechanism (upper-cased by the caller as needed) and
    /// the initial response, if given (`=` means an empty one).
    Auth {
        mechanism: &'a str,
        initial: Option<&'a str>,
    },
    /// Recognised but not implemented here (EXPN, TURN, SEND, SOML, SAML):
    /// the verb in upper case.
    NotImplemented(&'static str),
}

/// Why a line is not an acceptable command; maps to one SMTP reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandError {
    /// Not a command we know: `500 5.5.2`.
    Unknown,
    /// A known verb with bad arguments or a bad path: `501 5.5.4 <text>`.
    Syntax(&'static str),
    /// A MAIL/RCPT parameter we do not support: `555 5.5.4 <text>`.
    UnknownParameter(&'static str),
}

const HELO_SYNTAX: CommandError = CommandError::Syntax("Syntax: HELO hostname");
const EHLO_SYNTAX: CommandError = CommandError::Syntax("Syntax: EHLO hostname");
const MAIL_SYNTAX: CommandError = CommandError::Syntax("Syntax: MAIL FROM:<address>");
const RCPT_SYNTAX: CommandError = CommandError::Syntax("Syntax: RCPT TO:<address>");
const VRFY_SYNTAX: CommandError = CommandError::Syntax("Syntax: VRFY address");
const NO_ARGUMENTS: CommandError = CommandError::Syntax("No arguments allowed");
const BAD_UTF8: CommandError = CommandError::Syntax("Invalid UTF-8");
const BAD_PARAM: CommandError = CommandError::Syntax("Bad parameter syntax");
const BAD_SIZE: CommandError = CommandError::Syntax("Bad SIZE value");
const BAD_BODY: CommandError = CommandError::Syntax("Bad BODY value");
const BAD_SMTPUTF8: CommandError = CommandError::Syntax("SMTPUTF8 takes no value");
const DUPLICATE: CommandError = CommandError::Syntax("Duplicate parameter");
const BAD_RET: CommandError = CommandError::Syntax("Bad RET value");
const BAD_ENVID: CommandError = CommandError::Syntax("Bad ENVID value");
const BAD_NOTIFY: CommandError = CommandError::Syntax("Bad NOTIFY value");
const BAD_ORCPT: CommandError = CommandError::Syntax("Bad ORCPT value");

/// Parses one command line without its CRLF. Verbs and parameter keywords
/// are case-insensitive. Non-UTF-8 bytes are a syntax error.
/// (An unrecognisable verb, UTF-8 or not, is `Unknown`.)
pub fn parse(line: &[u8]) -> Result<Command<'_>, CommandError> {
    let line = line.trim_ascii_end();
    let (verb, args) = match memchr::memchr(b' ', line) {
        Some(k) => (&line[..k], skip_spaces(&line[k + 1..])),
        None => (line, &b""[..]),
    };
    if verb.eq_ignore_ascii_case(b"STARTTLS") {
        return no_args(args, Command::StartTls);
    }
    // Every other verb we know has four letters.
    let &[a, b, c, d] = verb else {
        return Err(CommandError::Unknown);
    };
    let verb = match &[a, b, c, d].map(|b| b.to_ascii_uppercase()) {
        b"HELO" => Verb::Helo,
        b"EHLO" => Verb::Ehlo,
        b"MAIL" => Verb::Mail,
        b"RCPT" => Verb::Rcpt,
        b"DATA" => Verb::Data,
        b"BDAT" => Verb::Bdat,
        b"RSET" => Verb::Rset,
        b"NOOP" => Verb::Noop,
        b"QUIT" => Verb::Quit,
        b"VRFY" => Verb::Vrfy,
        b"HELP" => Verb::Help,
        b"AUTH" => Verb::Auth,
        b"EXPN" => return Ok(Command::NotImplemented("EXPN")),
        b"TURN" => return Ok(Command::NotImplemented("TURN")),
        b"SEND" => return Ok(Command::NotImplemented("SEND")),
        b"SOML" => return Ok(Command::NotImplemented("SOML")),
        b"SAML" => return Ok(Command::NotImplemented("SAML")),
        _ => return Err(CommandError::Unknown),
    };
    if !args.is_ascii() && std::str::from_utf8(args).is_err() {
        return Err(BAD_UTF8);
    }
    match verb {
        Verb::Helo => hostname(args).map(Command::Helo).ok_or(HELO_SYNTAX),
        Verb::Ehlo => hostname(args).map(Command::Ehlo).ok_or(EHLO_SYNTAX),
        Verb::Mail => mail(args),
        Verb::Rcpt => rcpt(args),
        Verb::Data => no_args(args, Command::Data),
        Verb::Bdat => bdat(args),
        Verb::Rset => no_args(args, Command::Rset),
        Verb::Quit => no_args(args, Command::Quit),
        Verb::Noop => Ok(Command::Noop),
        Verb::Help => Ok(Command::Help),
        Verb::Vrfy if args.is_empty() => Err(VRFY_SYNTAX),
        Verb::Vrfy => Ok(Command::Vrfy),
        Verb::Auth => auth(args),
    }
}

/// `AUTH mechanism [initial-response]` (RFC 4954 4).
fn auth(args: &[u8]) -> Result<Command<'_>, CommandError> {
    const AUTH_SYNTAX: CommandError =
        CommandError::Syntax("Syntax: AUTH mechanism [initial-response]");
    let text = std::str::from_utf8(args).map_err(|_| AUTH_SYNTAX)?;
    let mut words = text.split(' ').filter(|w| !w.is_empty());
    let mechanism = words.next().ok_or(AUTH_SYNTAX)?;
    let initial = words.next();
    let sasl_name = |m: &str| {
        m.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if words.next().is_some() || !sasl_name(mechanism) || mechanism.len() > 20 {
        return Err(AUTH_SYNTAX);
    }
    Ok(Command::Auth { mechanism, initial })
}

/// The verbs that get past the first look at a line.
enum Verb {
    Helo,
    Ehlo,
    Mail,
    Rcpt,
    Data,
    Bdat,
    Rset,
    Noop,
    Quit,
    Vrfy,
    Help,
    Auth,
}

/// `BDAT size [LAST]` (RFC 3030 2): the size is 1*DIGIT; we take up to 19
/// digits (a u64), far beyond any message size limit.
fn bdat(args: &[u8]) -> Result<Command<'static>, CommandError> {
    const BDAT_SYNTAX: CommandError = CommandError::Syntax("Syntax: BDAT size [LAST]");
    let mut words = args.split(|&b| b == b' ').filter(|w| !w.is_empty());
    let size = words
        .next()
        .filter(|w| w.len() <= 19 && w.iter().all(u8::is_ascii_digit))
        .and_then(|w| std::str::from_utf8(w).ok()?.parse().ok())
        .ok_or(BDAT_SYNTAX)?;
    let last = match words.next() {
        None => false,
        Some(w) if w.eq_ignore_ascii_case(b"LAST") => true,
        Some(_) => return Err(BDAT_SYNTAX),
    };
    if words.next().is_some() {
        return Err(BDAT_SYNTAX);
    }
    Ok(Command::Bdat { size, last })
}

fn skip_spaces(s: &[u8]) -> &[u8] {
    let n = s.iter().take_while(|&&b| b == b' ').count();
    &s[n..]
}

fn no_args(args: &[u8], cmd: Command<'static>) -> Result<Command<'static>, CommandError> {
    if args.is_empty() {
        Ok(cmd)
    } else {
        Err(NO_ARGUMENTS)
    }
}

/// HELO/EHLO argument: one token of printable characters. Deliberately not
/// checked as a domain: clients send all sorts, and it is only logged.
fn hostname(args: &[u8]) -> Option<&str> {
    if args.is_empty() || args.iter().any(|&b| b < 0x21 || b == 0x7f) {
        return None;
    }
    let text = std::str::from_utf8(args).ok()?;
    if !text.is_ascii() && text.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return None;
    }
    Some(text)
}

/// `prefix` (case-insensitive) at the start of `args`, then optional spaces.
fn after_prefix<'a>(args: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    let head = args.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| skip_spaces(&args[prefix.len()..]))
}

fn mail(args: &[u8]) -> Result<Command<'_>, CommandError> {
    let rest = after_prefix(args, b"FROM:").ok_or(MAIL_SYNTAX)?;
    let (path, rest) = parse_reverse_path(rest).map_err(|e| CommandError::Syntax(e.0))?;
    let mut params = MailParams::default();
    let mut body_seen = false;
    for (keyword, value) in params_of(rest)? {
        if keyword.eq_ignore_ascii_case(b"SIZE") {
            if params.size.is_some() {
                return Err(DUPLICATE);
            }
            params.size = Some(size_value(value)?);
        } else if keyword.eq_ignore_ascii_case(b"BODY") {
            if body_seen {
                return Err(DUPLICATE);
            }
            body_seen = true;
            params.body = match value {
                Some(v) if v.eq_ignore_ascii_case(b"7BIT") => BodyType::SevenBit,
                Some(v) if v.eq_ignore_ascii_case(b"8BITMIME") => BodyType::EightBitMime,
                Some(v) if v.eq_ignore_ascii_case(b"BINARYMIME") => {
                    return Err(CommandError::UnknownParameter(
                        "BODY=BINARYMIME not supported",
                    ))
                }
                _ => return Err(BAD_BODY),
            };
        } else if keyword.eq_ignore_ascii_case(b"SMTPUTF8") {
            if params.smtputf8 {
                return Err(DUPLICATE);
            }
            if value.is_some() {
                return Err(BAD_SMTPUTF8);
            }
            params.smtputf8 = true;
        } else if keyword.eq_ignore_ascii_case(b"RET") {
            if params.ret.is_some() {
                return Err(DUPLICATE);
            }
            params.ret = Some(value.and_then(Ret::parse).ok_or(BAD_RET)?);
        } else if keyword.eq_ignore_ascii_case(b"ENVID") {
            if params.envid.is_some() {
                return Err(DUPLICATE);
            }
            let envid = value.and_then(dsn::xtext_decode).ok_or(BAD_ENVID)?;
            if envid.len() > MAX_ENVID {
                return Err(BAD_ENVID);
            }
            params.envid = Some(envid);
        } else {
            return Err(unsupported(keyword));
        }
    }
    Ok(Command::Mail { path, params })
}

fn rcpt(args: &[u8]) -> Result<Command<'_>, CommandError> {
    let rest = after_prefix(args, b"TO:").ok_or(RCPT_SYNTAX)?;
    let (path, rest) = parse_forward_path(rest).map_err(|e| CommandError::Syntax(e.0))?;
    let mut params = RcptParams::default();
    for (keyword, value) in params_of(rest)? {
        if keyword.eq_ignore_ascii_case(b"NOTIFY") {
            if params.notify.is_some() {
                return Err(DUPLICATE);
            }
            params.notify = Some(value.and_then(Notify::parse).ok_or(BAD_NOTIFY)?);
        } else if keyword.eq_ignore_ascii_case(b"ORCPT") {
            if params.orcpt.is_some() {
                return Err(DUPLICATE);
            }
            let orcpt = value.and_then(dsn::orcpt).ok_or(BAD_ORCPT)?;
            if orcpt.len() > MAX_ORCPT {
                return Err(BAD_ORCPT);
            }
            params.orcpt = Some(orcpt);
        } else {
            return Err(unsupported(keyword));
        }
    }
    Ok(Command::Rcpt { path, params })
}

/// RFC 1870 `1*20DIGIT`. A valid value beyond `u64` saturates: it is over
/// any limit anyway, and that is a 552, not a syntax error.
fn size_value(value: Option<&[u8]>) -> Result<u64, CommandError> {
    match value {
        Some(v) if (1..=20).contains(&v.len()) && v.iter().all(u8::is_ascii_digit) => {
            Ok(v.iter().fold(0u64, |n, &d| {
                n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
            }))
        }
        _ => Err(BAD_SIZE),
    }
}

fn unsupported(keyword: &[u8]) -> CommandError {
    let known: [(&[u8], &'static str); 5] = [
        (b"RET", "RET belongs to MAIL"),
        (b"ENVID", "ENVID belongs to MAIL"),
        (b"NOTIFY", "NOTIFY belongs to RCPT"),
        (b"ORCPT", "ORCPT belongs to RCPT"),
        (b"AUTH", "AUTH not supported"),
    ];
    let text = known
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(keyword))
        .map_or("Unsupported parameter", |&(_, text)| text);
    CommandError::UnknownParameter(text)
}

/// The `keyword[=value]` list after a path, checked for RFC 5321 4.1.2
/// syntax (`esmtp-keyword`, `esmtp-value`) before any keyword is judged.
/// Validation is eager so a malformed list fails before an unknown keyword
/// in it can.
fn params_of(rest: &[u8]) -> Result<ParamIter<'_>, CommandError> {
    if !rest.is_empty() && rest[0] != b' ' {
        return Err(BAD_PARAM);
    }
    for token in rest.split(|&b| b == b' ').filter(|t| !t.is_empty()) {
        let (keyword, value) = split_param(token);
        let keyword_ok = keyword.first().is_some_and(u8::is_ascii_alphanumeric)
            && keyword
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || b == b'-');
        let value_ok = value.is_none_or(|v| {
            !v.is_empty()
                && v.iter()
                    .all(|&b| matches!(b, 33..=60 | 62..=126) || b >= 0x80)
        });
        if !keyword_ok || !value_ok {
            return Err(BAD_PARAM);
        }
    }
    Ok(ParamIter { rest })
}

fn split_param(token: &[u8]) -> (&[u8], Option<&[u8]>) {
    match memchr::memchr(b'=', token) {
        Some(k) => (&token[..k], Some(&token[k + 1..])),
        None => (token, None),
    }
}

/// `(keyword, value)` pairs of an already validated parameter list.
struct ParamIter<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for ParamIter<'a> {
    type Item = (&'a [u8], Option<&'a [u8]>);

    fn next(&mut self) -> Option<Self::Item> {
        let rest = skip_spaces(self.rest);
        if rest.is_empty() {
            return None;
        }
        let end = memchr::memchr(b' ', rest).unwrap_or(rest.len());
        self.rest = &rest[end..];
        Some(split_param(&rest[..end]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::address::{Domain, Mailbox, Path};
    use CommandError::{Syntax, Unknown, UnknownParameter};

    fn p(local: &str, domain: &str) -> Path {
        Path {
            route: vec![],
            mailbox: Mailbox {
                local: local.to_owned(),
                domain: Domain::Name(domain.to_owned()),
            },
        }
    }

    fn mail(
        path: ReversePath,
        size: Option<u64>,
        body: BodyType,
        smtputf8: bool,
    ) -> Command<'static> {
        Command::Mail {
            path,
            params: MailParams {
                size,
                body,
                smtputf8,
                ..MailParams::default()
            },
        }
    }

    fn mail_ab() -> ReversePath {
        ReversePath::Path(p("a", "b"))
    }

    #[test]
    fn table() {
        use BodyType::{EightBitMime, SevenBit};
        let rcpt_ab = Command::Rcpt {
            path: ForwardPath::Path(p("a", "b")),
            params: RcptParams::default(),
        };
        #[rustfmt::skip]
        let cases: Vec<(&[u8], Result<Command, CommandError>)> = vec![
            (b"HELO example.org", Ok(Command::Helo("example.org"))),
            (b"helo example.org  ", Ok(Command::Helo("example.org"))),
            (b"HELO  example.org", Ok(Command::Helo("example.org"))),
            (b"EHLO [192.0.2.1]", Ok(Command::Ehlo("[192.0.2.1]"))),
            (b"eHlO x_y!", Ok(Command::Ehlo("x_y!"))),
            ("EHLO bücher.example".as_bytes(), Ok(Command::Ehlo("bücher.example"))),
            (b"HELO", Err(HELO_SYNTAX)),
            (b"HELO   ", Err(HELO_SYNTAX)),
            (b"EHLO", Err(EHLO_SYNTAX)),
            (b"EHLO a b", Err(EHLO_SYNTAX)),
            (b"EHLO a\tb", Err(EHLO_SYNTAX)),
            (b"EHLO a\x00b", Err(EHLO_SYNTAX)),
            (b"EHLO \xff", Err(BAD_UTF8)),
            (b"MAIL FROM:<a@b>", Ok(mail(mail_ab(), None, SevenBit, false))),
            (b"mail from:<a@b>", Ok(mail(mail_ab(), None, SevenBit, false))),
            (b"MAIL FROM: <a@b>", Ok(mail(mail_ab(), None, SevenBit, false))),
            (b"MAIL FROM:<a@b> ", Ok(mail(mail_ab(), None, SevenBit, false))),
            (b"MAIL FROM:<>", Ok(mail(ReversePath::Null, None, SevenBit, false))),
            (b"MAIL FROM:<> SIZE=0", Ok(mail(ReversePath::Null, Some(0), SevenBit, false))),
            (b"MAIL FROM:<a@b> SIZE=1000 BODY=8BITMIME SMTPUTF8",
             Ok(mail(mail_ab(), Some(1000), EightBitMime, true))),
            (b"MAIL FROM:<a@b>  size=12   body=7bit  smtputf8",
             Ok(mail(mail_ab(), Some(12), SevenBit, true))),
            (b"MAIL FROM:<a@b> BODY=8bitmime", Ok(mail(mail_ab(), None, EightBitMime, false))),
            (b"MAIL FROM:<a@b> SIZE=18446744073709551615",
             Ok(mail(mail_ab(), Some(u64::MAX), SevenBit, false))),
            (b"MAIL FROM:<a@b> SIZE=99999999999999999999",
             Ok(mail(mail_ab(), Some(u64::MAX), SevenBit, false))),
            (b"MAIL FROM:<a@b> SIZE=999999999999999999999", Err(BAD_SIZE)),
            (b"MAIL FROM:<a@b> SIZE=", Err(BAD_PARAM)),
            (b"MAIL FROM:<a@b> SIZE", Err(BAD_SIZE)),
            (b"MAIL FROM:<a@b> SIZE=-1", Err(BAD_SIZE)),
            (b"MAIL FROM:<a@b> SIZE=1k", Err(BAD_SIZE)),
            (b"MAIL FROM:<a@b> SIZE=1 SIZE=2", Err(DUPLICATE)),
            (b"MAIL FROM:<a@b> BODY=7BIT body=8BITMIME", Err(DUPLICATE)),
            (b"MAIL FROM:<a@b> SMTPUTF8 SMTPUTF8", Err(DUPLICATE)),
            (b"MAIL FROM:<a@b> BODY=BINARYMIME", Err(UnknownParameter("BODY=BINARYMIME not supported"))),
            (b"MAIL FROM:<a@b> BODY=9BIT", Err(BAD_BODY)),
            (b"MAIL FROM:<a@b> BODY", Err(BAD_BODY)),
            (b"MAIL FROM:<a@b> SMTPUTF8=yes", Err(BAD_SMTPUTF8)),
            (b"MAIL FROM:<a@b> RET=FULL ENVID=x+2By", Ok(Command::Mail { path: mail_ab(), params: MailParams { ret: Some(Ret::Full), envid: Some("x+y".into()), ..MailParams::default() } })),
            (b"MAIL FROM:<a@b> RET=hdrs", Ok(Command::Mail { path: mail_ab(), params: MailParams { ret: Some(Ret::Hdrs), ..MailParams::default() } })),
            (b"MAIL FROM:<a@b> RET=ALL", Err(BAD_RET)),
            (b"MAIL FROM:<a@b> RET=FULL RET=HDRS", Err(DUPLICATE)),
            (b"MAIL FROM:<a@b> ENVID=a+zz", Err(BAD_ENVID)),
            (b"MAIL FROM:<a@b> ENVID=x ENVID=y", Err(DUPLICATE)),
            (b"MAIL FROM:<a@b> NOTIFY=NEVER", Err(UnknownParameter("NOTIFY belongs to RCPT"))),
            (b"MAIL FROM:<a@b> AUTH=<>", Err(UnknownParameter("AUTH not supported"))),
            (b"MAIL FROM:<a@b> X-FOO", Err(UnknownParameter("Unsupported parameter"))),
            // Parameters are judged in order, after the whole list's syntax.
            (b"MAIL FROM:<a@b> X-FOO=1 SIZE=x", Err(UnknownParameter("Unsupported parameter"))),
            (b"MAIL FROM:<a@b> SIZE=x X-FOO=1", Err(BAD_SIZE)),
            (b"MAIL FROM:<a@b> X-FOO=1 =x", Err(BAD_PARAM)),
            (b"MAIL FROM:<a@b> =1", Err(BAD_PARAM)),
            (b"MAIL FROM:<a@b> -X", Err(BAD_PARAM)),
            (b"MAIL FROM:<a@b> X=a=b", Err(BAD_PARAM)),
            (b"MAIL FROM:<a@b> X=a\x01", Err(BAD_PARAM)),
            (b"MAIL FROM:<a@b>SIZE=1", Err(BAD_PARAM)),
            (b"MAIL FROM:<a@b", Err(Syntax("Address must be in angle brackets"))),
            (b"MAIL FROM:a@b", Err(Syntax("Address must be in angle brackets"))),
            (b"MAIL FROM:<a@b.>", Err(Syntax("Bad domain"))),
            (b"MAIL FROM:<a@b@c>", Err(Syntax("Bad address syntax"))),
            (b"MAIL FROM:<a@b> \xff", Err(BAD_UTF8)),
            (b"MAIL", Err(MAIL_SYNTAX)),
            (b"MAIL FROM", Err(MAIL_SYNTAX)),
            (b"MAIL TO:<a@b>", Err(MAIL_SYNTAX)),
            (b"MAIL FROM :<a@b>", Err(MAIL_SYNTAX)),
            (b"MAILFROM:<a@b>", Err(Unknown)),
            (b"RCPT TO:<a@b>", Ok(rcpt_ab.clone())),
            (b"rcpt to: <a@b>  ", Ok(rcpt_ab.clone())),
            (b"RCPT TO:<postmaster>", Ok(Command::Rcpt { path: ForwardPath::Postmaster, params: RcptParams::default() })),
            (b"RCPT TO:<>", Err(Syntax("Null address not allowed here"))),
            (b"RCPT TO:<a@b> NOTIFY=NEVER", Ok(Command::Rcpt { path: ForwardPath::Path(p("a", "b")), params: RcptParams { notify: Some(Notify::default()), orcpt: None } })),
            (b"RCPT TO:<a@b> ORCPT=rfc822;a+2B1@b NOTIFY=SUCCESS,FAILURE", Ok(Command::Rcpt { path: ForwardPath::Path(p("a", "b")), params: RcptParams { notify: Some(Notify { success: true, failure: true, delay: false }), orcpt: Some("rfc822;a+1@b".into()) } })),
            (b"RCPT TO:<a@b> NOTIFY=NEVER,DELAY", Err(BAD_NOTIFY)),
            (b"RCPT TO:<a@b> NOTIFY=DELAY NOTIFY=DELAY", Err(DUPLICATE)),
            (b"RCPT TO:<a@b> ORCPT=a@b", Err(BAD_ORCPT)),
            (b"RCPT TO:<a@b> RET=FULL", Err(UnknownParameter("RET belongs to MAIL"))),
            (b"RCPT TO:<a@b> SIZE=1", Err(UnknownParameter("Unsupported parameter"))),
            (b"RCPT TO:<a@b> =x", Err(BAD_PARAM)),
            (b"RCPT FROM:<a@b>", Err(RCPT_SYNTAX)),
            (b"RCPT", Err(RCPT_SYNTAX)),
            (b"DATA", Ok(Command::Data)),
            (b"BDAT 0 LAST", Ok(Command::Bdat { size: 0, last: true })),
            (b"bdat 1000", Ok(Command::Bdat { size: 1000, last: false })),
            (b"BDAT  42  last", Ok(Command::Bdat { size: 42, last: true })),
            (b"BDAT", Err(CommandError::Syntax("Syntax: BDAT size [LAST]"))),
            (b"BDAT -1", Err(CommandError::Syntax("Syntax: BDAT size [LAST]"))),
            (b"BDAT 1x", Err(CommandError::Syntax("Syntax: BDAT size [LAST]"))),
            (b"BDAT 10 FIRST", Err(CommandError::Syntax("Syntax: BDAT size [LAST]"))),
            (b"BDAT 10 LAST x", Err(CommandError::Syntax("Syntax: BDAT size [LAST]"))),
            (b"BDAT 99999999999999999999", Err(CommandError::Syntax("Syntax: BDAT size [LAST]"))),
            (b"data ", Ok(Command::Data)),
            (b"DATA x", Err(NO_ARGUMENTS)),
            (b"RSET", Ok(Command::Rset)),
            (b"RSET x", Err(NO_ARGUMENTS)),
            (b"QUIT", Ok(Command::Quit)),
            (b"quit now", Err(NO_ARGUMENTS)),
            (b"NOOP", Ok(Command::Noop)),
            (b"NOOP anything at all", Ok(Command::Noop)),
            (b"NOOP \xff", Err(BAD_UTF8)),
            (b"HELP", Ok(Command::Help)),
            (b"help mail", Ok(Command::Help)),
            (b"VRFY user", Ok(Command::Vrfy)),
            (b"VRFY <a@b>", Ok(Command::Vrfy)),
            (b"VRFY", Err(VRFY_SYNTAX)),
            (b"EXPN", Ok(Command::NotImplemented("EXPN"))),
            (b"expn list", Ok(Command::NotImplemented("EXPN"))),
            (b"TURN", Ok(Command::NotImplemented("TURN"))),
            (b"SEND FROM:<a@b>", Ok(Command::NotImplemented("SEND"))),
            (b"soml FROM:<a@b>", Ok(Command::NotImplemented("SOML"))),
            (b"SAML", Ok(Command::NotImplemented("SAML"))),
            (b"STARTTLS", Ok(Command::StartTls)),
            (b"starttls", Ok(Command::StartTls)),
            (b"STARTTLS now", Err(NO_ARGUMENTS)),
            (b"AUTH PLAIN", Ok(Command::Auth { mechanism: "PLAIN", initial: None })),
            (b"auth login dXNlcg==", Ok(Command::Auth { mechanism: "login", initial: Some("dXNlcg==") })),
            (b"AUTH PLAIN =", Ok(Command::Auth { mechanism: "PLAIN", initial: Some("=") })),
            (b"AUTH", Err(Syntax("Syntax: AUTH mechanism [initial-response]"))),
            (b"AUTH PLAIN a b", Err(Syntax("Syntax: AUTH mechanism [initial-response]"))),
            (b"", Err(Unknown)),
            (b"   ", Err(Unknown)),
            (b" HELO x", Err(Unknown)),
            (b"HELO\tx", Err(Unknown)),
            (b"DATAX", Err(Unknown)),
            (b"DAT", Err(Unknown)),
            (b"GET / HTTP/1.1", Err(Unknown)),
            (b"\xff\xfe\xfd\xfc", Err(Unknown)),
            (b"H\xc3\xa9LO x", Err(Unknown)),
        ];
        for (line, want) in cases {
            assert_eq!(parse(line), want, "{:?}", String::from_utf8_lossy(line));
        }
    }

    #[test]
    fn utf8_path_is_left_to_the_caller() {
        let Ok(Command::Mail {
            path: ReversePath::Path(path),
            params,
        }) = parse("MAIL FROM:<jörg@bücher.example>".as_bytes())
        else {
            panic!()
        };
        assert!(!path.is_ascii());
        assert!(!params.smtputf8);
    }

    #[test]
    fn source_route_in_rcpt() {
        let Ok(Command::Rcpt {
            path: ForwardPath::Path(path),
            ..
        }) = parse(b"RCPT TO:<@ONE,@TWO:user@THREE>")
        else {
            panic!()
        };
        assert_eq!(path.route, ["ONE", "TWO"]);
        assert_eq!(path.to_string(), "@ONE,@TWO:user@THREE");
    }

    #[test]
    fn helo_borrows_from_the_line() {
        let line = b"EHLO client.example".to_vec();
        let Ok(Command::Ehlo(name)) = parse(&line) else {
            panic!()
        };
        assert_eq!(name.as_ptr(), line[5..].as_ptr());
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;

    /// A known verb (any case) and then bytes shaped like arguments.
    fn command_like() -> impl Strategy<Value = Vec<u8>> {
        let verb = prop_oneof![
            Just("HELO "),
            Just("EHLO "),
            Just("MAIL FROM:"),
            Just("mail from: "),
            Just("RCPT TO:"),
            Just("rcpt to:"),
            Just("DATA"),
            Just("RSET"),
            Just("NOOP "),
            Just("VRFY "),
            Just("QUIT"),
            Just("EXPN "),
        ];
        let piece = prop_oneof![
            Just(b"<".to_vec()),
            Just(b">".to_vec()),
            Just(b"<>".to_vec()),
            Just(b"@".to_vec()),
            Just(b" ".to_vec()),
            Just(b"=".to_vec()),
            Just(b"SIZE=".to_vec()),
            Just(b"BODY=".to_vec()),
            Just(b"8BITMIME".to_vec()),
            Just(b"SMTPUTF8".to_vec()),
            Just(b"a@b".to_vec()),
            Just(b"99999999999999999999999".to_vec()),
            "[a-z0-9.:,]{1,4}".prop_map(String::into_bytes),
            any::<u8>().prop_map(|b| vec![b]),
        ];
        (verb, prop::collection::vec(piece, 0..20)).prop_map(|(verb, rest)| {
            let mut line = verb.as_bytes().to_vec();
            line.extend(rest.concat());
            line
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn never_panics_on_arbitrary_bytes(line in prop::collection::vec(any::<u8>(), 0..600)) {
            let _ = parse(&line);
        }

        #[test]
        fn never_panics_on_command_like_lines(line in command_like()) {
            match parse(&line) {
                // A path that parsed shows itself without line breaks.
                Ok(Command::Mail { path: ReversePath::Path(p), .. }) => {
                    prop_assert!(!p.to_string().contains(['\r', '\n']));
                }
                Ok(Command::Rcpt { path: ForwardPath::Path(p), .. }) => {
                    prop_assert!(!p.to_string().contains(['\r', '\n']));
                }
                Ok(Command::Helo(name) | Command::Ehlo(name)) => {
                    prop_assert!(!name.is_empty());
                    prop_assert!(!name.contains(['\r', '\n', ' ', '\0']));
                }
                _ => {}
            }
        }

        #[test]
        fn verbs_are_case_insensitive(line in command_like(), mask in any::<u64>()) {
            let flipped: Vec<u8> = line
                .iter()
                .enumerate()
                .map(|(i, &b)| if i < 4 && mask >> i & 1 == 1 { b.to_ascii_lowercase() } else { b })
                .collect();
            prop_assert_eq!(parse(&line).is_ok(), parse(&flipped).is_ok());
        }
    }
}

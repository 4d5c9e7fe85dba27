//! The sendmail command line, as Postfix's `sendmail` reads it: getopt
//! style (`-ti`, `-fsender` or `-f sender`), options anywhere until `--`,
//! the rest recipients. Options that only make sense for another mailer
//! are accepted and ignored as Postfix does; the ones naming work this
//! program does elsewhere say where.

use std::path::PathBuf;

use crate::smtp::dsn::{Notify, Ret};

/// What to do with standard input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// `-bm`: read one message, queue it.
    #[default]
    Deliver,
    /// `-bs`: an SMTP session on standard input and output.
    Smtp,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Options {
    pub mode: Mode,
    /// `-t`: recipients also from the To, Cc and Bcc header fields.
    pub extract: bool,
    /// `-i`, `-oi`: a line with a lone `.` is text, not the end.
    pub ignore_dots: bool,
    /// `-f`/`-r`, as given (`""` or `<>` is the null sender).
    pub sender: Option<String>,
    /// `-F`: the full name of a `From:` we add.
    pub full_name: Option<String>,
    /// `-v`: say the queue ID on stderr.
    pub verbose: bool,
    /// `-C`, `--config`.
    pub config: Option<PathBuf>,
    /// `-N` (RFC 3461 NOTIFY), `-R` (RET), `-V` (ENVID).
    pub notify: Option<Notify>,
    pub ret: Option<Ret>,
    pub envid: Option<String>,
    /// `-B 8BITMIME`.
    pub eight_bit: bool,
    /// The arguments after the options, each maybe a comma list.
    pub recipients: Vec<String>,
    /// `--help`.
    pub help: bool,
}

/// Options that take a value, in the next argument or glued on (`-fx`).
const WITH_VALUE: &[u8] = b"BCFLNORVXbefhopqr";

/// Options with a value that change nothing here: `-L` (syslog name),
/// `-O` (sendmail.cf option), `-X` (traffic log), `-e` (error mode),
/// `-h` (hop count), `-p` (protocol).
const IGNORED_WITH_VALUE: &[u8] = b"LOXehp";

/// Flags that change nothing here: `-G` (gateway submission), `-U`
/// (initial user submission), `-m` (send to me too), `-n` (no aliasing).
const IGNORED_FLAGS: &[u8] = b"GUmn";

pub const USAGE: &str = "usage: sendmail [-t] [-i] [-f sender] [-F name] [-bs|-bm] [-v] [-C config] [-N dsn] [-R ret] [-V envid] [--] [recipient ...]";

/// Parses the arguments after the program name. The error is a one-line
/// explanation for `sendmail: ...` (exit 64).
pub fn parse(args: &[String]) -> Result<Options, String> {
    let mut options = Options::default();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        if arg == "--" {
            options.recipients.extend(args.by_ref().cloned());
            break;
        }
        if arg == "-" {
            return Err("unknown option -".to_string());
        }
        if let Some(long) = arg.strip_prefix("--") {
            long_option(long, &mut args, &mut options)?;
            continue;
        }
        let Some(cluster) = arg.strip_prefix('-').filter(|c| !c.is_empty()) else {
            options.recipients.push(arg.clone());
            continue;
        };
        let bytes = cluster.as_bytes();
        for (i, &letter) in bytes.iter().enumerate() {
            if !letter.is_ascii_alphanumeric() {
                return Err(format!("unknown option -{}", &cluster[i..]));
            }
            if WITH_VALUE.contains(&letter) {
                let glued = &cluster[i + 1..];
                let value = if glued.is_empty() {
                    args.next()
                        .ok_or_else(|| format!("option -{} needs a value", letter as char))?
                        .clone()
                } else {
                    glued.to_string()
                };
                with_value(letter, value, &mut options)?;
                break;
            }
            flag(letter, &mut options)?;
        }
    }
    Ok(options)
}

fn long_option<'a>(
    long: &str,
    args: &mut impl Iterator<Item = &'a String>,
    options: &mut Options,
) -> Result<(), String> {
    let (name, glued) = match long.split_once('=') {
        Some((name, value)) => (name, Some(value.to_string())),
        None => (long, None),
    };
    match name {
        "help" if glued.is_none() => options.help = true,
        "config" => {
            let value = match glued {
                Some(value) => value,
                None => args.next().ok_or("option --config needs a value")?.clone(),
            };
            options.config = Some(PathBuf::from(value));
        }
        _ => return Err(format!("unknown option --{long}")),
    }
    Ok(())
}

fn flag(letter: u8, options: &mut Options) -> Result<(), String> {
    match letter {
        b't' => options.extract = true,
        b'i' => options.ignore_dots = true,
        b'v' => options.verbose = true,
        _ if IGNORED_FLAGS.contains(&letter) => {}
        b'I' => return Err(elsewhere("-I", "there are no aliases to rebuild")),
        _ => return Err(format!("unknown option -{}", letter as char)),
    }
    Ok(())
}

fn with_value(letter: u8, value: String, options: &mut Options) -> Result<(), String> {
    match letter {
        b'f' | b'r' => options.sender = Some(value),
        b'F' => options.full_name = Some(value),
        b'C' => options.config = Some(PathBuf::from(value)),
        b'b' => options.mode = mode(&value)?,
        // `-oi` is `-i`; every other sendmail.cf option (`-oem`, `-odi`,
        // `-oee`, ...) says how another mailer should behave.
        b'o' if value == "i" => options.ignore_dots = true,
        b'o' => {}
        b'B' if value.eq_ignore_ascii_case("8BITMIME") => options.eight_bit = true,
        b'B' if value.eq_ignore_ascii_case("7BIT") => options.eight_bit = false,
        b'B' => return Err(format!("-B {value}: the body type is 7BIT or 8BITMIME")),
        b'N' => {
            let notify = Notify::parse(value.as_bytes()).ok_or_else(|| {
                format!("-N {value}: give never, or a list of success, delay and failure")
            })?;
            options.notify = Some(notify);
        }
        b'R' => {
            let ret = Ret::parse(value.as_bytes())
                .ok_or_else(|| format!("-R {value}: give full or hdrs"))?;
            options.ret = Some(ret);
        }
        b'V' => {
            // RFC 3461 4.4: printable ASCII, at most 100 characters.
            let printable = value.bytes().all(|b| (b' '..=b'~').contains(&b));
            if value.is_empty() || value.len() > 100 || !printable {
                return Err(format!(
                    "-V {value:?}: an envelope ID is 1 to 100 printable ASCII characters"
                ));
            }
            options.envid = Some(value);
        }
        b'q' => return Err(elsewhere("-q", "run `mailhop queue retry --all`")),
        _ if IGNORED_WITH_VALUE.contains(&letter) => {}
        _ => return Err(format!("unknown option -{}", letter as char)),
    }
    Ok(())
}

fn mode(value: &str) -> Result<Mode, String> {
    match value {
        "m" => Ok(Mode::Deliver),
        "s" => Ok(Mode::Smtp),
        "d" => Err(elsewhere("-bd", "run `mailhop serve`")),
        "p" => Err(elsewhere("-bp", "run `mailhop queue list`")),
        "i" => Err(elsewhere("-bi", "there are no aliases to rebuild")),
        _ => Err(format!("-b{value}: unknown mode (-bm and -bs are known)")),
    }
}

fn elsewhere(option: &str, instead: &str) -> String {
    format!("{option} is not done by mailhop sendmail: {instead}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_line(line: &str) -> Result<Options, String> {
        let args: Vec<String> = line.split_whitespace().map(String::from).collect();
        parse(&args)
    }

    #[test]
    fn what_cron_git_mutt_and_php_send() {
        // cronie / vixie cron.
        let cron = parse_line("-FCronDaemon -i -B8BITMIME -oem root").unwrap();
        assert_eq!(cron.full_name.as_deref(), Some("CronDaemon"));
        assert!(cron.ignore_dots && cron.eight_bit);
        assert_eq!(cron.recipients, ["root"]);
        // mutt, git send-email, PHP mail().
        let mutt = parse_line("-oem -oi -f a@b.example -- rcpt@c.example -x@d").unwrap();
        assert!(mutt.ignore_dots);
        assert_eq!(mutt.sender.as_deref(), Some("a@b.example"));
        assert_eq!(mutt.recipients, ["rcpt@c.example", "-x@d"]);
        let git = parse_line("-i a@x.example,b@y.example").unwrap();
        assert_eq!(git.recipients, ["a@x.example,b@y.example"]);
        let php = parse_line("-t -i").unwrap();
        assert!(php.extract && php.ignore_dots && php.recipients.is_empty());
        assert_eq!(php.mode, Mode::Deliver);
    }

    #[test]
    fn clusters_glued_values_and_options_after_recipients() {
        let o = parse_line("-tif sender@x.example r@y.example -v -Fname -odb").unwrap();
        assert!(o.extract && o.ignore_dots && o.verbose);
        assert_eq!(o.sender.as_deref(), Some("sender@x.example"));
        assert_eq!(o.full_name.as_deref(), Some("name"));
        assert_eq!(o.recipients, ["r@y.example"]);
        assert_eq!(
            parse_line("-fme@x").unwrap().sender.as_deref(),
            Some("me@x")
        );
        assert_eq!(
            parse_line("-r me@x").unwrap().sender.as_deref(),
            Some("me@x")
        );
        // The null sender, both ways.
        let null = parse(&["-f".into(), "".into(), "r@x".into()]).unwrap();
        assert_eq!(null.sender.as_deref(), Some(""));
        assert_eq!(parse_line("-f <>").unwrap().sender.as_deref(), Some("<>"));
        // A full name with spaces is one argument.
        let named = parse(&["-F".into(), "Ada Lovelace".into()]).unwrap();
        assert_eq!(named.full_name.as_deref(), Some("Ada Lovelace"));
    }

    #[test]
    fn modes_config_and_ignored_options() {
        assert_eq!(parse_line("-bs").unwrap().mode, Mode::Smtp);
        assert_eq!(parse_line("-bs -bm").unwrap().mode, Mode::Deliver);
        let o = parse_line(
            "-C /etc/x.toml -oeq -odi -oee -oAfile -B 7BIT -U -G -m -n -h 30 -L x -e m -p smtp r@x",
        )
        .unwrap();
        assert_eq!(o.config, Some(PathBuf::from("/etc/x.toml")));
        assert!(!o.ignore_dots && !o.eight_bit);
        assert_eq!(o.recipients, ["r@x"]);
        assert_eq!(
            parse_line("--config=/a.toml").unwrap().config,
            Some(PathBuf::from("/a.toml"))
        );
        assert_eq!(
            parse_line("--config /b.toml").unwrap().config,
            Some(PathBuf::from("/b.toml"))
        );
        assert!(parse_line("--help").unwrap().help);
    }

    #[test]
    fn dsn_options_map_to_the_queue_parameters() {
        let o = parse_line("-N success,delay,failure -R hdrs -V env-42 r@x").unwrap();
        assert_eq!(
            o.notify,
            Some(Notify {
                success: true,
                failure: true,
                delay: true
            })
        );
        assert_eq!(o.ret, Some(Ret::Hdrs));
        assert_eq!(o.envid.as_deref(), Some("env-42"));
        assert_eq!(
            parse_line("-Nnever").unwrap().notify,
            Some(Notify::default())
        );
        assert_eq!(parse_line("-R FULL").unwrap().ret, Some(Ret::Full));
        assert!(parse_line("-N sometimes").is_err());
        assert!(parse_line("-R body").is_err());
        assert!(parse(&["-V".into(), "é".into()]).is_err());
    }

    #[test]
    fn unknown_and_misplaced_options_are_usage_errors() {
        for (line, says) in [
            ("-k", "unknown option -k"),
            ("-tk", "unknown option -k"),
            ("--verbose", "unknown option --verbose"),
            ("-f", "option -f needs a value"),
            ("--config", "option --config needs a value"),
            ("-bp", "mailhop queue list"),
            ("-bd", "mailhop serve"),
            ("-bx", "unknown mode"),
            ("-q", "needs a value"),
            ("-q1h", "mailhop queue retry"),
            ("-B base64", "7BIT or 8BITMIME"),
            ("-I", "aliases"),
        ] {
            let err = parse_line(line).unwrap_err();
            assert!(err.contains(says), "{line}: {err}");
        }
        // A lone "-" is not an option letter either.
        assert!(parse_line("-").unwrap_err().contains("unknown option"));
    }
}

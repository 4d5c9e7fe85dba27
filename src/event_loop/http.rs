//! The metrics endpoint on the loop: `GET /metrics` and `GET /healthz`,
//! one request per connection, each connection bounded in bytes, time and
//! number, so a slow or huge request costs SMTP sessions nothing.

use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use log::debug;
use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Token};

use super::{Server, HTTP_BASE};

/// A request (line and headers) larger than this is refused with 431.
const MAX_REQUEST: usize = 8 * 1024;
/// Scrapers at once; more are closed at accept.
pub(super) const MAX_HTTP_CONNS: usize = 16;
/// From accept to the last byte of the answer.
const HTTP_DEADLINE: Duration = Duration::from_secs(10);
/// `Server::oldest_pending` is asked of the queue at most this often.
const OLDEST_EVERY: Duration = Duration::from_secs(5);

pub(super) struct HttpConn {
    stream: TcpStream,
    request: Vec<u8>,
    response: Vec<u8>,
    written: usize,
    deadline: Instant,
}

/// What a request gets: status line and body.
struct Answer {
    status: &'static str,
    content_type: &'static str,
    extra: &'static str,
    body: Vec<u8>,
}

impl Answer {
    fn text(status: &'static str, body: &str) -> Answer {
        Answer {
            status,
            content_type: "text/plain; charset=utf-8",
            extra: "",
            body: body.as_bytes().to_vec(),
        }
    }
}

/// The endpoint's listener and connections.
pub(super) struct Http {
    pub(super) listener: Option<TcpListener>,
    pub(super) conns: slab::Slab<HttpConn>,
    /// The oldest pending message's arrival, and when that was asked.
    oldest: Option<(Instant, Option<std::time::SystemTime>)>,
}

impl Http {
    pub(super) fn new(listener: Option<TcpListener>) -> Http {
        Http {
            listener,
            conns: slab::Slab::new(),
            oldest: None,
        }
    }

    /// The earliest deadline of a connection (a handful at most).
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.conns.iter().map(|(_, c)| c.deadline).min()
    }
}

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Wanted {
    /// `HEAD`: the answer without its body.
    head: bool,
    page: Page,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Page {
    Health,
    /// `openmetrics`: the scraper's `Accept` asks for OpenMetrics.
    Metrics {
        openmetrics: bool,
    },
}

/// What a request asks for; `None` while the request is incomplete.
/// Only `GET` (and `HEAD`) of two paths exist.
fn route(request: &[u8]) -> Option<Result<Wanted, Answer>> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(request) {
        Ok(httparse::Status::Partial) => None,
        Err(e) => Some(Err(Answer::text(
            "400 Bad Request",
            &format!("bad request: {e}\n"),
        ))),
        Ok(httparse::Status::Complete(_)) => {
            let head = match req.method {
                Some("GET") => false,
                Some("HEAD") => true,
                _ => {
                    return Some(Err(Answer {
                        extra: "Allow: GET, HEAD\r\n",
                        ..Answer::text("405 Method Not Allowed", "only GET\n")
                    }))
                }
            };
            let path = req.path.unwrap_or("/");
            let path = path.split('?').next().unwrap_or(path);
            let openmetrics = req.headers.iter().any(|h| {
                h.name.eq_ignore_ascii_case("accept")
                    && String::from_utf8_lossy(h.value).contains("application/openmetrics-text")
            });
            let page = match path {
                "/metrics" => Page::Metrics { openmetrics },
                "/healthz" => Page::Health,
                _ => return Some(Err(Answer::text("404 Not Found", "not found\n"))),
            };
            Some(Ok(Wanted { head, page }))
        }
    }
}

impl Server {
    pub(super) fn http_accept(&mut self) {
        loop {
            let Some(listener) = &self.http.listener else {
                return;
            };
            let (mut stream, addr) = match listener.accept() {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    debug!("metrics accept: {e}");
                    return;
                }
            };
            if self.http.conns.len() >= MAX_HTTP_CONNS {
                debug!(
                    "metrics: [{}] turned away: {MAX_HTTP_CONNS} open",
                    addr.ip()
                );
                continue;
            }
            let entry = self.http.conns.vacant_entry();
            let token = Token(HTTP_BASE + entry.key());
            if self
                .poll
                .registry()
                .register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)
                .is_err()
            {
                continue;
            }
            let key = entry.key();
            entry.insert(HttpConn {
                stream,
                request: Vec::new(),
                response: Vec::new(),
                written: 0,
                deadline: self.now + HTTP_DEADLINE,
            });
            self.http_event(key);
        }
    }

    /// Reads the request, answers it, writes the answer as the socket
    /// takes it, closes.
    pub(super) fn http_event(&mut self, key: usize) {
        let Some(conn) = self.http.conns.get_mut(key) else {
            return;
        };
        let mut done = false;
        if conn.response.is_empty() {
            let mut buf = [0u8; 2048];
            loop {
                match conn.stream.read(&mut buf) {
                    Ok(0) => {
                        done = true;
                        break;
                    }
                    Ok(n) => {
                        let room = MAX_REQUEST.saturating_sub(conn.request.len());
                        conn.request.extend_from_slice(&buf[..n.min(room)]);
                        if n > room {
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => {
                        done = true;
                        break;
                    }
                }
            }
            let routed = match route(&conn.request) {
                None if conn.request.len() >= MAX_REQUEST => Some(Err(Answer::text(
                    "431 Request Header Fields Too Large",
                    "request too large\n",
                ))),
                routed => routed,
            };
            if let Some(routed) = routed {
                done = false;
                let (head, answer) = match routed {
                    Ok(wanted) => (wanted.head, self.http_answer(wanted.page)),
                    Err(answer) => (false, answer),
                };
                let conn = &mut self.http.conns[key];
                conn.response = respond(&answer, head);
            }
        }
        let conn = &mut self.http.conns[key];
        while !done && conn.written < conn.response.len() {
            match conn.stream.write(&conn.response[conn.written..]) {
                Ok(0) => done = true,
                Ok(n) => conn.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => done = true,
            }
        }
        if done || (!conn.response.is_empty() && conn.written == conn.response.len()) {
            self.http_close(key);
        }
    }

    fn http_answer(&mut self, page: Page) -> Answer {
        let Page::Metrics { openmetrics } = page else {
            return Answer::text("200 OK", "ok\n");
        };
        self.refresh_gauges();
        let mut text = String::with_capacity(16 * 1024);
        if openmetrics {
            self.metrics.encode_openmetrics(&mut text);
        } else {
            self.metrics.encode_text(&mut text);
        }
        Answer {
            status: "200 OK",
            content_type: if openmetrics {
                "application/openmetrics-text; version=1.0.0; charset=utf-8"
            } else {
                "text/plain; version=0.0.4; charset=utf-8"
            },
            extra: "",
            body: text.into_bytes(),
        }
    }

    /// Gauges read at scrape time: open sessions and the queue depth from
    /// memory, and the oldest pending message (one indexed query, at most
    /// every few seconds).
    fn refresh_gauges(&mut self) {
        self.metrics.inbound_open.set(self.conns.len() as i64);
        self.metrics.outbound_open.set(self.out.len() as i64);
        self.metrics.set_depth(self.depth);
        let pending = self.depth.queued + self.depth.deferred + self.depth.active + self.depth.held;
        let stale = self
            .http
            .oldest
            .is_none_or(|(asked, _)| self.now >= asked + OLDEST_EVERY);
        if pending == 0 {
            self.http.oldest = Some((self.now, None));
        } else if stale {
            let oldest = match self.queue.oldest_pending() {
                Ok(oldest) => oldest,
                Err(e) => {
                    log::error!("metrics: {e}");
                    None
                }
            };
            self.http.oldest = Some((self.now, oldest));
        }
        let age = self
            .http
            .oldest
            .and_then(|(_, at)| at)
            .and_then(|at| self.wall.duration_since(at).ok())
            .map_or(0.0, |d| d.as_secs_f64());
        self.metrics.oldest_pending.set(age);
    }

    fn http_close(&mut self, key: usize) {
        let mut conn = self.http.conns.remove(key);
        let _ = self.poll.registry().deregister(&mut conn.stream);
    }

    /// Connections past their deadline (slow or stalled clients) go.
    pub(super) fn http_deadlines(&mut self) {
        let late: Vec<usize> = self
            .http
            .conns
            .iter()
            .filter(|(_, c)| c.deadline <= self.now)
            .map(|(k, _)| k)
            .collect();
        for key in late {
            debug!("metrics: connection {key} timed out");
            self.http_close(key);
        }
    }
}

fn respond(answer: &Answer, head: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(answer.body.len() + 256);
    let _ = write!(
        out,
        "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{}Connection: close\r\n\r\n",
        answer.status,
        answer.content_type,
        answer.body.len(),
        answer.extra
    );
    if !head {
        out.extend_from_slice(&answer.body);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(request: &[u8]) -> Option<String> {
        route(request).map(|r| match r {
            Ok(wanted) => format!("{wanted:?}"),
            Err(a) => a.status.to_string(),
        })
    }

    #[test]
    fn requests_are_routed_whatever_the_split() {
        let full = b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: application/openmetrics-text;version=1.0.0\r\n\r\n";
        for cut in 0..full.len() {
            assert_eq!(status(&full[..cut]), None, "cut at {cut}");
        }
        let wanted = |head, page| Some(format!("{:?}", Wanted { head, page }));
        let metrics = |openmetrics| Page::Metrics { openmetrics };
        assert_eq!(status(full), wanted(false, metrics(true)));
        assert_eq!(
            status(b"GET /metrics?x=1 HTTP/1.1\r\n\r\n"),
            wanted(false, metrics(false))
        );
        assert_eq!(
            status(b"HEAD /healthz HTTP/1.0\r\n\r\n"),
            wanted(true, Page::Health)
        );
    }

    #[test]
    fn other_methods_paths_and_garbage_are_refused() {
        assert_eq!(
            status(b"POST /metrics HTTP/1.1\r\n\r\n").as_deref(),
            Some("405 Method Not Allowed")
        );
        assert_eq!(
            status(b"GET /admin HTTP/1.1\r\n\r\n").as_deref(),
            Some("404 Not Found")
        );
        assert_eq!(
            status(b"\x16\x03\x01garbage\r\n\r\n").as_deref(),
            Some("400 Bad Request")
        );
    }
}

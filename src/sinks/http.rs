//! The HTTP transport: one signed `POST` per attempt on a kept-alive connection, and the
//! classification of what came back (section 3 of the spec).
//!
//! Every attempt is a future: a sink's deliveries run as tasks on its one thread
//! (`super::run_http`), taking connections from the sink's `Pool`, so `max_in_flight` requests
//! out at once cost one thread that wakes for whatever answers have come, not a thread a
//! request woken for each.
//! ureq-proto (ureq's own sans-IO HTTP/1.1) writes the request and reads the response, tokio
//! carries the bytes, rustls the TLS; `edgehook test` runs one attempt on a runtime of its own.
//!
//! A request goes out in one write (head and body together: one packet, one wake-up of the
//! receiver). Before a kept connection is used again, `Stream::is_open` checks that the
//! receiver has not closed it meanwhile (without a system call unless something came).

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use nix::errno::Errno;
use nix::sys::socket::{MsgFlags, recv};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout_at;
use ureq_proto::client::{
    Call, RecvBodyResult, RecvResponseResult, SendRequestResult, state::RecvResponse,
};

use super::format::Format;
use super::{Attempt, Outcome, SinkError, backoff, tls};
use crate::config::{SinkKind, SinkSpec, is_loopback_url};

/// How much of a response body is read (and thrown away) so the connection can be reused; a
/// longer body is dropped with its connection.
const BODY_LIMIT: usize = 64 * 1024;
/// The longest response head taken; a longer one is an error ("response header is too big").
const LONGEST_HEAD: usize = 32 * 1024;
/// What one read asks the socket for.
const READ: usize = 16 * 1024;
/// The longest header line a request may have (ureq's output buffer was as long).
const LONGEST_LINE: usize = 16 * 1024;
/// The longest answer of a proxy to `CONNECT` taken.
const LONGEST_PROXY_HEAD: usize = 8 * 1024;
/// The least time given to one of several addresses of a host.
const LEAST_PER_ADDRESS: Duration = Duration::from_millis(10);
/// A connection idle for longer is closed rather than used again (ureq's default too): on a
/// cellular link a NAT forgets an idle connection without a word, and a request sent on it
/// would wait out the whole timeout before being retried.
const MAX_IDLE: Duration = Duration::from_secs(15);

/// Where an HTTP sink's requests go.
struct Target {
    uri: http::Uri,
    host: String,
    port: u16,
    /// The server's name for TLS, and the client configuration (`https://` only).
    tls: Option<(ServerName<'static>, tokio_rustls::TlsConnector)>,
    /// The `CONNECT` proxy from the environment (`ALL_PROXY`, `HTTPS_PROXY`, `HTTP_PROXY`, in
    /// that order, with `NO_PROXY`), when it applies to this URL.
    proxy: Option<ureq::Proxy>,
}

/// An HTTP(S) endpoint.
pub struct HttpSink {
    spec: Arc<SinkSpec>,
    device_id: String,
    target: Target,
    user_agent: String,
}

/// An HTTP sink's idle connections, the most recently used last. Its delivery tasks take one
/// for each attempt and give it back after, so they hold no connection while they wait out a
/// backoff, and a trickle of events keeps using one connection. It belongs to the sink's one
/// thread.
#[derive(Default)]
pub struct Pool(std::cell::RefCell<Vec<Conn>>);

impl Pool {
    /// The most recently used idle connection, if any.
    pub fn take(&self) -> Option<Conn> {
        self.0.borrow_mut().pop()
    }

    /// Gives back what an attempt left usable.
    pub fn put(&self, conn: Option<Conn>) {
        if let Some(c) = conn {
            self.0.borrow_mut().push(c);
        }
    }
}

/// One connection to the receiver (through the proxy, if any), kept between attempts.
pub struct Conn {
    stream: Stream,
    /// When its last answer was read.
    idle_since: Instant,
    /// Bytes read and not used yet; kept for its allocation.
    input: Vec<u8>,
    /// The request being written (its first bytes: `write_request`); kept with its length.
    output: Vec<u8>,
    /// Where the answers' bodies are read to, and dropped.
    discard: Vec<u8>,
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Stream {
    fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => s.get_ref().0,
        }
    }

    async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.write_all(bytes).await,
            Stream::Tls(s) => {
                s.write_all(bytes).await?;
                s.flush().await
            }
        }
    }

    async fn read(&mut self, into: &mut Vec<u8>) -> io::Result<usize> {
        into.reserve(READ);
        match self {
            Stream::Plain(s) => s.read_buf(into).await,
            Stream::Tls(s) => s.read_buf(into).await,
        }
    }

    /// Nothing to read and no end of stream: still open. Bytes nobody asked for, or an error,
    /// make the connection unusable. The runtime's readiness answers without a system call
    /// when nothing has come since the last answer was read (`settle`); otherwise a peek does.
    fn is_open(&self) -> bool {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        if self.tcp().poll_read_ready(&mut cx).is_pending() {
            return true;
        }
        let mut byte = [0u8; 1];
        let flags = MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT;
        matches!(
            recv(self.tcp().as_raw_fd(), &mut byte, flags),
            Err(Errno::EAGAIN)
        )
    }

    /// Forgets that the socket was readable, once an answer has been read to its end: the next
    /// read after a request then waits for the answer instead of trying once in vain, and
    /// `is_open` sees what comes in between. Nothing is lost: nothing else is due before the
    /// next request, and whatever comes anyway (the receiver's close) makes it readable again.
    fn settle(&self) {
        let _ = self.tcp().try_io(tokio::io::Interest::READABLE, || {
            Err::<(), _>(io::ErrorKind::WouldBlock.into())
        });
    }
}

/// Why an exchange failed, as the sink's last error shows it.
#[derive(Debug)]
struct Failed(String);

impl From<io::Error> for Failed {
    fn from(e: io::Error) -> Self {
        Failed(format!("connection failed: {e}"))
    }
}

impl From<ureq_proto::Error> for Failed {
    fn from(e: ureq_proto::Error) -> Self {
        Failed(format!("bad response: {e}"))
    }
}

/// What the sink keeps of an answer's head.
struct Answer {
    status: u16,
    reason: &'static str,
    retry_after: Option<String>,
}

impl HttpSink {
    /// The sink for `spec`, with its TLS settings loaded.
    pub fn new(spec: Arc<SinkSpec>, device_id: &str) -> Result<Self, SinkError> {
        super::check_ready(&spec)?;
        let bad_url = |why: &str| SinkError::Url(spec.display_url(), why.to_string());
        let uri: http::Uri = spec.url.parse().map_err(|_| bad_url("not a URL"))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(bad_url("only http:// and https:// are sent to")),
        };
        let host = uri.host().ok_or_else(|| bad_url("no host"))?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tls = if https {
            let name = ServerName::try_from(host.clone()).map_err(|e| bad_url(&e.to_string()))?;
            let config = tls::client_config(&spec)?;
            Some((name, tokio_rustls::TlsConnector::from(config)))
        } else {
            None
        };
        let proxy = match ureq::Proxy::try_from_env() {
            Some(p) if p.is_no_proxy(&uri) => None,
            Some(p) if p.protocol() == ureq::ProxyProtocol::Http => Some(p),
            Some(p) => {
                return Err(SinkError::Proxy(format!(
                    "{}:{} ({:?}): only http:// proxies (CONNECT) are supported",
                    p.host(),
                    p.port(),
                    p.protocol()
                )));
            }
            None => None,
        };
        warn_plain_http(&spec);
        Ok(HttpSink {
            target: Target {
                uri,
                host,
                port,
                tls,
                proxy,
            },
            spec,
            device_id: device_id.to_string(),
            user_agent: format!("edgehook/{}", env!("CARGO_PKG_VERSION")),
        })
    }

    /// The body sent for the stored event `stored`, in the sink's format.
    pub fn body<'a>(&self, stored: &'a [u8]) -> Cow<'a, [u8]> {
        match &self.spec.kind {
            SinkKind::Http { format, .. } => format.render(stored, &self.device_id),
            SinkKind::Mqtt(_) => Cow::Borrowed(stored),
        }
    }

    /// The headers an attempt at Unix second `timestamp` sends with `body`, in order (signature
    /// values included, never the secret). A body other than the envelope no longer holds the
    /// event's id and type, so they travel as `webhook-id` and `edgehook-event-type`.
    pub fn headers(
        &self,
        id: &str,
        event_type: &str,
        timestamp: u64,
        body: &[u8],
    ) -> Vec<(String, String)> {
        let mut h: Vec<(String, String)> = vec![
            ("content-type".into(), "application/json".into()),
            ("user-agent".into(), self.user_agent.clone()),
            ("edgehook-device-id".into(), self.device_id.clone()),
        ];
        let signature = self.spec.signer.headers(id, timestamp, body);
        let (headers, format) = match &self.spec.kind {
            SinkKind::Http { headers, format } => (headers.as_slice(), format),
            SinkKind::Mqtt(_) => (&[][..], &Format::Envelope),
        };
        if *format != Format::Envelope {
            if !signature.iter().any(|(k, _)| *k == "webhook-id") {
                h.push(("webhook-id".into(), id.to_string()));
            }
            h.push(("edgehook-event-type".into(), event_type.to_string()));
        }
        h.extend(signature.into_iter().map(|(k, v)| (k.to_string(), v)));
        h.extend(headers.iter().cloned());
        h
    }

    /// One attempt outside the sink's thread (`edgehook test`), signed for `now`, on a new
    /// connection and a runtime of its own.
    pub fn attempt_at(
        &self,
        id: &str,
        event_type: &str,
        stored: &[u8],
        now: SystemTime,
    ) -> Attempt {
        match super::single_thread_runtime() {
            Ok(rt) => rt.block_on(self.attempt(&mut None, id, event_type, stored, now)),
            Err(e) => Attempt {
                outcome: Outcome::Transient {
                    error: format!("cannot start a runtime: {e}"),
                    retry_after: None,
                },
                status: None,
                latency: Duration::ZERO,
            },
        }
    }

    /// One attempt: renders and signs the stored event `stored` for `now` and posts it on
    /// `conn` (opened first when there is none, or the receiver closed it). The connection is
    /// kept for the next attempt when the answer leaves it usable.
    pub async fn attempt(
        &self,
        conn: &mut Option<Conn>,
        id: &str,
        event_type: &str,
        stored: &[u8],
        now: SystemTime,
    ) -> Attempt {
        let ts = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let body = self.body(stored);
        let headers = self.headers(id, event_type, ts, &body);
        let started = Instant::now();
        let deadline =
            crate::config::units::later_tokio(tokio::time::Instant::now(), self.spec.timeout);
        let exchanged = timeout_at(deadline, self.exchange(conn, &headers, &body, deadline))
            .await
            .unwrap_or_else(|_| {
                Err(Failed(format!(
                    "timed out after {}",
                    humantime::format_duration(self.spec.timeout)
                )))
            });
        let latency = started.elapsed();
        let (answer, call) = match exchanged {
            Ok(answered) => answered,
            Err(Failed(error)) => {
                *conn = None;
                return Attempt {
                    outcome: Outcome::Transient {
                        error,
                        retry_after: None,
                    },
                    status: None,
                    latency,
                };
            }
        };
        // Read a bounded part of the body, within the attempt's time, so a small answer keeps
        // the connection usable; a larger or slower one is dropped with its connection.
        let reusable = timeout_at(deadline, skip_body(conn, call))
            .await
            .unwrap_or(false);
        match conn {
            Some(c) if reusable => {
                c.stream.settle();
                c.idle_since = Instant::now();
            }
            _ => *conn = None,
        }
        let Answer {
            status,
            reason,
            retry_after,
        } = answer;
        let retry = retry_after.and_then(|v| backoff::retry_after(&v, now));
        let error = format!("HTTP {status} {reason}").trim_end().to_string();
        Attempt {
            outcome: classify(status, error, retry),
            status: Some(status),
            latency,
        }
    }

    /// Sends the request and reads the answer's head; the call is left to read its body.
    async fn exchange(
        &self,
        conn: &mut Option<Conn>,
        headers: &[(String, String)],
        body: &[u8],
        deadline: tokio::time::Instant,
    ) -> Result<(Answer, Call<RecvResponse>), Failed> {
        if conn
            .as_ref()
            .is_some_and(|c| c.idle_since.elapsed() > MAX_IDLE || !c.stream.is_open())
        {
            *conn = None;
        }
        let c = match conn {
            Some(c) => c,
            None => conn.insert(self.connect(deadline).await?),
        };
        let (mut call, len) = write_request(&self.target.uri, &mut c.output, headers, body)?;
        c.stream.write_all(&c.output[..len]).await?;
        c.input.clear();
        loop {
            let (used, response) = call.try_response(&c.input, false)?;
            c.input.drain(..used);
            if let Some(response) = response {
                let status = response.status();
                let answer = Answer {
                    status: status.as_u16(),
                    reason: status.canonical_reason().unwrap_or(""),
                    retry_after: response
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string),
                };
                return Ok((answer, call));
            }
            if used > 0 {
                continue; // an informational answer (1xx) went by
            }
            if c.input.len() >= LONGEST_HEAD {
                return Err(Failed(format!(
                    "response header is too big (more than {} KiB)",
                    LONGEST_HEAD / 1024
                )));
            }
            if c.stream.read(&mut c.input).await? == 0 {
                return Err(Failed(
                    "connection failed: closed by the receiver before it answered".into(),
                ));
            }
        }
    }

    /// A new connection to the receiver: straight, or through the proxy's tunnel; then TLS for
    /// `https://`.
    async fn connect(&self, deadline: tokio::time::Instant) -> Result<Conn, Failed> {
        let t = &self.target;
        let tcp = match &t.proxy {
            None => connect_tcp(&t.host, t.port, deadline).await?,
            Some(proxy) => {
                let mut tcp = connect_tcp(proxy.host(), proxy.port(), deadline).await?;
                tunnel(&mut tcp, proxy, &t.host, t.port).await?;
                tcp
            }
        };
        let stream = match &t.tls {
            None => Stream::Plain(tcp),
            Some((name, connector)) => {
                let tls = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| Failed(format!("TLS handshake failed: {e}")))?;
                Stream::Tls(Box::new(tls))
            }
        };
        Ok(Conn {
            stream,
            idle_since: Instant::now(),
            input: Vec::new(),
            output: Vec::new(),
            discard: vec![0; 4096],
        })
    }
}

/// Writes the request to `uri` into `out` (head and body, sent in one write) and returns the
/// call, ready to read the answer, and the request's length. `out` keeps its length between
/// requests, so its bytes are zeroed once rather than for every request; a header line may be
/// up to `LONGEST_LINE` long.
fn write_request(
    uri: &http::Uri,
    out: &mut Vec<u8>,
    headers: &[(String, String)],
    body: &[u8],
) -> Result<(Call<RecvResponse>, usize), Failed> {
    let bad = |e: &dyn std::fmt::Display| Failed(format!("cannot make the request: {e}"));
    let mut request = http::Request::post(uri.clone());
    for (k, v) in headers {
        request = request.header(k, v);
    }
    let request = request
        .header("content-length", body.len())
        .body(())
        .map_err(|e| bad(&e))?;
    let mut call = Call::new(request).map_err(|e| bad(&e))?.proceed();
    let mut len = 0;
    while !call.can_proceed() {
        if out.len() < len + LONGEST_LINE {
            out.resize(len + LONGEST_LINE, 0);
        }
        len += call.write(&mut out[len..]).map_err(|e| bad(&e))?;
    }
    match call.proceed().map_err(|e| bad(&e))? {
        Some(SendRequestResult::SendBody(mut send)) => {
            send.consume_direct_write(body.len()).map_err(|e| bad(&e))?;
            if out.len() < len + body.len() {
                out.resize(len + body.len(), 0);
            }
            out[len..len + body.len()].copy_from_slice(body);
            let call = send
                .proceed()
                .ok_or_else(|| Failed("the request's body was not all sent".into()))?;
            Ok((call, len + body.len()))
        }
        Some(SendRequestResult::RecvResponse(recv)) => Ok((recv, len)),
        Some(SendRequestResult::Await100(_)) | None => {
            Err(Failed("the request could not be written".into()))
        }
    }
}

/// Reads and drops the body of the answer read by `call`, up to `BODY_LIMIT`; true when it
/// ended there and the connection can carry the next request.
async fn skip_body(conn: &mut Option<Conn>, call: Call<RecvResponse>) -> bool {
    let Some(c) = conn else { return false };
    let cleanup = match call.proceed() {
        Some(RecvResponseResult::Cleanup(cleanup)) => cleanup,
        Some(RecvResponseResult::RecvBody(mut call)) => {
            let mut taken = 0usize;
            loop {
                if call.can_proceed() {
                    match call.proceed() {
                        Some(RecvBodyResult::Cleanup(cleanup)) => break cleanup,
                        _ => return false,
                    }
                }
                let Ok((used, _)) = call.read(&c.input, &mut c.discard) else {
                    return false;
                };
                c.input.drain(..used);
                taken += used;
                if taken > BODY_LIMIT {
                    return false;
                }
                if used == 0 && !matches!(c.stream.read(&mut c.input).await, Ok(1..)) {
                    return false;
                }
            }
        }
        // A redirect (refused: 3xx is permanent) or an answer not understood.
        _ => return false,
    };
    !cleanup.must_close_connection() && c.input.is_empty()
}

/// Connects to the first of the host's addresses that answers. Each address but the last gets
/// half the time left of the attempt (at least `LEAST_PER_ADDRESS`); one that refuses or cannot
/// be routed to passes on to the next at once. The caller's timeout bounds the whole.
async fn connect_tcp(
    host: &str,
    port: u16,
    deadline: tokio::time::Instant,
) -> Result<TcpStream, Failed> {
    let addrs: Vec<SocketAddr> = match tokio::net::lookup_host((host, port)).await {
        Ok(addrs) => addrs.collect(),
        Err(e) => return Err(Failed(format!("host not found: {host} ({e})"))),
    };
    if addrs.is_empty() {
        return Err(Failed(format!("host not found: {host}")));
    }
    let mut last = None;
    for (i, addr) in addrs.iter().enumerate() {
        let attempt = TcpStream::connect(addr);
        let result = if i + 1 == addrs.len() {
            attempt.await
        } else {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let share = (left / 2).max(LEAST_PER_ADDRESS);
            match tokio::time::timeout(share, attempt).await {
                Ok(r) => r,
                Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "timed out")),
            }
        };
        match result {
            Ok(stream) => {
                stream.set_nodelay(true)?;
                return Ok(stream);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.map_or_else(|| Failed("connection failed".into()), Failed::from))
}

/// Asks the proxy on `tcp` for a tunnel to `host`:`port` (`CONNECT`, with basic credentials
/// when the proxy's URL has them) and reads its answer: any 2xx opens the tunnel.
async fn tunnel(
    tcp: &mut TcpStream,
    proxy: &ureq::Proxy,
    host: &str,
    port: u16,
) -> Result<(), Failed> {
    use base64::Engine;
    let authority = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let mut ask = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n");
    if let Some(user) = proxy.username() {
        let pair = format!("{user}:{}", proxy.password().unwrap_or(""));
        let encoded = base64::engine::general_purpose::STANDARD.encode(pair);
        ask.push_str(&format!("Proxy-Authorization: Basic {encoded}\r\n"));
    }
    ask.push_str("\r\n");
    tcp.write_all(ask.as_bytes()).await?;
    // Read byte by byte up to the blank line: whatever follows belongs to the tunnel.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() >= LONGEST_PROXY_HEAD {
            return Err(Failed("proxy: its answer to CONNECT is too big".into()));
        }
        let mut byte = [0u8; 1];
        if tcp.read(&mut byte).await? == 0 {
            return Err(Failed(
                "proxy: closed the connection instead of answering CONNECT".into(),
            ));
        }
        head.push(byte[0]);
    }
    let line = String::from_utf8_lossy(&head);
    let line = line.lines().next().unwrap_or("");
    match line.split(' ').nth(1).and_then(|c| c.parse::<u16>().ok()) {
        Some(200..=299) => Ok(()),
        _ => Err(Failed(format!(
            "proxy {}:{} refused the tunnel to {authority}: {}",
            proxy.host(),
            proxy.port(),
            line.trim()
        ))),
    }
}

/// What a status code means for the delivery.
pub fn classify(status: u16, error: String, retry_after: Option<Duration>) -> Outcome {
    match status {
        200..=299 => Outcome::Delivered,
        410 => Outcome::Gone,
        408 | 425 | 429 | 500..=599 | 100..=199 => Outcome::Transient { error, retry_after },
        _ => Outcome::Permanent { error },
    }
}

/// Warns about plain `http://` to a host that is not loopback, once per process and sink URL:
/// every reload builds the sink again, and a warning each time would bury the log.
fn warn_plain_http(spec: &SinkSpec) {
    static WARNED: Mutex<BTreeSet<(String, String)>> = Mutex::new(BTreeSet::new());
    if !plain_to_remote(&spec.url) {
        return;
    }
    let key = (spec.name.clone(), spec.url.clone());
    if WARNED.lock().unwrap_or_else(|p| p.into_inner()).insert(key) {
        log::warn!(sink = spec.name.as_str(); "Sink {} sends over plain http:// to {}: anyone on the way can read the events", spec.name, spec.display_url());
    }
}

/// Whether `url` is plain `http://` (in any case) to a host that is not loopback.
fn plain_to_remote(url: &str) -> bool {
    let plain = url.parse::<http::Uri>().is_ok_and(|u| {
        u.scheme_str()
            .is_some_and(|s| s.eq_ignore_ascii_case("http"))
    });
    plain && !is_loopback_url(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_written_whole_with_long_header_lines_and_nothing_left_from_the_last() {
        let uri: http::Uri = "http://receiver.test:8080/hook?x=1".parse().unwrap();
        let mut out = Vec::new();
        let token = "t".repeat(10_000);
        let long = [("authorization".to_string(), format!("Bearer {token}"))];
        let (_, len) = write_request(&uri, &mut out, &long, b"{\"a\":1}").unwrap();
        let text = String::from_utf8(out[..len].to_vec()).unwrap();
        assert!(text.starts_with("POST /hook?x=1 HTTP/1.1\r\n"), "{text}");
        assert!(text.contains("host: receiver.test:8080\r\n"), "{text}");
        assert!(text.contains(&format!("authorization: Bearer {token}\r\n")));
        assert!(text.contains("content-length: 7\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\n{\"a\":1}"), "{text}");

        // A shorter request after it: its own bytes only, though the buffer keeps its length.
        let short = [("x-k".to_string(), "v".to_string())];
        let (_, len) = write_request(&uri, &mut out, &short, b"{}").unwrap();
        let text = String::from_utf8(out[..len].to_vec()).unwrap();
        assert!(!text.contains("Bearer"), "{text}");
        assert!(text.contains("x-k: v\r\n"), "{text}");
        assert!(text.ends_with("content-length: 2\r\n\r\n{}"), "{text}");
        assert!(out.len() > len, "the buffer is kept at its length");
    }

    #[test]
    fn status_codes_fall_into_the_specs_classes() {
        let class = |s| match classify(s, String::new(), None) {
            Outcome::Delivered => "ok",
            Outcome::Transient { .. } => "transient",
            Outcome::Permanent { .. } => "permanent",
            Outcome::Gone => "gone",
        };
        for s in [200, 201, 204, 299] {
            assert_eq!(class(s), "ok", "{s}");
        }
        for s in [408, 425, 429, 500, 502, 503, 599] {
            assert_eq!(class(s), "transient", "{s}");
        }
        for s in [301, 302, 307, 400, 401, 403, 404, 413, 422] {
            assert_eq!(class(s), "permanent", "{s}");
        }
        assert_eq!(class(410), "gone");
    }

    #[test]
    fn plain_http_to_a_remote_host_is_recognised_in_any_case() {
        assert!(plain_to_remote("http://example.com/x"));
        assert!(plain_to_remote("HTTP://example.com/x"));
        assert!(plain_to_remote("Http://example.com/x"));
        assert!(!plain_to_remote("HTTPS://example.com/x"));
        assert!(!plain_to_remote("HTTP://LOCALHOST/x"));
        assert!(!plain_to_remote("HTTP://127.0.0.1:8080/x"));
        // `HttpSink::new` matches the scheme as the http crate gives it: in lower case.
        for (url, scheme) in [("HTTPS://x/", "https"), ("Http://x/", "http")] {
            let uri: http::Uri = url.parse().unwrap();
            assert_eq!(uri.scheme_str(), Some(scheme));
        }
    }

    #[test]
    fn loopback_hosts_are_recognised() {
        assert!(is_loopback_url("http://127.0.0.1:8080/x"));
        assert!(is_loopback_url("http://[::1]:8080/x"));
        assert!(is_loopback_url("http://localhost/x"));
        assert!(!is_loopback_url("http://example.com/x"));
        assert!(is_loopback_url("http://[::ffff:127.0.0.1]:80/x"));
        assert!(is_loopback_url("http://Edge.LOCALHOST/x"));
        assert!(!is_loopback_url("http://localhost.example.com/x"));
    }
}

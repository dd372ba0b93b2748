//! The HTTP transport: one signed `POST` per attempt over a kept-alive ureq agent, and the
//! classification of what came back (section 3 of the spec).

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use std::sync::Mutex;

use ureq::tls::{Certificate, ClientCert, PrivateKey, RootCerts, TlsConfig};
use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{
    ConnectProxyConnector, Connector, NextTimeout, RustlsConnector,
};

use super::format::Format;
use super::lean_tcp::LeanTcpConnector;
use super::{Attempt, Outcome, SinkError, backoff, tls};
use crate::config::{SinkKind, SinkSpec};

/// How much of a response body is read (and thrown away) so the connection can be reused.
const BODY_LIMIT: u64 = 64 * 1024;

/// The buffers of each connection: what is sent passes through the output one in pieces; the
/// input one must be larger than the longest response head taken (a longer head is an error:
/// "response header is too big").
const OUTPUT_BUFFER: usize = 16 * 1024;
const INPUT_BUFFER: usize = 64 * 1024;
const LONGEST_HEAD: usize = 32 * 1024;

/// How long a host's resolved addresses are used before they are looked up again.
const RESOLVED_FOR: Duration = Duration::from_secs(10);

/// ureq's resolver, with the answer kept for `RESOLVED_FOR`. ureq resolves the host before
/// every request, even one that reuses a pooled connection, and with a timeout set it does so
/// on a new thread each time: a thread per delivery. Kept, a lookup happens (on its thread,
/// bounded by the attempt's timeout) at most once per `RESOLVED_FOR` per sink.
#[derive(Default)]
struct KeptResolver {
    inner: DefaultResolver,
    kept: Mutex<Option<Kept>>,
}

/// A lookup's answer: for which scheme and authority, and when.
struct Kept {
    scheme: Option<http::uri::Scheme>,
    authority: Option<http::uri::Authority>,
    at: Instant,
    addrs: ResolvedSocketAddrs,
}

impl std::fmt::Debug for KeptResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeptResolver")
    }
}

impl Resolver for KeptResolver {
    fn resolve(
        &self,
        uri: &http::Uri,
        config: &ureq::config::Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        if let Some(k) = &*self.kept.lock().unwrap_or_else(|p| p.into_inner()) {
            if k.scheme.as_ref() == uri.scheme()
                && k.authority.as_ref() == uri.authority()
                && k.at.elapsed() < RESOLVED_FOR
            {
                return Ok(k.addrs.clone());
            }
        }
        let addrs = self.inner.resolve(uri, config, timeout)?;
        *self.kept.lock().unwrap_or_else(|p| p.into_inner()) = Some(Kept {
            scheme: uri.scheme().cloned(),
            authority: uri.authority().cloned(),
            at: Instant::now(),
            addrs: addrs.clone(),
        });
        Ok(addrs)
    }
}

/// An HTTP(S) endpoint.
pub struct HttpSink {
    agent: ureq::Agent,
    spec: Arc<SinkSpec>,
    device_id: String,
}

impl HttpSink {
    /// An agent for `spec`, with its TLS settings loaded.
    pub fn new(spec: Arc<SinkSpec>, device_id: &str) -> Result<Self, SinkError> {
        super::check_ready(&spec)?;
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_global(Some(spec.timeout))
            .user_agent(format!("edgehook/{}", env!("CARGO_PKG_VERSION")))
            .tls_config(tls_config(&spec)?)
            // Every worker keeps its connection between requests (ureq keeps 3 a host).
            .max_idle_connections_per_host(spec.max_in_flight.max(1))
            .max_idle_connections(spec.max_in_flight.max(10))
            // A kept connection keeps its buffers (ureq's are 128 KiB each way). The output
            // buffer only stages a body on its way out; the input one holds a response's head.
            .output_buffer_size(OUTPUT_BUFFER)
            .input_buffer_size(INPUT_BUFFER)
            .max_response_header_size(LONGEST_HEAD)
            .build();
        warn_plain_http(&spec);
        Ok(HttpSink {
            agent: ureq::Agent::with_parts(
                config,
                ().chain(ConnectProxyConnector::default())
                    .chain(LeanTcpConnector)
                    .chain(RustlsConnector::default()),
                KeptResolver::default(),
            ),
            spec,
            device_id: device_id.to_string(),
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
            (
                "user-agent".into(),
                format!("edgehook/{}", env!("CARGO_PKG_VERSION")),
            ),
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

    /// One attempt: renders and signs the stored event `stored` for now and posts it.
    pub fn attempt(&self, id: &str, event_type: &str, stored: &[u8]) -> Attempt {
        self.attempt_at(id, event_type, stored, SystemTime::now())
    }

    /// One attempt signed for `now` (so a caller can show the headers it sends).
    pub fn attempt_at(
        &self,
        id: &str,
        event_type: &str,
        stored: &[u8],
        now: SystemTime,
    ) -> Attempt {
        let ts = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let body = self.body(stored);
        let mut req = self.agent.post(&self.spec.url);
        for (k, v) in self.headers(id, event_type, ts, &body) {
            req = req.header(k, v);
        }
        let started = Instant::now();
        let result = req.send(&*body);
        let latency = started.elapsed();
        match result {
            Ok(mut resp) => {
                let status = resp.status().as_u16();
                let retry = resp
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| backoff::retry_after(v, now));
                let reason = resp.status().canonical_reason().unwrap_or("");
                // Read a bounded part of the body so a small answer keeps the connection
                // reusable; a larger one is dropped with its connection.
                let mut sink = Vec::new();
                let _ = resp
                    .body_mut()
                    .as_reader()
                    .take(BODY_LIMIT)
                    .read_to_end(&mut sink);
                let error = format!("HTTP {status} {reason}").trim_end().to_string();
                Attempt {
                    outcome: classify(status, error, retry),
                    status: Some(status),
                    latency,
                }
            }
            Err(e) => Attempt {
                outcome: Outcome::Transient {
                    error: describe(&e),
                    retry_after: None,
                },
                status: None,
                latency,
            },
        }
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

fn describe(e: &ureq::Error) -> String {
    match e {
        ureq::Error::Timeout(t) => format!("timed out ({t})"),
        ureq::Error::Io(io) => format!("connection failed: {io}"),
        ureq::Error::HostNotFound => "host not found".into(),
        ureq::Error::ConnectionFailed => "connection failed".into(),
        other => other.to_string(),
    }
}

/// Warns about plain `http://` to a host that is not loopback, once per process and sink URL:
/// every reload builds the sink again, and a warning each time would bury the log.
fn warn_plain_http(spec: &SinkSpec) {
    static WARNED: Mutex<BTreeSet<(String, String)>> = Mutex::new(BTreeSet::new());
    if !spec.url.starts_with("http://") || is_loopback_url(&spec.url) {
        return;
    }
    let key = (spec.name.clone(), spec.url.clone());
    if WARNED.lock().unwrap_or_else(|p| p.into_inner()).insert(key) {
        log::warn!(sink = spec.name.as_str(); "Sink {} sends over plain http:// to {}: anyone on the way can read the events", spec.name, spec.display_url());
    }
}

/// Whether the URL's host is loopback by its text alone (no resolving): `localhost`, a
/// `*.localhost` name (RFC 6761), or a loopback address, IPv4-mapped ones included.
fn is_loopback_url(url: &str) -> bool {
    let host = url
        .parse::<http::Uri>()
        .ok()
        .and_then(|u| u.host().map(str::to_string))
        .unwrap_or_default();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let host = host.to_ascii_lowercase();
    host == "localhost"
        || host.ends_with(".localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.to_canonical().is_loopback())
}

fn tls_config(spec: &SinkSpec) -> Result<TlsConfig, SinkError> {
    let mut tls = TlsConfig::builder();
    tls = match &spec.ca_file {
        Some(path) => {
            let certs: Vec<Certificate<'static>> = tls::load_certs(path)?
                .iter()
                .map(|c| Certificate::from_der(c.as_ref()).to_owned())
                .collect();
            tls.root_certs(RootCerts::new_with_certs(&certs))
        }
        None => tls.root_certs(RootCerts::PlatformVerifier),
    };
    if let (Some(cert), Some(key)) = (&spec.client_cert, &spec.client_key) {
        let chain: Vec<Certificate<'static>> = tls::load_certs(cert)?
            .iter()
            .map(|c| Certificate::from_der(c.as_ref()).to_owned())
            .collect();
        tls::load_key(key)?; // the same checks and message as for MQTT sinks
        let pem = std::fs::read(key).map_err(|e| SinkError::Tls {
            path: key.clone(),
            message: e.to_string(),
        })?;
        let key = PrivateKey::from_pem(&pem).map_err(|e| SinkError::Tls {
            path: key.clone(),
            message: e.to_string(),
        })?;
        tls = tls.client_cert(Some(ClientCert::new_with_certs(&chain, key)));
    }
    Ok(tls.build())
}

#[cfg(test)]
mod tests {
    use super::*;

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

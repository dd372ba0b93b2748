//! A verifying webhook receiver: accepts `POST`s, checks their signature, and hands each
//! verified body to a callback. `edgehook receive` prints them; `edgehook demo` shows them.

use std::io::Read;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use crate::sinks::signing::{self, Scheme, VerifyError};

/// Largest body accepted.
const MAX_BODY: u64 = 1024 * 1024;

/// One verified request.
#[derive(Debug, Clone)]
pub struct Received {
    /// The body as sent.
    pub body: Vec<u8>,
    /// The request headers.
    pub headers: Vec<(String, String)>,
}

/// How requests are checked.
#[derive(Debug, Clone)]
pub struct Verifier {
    /// The scheme.
    pub scheme: Scheme,
    /// The secret (empty for `none`).
    pub secret: String,
    /// Largest clock difference for `standard`.
    pub tolerance: Duration,
}

impl Verifier {
    /// Checks one request.
    pub fn check(&self, headers: &[(String, String)], body: &[u8]) -> Result<(), VerifyError> {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        signing::verify(
            self.scheme,
            &self.secret,
            headers,
            body,
            now,
            self.tolerance,
        )
    }
}

/// A listening receiver.
pub struct Receiver {
    server: tiny_http::Server,
    verifier: Verifier,
}

impl Receiver {
    /// Listens on `addr` (port 0 picks a free port).
    pub fn bind(addr: &str, verifier: Verifier) -> Result<Receiver, String> {
        let server =
            tiny_http::Server::http(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        Ok(Receiver { server, verifier })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.server
            .server_addr()
            .to_ip()
            .expect("an HTTP receiver listens on an IP address")
    }

    /// Serves until `on_event` returns false. Verified requests get 200, others 401 (or 413 for
    /// an oversized body) and are passed to `on_reject`.
    pub fn serve(
        &self,
        mut on_event: impl FnMut(Received) -> bool,
        mut on_reject: impl FnMut(String),
    ) {
        for mut request in self.server.incoming_requests() {
            let headers: Vec<(String, String)> = request
                .headers()
                .iter()
                .map(|h| {
                    (
                        h.field.as_str().as_str().to_string(),
                        h.value.as_str().to_string(),
                    )
                })
                .collect();
            let mut body = Vec::new();
            let read = request
                .as_reader()
                .take(MAX_BODY + 1)
                .read_to_end(&mut body);
            if read.is_err() || body.len() as u64 > MAX_BODY {
                on_reject(format!("body unreadable or over {MAX_BODY} bytes"));
                let _ = request.respond(tiny_http::Response::empty(413));
                continue;
            }
            match self.verifier.check(&headers, &body) {
                Ok(()) => {
                    let _ = request.respond(tiny_http::Response::empty(200));
                    if !on_event(Received { body, headers }) {
                        return;
                    }
                }
                Err(e) => {
                    let id = headers
                        .iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case("webhook-id"))
                        .map_or("-", |(_, v)| v.as_str())
                        .to_string();
                    on_reject(format!("rejected request (webhook-id {id}): {e}"));
                    let _ = request.respond(tiny_http::Response::empty(401));
                }
            }
        }
    }

    /// Makes `serve` return (from another thread).
    pub fn unblock(&self) {
        self.server.unblock();
    }
}

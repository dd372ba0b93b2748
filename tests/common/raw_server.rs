//! A raw TCP or TLS server on 127.0.0.1 port 0 that hands every connection to a closure, for
//! receivers that misbehave in ways a well-formed HTTP server cannot: never answering,
//! trickling an endless body, closing mid-request, presenting a certificate nobody trusts.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// A connection as the handler sees it (plain TCP or TLS over it).
pub trait Stream: Read + Write {}
impl<T: Read + Write> Stream for T {}

/// What the server does with one connection; gets the connection's index (0 for the first).
pub type Handler = Arc<dyn Fn(&mut dyn Stream, usize) + Send + Sync>;

struct Shared {
    handler: Mutex<Handler>,
    stopped: AtomicBool,
    accepted: AtomicUsize,
    connections: Mutex<Vec<TcpStream>>,
    tls: Option<Arc<rustls::ServerConfig>>,
}

/// The server; stopping it (or dropping it) closes every connection.
pub struct RawServer {
    shared: Arc<Shared>,
    port: u16,
    accept: Option<std::thread::JoinHandle<()>>,
}

impl RawServer {
    /// A plain TCP server.
    pub fn start(handler: Handler) -> RawServer {
        RawServer::with(None, handler)
    }

    /// A TLS server presenting the certificate chain in `cert` (PEM) with the key in `key`.
    pub fn start_tls(cert: &Path, key: &Path, handler: Handler) -> RawServer {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let chain = CertificateDer::pem_file_iter(cert)
            .expect("a certificate file")
            .collect::<Result<Vec<_>, _>>()
            .expect("certificates");
        let key = PrivateKeyDer::from_pem_file(key).expect("a key file");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("a usable certificate and key");
        RawServer::with(Some(Arc::new(config)), handler)
    }

    fn with(tls: Option<Arc<rustls::ServerConfig>>, handler: Handler) -> RawServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared {
            handler: Mutex::new(handler),
            stopped: AtomicBool::new(false),
            accepted: AtomicUsize::new(0),
            connections: Mutex::new(Vec::new()),
            tls,
        });
        let s = shared.clone();
        let accept = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if s.stopped.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                if let Ok(c) = stream.try_clone() {
                    s.connections.lock().unwrap().push(c);
                }
                let n = s.accepted.fetch_add(1, Ordering::SeqCst);
                let s = s.clone();
                std::thread::spawn(move || serve(stream, n, &s));
            }
        });
        RawServer {
            shared,
            port,
            accept: Some(accept),
        }
    }

    /// `http://127.0.0.1:PORT/hook`, or `https://…` for a TLS server.
    pub fn url(&self) -> String {
        let scheme = if self.shared.tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://127.0.0.1:{}/hook", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// What later connections get.
    pub fn set_handler(&self, handler: Handler) {
        *self.shared.handler.lock().unwrap() = handler;
    }

    /// Closes the listener and every connection.
    pub fn stop(&mut self) {
        super::receiver::close_server(
            &self.shared.stopped,
            self.port,
            &mut self.accept,
            &self.shared.connections,
        );
    }
}

impl Drop for RawServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve(mut tcp: TcpStream, n: usize, shared: &Shared) {
    let handler = shared.handler.lock().unwrap().clone();
    match &shared.tls {
        None => handler(&mut tcp, n),
        Some(config) => {
            let conn = rustls::ServerConnection::new(config.clone()).expect("a TLS session");
            let mut tls = rustls::StreamOwned::new(conn, tcp);
            handler(&mut tls, n);
        }
    }
}

/// Reads one HTTP request (head and `content-length` body); `None` when the peer closed or
/// the connection failed first (a refused TLS handshake ends here).
pub fn read_request(stream: &mut dyn Stream) -> Option<Vec<u8>> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).ok()? == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    stream.read_exact(&mut body).ok()?;
    Some(body)
}

/// Keeps a connection open, answering nothing, until the peer closes it.
pub fn hold(stream: &mut dyn Stream) {
    let mut buf = [0u8; 4096];
    while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
}

/// A server answering every request 200 on connections it keeps open (`answer_ok`), and the
/// bodies it received.
pub fn ok_server() -> (RawServer, Arc<Mutex<Vec<Vec<u8>>>>) {
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let kept = bodies.clone();
    let server = RawServer::start(Arc::new(move |s: &mut dyn Stream, _| answer_ok(s, &kept)));
    (server, bodies)
}

/// Answers requests with an empty 200 until the peer closes; each request's body goes to
/// `bodies`.
pub fn answer_ok(stream: &mut dyn Stream, bodies: &Mutex<Vec<Vec<u8>>>) {
    while let Some(body) = read_request(stream) {
        bodies.lock().unwrap().push(body);
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
        if stream.write_all(ok).and_then(|_| stream.flush()).is_err() {
            return;
        }
    }
}

/// Serves an MQTT client packet by packet: after each read, `answer` gets the whole packets
/// read (each its first byte, type and flags, and its body) and returns what to write back, or
/// `None` to close the connection.
pub fn serve_mqtt(
    s: &mut dyn Stream,
    mut answer: impl FnMut(Vec<(u8, Vec<u8>)>) -> Option<Vec<u8>>,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let n = match s.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let packets = std::iter::from_fn(|| take_mqtt_packet(&mut buf)).collect();
        let Some(out) = answer(packets) else { return };
        if s.write_all(&out).is_err() {
            return;
        }
    }
}

/// Takes the first whole MQTT packet off `buf`: its first byte (type and flags) and its body;
/// `None` until one has arrived whole.
fn take_mqtt_packet(buf: &mut Vec<u8>) -> Option<(u8, Vec<u8>)> {
    let &first = buf.first()?;
    let (mut len, mut at) = (0usize, 1);
    while let Some(&b) = buf.get(at) {
        len |= usize::from(b & 0x7F) << (7 * (at - 1));
        at += 1;
        if b & 0x80 == 0 {
            break;
        }
    }
    if buf.len() < at + len || buf.get(at - 1).is_none_or(|b| b & 0x80 != 0) {
        return None;
    }
    let body = buf.drain(..at + len).skip(at).collect();
    Some((first, body))
}

//! A real HTTP/1.1 receiver for tests, on 127.0.0.1 port 0: it records every request, answers
//! as its behaviour says, keeps connections alive, and can be stopped (closing every
//! connection, so the port truly refuses) and started again on the same port.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One request as received.
#[derive(Debug, Clone)]
pub struct Request {
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub at: Instant,
    /// The status it was answered with.
    pub status: u16,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }

    pub fn event_id(&self) -> String {
        self.json()["id"].as_str().expect("an id").to_string()
    }
}

/// An answer.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
}

impl Response {
    pub fn status(status: u16) -> Response {
        Response {
            status,
            headers: Vec::new(),
        }
    }
    pub fn with_header(mut self, k: &str, v: &str) -> Response {
        self.headers.push((k.into(), v.into()));
        self
    }
}

/// Decides the answer to a request; gets the requests received before it.
pub type Behaviour = Arc<dyn Fn(&Request, &[Request]) -> Response + Send + Sync>;

struct Shared {
    requests: Mutex<Vec<Request>>,
    behaviour: Mutex<Behaviour>,
    stopped: AtomicBool,
    connections: Mutex<Vec<TcpStream>>,
    /// Bodies are read and dropped, not kept (`discard_bodies`).
    discard_bodies: AtomicBool,
}

/// The receiver.
pub struct Receiver {
    shared: Arc<Shared>,
    port: u16,
    accept: Option<std::thread::JoinHandle<()>>,
}

impl Receiver {
    /// A receiver answering 200 to everything.
    pub fn ok() -> Receiver {
        Receiver::start(Arc::new(|_, _| Response::status(200)))
    }

    /// A receiver with a behaviour, on a free port.
    pub fn start(behaviour: Behaviour) -> Receiver {
        let shared = Arc::new(Shared {
            requests: Mutex::new(Vec::new()),
            behaviour: Mutex::new(behaviour),
            stopped: AtomicBool::new(false),
            connections: Mutex::new(Vec::new()),
            discard_bodies: AtomicBool::new(false),
        });
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().unwrap().port();
        let mut r = Receiver {
            shared,
            port,
            accept: None,
        };
        r.listen(listener);
        r
    }

    fn listen(&mut self, listener: TcpListener) {
        self.shared.stopped.store(false, Ordering::SeqCst);
        let shared = self.shared.clone();
        self.accept = Some(std::thread::spawn(move || {
            for stream in listener.incoming() {
                if shared.stopped.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                if let Ok(c) = stream.try_clone() {
                    shared.connections.lock().unwrap().push(c);
                }
                let shared = shared.clone();
                std::thread::spawn(move || serve(stream, &shared));
            }
        }));
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Closes the listener and every connection: the port then refuses connections.
    pub fn stop(&mut self) {
        close_server(
            &self.shared.stopped,
            self.port,
            &mut self.accept,
            &self.shared.connections,
        );
    }

    /// Listens again on the same port.
    pub fn restart(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match TcpListener::bind(("127.0.0.1", self.port)) {
                Ok(l) => break l,
                Err(e) => {
                    assert!(
                        Instant::now() < deadline,
                        "cannot rebind port {}: {e}",
                        self.port
                    );
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        };
        self.listen(listener);
    }

    /// Keeps no request's body from now on (each is read and dropped; `Request::body` is
    /// empty), so a load of large events does not pile up in the test's memory.
    pub fn discard_bodies(&self) {
        self.shared.discard_bodies.store(true, Ordering::SeqCst);
    }

    pub fn set_behaviour(&self, b: Behaviour) {
        *self.shared.behaviour.lock().unwrap() = b;
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Request> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// Requests answered 2xx.
    pub fn delivered(&self) -> Vec<Request> {
        self.requests()
            .into_iter()
            .filter(|r| (200..300).contains(&r.status))
            .collect()
    }

    pub fn delivered_count(&self) -> usize {
        self.shared
            .requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| (200..300).contains(&r.status))
            .count()
    }

    /// Ids of the 2xx-answered requests, in arrival order.
    pub fn delivered_ids(&self) -> Vec<String> {
        self.delivered().iter().map(Request::event_id).collect()
    }
}

/// Stops a test server: raises `stopped`, wakes its accept loop on `port` and waits for it,
/// then shuts every connection down.
pub fn close_server(
    stopped: &AtomicBool,
    port: u16,
    accept: &mut Option<std::thread::JoinHandle<()>>,
    connections: &Mutex<Vec<TcpStream>>,
) {
    stopped.store(true, Ordering::SeqCst);
    let _ = TcpStream::connect(("127.0.0.1", port));
    if let Some(t) = accept.take() {
        let _ = t.join();
    }
    for c in connections.lock().unwrap().drain(..) {
        let _ = c.shutdown(Shutdown::Both);
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve(stream: TcpStream, shared: &Shared) {
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    });
    let mut writer = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
        let len: usize = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        if shared.stopped.load(Ordering::SeqCst) {
            return;
        }
        if shared.discard_bodies.load(Ordering::SeqCst) {
            body = Vec::new();
        }
        let mut req = Request {
            path,
            headers,
            body,
            at: Instant::now(),
            status: 0,
        };
        let resp = {
            let behaviour = shared.behaviour.lock().unwrap().clone();
            let mut all = shared.requests.lock().unwrap();
            let resp = behaviour(&req, &all);
            req.status = resp.status;
            all.push(req);
            resp
        };
        let mut out = format!("HTTP/1.1 {} X\r\ncontent-length: 0\r\n", resp.status);
        for (k, v) in &resp.headers {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        out.push_str("\r\n");
        if writer.write_all(out.as_bytes()).is_err() {
            return;
        }
    }
}

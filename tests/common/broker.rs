//! A real Mosquitto broker for tests: its own config file, a free loopback port, persistence in
//! the test's directory, and a process the test can stop and start again. Plus an MQTT 5
//! subscriber (rumqttc) that records what it receives with its user properties.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::{Client, Event, MqttOptions};

/// A mosquitto process.
pub struct Broker {
    pub dir: PathBuf,
    pub port: u16,
    /// The address it listens on: `127.0.0.1`, or `::1` (`start_on`).
    address: String,
    conf: PathBuf,
    child: Option<Child>,
}

/// Whether mosquitto can be run here; in CI its absence is a failure, elsewhere the test says
/// why it cannot run.
pub fn mosquitto_available() -> bool {
    let ok = Command::new("mosquitto")
        .arg("-h")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !ok {
        let why = "mosquitto is not installed (the README's test command installs it)";
        if std::env::var_os("CI").is_some() {
            panic!("{why}");
        }
        eprintln!("cannot run this test here: {why}");
    }
    ok
}

pub fn free_port() -> u16 {
    free_port_on("127.0.0.1")
}

/// A port free on `address` (an IPv4 or IPv6 address, without brackets).
fn free_port_on(address: &str) -> u16 {
    let ip: std::net::IpAddr = address.parse().expect("an IP address");
    std::net::TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Broker {
    /// Starts mosquitto on a free port with `extra` config lines for its listener, keeping its
    /// sessions on disk and logging everything (tests read the log). A subscriber gets room to
    /// queue a million messages: mosquitto drops what it queues for a client beyond
    /// `max_queued_messages` (1,000 by default; its log says "Outgoing messages are being
    /// dropped"), which a test's subscriber falling behind a drain or a broker restart would
    /// meet, and what is missing at a subscriber could then only be edgehook's loss.
    pub fn start(dir: &Path, extra: &str) -> Broker {
        Broker::start_on(dir, "127.0.0.1", extra)
    }

    /// `start`, listening on `address` only (`::1` for an IPv6 broker).
    pub fn start_on(dir: &Path, address: &str, extra: &str) -> Broker {
        Broker::start_with(
            dir,
            address,
            "persistence true\nlog_type all\nmax_queued_messages 1000000\n",
            extra,
        )
    }

    /// Starts mosquitto as a device's broker would run: no per-message log, no persistence
    /// (the benchmarks).
    pub fn start_quiet(dir: &Path) -> Broker {
        Broker::start_with(
            dir,
            "127.0.0.1",
            "persistence false\nlog_type error\nallow_anonymous true\n",
            "",
        )
    }

    fn start_with(dir: &Path, address: &str, base: &str, extra: &str) -> Broker {
        let dir = dir.join(format!("broker-{}", free_port()));
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port_on(address);
        let conf = dir.join("mosquitto.conf");
        // Run as root, mosquitto switches to its own user, which cannot read the test's
        // private directory; `user root` keeps it as the test's user.
        let user = if nix::unistd::geteuid().is_root() {
            "user root\n"
        } else {
            ""
        };
        std::fs::write(
            &conf,
            format!(
                "{user}listener {port} {address}\n{base}persistence_location {}/\nlog_dest file {}/mosquitto.log\n{extra}\n",
                dir.display(),
                dir.display()
            ),
        )
        .unwrap();
        let mut b = Broker {
            dir,
            port,
            address: address.to_string(),
            conf,
            child: None,
        };
        b.spawn();
        b
    }

    fn spawn(&mut self) {
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&self.conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        let ip: std::net::IpAddr = self.address.parse().expect("an IP address");
        while std::net::TcpStream::connect((ip, self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "mosquitto did not listen: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn url(&self) -> String {
        if self.address.contains(':') {
            format!("mqtt://[{}]:{}", self.address, self.port)
        } else {
            format!("mqtt://{}:{}", self.address, self.port)
        }
    }

    /// Stops the broker with SIGTERM (it saves its persistence file) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Makes the broker re-read its password file (SIGHUP).
    pub fn reload(&self) {
        let pid = self.child.as_ref().expect("running").id();
        let _ = Command::new("kill")
            .arg("-HUP")
            .arg(pid.to_string())
            .status();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("mosquitto.log")).unwrap_or_default()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A message as the subscriber got it.
#[derive(Debug, Clone)]
pub struct Message {
    pub topic: String,
    pub payload: Vec<u8>,
    pub user_properties: Vec<(String, String)>,
    pub content_type: Option<String>,
    pub retain: bool,
}

impl Message {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).expect("a JSON payload")
    }
    pub fn event_id(&self) -> String {
        self.json()["id"].as_str().expect("an id").to_string()
    }
}

/// An MQTT 5 subscriber with a persistent session, so it misses nothing across broker restarts.
pub struct Subscriber {
    pub messages: Arc<Mutex<Vec<Message>>>,
    client: Client,
}

impl Subscriber {
    pub fn connect(port: u16, filter: &str) -> Subscriber {
        Self::connect_with(port, filter, |_| {})
    }

    pub fn connect_with(
        port: u16,
        filter: &str,
        tweak: impl FnOnce(&mut MqttOptions),
    ) -> Subscriber {
        let mut o = MqttOptions::new(format!("test-sub-{}", free_port()), "127.0.0.1", port);
        o.set_clean_start(false);
        o.set_session_expiry_interval(Some(3600));
        o.set_keep_alive(Duration::from_secs(5));
        tweak(&mut o);
        let (client, mut connection) = Client::new(o, 1024);
        let messages = Arc::new(Mutex::new(Vec::new()));
        let (subscribed_tx, subscribed_rx) = std::sync::mpsc::channel();
        let m = messages.clone();
        let filter = filter.to_string();
        let c = client.clone();
        std::thread::spawn(move || {
            for event in connection.iter() {
                match event {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = c.try_subscribe(filter.clone(), QoS::AtLeastOnce);
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = subscribed_tx.send(());
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let props = p.properties.clone().unwrap_or_default();
                        m.lock().unwrap().push(Message {
                            topic: String::from_utf8_lossy(&p.topic).into_owned(),
                            payload: p.payload.to_vec(),
                            user_properties: props.user_properties,
                            content_type: props.content_type,
                            retain: p.retain,
                        });
                    }
                    Ok(_) => {}
                    Err(rumqttc::v5::ConnectionError::RequestsDone) => return,
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        });
        subscribed_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the subscription is acknowledged");
        Subscriber { messages, client }
    }

    pub fn all(&self) -> Vec<Message> {
        self.messages.lock().unwrap().clone()
    }

    /// Event messages (payloads that are edgehook events), in arrival order.
    pub fn events(&self) -> Vec<Message> {
        self.all()
            .into_iter()
            .filter(|m| m.topic.contains("/events/"))
            .collect()
    }

    pub fn event_count(&self) -> usize {
        self.messages
            .lock()
            .unwrap()
            .iter()
            .filter(|m| m.topic.contains("/events/"))
            .count()
    }

    pub fn event_count_on(&self, topic: &str) -> usize {
        self.messages
            .lock()
            .unwrap()
            .iter()
            .filter(|m| m.topic == topic)
            .count()
    }

    pub fn distinct_event_ids(&self) -> std::collections::HashSet<String> {
        self.events().iter().map(Message::event_id).collect()
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.client.try_disconnect();
    }
}

/// Verifies the Standard Webhooks signature carried in a message's user properties.
pub fn verify_message(m: &Message, secret: &str) -> Result<(), String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    edgehook::sinks::signing::verify(
        edgehook::sinks::signing::Scheme::Standard,
        secret,
        &m.user_properties,
        &m.payload,
        now,
        Duration::from_secs(300),
    )
    .map_err(|e| e.to_string())
}

/// Checks what arrived against the acknowledged ids in outbox order: every one arrived, first
/// arrivals are in order, and a repeat goes back at most `window` events (what was in flight).
/// Returns the number of duplicates.
pub fn check_arrivals(arrived: &[String], acked: &[String], window: usize) -> usize {
    let order: std::collections::HashMap<&String, usize> =
        acked.iter().enumerate().map(|(i, id)| (id, i)).collect();
    let mut seen = std::collections::HashSet::new();
    let mut highest: Option<usize> = None;
    let mut duplicates = 0;
    for id in arrived {
        let Some(&pos) = order.get(id) else { continue };
        if !seen.insert(pos) {
            duplicates += 1;
            let h = highest.expect("a repeat follows a first arrival");
            assert!(
                h - pos < window,
                "a repeat went back {} events, more than the window",
                h - pos
            );
            continue;
        }
        if let Some(h) = highest {
            assert!(
                pos > h,
                "event {pos} first arrived after event {h}: out of order"
            );
            assert_eq!(pos, h + 1, "event {} never arrived before {pos}", h + 1);
        } else {
            assert_eq!(
                pos, 0,
                "the first event to arrive is not the first acknowledged"
            );
        }
        highest = Some(pos);
    }
    assert_eq!(
        seen.len(),
        acked.len(),
        "{} acknowledged events never arrived",
        acked.len() - seen.len()
    );
    duplicates
}

//! `edgehook demo`: a temporary outbox, a verifying receiver on loopback and the daemon, all in
//! this process; sample events are emitted through the socket and shown as they arrive.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::exit::{Code, Failure};
use crate::client::{Client, Emit, Reply, Request};
use crate::config::Config;
use crate::receiver::{Receiver, Verifier};
use crate::sinks::signing::{Scheme, generate_secret};
use serde_json::value::RawValue;

/// A line of the demo's output. Once its reader has gone (`edgehook demo | head`), `stop` is
/// raised, as Ctrl-C raises it: the demo stops its daemon and removes its directory (with the
/// secret in it) instead of ending where it writes.
macro_rules! say {
    ($stop:expr, $($arg:tt)*) => {
        if super::output::try_write(format_args!("{}\n", format_args!($($arg)*))).is_err() {
            $stop.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    };
}

/// Arguments of `demo`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  edgehook demo --events 5\n  edgehook demo            # until Ctrl-C"
)]
pub struct Args {
    /// Emit this many sample events, wait until each is received and verified, then exit
    #[arg(long, value_name = "N")]
    pub events: Option<u64>,
    /// Time between sample events
    #[arg(long, default_value = "1s", value_parser = crate::config::units::parse_duration)]
    pub every: Duration,
}

const SAMPLES: [(&str, &str); 4] = [
    (
        "sensor.temperature",
        r#"{"celsius":21.5,"probe":"cabinet"}"#,
    ),
    ("door.opened", r#"{"door":"rear","by":"badge-1142"}"#),
    ("battery.low", r#"{"percent":14}"#),
    ("app.heartbeat", r#"{"uptime_s":86400}"#),
];

pub(super) fn run(a: Args) -> Result<Code, Failure> {
    crate::daemon::logging::init(log::LevelFilter::Warn);
    let fail = |m: String| Failure::new(Code::Software, m);
    let dir =
        tempfile_dir().map_err(|e| fail(format!("cannot create a temporary directory: {e}")))?;
    let secret = generate_secret(Scheme::Standard);
    let receiver = Receiver::bind(
        "127.0.0.1:0",
        Verifier {
            scheme: Scheme::Standard,
            secret: secret.clone(),
            tolerance: Duration::from_secs(300),
        },
    )
    .map_err(fail)?;
    let url = format!("http://{}/webhook", receiver.addr());
    // The socket belongs to the user's own group, so the demo needs no `edgehook` group.
    let group = nix::unistd::Group::from_gid(nix::unistd::getgid())
        .ok()
        .flatten()
        .map_or_else(|| "edgehook".to_string(), |g| g.name);
    let config_text = format!(
        "[storage]\npath = \"outbox.db\"\n\n[ingest]\nsocket = \"ingest.sock\"\ngroup = \"{group}\"\n\n[[sink]]\nname = \"demo\"\nurl = \"{url}\"\n[sink.signing]\nscheme = \"standard\"\nsecret_file = \"demo.secret\"\n[sink.retry]\ninitial = \"200ms\"\nmax = \"2s\"\n\n[inventory]\nscripts_dirs = []\n"
    );
    let config_path = dir.join("edgehook.toml");
    // 0600, as a secret file should be: the daemon warns about any other.
    crate::config::atomic::write(&dir.join("demo.secret"), secret.as_bytes(), 0o600, None)
        .map_err(|e| fail(e.to_string()))?;
    std::fs::write(&config_path, &config_text).map_err(|e| fail(e.to_string()))?;
    let config = Config::load(&config_path)?;
    let interrupted = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    say!(interrupted, "edgehook demo");
    say!(interrupted, "  outbox    {}", config.storage.path.display());
    say!(
        interrupted,
        "  socket    {}",
        config.ingest.socket.display()
    );
    say!(
        interrupted,
        "  receiver  {url} (Standard Webhooks, verifying every request)"
    );
    say!(interrupted, "");

    let (got_tx, got_rx) = mpsc::channel::<(String, String)>();
    let receiver = std::sync::Arc::new(receiver);
    let r = receiver.clone();
    let stop = interrupted.clone();
    let recv_thread = std::thread::spawn(move || {
        r.serve(
            |req| {
                let v: serde_json::Value = serde_json::from_slice(&req.body).unwrap_or_default();
                let id = v["id"].as_str().unwrap_or("?").to_string();
                let t = v["type"].as_str().unwrap_or("?").to_string();
                got_tx.send((id, t)).is_ok()
            },
            |why| say!(stop, "  ✗ receiver refused a request: {why}"),
        )
    });

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let daemon_config = config.clone();
    let daemon = std::thread::spawn(move || {
        crate::daemon::run_until(daemon_config, async {
            let _ = stop_rx.await;
        })
    });
    let socket = config.ingest.socket.clone();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut client = loop {
        match Client::connect(&socket) {
            Ok(c) => break c,
            Err(_) if Instant::now() < deadline && !daemon.is_finished() => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => return Err(e.into()),
        }
    };

    let flag = interrupted.clone();
    let _ = ctrlc_flag(flag);
    let total = a.events;
    let (mut emitted, mut received, mut own) = (0u64, 0u64, 0u64);
    let mut sent_at = std::collections::HashMap::new();
    // edgehook's own first events: device-provisioned and the built-in inventory.
    let own_expected = 2;
    let done =
        |received: u64, own: u64| total.is_some_and(|n| received >= n) && own >= own_expected;
    while !done(received, own) && !interrupted.load(std::sync::atomic::Ordering::SeqCst) {
        if total.is_none_or(|n| emitted < n) {
            let (t, data) = SAMPLES[(emitted as usize) % SAMPLES.len()];
            let data: &RawValue = serde_json::from_str(data).expect("samples are JSON");
            let request = Request::Emit(Emit {
                event_type: Some(t.to_string()),
                data: Some(data),
                ..Emit::default()
            });
            match client.call(&request)? {
                Reply::Ok(done) => {
                    let id = done.id.unwrap_or_default();
                    say!(
                        interrupted,
                        "  → emitted   {t:<20} {id}  (stored durably, then acknowledged)"
                    );
                    sent_at.insert(id, Instant::now());
                }
                Reply::Err { code, error } => {
                    say!(interrupted, "  ✗ emit refused: {code}: {error}")
                }
            }
            emitted += 1;
        }
        let wait_until = crate::config::units::later(Instant::now(), a.every);
        while let Ok((id, t)) =
            got_rx.recv_timeout(wait_until.saturating_duration_since(Instant::now()))
        {
            match sent_at.get(&id) {
                Some(at) => {
                    received += 1;
                    let ms = at.elapsed().as_millis();
                    say!(
                        interrupted,
                        "  ✓ received  {t:<20} {id}  signature verified, {ms} ms after emit"
                    );
                }
                None => {
                    own += 1;
                    say!(
                        interrupted,
                        "  ✓ received  {t:<20} {id}  signature verified (edgehook's own event)"
                    );
                }
            }
            if done(received, own) {
                break;
            }
        }
        if total.is_some_and(|n| emitted >= n)
            && (received < emitted || own < own_expected)
            && Instant::now() > deadline + Duration::from_secs(60)
        {
            return Err(fail("events were not received within a minute".into()));
        }
    }
    let _ = stop_tx.send(());
    receiver.unblock();
    let daemon_result = daemon
        .join()
        .map_err(|_| fail("the daemon thread panicked".into()))?;
    let _ = recv_thread.join();
    daemon_result?;
    say!(interrupted, "");
    say!(
        interrupted,
        "{received} of {emitted} events delivered, and {own} of edgehook's own (device-provisioned, devices-inventory-changed), each signed with Standard Webhooks and verified."
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(Code::Ok)
}

fn tempfile_dir() -> std::io::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("edgehook-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Ctrl-C ends the demo loop instead of killing the process, so the daemon stops cleanly.
fn ctrlc_flag(flag: std::sync::Arc<std::sync::atomic::AtomicBool>) -> std::io::Result<()> {
    use nix::sys::signal::{SigHandler, Signal, signal};
    static FLAG: std::sync::OnceLock<std::sync::Arc<std::sync::atomic::AtomicBool>> =
        std::sync::OnceLock::new();
    let _ = FLAG.set(flag);
    extern "C" fn on_int(_: i32) {
        if let Some(f) = FLAG.get() {
            f.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe { signal(Signal::SIGINT, SigHandler::Handler(on_int)) }.map_err(std::io::Error::from)?;
    Ok(())
}

//! Helpers for tests that run edgehook as a real process: the daemon, a real HTTP receiver on
//! 127.0.0.1 port 0 that can be stopped and started again, socket clients, and waiting for a
//! condition with a deadline.
#![allow(dead_code, unused_imports)]

pub mod broker;
pub mod memory;
pub mod pki;
pub mod raw_server;
pub mod receiver;
pub mod reference;
pub mod webhook_libs;

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use edgehook::client::{Client, Reply};
use serde_json::{Value, json};

pub use pki::{make_pki, openssl_available, openssl_hmac_sha256};
pub use receiver::{Behaviour, Receiver, Request, Response};
pub use reference::ReferenceReceiver;

/// A command running the edgehook binary, through `EDGEHOOK_TEST_RUNNER` when it is set (for
/// example `qemu-aarch64-static -L /usr/aarch64-linux-gnu` for ARM builds).
pub fn edgehook() -> Command {
    let bin = env!("CARGO_BIN_EXE_edgehook");
    match std::env::var("EDGEHOOK_TEST_RUNNER")
        .ok()
        .filter(|r| !r.trim().is_empty())
    {
        Some(runner) => {
            let mut parts = runner.split_whitespace();
            let mut cmd = Command::new(parts.next().expect("a runner"));
            cmd.args(parts).arg(bin);
            cmd
        }
        None => Command::new(bin),
    }
}

/// Whether the edgehook binary runs under an emulator (`EDGEHOOK_TEST_RUNNER`).
pub fn emulated() -> bool {
    std::env::var("EDGEHOOK_TEST_RUNNER").is_ok_and(|r| !r.trim().is_empty())
}

/// The count of a load or fault loop: `n` natively, a tenth of it (at least 1) under an
/// emulator, where each step costs about ten times as much and CI has the time of the whole
/// suite twice over (aarch64 and armv7). The native run keeps the full count; the emulated one
/// checks the same behaviour on the device's architecture.
pub fn scaled(n: usize) -> usize {
    if emulated() {
        static SAID: std::sync::Once = std::sync::Once::new();
        SAID.call_once(|| {
            eprintln!("under an emulator: load and fault loops run at a tenth of their count")
        });
        (n / 10).max(1)
    } else {
        n
    }
}

/// How long a one-off command (`edgehook verify`, `edgehook dead-letters` …) may take.
pub const COMMAND_LIMIT: Duration = Duration::from_secs(120);

/// Runs `edgehook --config CONFIG ARGS…` to completion, within `COMMAND_LIMIT`.
pub fn run(config: &Path, args: &[&str]) -> Output {
    output_within(
        edgehook().arg("--config").arg(config).args(args),
        COMMAND_LIMIT,
    )
}

/// `cmd.output()` with stdin from /dev/null, but a command still running after `limit` is
/// killed and the test fails saying which, rather than hang its binary (under qemu-user, a
/// forked child can hang before it reaches exec: scripts/lib/cross.sh).
pub fn output_within(cmd: &mut Command, limit: Duration) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?} starts: {e}"));
    // The child is reaped only when `wait_with_output` returns, which past the limit it has
    // not (but for a race of microseconds), so the pid still names it then.
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    match rx.recv_timeout(limit) {
        Ok(out) => out.unwrap_or_else(|e| panic!("{cmd:?} runs: {e}")),
        Err(_) => {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            panic!("{cmd:?} did not finish within {limit:?}")
        }
    }
}

/// Waits until `cond` holds, or panics with `what` after `limit`.
pub fn wait_until(limit: Duration, what: &str, cond: impl FnMut() -> bool) {
    wait_until_or(limit, cond, || {
        format!("timed out after {limit:?} waiting for {what}")
    });
}

/// Waits until `cond` holds, or panics after `limit` with what `explain` says then (the state
/// that shows why).
pub fn wait_until_or(
    limit: Duration,
    mut cond: impl FnMut() -> bool,
    explain: impl FnOnce() -> String,
) {
    let deadline = Instant::now() + limit;
    let mut pause = Duration::from_millis(2);
    while !cond() {
        if Instant::now() >= deadline {
            panic!("{}", explain());
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// A test's directory with its config file.
pub struct Setup {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
}

impl Setup {
    /// A directory whose config has the outbox and socket inside it, plus `rest` (sinks …).
    pub fn new(rest: &str) -> Setup {
        let dir = tempfile::tempdir().expect("a temp dir");
        let config = dir.path().join("edgehook.toml");
        let s = Setup { dir, config };
        s.write_config(rest);
        s
    }

    /// Rewrites the config with the same outbox and socket and a new `rest`. The inventory is
    /// off unless `rest` has an `[inventory]` section, and a sink without `events` gets
    /// `["*", "!device*"]`, so tests of the pipeline see only their own events.
    pub fn write_config(&self, rest: &str) {
        self.write_config_with("", rest);
    }

    /// `write_config` with more `[storage]` keys (`durability = "normal"`, …).
    pub fn write_config_with(&self, storage: &str, rest: &str) {
        self.write_config_sections(storage, "", rest);
    }

    /// `write_config_with` with more `[ingest]` keys (`max_connections = 10`, …) too.
    pub fn write_config_sections(&self, storage: &str, ingest: &str, rest: &str) {
        let rest = &without_device_events(rest);
        let d = self.dir.path().display();
        let inventory = if rest.contains("[inventory]") {
            ""
        } else {
            "[inventory]\nbuiltin = false\nscripts_dirs = []\n"
        };
        let text = format!(
            "[storage]\npath = \"{d}/outbox.db\"\n{storage}[ingest]\nsocket = \"{d}/ingest.sock\"\n{ingest}\n[daemon]\nshutdown_timeout = \"2s\"\n{inventory}{rest}"
        );
        std::fs::write(&self.config, text).expect("config written");
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("ingest.sock")
    }

    pub fn db(&self) -> PathBuf {
        self.dir.path().join("outbox.db")
    }

    /// Starts the daemon and waits until it answers on its socket.
    pub fn start(&self) -> Daemon {
        Daemon::start(self, Launch::default())
    }

    /// Starts the daemon under `wrapper` (a program and its arguments, which run the command
    /// that follows them, as `strace -o …` does) and waits until it answers on its socket.
    /// The daemon's signals go to the wrapper's children: the daemon, or the emulator running
    /// it.
    pub fn start_under(&self, wrapper: &[&str]) -> Daemon {
        Daemon::start(
            self,
            Launch {
                wrapper: wrapper.iter().map(|w| w.to_string()).collect(),
                ..Launch::default()
            },
        )
    }

    /// Starts the daemon with `env` added to its environment (under an emulator, the
    /// emulator's, which passes it on) and waits until it answers on its socket.
    pub fn start_with_env(&self, env: &[(&str, &OsStr)]) -> Daemon {
        Daemon::start(
            self,
            Launch {
                env: env
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_os_string()))
                    .collect(),
                ..Launch::default()
            },
        )
    }

    /// `edgehook status --json`.
    pub fn status(&self) -> Value {
        let out = run(&self.config, &["status", "--json"]);
        assert!(
            out.status.success(),
            "status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("status --json is JSON")
    }

    /// One sink's entry in `status --json`.
    pub fn sink_status(&self, name: &str) -> Value {
        self.status()["sinks"]
            .as_array()
            .expect("sinks")
            .iter()
            .find(|s| s["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no sink {name} in status"))
    }

    pub fn client(&self) -> Client {
        Client::connect(&self.socket()).expect("the daemon answers")
    }
}

/// `rest` with `events = ["*", "!device*"]` in each `[[sink]]` that has no `events` key.
fn without_device_events(rest: &str) -> String {
    let mut out = String::new();
    let mut lines = rest.lines().peekable();
    while let Some(line) = lines.next() {
        out.push_str(line);
        out.push('\n');
        if line.trim() != "[[sink]]" {
            continue;
        }
        let mut section = Vec::new();
        while let Some(next) = lines.peek() {
            if next.trim_start().starts_with('[') {
                break;
            }
            section.push(lines.next().expect("peeked"));
        }
        if !section.iter().any(|l| l.trim_start().starts_with("events")) {
            out.push_str("events = [\"*\", \"!device*\"]\n");
        }
        for l in section {
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

/// A sink section for an HTTP receiver with Standard Webhooks signing and quick retries.
pub fn http_sink(name: &str, url: &str, secret: &str, extra: &str) -> String {
    format!(
        "[[sink]]\nname = \"{name}\"\nurl = \"{url}\"\n{extra}\n[sink.signing]\nscheme = \"standard\"\nsecret = \"{secret}\"\n[sink.retry]\ninitial = \"20ms\"\nmax = \"500ms\"\nmax_attempts = 3\n"
    )
}

pub const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// How a daemon is launched, beyond its config.
#[derive(Default)]
struct Launch {
    /// What runs the daemon (`Setup::start_under`); empty for nothing.
    wrapper: Vec<String>,
    /// Added to its environment (`Setup::start_with_env`).
    env: Vec<(String, OsString)>,
}

/// A running daemon process.
pub struct Daemon {
    child: Option<Child>,
    launch: Launch,
    config: PathBuf,
    socket: PathBuf,
    log: PathBuf,
    starts: u32,
}

impl Daemon {
    fn start(setup: &Setup, launch: Launch) -> Daemon {
        let mut d = Daemon {
            child: None,
            launch,
            config: setup.config.clone(),
            socket: setup.socket(),
            log: setup.dir.path().join("daemon.log"),
            starts: 0,
        };
        d.spawn();
        d
    }

    fn spawn(&mut self) {
        self.launch();
        self.wait_ready();
    }

    /// `kill -9`, then a new process without waiting for it to be ready (to kill it again
    /// while it starts up).
    pub fn restart_unready(&mut self) {
        self.kill9();
        self.launch();
    }

    /// Waits until the daemon answers on its socket; panics with its log if it exits first.
    pub fn wait_ready(&mut self) {
        let socket = self.socket.clone();
        let log_path = self.log.clone();
        // A minute: an emulator under strace starts slowly.
        let deadline = Instant::now() + Duration::from_secs(60);
        let exited = loop {
            if edgehook::client::daemon_running(&socket) {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "the daemon did not become ready: {}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        panic!(
            "the daemon exited with {exited:?}: {}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
    }

    fn launch(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let daemon = edgehook();
        let mut command = match self.launch.wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args)
                    .arg(daemon.get_program())
                    .args(daemon.get_args());
                c
            }
            None => daemon,
        };
        let child = command
            .arg("--config")
            .arg(&self.config)
            .arg("run")
            .envs(self.launch.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("the daemon starts");
        self.child = Some(child);
        self.starts += 1;
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    /// `kill -9`, then wait for the process to be gone.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            if !self.launch.wrapper.is_empty() {
                self.signal(c.id(), "KILL");
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait; returns the exit code (under a wrapper, the wrapper's).
    pub fn terminate(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        self.signal(c.id(), "TERM");
        c.wait().ok().and_then(|s| s.code())
    }

    pub fn hup(&self) {
        self.signal(self.pid() as u32, "HUP");
    }

    /// Sends signal `name` to the daemon whose process (or wrapper's) is `pid`.
    fn signal(&self, pid: u32, name: &str) {
        if self.launch.wrapper.is_empty() {
            signal(pid as i32, name);
        } else {
            // pkill fails when no child is left, which a wrapper outliving its child may be.
            let _ = Command::new("pkill")
                .arg(format!("-{name}"))
                .arg("-P")
                .arg(pid.to_string())
                .status();
        }
    }

    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn signal(pid: i32, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -{name} {pid} failed");
}

/// Emits `n` events of type `t` with data `{"client": c, "n": i}` over one connection, keeping
/// up to `window` requests in flight; returns the acknowledged ids in order.
pub fn emit_pipelined(
    socket: &Path,
    client: usize,
    n: usize,
    t: &str,
    window: usize,
) -> Vec<String> {
    let mut c = Client::connect(socket).expect("connect");
    let mut ids = Vec::with_capacity(n);
    let mut sent = 0;
    while ids.len() < n {
        while sent < n && sent - ids.len() < window {
            c.send(&json!({"type": t, "data": {"client": client, "n": sent}}))
                .expect("send");
            sent += 1;
        }
        match c.recv().expect("reply") {
            Reply::Ok(v) => ids.push(v.id.expect("id")),
            Reply::Err { code, error } => panic!("emit refused: {code}: {error}"),
        }
    }
    ids
}

/// The bodies of the events of type `t` the receiver took, each once, in the order they first
/// arrived. A delivery whose acknowledgement was not yet committed when the daemon was killed
/// comes again after the restart (at least once, by design); the tests that bound such
/// redeliveries count them with `check_arrivals`.
pub fn of_type(receiver: &Receiver, t: &str) -> Vec<Value> {
    let mut seen = std::collections::HashSet::new();
    receiver
        .delivered()
        .iter()
        .map(|r| r.json())
        .filter(|v| v["type"] == t && seen.insert(v["id"].to_string()))
        .collect()
}

/// Emits one event and returns its id.
pub fn emit_one(socket: &Path, t: &str, data: Value) -> String {
    let mut c = Client::connect(socket).expect("connect");
    match c.call(&json!({"type": t, "data": data})).expect("reply") {
        Reply::Ok(v) => v.id.expect("id"),
        Reply::Err { code, error } => panic!("emit refused: {code}: {error}"),
    }
}

/// Checks a received request's Standard Webhooks signature with edgehook's verifier.
pub fn verify_standard(req: &Request, secret: &str) -> Result<(), String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    edgehook::sinks::signing::verify(
        edgehook::sinks::signing::Scheme::Standard,
        secret,
        &req.headers,
        &req.body,
        now,
        Duration::from_secs(300),
    )
    .map_err(|e| e.to_string())
}

/// `edgehook --config CONFIG sink ARGS…`.
pub fn sink_cmd(setup: &Setup, args: &[&str]) -> Output {
    let mut all = vec!["sink"];
    all.extend_from_slice(args);
    run(&setup.config, &all)
}

/// Every file of `dir` with its content (none when `dir` does not exist).
pub fn snapshot(dir: &Path) -> BTreeMap<String, String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .map(|e| e.unwrap().path())
                .map(|p| {
                    let name = p.file_name().unwrap().to_string_lossy().into_owned();
                    (name, std::fs::read_to_string(&p).unwrap_or_default())
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The standard output of a command that must have succeeded.
pub fn succeeded(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Checks that a command exited 78 (configuration error) saying `reason`.
pub fn refused_with_78(out: &Output, reason: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains(reason), "{reason:?} not in: {stderr}");
}

//! The sinks' one owner: a thread that holds every running sink and applies the control
//! commands (reload, redeliver, resume, stop) one at a time, as the outbox thread owns SQLite.
//! Nothing else touches a sink, so no lock guards them; the daemon's loop only queues commands
//! and never waits for one to be carried out.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot, watch};

use super::{DaemonError, join_until, provide_secrets};
use crate::config::Config;
use crate::outbox::{Outbox, Redeliver, Route};
use crate::protocol::Done;
use crate::sinks::SinkRunner;
use crate::sources::control::{Answer, Refusal};
use crate::sources::ingest;
use crate::wake::Wake;

/// Commands waiting for the supervisor at most; a further `redeliver` or `resume` is answered
/// `busy`. A flood of control requests thus holds this many slots and no thread. Reloads take
/// at most one slot between them (see [`Supervisor::reload`]).
const QUEUE: usize = 64;

/// Where the answer to a control request goes.
pub type Reply = oneshot::Sender<Answer>;

/// The config each reload applied, for the device source; `None` until the first reload.
pub type Configs = watch::Receiver<Option<Arc<Config>>>;

/// What the supervisor is asked to do.
#[derive(Debug)]
enum Command {
    /// Run the reload waiting in [`Shared::reloads`], if one still waits; the command only
    /// wakes the supervisor, so that reloads asked together share one.
    Reload,
    /// Dead letters back to their queues; the sinks that got some read their queues again.
    Redeliver(Redeliver, Reply),
    /// Un-pause a sink paused by 410.
    Resume(String, Reply),
    /// Stop the sinks by [`Shared::stop`]'s deadline; what is still queued is answered "the
    /// daemon is stopping".
    Stop,
}

impl Command {
    /// Answers the command's requester, if it has one, with `refusal`.
    fn refuse(self, refusal: Refusal) {
        match self {
            Command::Redeliver(_, reply) | Command::Resume(_, reply) => {
                let _ = reply.send(Err(refusal));
            }
            Command::Reload | Command::Stop => {}
        }
    }
}

/// What the daemon's loop and the supervisor's thread share.
#[derive(Default)]
struct Shared {
    /// The requesters of the reload asked and not yet begun (`Some` from the first request
    /// until the supervisor takes them all for one reload). The lock is held only to add one
    /// or take all, never across anything else. Its size is bounded by the socket's answers in
    /// waiting (`ingest.max_connections` times 256).
    reloads: Mutex<Option<Vec<Reply>>>,
    /// When the sinks must have stopped, once the daemon stops.
    stop: OnceLock<Instant>,
    /// The running config's `daemon.shutdown_timeout`, in milliseconds.
    shutdown_timeout_ms: AtomicU64,
}

impl Shared {
    fn take_reloads(&self) -> Option<Vec<Reply>> {
        self.reloads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    fn stopping(&self) -> bool {
        self.stop.get().is_some()
    }
}

/// The daemon loop's side of the supervisor: every method queues and returns at once.
pub struct Supervisor {
    commands: mpsc::Sender<Command>,
    shared: Arc<Shared>,
    thread: JoinHandle<()>,
}

impl Supervisor {
    /// Routes and starts the sinks of `config`, then hands them to the supervisor's thread.
    /// Returns the supervisor, how many sinks run, and the configs later reloads apply.
    pub fn start(
        config: &Config,
        outbox: Outbox,
        device_id: String,
        access: Arc<ingest::Rules>,
    ) -> Result<(Supervisor, usize, Configs), DaemonError> {
        let shared = Arc::new(Shared::default());
        let (configs, configs_rx) = watch::channel(None);
        let mut sinks = Sinks {
            running: Vec::new(),
            outbox,
            device_id,
            max_age: config.storage.max_age,
            config_path: config.path.clone(),
            shutdown_timeout: config.shutdown_timeout,
            configs,
            shared: shared.clone(),
            access,
        };
        sinks.set_shutdown_timeout(config.shutdown_timeout);
        sinks.running = sinks.start_sinks(config)?;
        let count = sinks.running.len();
        let (commands, rx) = mpsc::channel(QUEUE);
        let thread = std::thread::Builder::new()
            .name("supervisor".into())
            .spawn(move || sinks.run(rx))
            .map_err(|e| DaemonError::Internal(format!("cannot start a thread: {e}")))?;
        let supervisor = Supervisor {
            commands,
            shared,
            thread,
        };
        Ok((supervisor, count, configs_rx))
    }

    /// Asks for the config files to be read again (SIGHUP, or the socket's `reload` with
    /// `reply`). A reload asked while another waits to begin joins it, and every requester gets
    /// the answer of that one reload; so reloads asked while one runs make one more between
    /// them, and are never refused `busy`.
    pub fn reload(&self, reply: Option<Reply>) {
        let first = {
            let mut waiting = self
                .shared
                .reloads
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let first = waiting.is_none();
            waiting.get_or_insert_with(Vec::new).extend(reply);
            first
        };
        if !first {
            return;
        }
        // A full queue needs no wake-up: the supervisor looks for a waiting reload after every
        // command. A closed one means the daemon is stopping: the requesters hear so.
        if let Err(TrySendError::Closed(_)) = self.commands.try_send(Command::Reload) {
            drop(self.shared.take_reloads());
        }
    }

    /// Asks for dead letters back in their queues; `reply` gets what was done.
    pub fn redeliver(&self, which: Redeliver, reply: Reply) {
        self.queue(Command::Redeliver(which, reply));
    }

    /// Asks for the sink `name` to be un-paused; `reply` gets whether it was paused.
    pub fn resume(&self, name: String, reply: Reply) {
        self.queue(Command::Resume(name, reply));
    }

    fn queue(&self, command: Command) {
        match self.commands.try_send(command) {
            Ok(()) => {}
            Err(TrySendError::Full(command)) => command.refuse(Refusal::busy()),
            // Dropping the reply tells the requester that the daemon is stopping.
            Err(TrySendError::Closed(_)) => {}
        }
    }

    /// The running config's `daemon.shutdown_timeout`.
    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_millis(self.shared.shutdown_timeout_ms.load(Ordering::Relaxed))
    }

    /// Asks the supervisor to stop the sinks by `deadline` (or by the deadline of an earlier
    /// call), and answer whatever waits "the daemon is stopping". Returns the deadline.
    pub fn stop(&self, deadline: Instant) -> Instant {
        let deadline = *self.shared.stop.get_or_init(|| deadline);
        // A full queue needs no wake-up: the supervisor checks for a stop after every command.
        let _ = self.commands.try_send(Command::Stop);
        deadline
    }

    /// Stops the sinks (now with the running config's timeout, unless [`Supervisor::stop`]
    /// was called) and waits for them until the deadline; returns the deadline.
    pub fn finish(self) -> Instant {
        let deadline = self.stop(crate::config::units::later(
            Instant::now(),
            self.shutdown_timeout(),
        ));
        // A reload caught midway starts its sinks before it sees the stop: a little slack.
        join_until(self.thread, deadline + Duration::from_secs(1));
        deadline
    }
}

/// The running sinks and what starting them needs: the supervisor thread's own.
struct Sinks {
    running: Vec<SinkRunner>,
    outbox: Outbox,
    device_id: String,
    max_age: Duration,
    config_path: PathBuf,
    shutdown_timeout: Duration,
    /// Each reloaded config, for the device source: a watch never blocks the sender and keeps
    /// only the newest config, which is all the device source needs.
    configs: watch::Sender<Option<Arc<Config>>>,
    shared: Arc<Shared>,
    /// Who may use the socket's admin ops (`ingest.admin_group`, resolved again at a reload).
    access: Arc<ingest::Rules>,
}

impl Sinks {
    /// Carries out commands until told to stop, then stops the sinks.
    fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        while let Some(command) = commands.blocking_recv() {
            if self.shared.stopping() {
                break;
            }
            match command {
                Command::Reload => {}
                Command::Redeliver(which, reply) => {
                    let _ = reply.send(self.redeliver(which));
                }
                Command::Resume(name, reply) => {
                    let _ = reply.send(self.resume(&name));
                }
                Command::Stop => break,
            }
            // After each command, so that a reload asked while the queue was full runs too,
            // and reloads asked without end still let the other commands through.
            if let Some(requesters) = self.shared.take_reloads() {
                let answer = self.reload();
                for r in requesters {
                    let _ = r.send(answer.clone());
                }
            }
        }
        // What is still queued is dropped with its reply: the requester hears that the daemon
        // is stopping.
        commands.close();
        while commands.try_recv().is_ok() {}
        drop(self.shared.take_reloads());
        let deadline =
            self.shared.stop.get().copied().unwrap_or_else(|| {
                crate::config::units::later(Instant::now(), self.shutdown_timeout)
            });
        stop_all(std::mem::take(&mut self.running), deadline);
    }

    fn set_shutdown_timeout(&mut self, timeout: Duration) {
        self.shutdown_timeout = timeout;
        let ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        self.shared.shutdown_timeout_ms.store(ms, Ordering::Relaxed);
    }

    /// Routes and starts every sink of `config`; on failure nothing of the new set runs.
    fn start_sinks(&self, config: &Config) -> Result<Vec<SinkRunner>, DaemonError> {
        let specs: Vec<_> = config.sinks.iter().map(|s| Arc::new(s.clone())).collect();
        let wakes: Vec<_> = specs.iter().map(|_| Arc::new(Wake::new())).collect();
        let routes = specs
            .iter()
            .zip(&wakes)
            .map(|(spec, wake)| Route {
                spec: spec.clone(),
                wake: wake.clone(),
            })
            .collect();
        let ids = self
            .outbox
            .set_routes_blocking(routes)
            .map_err(DaemonError::Internal)?;
        let mut runners = Vec::new();
        for ((spec, wake), id) in specs.into_iter().zip(wakes).zip(ids) {
            if !spec.enabled {
                continue;
            }
            match SinkRunner::start(
                spec,
                id,
                self.outbox.clone(),
                wake,
                &self.device_id,
                self.max_age,
            ) {
                Ok(r) => runners.push(r),
                Err(e) => {
                    stop_all(runners, Instant::now());
                    return Err(e.into());
                }
            }
        }
        Ok(runners)
    }

    /// Reads the files again and restarts the sinks with them; an invalid file keeps the
    /// running config. Answers how many sinks run, or why the new config was refused.
    fn reload(&mut self) -> Answer {
        let config = match Config::load(&self.config_path)
            .map_err(|e| e.to_string())
            .and_then(|mut c| {
                provide_secrets(&mut c)
                    .map(|()| c)
                    .map_err(|e| e.to_string())
            }) {
            Ok(c) => c,
            Err(e) => {
                log::error!("Reload refused, the running config stays: {e}");
                return Err(Refusal::new("invalid", e));
            }
        };
        self.access.set(ingest::Access::resolve(
            config.ingest.admin_group.as_deref(),
        ));
        stop_all(
            std::mem::take(&mut self.running),
            crate::config::units::later(Instant::now(), self.shutdown_timeout),
        );
        if self.shared.stopping() {
            return Err(stopping());
        }
        let result = match self.start_sinks(&config) {
            Ok(runners) => {
                self.running = runners;
                self.set_shutdown_timeout(config.shutdown_timeout);
                log::info!(
                    "Reloaded {}: {} sink(s) running",
                    self.config_path.display(),
                    self.running.len()
                );
                Ok(Done {
                    sinks: Some(self.running.len() as u64),
                    ..Done::default()
                })
            }
            Err(e) => {
                log::error!("Reload failed, no sink is running until the next reload: {e}");
                Err(Refusal::new(
                    "invalid",
                    format!("the sinks could not start: {e}"),
                ))
            }
        };
        self.configs.send_replace(Some(Arc::new(config)));
        result
    }

    /// Dead letters back to their queues; the sinks that got some read their queues again.
    fn redeliver(&mut self, which: Redeliver) -> Answer {
        let done = self
            .outbox
            .redeliver_blocking(which)
            .map_err(|_| Refusal::new("internal", "storage error: nothing was redelivered"))?;
        let deadline = crate::config::units::later(Instant::now(), self.shutdown_timeout);
        for runner in std::mem::take(&mut self.running) {
            if !done.sinks.iter().any(|n| n == runner.name()) {
                self.running.push(runner);
                continue;
            }
            let name = runner.name().to_string();
            match runner.restart(deadline) {
                Ok(r) => self.running.push(r),
                Err(e) => {
                    log::error!(sink = name.as_str(); "Sink {name} could not start again after a redelivery: {e}")
                }
            }
        }
        log::info!(
            "{} dead letter(s) back in the queues of {}",
            done.count,
            done.sinks.join(", ")
        );
        Ok(Done {
            redelivered: Some(done.count as u64),
            missing: Some(done.missing),
            ..Done::default()
        })
    }

    /// Un-pauses a sink paused by 410.
    fn resume(&self, name: &str) -> Answer {
        let Some(runner) = self.running.iter().find(|r| r.name() == name) else {
            return Err(Refusal::new(
                "invalid",
                format!(
                    "no running sink is called `{}`",
                    name.chars().take(64).collect::<String>()
                ),
            ));
        };
        let was_paused = runner.resume();
        if was_paused {
            log::info!(sink = name; "Sink {name} resumed");
        }
        Ok(Done {
            changed: Some(was_paused),
            ..Done::default()
        })
    }
}

/// A reload that stopped the sinks and then saw the daemon stopping starts none.
fn stopping() -> Refusal {
    Refusal::new("internal", "the daemon is stopping; no sink was started")
}

fn stop_all(runners: Vec<SinkRunner>, deadline: Instant) {
    for r in &runners {
        r.stop();
    }
    for r in runners {
        let name = r.name().to_string();
        if !r.join(deadline) {
            log::warn!(sink = name.as_str(); "Sink {name} did not finish its attempt in time; it will be retried");
        }
    }
}

//! The daemon: opens the outbox, starts the sinks, serves the socket, talks to systemd, and
//! stops cleanly. The sinks and the outbox run on threads of their own; the async runtime (one
//! thread) serves the socket, signals and timers.

pub mod logging;
pub mod systemd;

use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, watch};

use crate::config::generated::{self, SecretError};
use crate::config::{Config, ConfigError};
use crate::outbox::{Opened, Outbox, Route, StoreError, now_ms};
use crate::protocol::Done;
use crate::sinks::{SinkError, SinkRunner};
use crate::sources::control::{self, Op};
use crate::sources::device::DeviceSource;
use crate::sources::ingest::{self, BindError, Ingest};
use crate::wake::Wake;

/// Why the daemon could not run.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The config file is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The outbox is unusable.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The socket could not be set up.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// A sink could not start.
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// A generated secret could not be kept.
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// Something else failed.
    #[error("{0}")]
    Internal(String),
}

/// The running pipeline.
struct Pipeline {
    outbox: Outbox,
    opened: Opened,
    max_age: Duration,
    sinks: Mutex<Vec<SinkRunner>>,
    shutdown_timeout: Mutex<Duration>,
    config_path: PathBuf,
    /// Requests for the device source.
    device: mpsc::Sender<control::Request>,
    /// Who may use the socket's admin ops (`ingest.admin_group`, resolved again at a reload).
    access: Arc<ingest::Rules>,
}

impl Pipeline {
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
                &self.opened.device_id,
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

    /// SIGHUP or the socket's `reload`: read the files again and restart the sinks with them;
    /// an invalid file keeps the running config. Returns how many sinks run, or why the new
    /// config was refused.
    fn reload(&self) -> Result<usize, String> {
        // Held throughout, so reloads asked at once apply one after the other, each reading the
        // files as they are when its turn comes.
        let mut sinks = self.sinks.lock().unwrap_or_else(|p| p.into_inner());
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
                return Err(e);
            }
        };
        let timeout = *self
            .shutdown_timeout
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        self.access.set(ingest::Access::resolve(
            config.ingest.admin_group.as_deref(),
        ));
        stop_all(std::mem::take(&mut *sinks), Instant::now() + timeout);
        let result = match self.start_sinks(&config) {
            Ok(runners) => {
                *sinks = runners;
                *self
                    .shutdown_timeout
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = config.shutdown_timeout;
                log::info!(
                    "Reloaded {}: {} sink(s) running",
                    self.config_path.display(),
                    sinks.len()
                );
                Ok(sinks.len())
            }
            Err(e) => {
                log::error!("Reload failed, no sink is running until the next reload: {e}");
                Err(format!("the sinks could not start: {e}"))
            }
        };
        let (reply, _) = tokio::sync::oneshot::channel();
        let _ = self.device.blocking_send(control::Request {
            op: Op::Reload(Box::new(config)),
            reply,
        });
        result
    }
}

/// Logs the config's warnings, and gives the sinks awaiting a generated secret theirs, saying
/// which were generated now (never the secret itself).
fn provide_secrets(config: &mut Config) -> Result<(), SecretError> {
    for w in &config.warnings {
        log::warn!("{w}");
    }
    for (name, path) in generated::provide(config)? {
        log::info!(sink = name.as_str();
            "Generated a signing secret for sink {name}, kept in {}; `edgehook sink show {name} --reveal-secret` shows it for the receiver", path.display());
    }
    Ok(())
}

impl Pipeline {
    fn deadline(&self) -> Instant {
        Instant::now()
            + *self
                .shutdown_timeout
                .lock()
                .unwrap_or_else(|p| p.into_inner())
    }

    /// Dead letters back to their queues; the sinks that got some read their queues again.
    fn redeliver(&self, which: crate::outbox::Redeliver) -> control::Answer {
        let mut sinks = self.sinks.lock().unwrap_or_else(|p| p.into_inner());
        let done = self.outbox.redeliver_blocking(which).map_err(|_| {
            control::Refusal::new("internal", "storage error: nothing was redelivered")
        })?;
        let deadline = self.deadline();
        for runner in std::mem::take(&mut *sinks) {
            if !done.sinks.iter().any(|n| n == runner.name()) {
                sinks.push(runner);
                continue;
            }
            let name = runner.name().to_string();
            match runner.restart(deadline) {
                Ok(r) => sinks.push(r),
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
    fn resume(&self, name: &str) -> control::Answer {
        let sinks = self.sinks.lock().unwrap_or_else(|p| p.into_inner());
        let Some(runner) = sinks.iter().find(|r| r.name() == name) else {
            return Err(control::Refusal::new(
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

/// Serves one control request: sink operations here, the rest by the device source.
async fn dispatch(
    pipeline: &Arc<Pipeline>,
    device: &mpsc::Sender<control::Request>,
    request: control::Request,
) {
    let control::Request { op, reply } = request;
    let work: Box<dyn FnOnce(&Pipeline) -> control::Answer + Send> = match op {
        Op::Redeliver(which) => Box::new(move |p| p.redeliver(which)),
        Op::Resume(name) => Box::new(move |p| p.resume(&name)),
        Op::ReloadFiles => Box::new(|p| {
            let running = p
                .reload()
                .map_err(|e| control::Refusal::new("invalid", e))?;
            Ok(Done {
                sinks: Some(running as u64),
                ..Done::default()
            })
        }),
        op => {
            let _ = device.send(control::Request { op, reply }).await;
            return;
        }
    };
    let p = pipeline.clone();
    tokio::spawn(async move {
        let answer = tokio::task::spawn_blocking(move || work(&p))
            .await
            .unwrap_or_else(|_| Err(control::Refusal::new("internal", "the request failed")));
        let _ = reply.send(answer);
    });
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

/// Runs the daemon until SIGTERM or SIGINT.
pub fn run(config: Config) -> Result<(), DaemonError> {
    run_until(config, async {
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            std::future::pending::<()>().await;
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

/// Runs the daemon until `shutdown` completes.
pub fn run_until(
    mut config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    provide_secrets(&mut config)?;
    raise_open_files(config.ingest.max_connections);
    let (outbox, opened, store_thread) =
        Outbox::open(&config.storage, config.device.id.as_deref())?;
    if let Some(aside) = &opened.moved_aside {
        log::error!(
            "The outbox {} is damaged ({}); it was moved to {} and a fresh outbox started",
            config.storage.path.display(),
            aside.why,
            aside.to.display()
        );
    }
    let (control_tx, control_rx) = mpsc::channel(64);
    let (device_tx, device_rx) = mpsc::channel(64);
    let device = DeviceSource::new(
        outbox.clone(),
        opened.device_id.clone(),
        &config,
        opened.facts.clone(),
    );
    let pipeline = Arc::new(Pipeline {
        outbox: outbox.clone(),
        opened,
        max_age: config.storage.max_age,
        sinks: Mutex::new(Vec::new()),
        shutdown_timeout: Mutex::new(config.shutdown_timeout),
        config_path: config.path.clone(),
        device: device_tx,
        access: Arc::new(ingest::Rules::new(ingest::Access::resolve(
            config.ingest.admin_group.as_deref(),
        ))),
    });
    let runners = pipeline.start_sinks(&config)?;
    let sink_count = runners.len();
    *pipeline.sinks.lock().unwrap_or_else(|p| p.into_inner()) = runners;
    let socket = ingest::listen(&config.ingest)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| DaemonError::Internal(format!("cannot start the runtime: {e}")))?;
    log::info!(
        "edgehook {} started: device {}, {} sink(s), socket {}",
        env!("CARGO_PKG_VERSION"),
        pipeline.opened.device_id,
        sink_count,
        config.ingest.socket.display()
    );
    let result = runtime.block_on(serve(
        pipeline.clone(),
        socket.listener,
        &config,
        (device, device_rx),
        (control_tx, control_rx),
        shutdown,
    ));
    systemd::stopping();
    let timeout = *pipeline
        .shutdown_timeout
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let deadline = Instant::now() + timeout;
    stop_all(
        std::mem::take(&mut *pipeline.sinks.lock().unwrap_or_else(|p| p.into_inner())),
        deadline,
    );
    // An inventory script still running was told to stop with the pipeline; its thread is
    // not waited for beyond this.
    runtime.shutdown_timeout(Duration::from_secs(1));
    if let Some(path) = &socket.remove_at_exit {
        let _ = std::fs::remove_file(path);
    }
    drop(pipeline);
    drop(outbox);
    // Every acknowledged event is already committed; waiting for the outbox thread only lets it
    // finish what is queued and checkpoint the WAL.
    join_until(
        store_thread,
        deadline.max(Instant::now() + Duration::from_secs(1)),
    );
    log::info!("edgehook stopped");
    result
}

/// Raises the soft limit on open files to the hard one: each socket client holds a file, and
/// the usual soft limit (1024) is below what a large `ingest.max_connections` needs. Warns
/// when even the hard limit leaves too little room.
fn raise_open_files(max_connections: u32) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    let limit = match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
        Ok(()) => hard,
        Err(e) => {
            log::warn!("Cannot raise the open-file limit from {soft} to {hard}: {e}");
            soft
        }
    };
    // The outbox, sink connections, inventory scripts and the journal need some too.
    // `rlim_t` is 32 bits on armv7.
    let needed = nix::libc::rlim_t::from(max_connections) + 64;
    if limit < needed {
        log::warn!(
            "Only {limit} files may be open; ingest.max_connections = {max_connections} needs about {needed}, so connections may wait when many are open"
        );
    }
}

fn join_until(t: JoinHandle<()>, deadline: Instant) {
    while !t.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    if t.is_finished() {
        let _ = t.join();
    }
}

async fn serve(
    pipeline: Arc<Pipeline>,
    listener: std::os::unix::net::UnixListener,
    config: &Config,
    (mut device, device_rx): (DeviceSource, mpsc::Receiver<control::Request>),
    (control_tx, mut control_rx): (
        mpsc::Sender<control::Request>,
        mpsc::Receiver<control::Request>,
    ),
    shutdown: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    // Signals are watched before the socket answers anyone: a client that sees the daemon up
    // may send SIGHUP or SIGTERM at once, and an unwatched SIGHUP would end the process.
    // Polling `shutdown` once lets it register its own signals.
    let mut hup = signal(SignalKind::hangup())
        .map_err(|e| DaemonError::Internal(format!("cannot watch SIGHUP: {e}")))?;
    tokio::pin!(shutdown);
    if futures_util::FutureExt::now_or_never(&mut shutdown).is_some() {
        return Ok(());
    }
    let listener = tokio::net::UnixListener::from_std(listener)
        .map_err(|e| DaemonError::Internal(format!("cannot use the socket: {e}")))?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let ingest = Arc::new(Ingest::new(
        pipeline.outbox.clone(),
        &config.ingest,
        pipeline.access.clone(),
        control_tx,
    ));
    // The first start's `device-provisioned` goes into the outbox before any other event.
    device.start().await;
    let cancel_device = device.cancel_flag();
    let device_task = tokio::spawn(device.run(device_rx, stop_rx.clone()));
    let server = tokio::spawn(ingest::serve(listener, ingest, stop_rx));
    let outbox = pipeline.outbox.clone();
    outbox.expire(now_ms()).await;
    let mut seen_commits = outbox.commits();
    let mut resting = false;
    let totals = outbox.totals().await.unwrap_or_default();
    systemd::ready(&status_line(&totals));
    let mut last_status = totals;

    let expiry_every =
        (config.storage.max_age / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
    let mut expiry = tokio::time::interval(expiry_every);
    expiry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let watchdog_every = systemd::watchdog_interval().map(|d| d / 2);
    let mut watchdog = tokio::time::interval(watchdog_every.unwrap_or(Duration::from_secs(3600)));
    let mut status_tick = tokio::time::interval(Duration::from_secs(10));
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = hup.recv() => {
                log::info!("SIGHUP: reloading {}", pipeline.config_path.display());
                let p = pipeline.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    let _ = p.reload();
                })
                .await;
            }
            Some(request) = control_rx.recv() => {
                dispatch(&pipeline, &pipeline.device, request).await;
            }
            // At rest no timer asks the outbox thread anything (`Published`): it sleeps, and
            // so does this one until the outbox is busy again.
            _ = expiry.tick(), if outbox.may_expire() => outbox.expire(now_ms()).await,
            _ = outbox.busy_again(), if resting => {
                resting = false;
                status_tick.reset();
            }
            _ = status_tick.tick(), if !resting => {
                // Read before asking: a commit after it is seen at the next tick.
                let commits = outbox.commits();
                if commits == seen_commits && outbox.at_rest() {
                    log::debug!("At rest: the status timer waits until the outbox is busy again");
                    resting = true;
                    continue;
                }
                seen_commits = commits;
                if let Some(t) = outbox.totals().await {
                    if t != last_status {
                        systemd::status(&status_line(&t));
                        last_status = t;
                    }
                }
            }
            _ = watchdog.tick(), if watchdog_every.is_some() => {
                let limit = watchdog_every.unwrap_or_default();
                if tokio::time::timeout(limit, outbox.totals()).await.is_ok_and(|t| t.is_some()) {
                    systemd::watchdog();
                } else {
                    log::error!("The outbox did not answer within {} ms; withholding the watchdog ping", limit.as_millis());
                }
            }
        }
    }
    log::info!("Stopping: no new events are taken");
    cancel_device.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = stop_tx.send(true);
    let timeout = *pipeline
        .shutdown_timeout
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let _ = tokio::time::timeout(timeout, server).await;
    let _ = tokio::time::timeout(Duration::from_secs(1), device_task).await;
    Ok(())
}

fn status_line(t: &crate::outbox::Totals) -> String {
    format!(
        "{} pending, {} dead letters, {} dropped",
        t.pending, t.dead, t.dropped
    )
}

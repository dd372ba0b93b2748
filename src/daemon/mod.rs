//! The daemon: opens the outbox, starts the sinks, serves the socket, talks to systemd, and
//! stops cleanly. The sinks and the outbox run on threads of their own, and the sinks are owned
//! by the supervisor's thread (`supervisor`); the async runtime (one thread) serves the socket,
//! signals and timers, and only queues work for the supervisor.

pub mod logging;
mod supervisor;
pub mod systemd;

use std::future::Future;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, watch};

use crate::config::generated::{self, SecretError};
use crate::config::{Config, ConfigError};
use crate::outbox::{Outbox, StoreError, now_ms};
use crate::sinks::SinkError;
use crate::sources::control::{self, Op};
use crate::sources::device::DeviceSource;
use crate::sources::ingest::{self, BindError, Ingest};
use supervisor::{Configs, Supervisor};

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

/// Routes one control request: the sinks' to the supervisor, the rest to the device source.
/// Never waits: a device source with a full queue makes the answer `busy`.
fn dispatch(
    supervisor: &Supervisor,
    device: &mpsc::Sender<control::Request>,
    request: control::Request,
) {
    let control::Request { op, reply } = request;
    match op {
        Op::Redeliver(which) => supervisor.redeliver(which, reply),
        Op::Resume(name) => supervisor.resume(name, reply),
        Op::ReloadFiles => supervisor.reload(Some(reply)),
        op => {
            if let Err(TrySendError::Full(r)) = device.try_send(control::Request { op, reply }) {
                let _ = r.reply.send(Err(control::Refusal::busy()));
            }
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
    // First, so that a second daemon on the same outbox (`StoreError::Held`) exits having
    // written nothing and started nothing.
    let (outbox, opened, store_thread) =
        Outbox::open(&config.storage, config.device.id.as_deref())?;
    provide_secrets(&mut config)?;
    raise_open_files(config.ingest.max_connections);
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
    let access = Arc::new(ingest::Rules::new(ingest::Access::resolve(
        config.ingest.admin_group.as_deref(),
    )));
    // Before any sink starts, so that a daemon whose socket another one answers on has
    // delivered nothing when it stops.
    let socket = ingest::listen(&config.ingest)?;
    let (supervisor, sink_count, configs) = Supervisor::start(
        &config,
        outbox.clone(),
        opened.device_id.clone(),
        access.clone(),
    )?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| DaemonError::Internal(format!("cannot start the runtime: {e}")))?;
    log::info!(
        "edgehook {} started: device {}, {} sink(s), socket {}",
        env!("CARGO_PKG_VERSION"),
        opened.device_id,
        sink_count,
        config.ingest.socket.display()
    );
    let result = runtime.block_on(serve(
        outbox.clone(),
        &supervisor,
        (socket.listener, access),
        &config,
        (device, device_tx, device_rx, configs),
        (control_tx, control_rx),
        shutdown,
    ));
    systemd::stopping();
    let deadline = supervisor.finish();
    // An inventory script still running was told to stop with the pipeline; its thread is
    // not waited for beyond this.
    runtime.shutdown_timeout(Duration::from_secs(1));
    if let Some(path) = &socket.remove_at_exit {
        let _ = std::fs::remove_file(path);
    }
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
    outbox: Outbox,
    supervisor: &Supervisor,
    (listener, access): (std::os::unix::net::UnixListener, Arc<ingest::Rules>),
    config: &Config,
    (mut device, device_tx, device_rx, configs): (
        DeviceSource,
        mpsc::Sender<control::Request>,
        mpsc::Receiver<control::Request>,
        Configs,
    ),
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
        outbox.clone(),
        &config.ingest,
        access,
        control_tx,
    ));
    // The first start's `device-provisioned` goes into the outbox before any other event.
    device.start().await;
    let cancel_device = device.cancel_flag();
    let device_task = tokio::spawn(device.run(device_rx, configs, stop_rx.clone()));
    let server = tokio::spawn(ingest::serve(listener, ingest, stop_rx));
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
                log::info!("SIGHUP: reloading {}", config.path.display());
                supervisor.reload(None);
            }
            Some(request) = control_rx.recv() => dispatch(supervisor, &device_tx, request),
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
    let deadline = supervisor.stop(crate::config::units::later(
        Instant::now(),
        supervisor.shutdown_timeout(),
    ));
    cancel_device.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = stop_tx.send(true);
    // Requests not yet routed are dropped, which answers them "the daemon is stopping", and a
    // connection waiting to queue one goes on to its end.
    control_rx.close();
    while control_rx.try_recv().is_ok() {}
    let _ = tokio::time::timeout_at(deadline.into(), server).await;
    let _ = tokio::time::timeout(Duration::from_secs(1), device_task).await;
    Ok(())
}

fn status_line(t: &crate::outbox::Totals) -> String {
    format!(
        "{} pending, {} dead letters, {} dropped",
        t.pending, t.dead, t.dropped
    )
}

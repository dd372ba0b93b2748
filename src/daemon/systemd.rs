//! The service manager's side: `READY=1`, `STATUS=`, `WATCHDOG=1`, `STOPPING=1`. Each call is a
//! no-op when edgehook was not started by systemd.

use std::time::Duration;

use sd_notify::NotifyState;

/// Start-up is done.
pub fn ready(status: &str) {
    let _ = sd_notify::notify(false, &[NotifyState::Ready, NotifyState::Status(status)]);
}

/// The status line changed.
pub fn status(status: &str) {
    let _ = sd_notify::notify(false, &[NotifyState::Status(status)]);
}

/// The pipeline is healthy.
pub fn watchdog() {
    let _ = sd_notify::notify(false, &[NotifyState::Watchdog]);
}

/// Shutting down.
pub fn stopping() {
    let _ = sd_notify::notify(false, &[NotifyState::Stopping]);
}

/// How often systemd wants a watchdog ping, when it wants one.
pub fn watchdog_interval() -> Option<Duration> {
    let mut usec = 0;
    sd_notify::watchdog_enabled(false, &mut usec).then(|| Duration::from_micros(usec))
}

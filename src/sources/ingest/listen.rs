//! Where the socket comes from: the one systemd passed (socket activation,
//! `systemd/edgehook.socket`), else one the daemon binds itself.

use std::path::{Path, PathBuf};

use super::{BindError, bind};

/// The listening socket and what to clean up after it.
pub struct Listening {
    /// The socket.
    pub listener: std::os::unix::net::UnixListener,
    /// The socket file to remove at exit: `None` when systemd passed the socket, which then
    /// outlives the daemon (and keeps its clients' connections queued across a restart).
    pub remove_at_exit: Option<PathBuf>,
}

/// The socket systemd passed (socket activation, `systemd/edgehook.socket`), else one bound
/// at `ingest.socket` by [`bind`].
pub fn listen(config: &crate::config::Ingest) -> Result<Listening, BindError> {
    if let Some(listener) = inherited(&config.socket) {
        return Ok(Listening {
            listener,
            remove_at_exit: None,
        });
    }
    Ok(Listening {
        listener: bind(&config.socket, &config.group)?,
        remove_at_exit: Some(config.socket.clone()),
    })
}

/// The first listening Unix stream socket among those systemd passed (`LISTEN_PID`,
/// `LISTEN_FDS`), made non-blocking. The environment is left as it is (changing it with
/// threads running is unsound); children ignore it, `LISTEN_PID` not being theirs, and the
/// descriptors are close-on-exec.
fn inherited(configured: &Path) -> Option<std::os::unix::net::UnixListener> {
    use nix::sys::socket::{getsockopt, sockopt};
    use std::os::fd::{FromRawFd, OwnedFd};
    let fds = match sd_notify::listen_fds_with_names(false) {
        Ok(fds) => fds,
        Err(e) => {
            log::warn!("Ignoring the sockets systemd passed: {e}");
            return None;
        }
    };
    for (fd, name) in fds {
        // SAFETY: systemd passed this descriptor for the process to own, and nothing else
        // here takes it.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        // Refused only when the socket says it is not one; an emulator may not answer the
        // question (qemu-user), and `local_addr` still checks it is a Unix socket.
        let listening = getsockopt(&owned, sockopt::AcceptConn).unwrap_or(true);
        let stream = getsockopt(&owned, sockopt::SockType)
            .map_or(true, |t| t == nix::sys::socket::SockType::Stream);
        let listener = std::os::unix::net::UnixListener::from(owned);
        let path = match listener.local_addr() {
            Ok(a) if listening && stream => a.as_pathname().map(Path::to_path_buf),
            _ => {
                log::warn!(
                    "Ignoring descriptor {fd} ({name}) from systemd: not a listening Unix stream socket"
                );
                continue;
            }
        };
        if let Err(e) = listener.set_nonblocking(true) {
            log::warn!("Ignoring the socket systemd passed: {e}");
            continue;
        }
        let shown = path.as_deref().unwrap_or(Path::new("(unnamed)")).display();
        if path.as_deref() != Some(configured) {
            log::warn!(
                "The socket systemd passed is {shown}, but ingest.socket is {}: commands and clients that read the config look there",
                configured.display()
            );
        }
        log::info!("Listening on {shown}, passed by systemd");
        return Some(listener);
    }
    None
}

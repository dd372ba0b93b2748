//! The TCP connection under every HTTP sink's requests: ureq's own, with fewer system calls and
//! packets per request. On a receiver close by (loopback, a LAN gateway) these are most of a
//! request's cost, and a drain is a long run of small requests on one kept-alive connection.
//!
//! Against ureq's `TcpTransport` it differs in three things:
//! - A request goes out in one `write` when the response is awaited, not one for the head and
//!   one for the body: one packet, and one wake-up of the receiver instead of two.
//! - Socket timeouts are rounded up to `STEP`, so a run of requests sets them once instead of
//!   before every read and write (a request may therefore time out up to `STEP` late).
//! - The check that a pooled connection is still open is one `recv(MSG_PEEK | MSG_DONTWAIT)`
//!   instead of switching the socket to non-blocking and back around a read.
//!
//! TLS (ureq's rustls connector) and CONNECT proxies sit on top of it as they did on ureq's.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{MsgFlags, recv};
use ureq::Error;
use ureq::unversioned::transport::{
    Buffers, ConnectionDetails, Connector, Either, LazyBuffers, NextTimeout, ShutdownHandle,
    Transport,
};

/// Socket timeouts are whole multiples of this.
const STEP: Duration = Duration::from_millis(100);
/// How much output is held back for the one write; more is written at once.
const HOLD: usize = 64 * 1024;
/// The least time given to one of several addresses of a host.
const LEAST_PER_ADDRESS: Duration = Duration::from_millis(10);

/// Opens the TCP connections of an agent (in place of ureq's `TcpConnector`).
#[derive(Debug, Default)]
pub struct LeanTcpConnector;

impl<In: Transport> Connector<In> for LeanTcpConnector {
    type Out = Either<In, LeanTcp>;

    fn connect(
        &self,
        details: &ConnectionDetails,
        chained: Option<In>,
    ) -> Result<Option<Self::Out>, Error> {
        if let Some(transport) = chained {
            // A connector before this one (a proxy) made the connection.
            return Ok(Some(Either::A(transport)));
        }
        let stream = Arc::new(connect(details)?);
        (details.register_shutdown)(Arc::downgrade(&stream) as Weak<dyn ShutdownHandle>)?;
        let config = details.config;
        Ok(Some(Either::B(LeanTcp {
            stream,
            buffers: LazyBuffers::new(config.input_buffer_size(), config.output_buffer_size()),
            unsent: Vec::new(),
            read_timeout: None,
            write_timeout: None,
        })))
    }
}

/// Connects to the first of the host's addresses that answers. Each address but the last gets
/// half the time left (at least `LEAST_PER_ADDRESS`); one that refuses or cannot be routed to
/// passes on to the next at once.
fn connect(details: &ConnectionDetails) -> Result<TcpStream, Error> {
    let deadline = details.timeout.not_zero().map(|d| Instant::now() + *d);
    let mut last = None;
    let count = details.addrs.len();
    for (i, addr) in details.addrs.iter().enumerate() {
        let attempt = match deadline {
            None => TcpStream::connect(addr),
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(Error::Timeout(details.timeout.reason));
                }
                let share = if i + 1 == count {
                    left
                } else {
                    (left / 2).max(LEAST_PER_ADDRESS)
                };
                TcpStream::connect_timeout(addr, share)
            }
        };
        match attempt {
            Ok(stream) => {
                stream.set_nodelay(true)?;
                return Ok(stream);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
                ) =>
            {
                last = Some(Error::Timeout(ureq::Timeout::Connect));
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionRefused
                        | io::ErrorKind::HostUnreachable
                        | io::ErrorKind::NetworkUnreachable
                        | io::ErrorKind::NetworkDown
                        | io::ErrorKind::AddrNotAvailable
                ) =>
            {
                last = Some(Error::Io(e));
            }
            Err(e) => return Err(Error::Io(e)),
        }
    }
    Err(last.unwrap_or_else(|| {
        Error::Io(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            "Connection refused",
        ))
    }))
}

/// One TCP connection (see the module's text).
pub struct LeanTcp {
    /// Shared (weakly) with ureq's shutdown handle.
    stream: Arc<TcpStream>,
    buffers: LazyBuffers,
    /// Output handed over but not written yet.
    unsent: Vec<u8>,
    /// The timeouts the socket has now.
    read_timeout: Option<Duration>,
    write_timeout: Option<Duration>,
}

impl std::fmt::Debug for LeanTcp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeanTcp")
            .field("peer", &self.stream.peer_addr().ok())
            .finish()
    }
}

impl LeanTcp {
    /// Writes what is held back, in one `write` when the socket takes it all.
    fn flush(&mut self, timeout: NextTimeout) -> Result<(), Error> {
        if self.unsent.is_empty() {
            return Ok(());
        }
        let timeout = timeout.for_write();
        let limit = socket_timeout(timeout)?;
        if self.write_timeout != limit {
            self.stream.set_write_timeout(limit)?;
            self.write_timeout = limit;
        }
        let written = (&*self.stream).write_all(&self.unsent);
        self.unsent.clear();
        written.map_err(|e| io_error(e, timeout))
    }
}

impl Transport for LeanTcp {
    fn buffers(&mut self) -> &mut dyn Buffers {
        &mut self.buffers
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), Error> {
        self.unsent
            .extend_from_slice(&self.buffers.output()[..amount]);
        if self.unsent.len() >= HOLD {
            self.flush(timeout)?;
        }
        Ok(())
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, Error> {
        self.flush(timeout)?;
        let timeout = timeout.for_read();
        let limit = socket_timeout(timeout)?;
        if self.read_timeout != limit {
            self.stream.set_read_timeout(limit)?;
            self.read_timeout = limit;
        }
        let started = Instant::now();
        let input = self.buffers.input_append_buf();
        let read = loop {
            match (&*self.stream).read(input) {
                // Linux does not restart a socket read with a timeout after a signal.
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                    if limit.is_some_and(|l| started.elapsed() >= l) {
                        return Err(Error::Timeout(timeout.reason));
                    }
                }
                other => break other,
            }
        };
        let amount = read.map_err(|e| io_error(e, timeout))?;
        self.buffers.input_appended(amount);
        Ok(amount > 0)
    }

    fn is_open(&mut self) -> bool {
        // Nothing to read and no end of stream: still open. Bytes nobody asked for, or an
        // error, make the connection unusable.
        let mut byte = [0u8; 1];
        let flags = MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT;
        matches!(
            recv(self.stream.as_raw_fd(), &mut byte, flags),
            Err(Errno::EAGAIN)
        )
    }
}

/// The socket timeout for what is left of `timeout`, rounded up to a multiple of `STEP`
/// (`None`: no deadline). A deadline already reached is a timeout.
fn socket_timeout(timeout: NextTimeout) -> Result<Option<Duration>, Error> {
    if timeout.after.is_not_happening() {
        return Ok(None);
    }
    let left = *timeout.after;
    if left.is_zero() {
        return Err(Error::Timeout(timeout.reason));
    }
    let steps = left.as_nanos().div_ceil(STEP.as_nanos());
    let millis = u64::try_from(steps * STEP.as_millis()).unwrap_or(u64::MAX);
    Ok(Some(Duration::from_millis(millis)))
}

/// A socket error as ureq reports it: a socket timeout is the deadline's timeout.
fn io_error(e: io::Error, timeout: NextTimeout) -> Error {
    match e.kind() {
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => Error::Timeout(timeout.reason),
        _ => Error::Io(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn after(d: Duration) -> NextTimeout {
        NextTimeout {
            after: d.into(),
            ..NextTimeout::default()
        }
    }

    #[test]
    fn socket_timeouts_round_up_to_whole_steps() {
        let ms = Duration::from_millis;
        assert_eq!(socket_timeout(after(ms(1))).unwrap(), Some(ms(100)));
        assert_eq!(socket_timeout(after(ms(100))).unwrap(), Some(ms(100)));
        assert_eq!(socket_timeout(after(ms(29_999))).unwrap(), Some(ms(30_000)));
        assert_eq!(socket_timeout(NextTimeout::default()).unwrap(), None);
        assert!(matches!(
            socket_timeout(after(Duration::ZERO)),
            Err(Error::Timeout(_))
        ));
    }
}

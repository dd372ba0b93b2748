//! A blocking client of the ingest and control socket, for the commands that talk to a running
//! daemon (`emit`, `status`, …) and for tests.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

pub use crate::protocol::{Control, Done, Emit, Reply, Request};

/// Why the daemon could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens on the socket.
    #[error("the edgehook daemon is not running (no answer on {path}: {source})")]
    NotRunning {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The connection failed mid-way.
    #[error("lost the connection to the daemon: {0}")]
    Io(#[from] std::io::Error),
    /// The daemon answered something that is not a reply.
    #[error("the daemon sent an unreadable reply: {0}")]
    BadReply(String),
}

/// A connection to the daemon.
pub struct Client {
    writer: UnixStream,
    reader: BufReader<UnixStream>,
}

impl Client {
    /// Connects to the socket at `path`.
    pub fn connect(path: &Path) -> Result<Client, ClientError> {
        let stream = UnixStream::connect(path).map_err(|source| ClientError::NotRunning {
            path: path.to_owned(),
            source,
        })?;
        stream.set_read_timeout(Some(Duration::from_secs(120)))?;
        Ok(Client {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        })
    }

    /// Sends one request (a [`Request`], a [`Control`]; tests also write JSON values the
    /// protocol's types would not) and reads its reply.
    pub fn call<R: Serialize + ?Sized>(&mut self, request: &R) -> Result<Reply, ClientError> {
        self.send(request)?;
        self.recv()
    }

    /// Sends one request without waiting for its reply.
    pub fn send<R: Serialize + ?Sized>(&mut self, request: &R) -> Result<(), ClientError> {
        let mut line = serde_json::to_vec(request).map_err(std::io::Error::other)?;
        line.push(b'\n');
        self.writer.write_all(&line)?;
        Ok(())
    }

    /// Sends raw bytes (tests use this for malformed input).
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.writer.write_all(bytes)?;
        Ok(())
    }

    /// Reads the next reply.
    pub fn recv(&mut self) -> Result<Reply, ClientError> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(ClientError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
        serde_json::from_str(&line).map_err(|_| ClientError::BadReply(line))
    }
}

/// Whether a daemon answers `ping` on `path`.
pub fn daemon_running(path: &Path) -> bool {
    Client::connect(path)
        .and_then(|mut c| c.call(&Control::Ping))
        .is_ok_and(|r| matches!(r, Reply::Ok(_)))
}

//! A blocking client of the ingest and control socket, for the commands that talk to a running
//! daemon (`emit`, `status`, …) and for tests.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

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

/// A reply from the daemon.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// `{"ok":true, …}`.
    Ok(Value),
    /// `{"ok":false,"code":…,"error":…}`.
    Err {
        /// The error code.
        code: String,
        /// The message.
        error: String,
    },
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

    /// Sends one request and reads its reply.
    pub fn call(&mut self, request: &Value) -> Result<Reply, ClientError> {
        self.send(request)?;
        self.recv()
    }

    /// Sends one request without waiting for its reply.
    pub fn send(&mut self, request: &Value) -> Result<(), ClientError> {
        let mut line = serde_json::to_vec(request).expect("a Value serialises");
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
        let v: Value =
            serde_json::from_str(&line).map_err(|_| ClientError::BadReply(line.clone()))?;
        match v.get("ok").and_then(Value::as_bool) {
            Some(true) => Ok(Reply::Ok(v)),
            Some(false) => Ok(Reply::Err {
                code: v["code"].as_str().unwrap_or("internal").to_string(),
                error: v["error"].as_str().unwrap_or("").to_string(),
            }),
            None => Err(ClientError::BadReply(line)),
        }
    }
}

/// Whether a daemon answers `ping` on `path`.
pub fn daemon_running(path: &Path) -> bool {
    Client::connect(path)
        .and_then(|mut c| c.call(&serde_json::json!({"op": "ping"})))
        .is_ok_and(|r| matches!(r, Reply::Ok(_)))
}

//! Exit codes, decided here and nowhere else.

use std::process::ExitCode;

use crate::client::ClientError;
use crate::config::ConfigError;
use crate::daemon::DaemonError;
use crate::outbox::StoreError;
use crate::sources::ingest::BindError;

/// The exit codes of section 9 of the spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// Success.
    Ok = 0,
    /// A check failed (`test`, `verify`).
    CheckFailed = 1,
    /// Usage error.
    Usage = 64,
    /// Invalid input.
    DataErr = 65,
    /// The daemon is not running.
    Unavailable = 69,
    /// Internal error.
    Software = 70,
    /// Storage error.
    IoErr = 74,
    /// Try again later: the outbox is full, the daemon is busy, or another process holds the
    /// outbox.
    TempFail = 75,
    /// The daemon refused an admin op to this user (`forbidden`).
    NoPerm = 77,
    /// Configuration error.
    Config = 78,
}

impl From<Code> for ExitCode {
    fn from(c: Code) -> ExitCode {
        ExitCode::from(c as u8)
    }
}

/// An error a command ends with: its exit code and what to tell the user.
#[derive(Debug)]
pub struct Failure {
    /// The exit code.
    pub code: Code,
    /// The error, with its causes.
    pub error: Box<dyn std::error::Error + Send + Sync>,
}

impl Failure {
    /// A failure with a plain message.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Failure {
            code,
            error: message.into().into(),
        }
    }
}

impl From<ConfigError> for Failure {
    fn from(e: ConfigError) -> Self {
        Failure {
            code: Code::Config,
            error: Box::new(e),
        }
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        let code = match e {
            StoreError::Closed => Code::Software,
            StoreError::Held { .. } => Code::TempFail,
            _ => Code::IoErr,
        };
        Failure {
            code,
            error: Box::new(e),
        }
    }
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        let code = match e {
            ClientError::NotRunning { .. } => Code::Unavailable,
            _ => Code::Software,
        };
        Failure {
            code,
            error: Box::new(e),
        }
    }
}

impl From<DaemonError> for Failure {
    fn from(e: DaemonError) -> Self {
        match e {
            DaemonError::Config(c) => c.into(),
            DaemonError::Store(s) => s.into(),
            DaemonError::Secret(_) => Failure {
                code: Code::IoErr,
                error: Box::new(e),
            },
            DaemonError::Sink(_) => Failure {
                code: Code::Config,
                error: Box::new(e),
            },
            DaemonError::Bind(BindError::InUse(_))
            | DaemonError::Bind(_)
            | DaemonError::Internal(_) => Failure {
                code: Code::Software,
                error: Box::new(e),
            },
        }
    }
}

impl From<rusqlite::Error> for Failure {
    fn from(e: rusqlite::Error) -> Self {
        Failure {
            code: Code::IoErr,
            error: Box::new(e),
        }
    }
}

/// The failure for a request the daemon refused with `code`.
pub fn refused(code: &str, error: &str) -> Failure {
    let exit = match code {
        "full" | "busy" => Code::TempFail,
        "forbidden" => Code::NoPerm,
        "invalid" | "too_large" | "decommissioned" | "conflict" => Code::DataErr,
        _ => Code::Software,
    };
    Failure::new(exit, format!("{code}: {error}"))
}

/// The failure for a `reload` the daemon refused: `invalid` is the new config refused (the
/// running one stays), a configuration error like any other.
pub fn reload_refused(code: &str, error: &str) -> Failure {
    match code {
        "invalid" => Failure::new(Code::Config, format!("{code}: {error}")),
        _ => refused(code, error),
    }
}

/// Prints the error with its chain of causes.
pub fn report(f: &Failure) {
    let mut text = format!("edgehook: error: {}", f.error);
    let mut cause = f.error.source();
    while let Some(c) = cause {
        text.push_str(&format!("\n  caused by: {c}"));
        cause = c.source();
    }
    errln!("{text}");
}

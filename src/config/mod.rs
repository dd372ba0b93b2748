//! The TOML configuration: the types serde reads (`file`), and `check`, which turns them into
//! the [`Config`] the daemon runs with, reporting every problem as `file:line:col: message`.

mod check;
mod file;
pub mod units;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use check::{MqttSpec, SinkKind, SinkSpec};
pub use file::{Durability, LogLevel, WhenFull};

/// The default location of the config file.
pub const DEFAULT_PATH: &str = "/etc/edgehook/edgehook.toml";

/// A checked configuration, ready to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from.
    pub path: PathBuf,
    /// `[device]`.
    pub device: Device,
    /// `[storage]`.
    pub storage: Storage,
    /// `[ingest]`.
    pub ingest: Ingest,
    /// `[inventory]`.
    pub inventory: Inventory,
    /// `[log]` level.
    pub log_level: LogLevel,
    /// How long in-flight attempts may take to finish at shutdown (`[daemon] shutdown_timeout`).
    pub shutdown_timeout: Duration,
    /// Every `[[sink]]`, in file order.
    pub sinks: Vec<SinkSpec>,
}

/// `[device]`.
#[derive(Debug, Clone, Default)]
pub struct Device {
    /// A fixed device id; otherwise one is generated once and kept in the outbox.
    pub id: Option<String>,
    /// Copied into inventory events.
    pub tenant_id: Option<String>,
    /// The device type.
    pub device_type: Option<String>,
    /// `identity_data` of `device-provisioned`; `None` means the primary MAC address.
    pub identity: Option<BTreeMap<String, String>>,
}

/// `[inventory]`.
#[derive(Debug, Clone)]
pub struct Inventory {
    /// Collect the built-in attributes.
    pub builtin: bool,
    /// Directories searched for inventory scripts, in order.
    pub scripts_dirs: Vec<PathBuf>,
    /// How often the inventory is collected.
    pub interval: Duration,
    /// How long one script may run before it and its children are killed.
    pub script_timeout: Duration,
}

/// `[storage]`.
#[derive(Debug, Clone)]
pub struct Storage {
    /// The SQLite file.
    pub path: PathBuf,
    /// `full` acknowledges only what is on disk; `normal` trades the last moments for fewer writes.
    pub durability: Durability,
    /// Most events kept.
    pub max_events: u64,
    /// Most event bytes kept (the sum of stored event bodies).
    pub max_bytes: u64,
    /// What happens to new events when a bound is reached.
    pub when_full: WhenFull,
    /// An undelivered event older than this becomes a dead letter.
    pub max_age: Duration,
    /// Most dead letters kept per sink; the oldest go first.
    pub max_dead_letters: u64,
}

/// `[ingest]`.
#[derive(Debug, Clone)]
pub struct Ingest {
    /// The Unix socket path.
    pub socket: PathBuf,
    /// The group that may use the socket.
    pub group: String,
    /// The longest request line accepted.
    pub max_event_bytes: u64,
    /// Most client connections served at once; more are refused.
    pub max_connections: u32,
}

/// One problem found in a config file, with its position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file.
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub col: usize,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.col,
            self.message
        )
    }
}

/// Why a config file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file was read and has problems.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Problem>),
}

impl Config {
    /// Reads and checks the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Checks `text` as if read from `path` (relative secret files resolve beside `path`).
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let locate = Locator { file: path, text };
        let raw: file::ConfigFile = toml::from_str(text).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            ConfigError::Invalid(vec![locate.problem(span, e.message().trim().to_string())])
        })?;
        check::check(raw, &locate).map_err(ConfigError::Invalid)
    }

    /// The sink called `name`.
    pub fn sink(&self, name: &str) -> Option<&SinkSpec> {
        self.sinks.iter().find(|s| s.name == name)
    }
}

/// Turns byte offsets into problems with line and column.
pub(crate) struct Locator<'a> {
    file: &'a Path,
    text: &'a str,
}

impl Locator<'_> {
    fn problem(&self, span: std::ops::Range<usize>, message: String) -> Problem {
        let offset = span.start.min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let col = before.rfind('\n').map_or(offset, |nl| offset - nl - 1) + 1;
        Problem {
            file: self.file.to_owned(),
            line,
            col,
            message,
        }
    }

    fn dir(&self) -> &Path {
        self.file.parent().unwrap_or(Path::new("."))
    }
}

#[cfg(test)]
mod tests;

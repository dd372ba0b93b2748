//! The TOML configuration: the main file and the drop-in sink files of `sinks.d/` beside it.
//! `file` holds the types serde reads; `check` (with `sink`, `http`, `mqtt` and `signing` for
//! the sinks) turns them into the [`Config`] the daemon runs with, reporting every problem as
//! `file:line:col: message`; `ranges` holds the range of every duration and size.
//! `generated` keeps the secrets generated for signing sinks given none; `atomic` writes files
//! whole or not at all; `exposed` says which keys hold secrets and warns about a file holding
//! some that others can read.

pub mod atomic;
mod check;
mod exposed;
mod file;
pub mod generated;
mod http;
mod mqtt;
mod ranges;
mod signing;
mod sink;
pub mod units;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use exposed::{DAEMON_GROUP, dropin_holds_secret, sensitive_header};
pub use file::{Durability, LogLevel, WhenFull};
pub use mqtt::{MqttSpec, Protocol, check_template, fill};
pub use signing::SecretSource;
pub use sink::{SinkKind, SinkSpec, display_url, is_loopback_url, url_holds_secret, valid_name};

/// The default location of the config file.
pub const DEFAULT_PATH: &str = "/etc/edgehook/edgehook.toml";

/// The directory of drop-in sink files for the config file `path`: `sinks.d` beside it.
pub fn dropin_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join("sinks.d"),
        _ => PathBuf::from("sinks.d"),
    }
}

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
    /// What is allowed but unwise (a secret file others can read), one sentence each; the
    /// daemon logs them at start and reload, `check-config` prints them.
    pub warnings: Vec<String>,
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
    /// Most client connections served at once; more, or more than half of them from one
    /// uid, are answered `busy`.
    pub max_connections: u32,
    /// The group whose members may use the admin ops, beside root and the daemon's user.
    pub admin_group: Option<String>,
    /// How long a connection may go without a request before it is closed.
    pub idle_timeout: Duration,
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
    /// The file could not be read. The cause is part of the message, not a `source()`, so
    /// that what prints the chain of causes does not say it twice.
    #[error("cannot read config file {path}: {cause}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        cause: std::io::Error,
    },
    /// The file was read and has problems.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Problem>),
}

impl Config {
    /// Reads and checks the file at `path` and the drop-in files of `sinks.d` beside it.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Self::load_with(path, &[])
    }

    /// Reads and checks the file at `path` and its drop-ins as if `changes` were made to
    /// `sinks.d`: `(file, Some(text))` writes a drop-in file, `(file, None)` removes it.
    pub fn load_with(
        path: &Path,
        changes: &[(PathBuf, Option<String>)],
    ) -> Result<Config, ConfigError> {
        let text = read(path)?;
        let mut files = dropin_files(&dropin_dir(path))?;
        for (file, _) in changes {
            if !files.contains(file) {
                files.push(file.clone());
            }
        }
        files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
        let mut dropins = Vec::new();
        for file in files {
            match changes.iter().find(|(changed, _)| *changed == file) {
                Some((_, Some(text))) => dropins.push((file, text.clone())),
                Some((_, None)) => {}
                None => {
                    let text = read(&file)?;
                    dropins.push((file, text));
                }
            }
        }
        Self::assemble(path, &text, &dropins)
    }

    /// Checks `text` as if read from `path` (relative secret files resolve beside `path`),
    /// without drop-ins.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        Self::assemble(path, text, &[])
    }

    fn assemble(
        path: &Path,
        text: &str,
        dropins: &[(PathBuf, String)],
    ) -> Result<Config, ConfigError> {
        let locate = Locator { file: path, text };
        let raw: file::ConfigFile = locate.parse().map_err(|p| ConfigError::Invalid(vec![p]))?;
        let locators: Vec<Locator<'_>> = dropins
            .iter()
            .map(|(file, text)| Locator { file, text })
            .collect();
        let mut files = Vec::new();
        let mut problems = Vec::new();
        for l in &locators {
            match l.parse::<file::DropInFile>() {
                Ok(f) => files.push((l, f)),
                Err(p) => problems.push(p),
            }
        }
        check::check(raw, &locate, &files, problems).map_err(ConfigError::Invalid)
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
    fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T, Problem> {
        toml::from_str(self.text).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            self.problem(span, e.message().trim().to_string())
        })
    }

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

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|cause| ConfigError::Read {
        path: path.to_owned(),
        cause,
    })
}

/// The drop-in files of `dir`: its `*.toml` files, hidden ones left out, in name order.
fn dropin_files(dir: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(cause) => {
            return Err(ConfigError::Read {
                path: dir.to_owned(),
                cause,
            });
        }
    };
    let mut files = Vec::new();
    for entry in entries {
        let path = entry
            .map_err(|cause| ConfigError::Read {
                path: dir.to_owned(),
                cause,
            })?
            .path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        let wanted = name.is_some_and(|n| n.ends_with(".toml") && !n.starts_with('.'));
        // `metadata` follows links: a link to a file is a drop-in like the file.
        if wanted && std::fs::metadata(&path).is_ok_and(|m| m.is_file()) {
            files.push(path);
        }
    }
    files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    Ok(files)
}

#[cfg(test)]
mod tests;

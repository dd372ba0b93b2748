//! The drop-in files of `sinks.d/` as `edgehook sink` changes them: read as TOML tables,
//! written back in a fixed key order, one change at a time (a lock on the main file), checked with the
//! rest of the config before it is kept, written whole or not at all, and undone if the
//! running daemon refuses it.

use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use toml::{Table, Value};

use crate::cli::exit::{Code, Failure};
use crate::client::{Client, ClientError, Control, Reply};
use crate::config::{Config, DAEMON_GROUP, atomic, dropin_dir, dropin_holds_secret};

/// The first keys of a sink, in this order; the others follow alphabetically.
const KEY_ORDER: [&str; 16] = [
    "name",
    "description",
    "url",
    "format",
    "enabled",
    "events",
    "headers",
    "metadata",
    "channel",
    "username",
    "icon_emoji",
    "icon_url",
    "topic",
    "qos",
    "timeout",
    "max_in_flight",
];

/// Tables written as `[sink.KEY]` sections rather than inline.
const SECTIONS: [&str; 2] = ["signing", "retry"];

const HEADER: &str = "# A drop-in of edgehook's config (docs/configuration.md), managed by `edgehook sink`.\n# `edgehook sink update` and `remove` rewrite it without comments.\n";

/// A drop-in file being changed.
pub struct DropIn {
    /// The file.
    pub path: PathBuf,
    /// Its content before the change, `None` if it did not exist.
    before: Option<String>,
    /// Its tables (`[[sink]]` as the array `sink`).
    pub table: Table,
    /// Held while the change is made.
    _lock: Flock<std::fs::File>,
}

/// What happened when the daemon was asked to reload.
pub enum Reload {
    /// It reloaded; this many sinks run.
    Done(u64),
    /// No daemon answers on the socket.
    NotRunning,
    /// The daemon could not be asked, or its answer was lost; the change is kept.
    Unknown(String),
}

impl DropIn {
    /// Opens the drop-in `path` of the config `config_path` for a change, waiting for any other
    /// `edgehook sink` command to finish its own.
    pub fn open(config_path: &Path, path: PathBuf) -> Result<DropIn, Failure> {
        // The lock is on the main file, which exists already: a refused change creates nothing.
        let file = std::fs::File::open(config_path).map_err(|e| io_failure(config_path, e))?;
        let lock = Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, e)| io_failure(config_path, e.into()))?;
        let before = match std::fs::read_to_string(&path) {
            Ok(text) => Some(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_failure(&path, e)),
        };
        let table = match &before {
            Some(text) => toml::from_str(text).map_err(|e| {
                Failure::new(
                    Code::Config,
                    format!("{}: {}", path.display(), e.message().trim()),
                )
            })?,
            None => Table::new(),
        };
        Ok(DropIn {
            path,
            before,
            table,
            _lock: lock,
        })
    }

    /// Whether the file existed before the change.
    pub fn existed(&self) -> bool {
        self.before.is_some()
    }

    /// The `[[sink]]` tables of the file.
    pub fn sinks_mut(&mut self) -> &mut Vec<Value> {
        let sinks = self
            .table
            .entry("sink")
            .or_insert_with(|| Value::Array(Vec::new()));
        if !sinks.is_array() {
            *sinks = Value::Array(Vec::new());
        }
        sinks.as_array_mut().expect("made an array")
    }

    /// The sink called `name` in this file.
    pub fn sink_mut(&mut self, name: &str) -> Option<&mut Table> {
        self.sinks_mut()
            .iter_mut()
            .filter_map(Value::as_table_mut)
            .find(|t| t.get("name").and_then(Value::as_str) == Some(name))
    }

    /// Checks the whole config with this file changed, keeps the change, and asks a running
    /// daemon to reload; a daemon that refuses the new config has the change undone.
    pub fn commit(self, config_path: &Path) -> Result<(Config, Reload), Failure> {
        let after = self.render();
        let change = (self.path.clone(), after.clone());
        let config = Config::load_with(config_path, std::slice::from_ref(&change))?;
        self.write(after.as_deref(), config_path)?;
        match ask_reload(&config) {
            Ok(reload) => Ok((config, reload)),
            Err((code, error)) => {
                self.write(self.before.as_deref(), config_path)?;
                let (exit, what) = match code.as_str() {
                    "forbidden" => (Code::NoPerm, "refused to reload for this user"),
                    _ => (Code::Config, "refused the new config"),
                };
                Err(Failure::new(
                    exit,
                    format!("the running daemon {what}, so the change was undone: {code}: {error}"),
                ))
            }
        }
    }

    /// The file's new text; `None` when no sink is left in it.
    fn render(&self) -> Option<String> {
        let sinks: Vec<&Table> = self
            .table
            .get("sink")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_table).collect())
            .unwrap_or_default();
        if sinks.is_empty() {
            return None;
        }
        let mut out = HEADER.to_string();
        for sink in sinks {
            out.push_str("\n[[sink]]\n");
            render_sink(&mut out, sink);
        }
        Some(out)
    }

    /// Writes `text` (or removes the file for `None`) with the file's own mode and owner, or
    /// those of the main config file for a new one; a file holding a secret (a credential
    /// header, an inline secret or password, a URL with a token) is kept from others.
    fn write(&self, text: Option<&str>, config_path: &Path) -> Result<(), Failure> {
        let result = match text {
            None if self.path.exists() => atomic::remove(&self.path),
            None => Ok(()),
            Some(text) => {
                let dir = dropin_dir(config_path);
                if !dir.is_dir() {
                    std::fs::DirBuilder::new()
                        .recursive(true)
                        .mode(0o755)
                        .create(&dir)
                        .map_err(|e| io_failure(&dir, e))?;
                }
                let like = std::fs::metadata(&self.path)
                    .or_else(|_| std::fs::metadata(config_path))
                    .ok();
                let mode = like.as_ref().map_or(0o644, |m| m.mode() & 0o666);
                let owner = like.as_ref().map(|m| (m.uid(), m.gid()));
                let owner = owner.filter(|_| nix::unistd::geteuid().is_root());
                let (mode, owner) = if dropin_holds_secret(text) {
                    secret_mode(owner)
                } else {
                    (mode, owner)
                };
                atomic::write(&self.path, text.as_bytes(), mode, owner)
            }
        };
        result.map_err(|e| io_failure(&self.path, e))
    }
}

/// The mode and owner of a drop-in holding a secret: 0640 with the daemon's group, so the
/// daemon may read it, when root writes it and that group exists; 0600 otherwise.
fn secret_mode(owner: Option<(u32, u32)>) -> (u32, Option<(u32, u32)>) {
    let group = nix::unistd::Group::from_name(DAEMON_GROUP).ok().flatten();
    match (owner, group) {
        (Some((uid, _)), Some(group)) => (0o640, Some((uid, group.gid.as_raw()))),
        _ => (0o600, owner),
    }
}

fn render_sink(out: &mut String, sink: &Table) {
    let mut keys: Vec<&String> = sink
        .keys()
        .filter(|k| !(SECTIONS.contains(&k.as_str()) && sink[*k].is_table()))
        .collect();
    let rank = |k: &str| {
        KEY_ORDER
            .iter()
            .position(|o| *o == k)
            .unwrap_or(KEY_ORDER.len())
    };
    keys.sort_by(|a, b| rank(a).cmp(&rank(b)).then(a.cmp(b)));
    for k in keys {
        out.push_str(&format!("{} = {}\n", key(k), sink[k]));
    }
    for section in SECTIONS {
        if let Some(Value::Table(t)) = sink.get(section) {
            out.push_str(&format!("[sink.{section}]\n"));
            let mut keys: Vec<&String> = t.keys().collect();
            keys.sort_by_key(|k| (k.as_str() != "scheme", k.as_str()));
            for k in keys {
                out.push_str(&format!("{} = {}\n", key(k), t[k]));
            }
        }
    }
}

/// A key as TOML writes it: bare when it may be, quoted otherwise.
fn key(k: &str) -> String {
    let bare = !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare {
        k.to_string()
    } else {
        Value::String(k.to_string()).to_string()
    }
}

/// Asks the daemon of `config` to read its files again. `Err` is the daemon's refusal: its
/// code and message.
fn ask_reload(config: &Config) -> Result<Reload, (String, String)> {
    let mut client = match Client::connect(&config.ingest.socket) {
        Ok(c) => c,
        Err(ClientError::NotRunning { source, .. })
            if source.kind() != std::io::ErrorKind::PermissionDenied =>
        {
            return Ok(Reload::NotRunning);
        }
        Err(e) => return Ok(Reload::Unknown(e.to_string())),
    };
    match client.call(&Control::Reload) {
        Ok(Reply::Ok(done)) => Ok(Reload::Done(done.sinks.unwrap_or(0))),
        Ok(Reply::Err { code, error }) => Err((code, error)),
        Err(e) => Ok(Reload::Unknown(e.to_string())),
    }
}

fn io_failure(path: &Path, e: std::io::Error) -> Failure {
    Failure::new(Code::IoErr, format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rendered_sink_reads_back_as_the_same_table_with_its_keys_in_order() {
        let text = r#"
[[sink]]
url = "https://x/h"
name = "a"
headers = { "X-Api-Key" = "k=1", "with space" = "v" }
metadata = { site = "berlin" }
events = ["*", "!device*"]
description = "quote \" and \\ and ünïcode"
[sink.retry]
max_attempts = 3
[sink.signing]
secret_file = "/etc/x.secret"
scheme = "mender"
"#;
        let table: Table = toml::from_str(text).unwrap();
        let mut out = String::new();
        render_sink(
            &mut out,
            table["sink"].as_array().unwrap()[0].as_table().unwrap(),
        );
        let again: Table = toml::from_str(&format!("[[sink]]\n{out}")).unwrap();
        assert_eq!(again, table);
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].starts_with("name = "), "{out}");
        assert!(lines[1].starts_with("description = "), "{out}");
        assert!(lines[2].starts_with("url = "), "{out}");
        let signing = lines.iter().position(|l| *l == "[sink.signing]").unwrap();
        assert!(lines[signing + 1].starts_with("scheme = "), "{out}");
    }
}

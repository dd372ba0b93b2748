//! The config file as serde reads it: every key the file may hold, with its default.
//! Positions are kept (`Spanned`) where `check` may need to point at a value.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use super::units::{Size, Span};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ConfigFile {
    #[serde(default)]
    pub device: DeviceFile,
    #[serde(default)]
    pub storage: StorageFile,
    #[serde(default)]
    pub ingest: IngestFile,
    #[serde(default)]
    pub inventory: InventoryFile,
    #[serde(default)]
    pub log: LogFile,
    #[serde(default)]
    pub daemon: DaemonFile,
    #[serde(default, rename = "sink")]
    pub sinks: Vec<Spanned<SinkFile>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DeviceFile {
    pub id: Option<Spanned<String>>,
    pub tenant_id: Option<String>,
    pub device_type: Option<String>,
    pub identity: Option<Spanned<BTreeMap<String, String>>>,
}

/// How hard the outbox works to keep the last moments before a power cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Durability {
    /// Acknowledge only what is on disk.
    Full,
    /// Fewer flash writes; the last moments before a power cut may be lost.
    Normal,
}

/// What happens when the outbox is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WhenFull {
    /// The oldest undelivered events go.
    DropOldest,
    /// New events are refused with `full`.
    RejectNew,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StorageFile {
    #[serde(default = "default_db_path")]
    pub path: PathBuf,
    #[serde(default = "default_durability")]
    pub durability: Durability,
    #[serde(default = "default_max_events")]
    pub max_events: Spanned<u64>,
    #[serde(default = "default_max_bytes")]
    pub max_bytes: Spanned<Size>,
    #[serde(default = "default_when_full")]
    pub when_full: WhenFull,
    #[serde(default = "default_max_age")]
    pub max_age: Spanned<Span>,
    #[serde(default = "default_max_dead_letters")]
    pub max_dead_letters: Spanned<u64>,
}

impl Default for StorageFile {
    fn default() -> Self {
        StorageFile {
            path: default_db_path(),
            durability: default_durability(),
            max_events: default_max_events(),
            max_bytes: default_max_bytes(),
            when_full: default_when_full(),
            max_age: default_max_age(),
            max_dead_letters: default_max_dead_letters(),
        }
    }
}

fn default_db_path() -> PathBuf {
    PathBuf::from("/var/lib/edgehook/edgehook.db")
}
fn default_durability() -> Durability {
    Durability::Full
}
fn default_max_events() -> Spanned<u64> {
    Spanned::new(0..0, 1_000_000)
}
fn default_max_bytes() -> Spanned<Size> {
    Spanned::new(0..0, Size(256 * 1024 * 1024))
}
fn default_when_full() -> WhenFull {
    WhenFull::DropOldest
}
fn default_max_age() -> Spanned<Span> {
    Spanned::new(0..0, Span(std::time::Duration::from_secs(7 * 86400)))
}
fn default_max_dead_letters() -> Spanned<u64> {
    Spanned::new(0..0, 10_000)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct IngestFile {
    #[serde(default = "default_socket")]
    pub socket: PathBuf,
    #[serde(default = "default_group")]
    pub group: String,
    #[serde(default = "default_max_event_bytes")]
    pub max_event_bytes: Spanned<Size>,
    #[serde(default = "default_max_connections")]
    pub max_connections: Spanned<u32>,
    #[serde(default)]
    pub admin_group: Option<Spanned<String>>,
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: Spanned<Span>,
}

impl Default for IngestFile {
    fn default() -> Self {
        IngestFile {
            socket: default_socket(),
            group: default_group(),
            max_event_bytes: default_max_event_bytes(),
            max_connections: default_max_connections(),
            admin_group: None,
            idle_timeout: default_idle_timeout(),
        }
    }
}

fn default_socket() -> PathBuf {
    PathBuf::from("/run/edgehook/ingest.sock")
}
fn default_group() -> String {
    "edgehook".into()
}
fn default_max_event_bytes() -> Spanned<Size> {
    Spanned::new(0..0, Size(64 * 1024))
}
fn default_max_connections() -> Spanned<u32> {
    Spanned::new(0..0, 64)
}
fn default_idle_timeout() -> Spanned<Span> {
    Spanned::new(0..0, Span(std::time::Duration::from_secs(5 * 60)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct InventoryFile {
    #[serde(default = "yes")]
    pub builtin: bool,
    #[serde(default = "default_scripts_dirs")]
    pub scripts_dirs: Vec<PathBuf>,
    #[serde(default = "default_interval")]
    pub interval: Spanned<Span>,
    #[serde(default = "default_script_timeout")]
    pub script_timeout: Spanned<Span>,
}

impl Default for InventoryFile {
    fn default() -> Self {
        InventoryFile {
            builtin: true,
            scripts_dirs: default_scripts_dirs(),
            interval: default_interval(),
            script_timeout: default_script_timeout(),
        }
    }
}

fn default_scripts_dirs() -> Vec<PathBuf> {
    vec![
        PathBuf::from("/etc/edgehook/inventory.d"),
        PathBuf::from("/usr/share/mender/inventory"),
    ]
}
fn default_interval() -> Spanned<Span> {
    Spanned::new(0..0, Span(std::time::Duration::from_secs(30 * 60)))
}
fn default_script_timeout() -> Spanned<Span> {
    Spanned::new(0..0, Span(std::time::Duration::from_secs(10)))
}

/// The log level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogLevel {
    /// Errors only.
    Error,
    /// Warnings and errors.
    Warn,
    /// The default.
    #[default]
    Info,
    /// Per-attempt detail.
    Debug,
    /// Everything.
    Trace,
}

impl LogLevel {
    /// The `log` crate's filter for this level.
    pub fn filter(self) -> log::LevelFilter {
        match self {
            LogLevel::Error => log::LevelFilter::Error,
            LogLevel::Warn => log::LevelFilter::Warn,
            LogLevel::Info => log::LevelFilter::Info,
            LogLevel::Debug => log::LevelFilter::Debug,
            LogLevel::Trace => log::LevelFilter::Trace,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LogFile {
    #[serde(default)]
    pub level: LogLevel,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DaemonFile {
    #[serde(default = "default_shutdown_timeout")]
    pub shutdown_timeout: Spanned<Span>,
}

impl Default for DaemonFile {
    fn default() -> Self {
        DaemonFile {
            shutdown_timeout: default_shutdown_timeout(),
        }
    }
}

fn default_shutdown_timeout() -> Spanned<Span> {
    Spanned::new(0..0, Span(std::time::Duration::from_secs(5)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SinkFile {
    pub name: Spanned<String>,
    pub url: Spanned<String>,
    #[serde(default = "default_events")]
    pub events: Vec<Spanned<String>>,
    #[serde(default = "yes")]
    pub enabled: bool,
    pub headers: Option<Spanned<BTreeMap<String, String>>>,
    pub headers_file: Option<Spanned<PathBuf>>,
    #[serde(default = "default_timeout")]
    pub timeout: Spanned<Span>,
    pub max_in_flight: Option<Spanned<u32>>,
    pub ca_file: Option<Spanned<PathBuf>>,
    pub client_cert: Option<Spanned<PathBuf>>,
    pub client_key: Option<Spanned<PathBuf>>,
    #[serde(default)]
    pub signing: Option<Spanned<SigningFile>>,
    #[serde(default)]
    pub retry: RetryFile,
    // MQTT only.
    pub topic: Option<Spanned<String>>,
    pub qos: Option<Spanned<u8>>,
    pub username: Option<Spanned<String>>,
    pub password: Option<Spanned<String>>,
    pub password_file: Option<Spanned<PathBuf>>,
    pub client_id: Option<Spanned<String>>,
    pub keep_alive: Option<Spanned<Span>>,
    pub status_topic: Option<Spanned<String>>,
    pub protocol: Option<Spanned<String>>,
    // Names and metadata.
    pub description: Option<Spanned<String>>,
    pub metadata: Option<Spanned<BTreeMap<String, String>>>,
    // The body of HTTP sinks, and the Slack message's fields.
    pub format: Option<Spanned<FormatName>>,
    pub channel: Option<Spanned<String>>,
    pub icon_emoji: Option<Spanned<String>>,
    pub icon_url: Option<Spanned<String>>,
}

/// A drop-in file of `sinks.d/`: sinks only.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DropInFile {
    #[serde(default, rename = "sink")]
    pub sinks: Vec<Spanned<SinkFile>>,
}

/// The body formats of HTTP sinks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FormatName {
    /// The stored event.
    Envelope,
    /// Only the event's `data`.
    Data,
    /// A Slack incoming-webhook message.
    Slack,
}

fn default_events() -> Vec<Spanned<String>> {
    vec![Spanned::new(0..0, "*".to_string())]
}
fn yes() -> bool {
    true
}
fn default_timeout() -> Spanned<Span> {
    Spanned::new(0..0, Span(std::time::Duration::from_secs(30)))
}

/// The signing schemes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum SchemeName {
    /// Standard Webhooks.
    #[default]
    Standard,
    /// Mender's `X-Men-Signature`.
    Mender,
    /// No signature.
    None,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SigningFile {
    #[serde(default)]
    pub scheme: SchemeName,
    pub secret: Option<Spanned<String>>,
    pub secret_file: Option<Spanned<PathBuf>>,
    #[serde(default)]
    pub previous_secrets: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RetryFile {
    #[serde(default = "default_initial")]
    pub initial: Spanned<Span>,
    #[serde(default = "default_max")]
    pub max: Spanned<Span>,
    #[serde(default = "default_max_attempts")]
    pub max_attempts: Spanned<u32>,
}

impl Default for RetryFile {
    fn default() -> Self {
        RetryFile {
            initial: default_initial(),
            max: default_max(),
            max_attempts: default_max_attempts(),
        }
    }
}

fn default_initial() -> Spanned<Span> {
    Spanned::new(0..0, Span(std::time::Duration::from_secs(1)))
}
fn default_max() -> Spanned<Span> {
    Spanned::new(0..0, Span(std::time::Duration::from_secs(300)))
}
fn default_max_attempts() -> Spanned<u32> {
    Spanned::new(0..0, 8)
}

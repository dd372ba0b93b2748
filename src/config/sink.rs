//! One `[[sink]]`, checked: its identity (name, description, metadata), URL, event filter,
//! retry and TLS settings here; the transport's own keys in `http` and `mqtt`, signing in
//! `signing`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use toml::Spanned;

use super::check::Checker;
use super::file::SinkFile;
use super::mqtt::{MqttSpec, check_mqtt};
use super::signing::SecretSource;
use crate::sinks::format::Format;
use crate::sinks::signing::Signer;

/// Longest `description`.
const MAX_DESCRIPTION: usize = 256;
/// Longest `metadata` value.
const MAX_METADATA_VALUE: usize = 1024;

/// One checked `[[sink]]`.
#[derive(Debug, Clone)]
pub struct SinkSpec {
    /// The sink's identity in the outbox.
    pub name: String,
    /// What the sink is for, in the operator's words.
    pub description: Option<String>,
    /// The operator's key-value pairs (`{metadata.KEY}` in topic templates).
    pub metadata: BTreeMap<String, String>,
    /// The file it is defined in: the main config or a drop-in of `sinks.d`.
    pub file: PathBuf,
    /// The URL as written.
    pub url: String,
    /// Transport-specific settings.
    pub kind: SinkKind,
    /// Glob patterns over event types; none means every type not excluded.
    pub events: Vec<glob::Pattern>,
    /// Patterns written with a leading `!`: types matching one never go to this sink.
    pub exclude: Vec<glob::Pattern>,
    /// A disabled sink receives nothing.
    pub enabled: bool,
    /// Per-attempt timeout.
    pub timeout: Duration,
    /// Concurrent attempts; 1 keeps strict order.
    pub max_in_flight: usize,
    /// Trust anchors instead of the system store.
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain (PEM).
    pub client_cert: Option<PathBuf>,
    /// Client private key (PEM).
    pub client_key: Option<PathBuf>,
    /// How requests are signed.
    pub signer: Signer,
    /// Where the current signing secret comes from.
    pub secret: SecretSource,
    /// First backoff.
    pub retry_initial: Duration,
    /// Largest backoff, and the cap on `Retry-After`.
    pub retry_max: Duration,
    /// Attempts before a permanently failing delivery becomes a dead letter.
    pub max_attempts: u32,
}

/// The transport of a sink.
#[derive(Debug, Clone)]
pub enum SinkKind {
    /// `http://` or `https://`.
    Http {
        /// Extra headers sent with every request.
        headers: Vec<(String, String)>,
        /// What the body is.
        format: Format,
    },
    /// `mqtt://` or `mqtts://`.
    Mqtt(MqttSpec),
}

impl SinkSpec {
    /// Whether events of this type go to this sink.
    pub fn wants(&self, event_type: &str) -> bool {
        self.enabled
            && !self.exclude.iter().any(|p| p.matches(event_type))
            && (self.events.is_empty() || self.events.iter().any(|p| p.matches(event_type)))
    }

    /// The URL as it may be shown or logged (see [`display_url`]).
    pub fn display_url(&self) -> String {
        display_url(&self.url)
    }

    /// The event patterns as written, exclusions with their `!`.
    pub fn patterns(&self) -> Vec<String> {
        self.events
            .iter()
            .map(|p| p.as_str().to_string())
            .chain(self.exclude.iter().map(|p| format!("!{}", p.as_str())))
            .collect()
    }

    /// `http` or `mqtt`.
    pub fn transport(&self) -> &'static str {
        match self.kind {
            SinkKind::Http { .. } => "http",
            SinkKind::Mqtt(_) => "mqtt",
        }
    }

    /// The body format (`envelope` for MQTT sinks, which publish the stored event).
    pub fn format(&self) -> &Format {
        match &self.kind {
            SinkKind::Http { format, .. } => format,
            SinkKind::Mqtt(_) => &Format::Envelope,
        }
    }
}

/// `url` as it may be shown or logged: scheme, host, port and the first path segment; user
/// information, the rest of the path and the query string are each replaced by `…`. A
/// webhook URL often carries its token in the path (Slack's
/// `https://hooks.slack.com/services/T…/B…/x…`, Zapier's `…/hooks/catch/1/abc/`): the first
/// segment keeps it recognisable, the token stays hidden. A first segment that does not read
/// as a word (over 24 characters, other characters than letters, digits, `-`, `_` and `.`, or
/// more than 4 digits) is hidden too.
pub fn display_url(url: &str) -> String {
    let Ok(u) = url.parse::<http::Uri>() else {
        return "<invalid url>".into();
    };
    let hidden = "…";
    let host = u
        .authority()
        .map_or(String::new(), |a| match a.as_str().rsplit_once('@') {
            Some((_, h)) => format!("{hidden}@{h}"),
            None => a.as_str().to_string(),
        });
    let path = u.path().trim_start_matches('/');
    let (first, rest) = path.split_once('/').unwrap_or((path, ""));
    let word = first.len() <= 24
        && first
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && first.chars().filter(char::is_ascii_digit).count() <= 4;
    let mut shown = format!("{}://{host}", u.scheme_str().unwrap_or(""));
    if !first.is_empty() {
        shown.push('/');
        shown.push_str(if word { first } else { hidden });
    }
    if !rest.is_empty() && word {
        shown.push('/');
        shown.push_str(hidden);
    }
    if u.query().is_some() {
        shown.push('?');
        shown.push_str(hidden);
    }
    shown
}

/// Whether `url` seems to hold a credential: user information, a query string, or a path
/// segment that reads as a token (one with a digit in six or more characters, or any of over
/// twenty), as Slack's `T…/B…/x…` and Zapier's `catch/123/abc12/` do. [`display_url`] hides
/// more than this (every segment after the first), but a config file open to others is only
/// warned about for what looks like a secret: `https://api.example.com/v1/events` is not one.
pub fn url_holds_secret(url: &str) -> bool {
    let Ok(u) = url.parse::<http::Uri>() else {
        return false;
    };
    let token = |s: &str| s.len() > 20 || (s.len() >= 6 && s.chars().any(|c| c.is_ascii_digit()));
    u.authority().is_some_and(|a| a.as_str().contains('@'))
        || u.query().is_some()
        || u.path().split('/').any(token)
}

/// Whether `name` may name a sink (it also names its drop-in and secret files).
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && name.len() <= 64
        && chars.all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

/// Checks one `[[sink]]` of the file `c` is checking; `None` when it has problems.
pub(super) fn check_sink(c: &mut Checker<'_>, s: &SinkFile) -> Option<SinkSpec> {
    let before = c.problems.len();
    let name = s.name.get_ref().clone();
    if !valid_name(&name) {
        c.at(
            &s.name,
            "a sink name is 1 to 64 letters, digits, `.`, `_` or `-`, starting with a letter or digit",
        );
    }
    let url = s.url.get_ref().clone();
    let uri = url.parse::<http::Uri>().ok();
    let scheme = uri.as_ref().map(scheme_of).unwrap_or_default();
    let scheme = scheme.as_str();
    let has_host = uri
        .as_ref()
        .and_then(|u| u.host())
        .is_some_and(|h| !h.is_empty());
    let is_mqtt = matches!(scheme, "mqtt" | "mqtts" | "wss");
    if !matches!(scheme, "http" | "https" | "mqtt" | "mqtts" | "wss") || !has_host {
        c.at(
            &s.url,
            format!(
                "sink `{name}`: the url must be http(s)://host/…, mqtt(s)://host:port or wss://host/path"
            ),
        );
    }
    let (events, exclude) = check_events(c, s, &name);
    let max_in_flight = match &s.max_in_flight {
        Some(m) if !(1..=64).contains(m.get_ref()) => {
            c.at(m, "`max_in_flight` must be between 1 and 64");
            1
        }
        Some(m) => *m.get_ref() as usize,
        None if is_mqtt => 16,
        None => 1,
    };
    check_retry(c, s);
    super::ranges::check_sink_ranges(c, s, is_mqtt);
    let (signer, secret) = super::signing::check_signing(c, s, &name);
    check_tls_files(c, s, &name);
    let description = check_description(c, s, &name);
    let metadata = check_metadata(c, s, &name);
    let kind = if is_mqtt {
        super::http::refuse_http_keys(c, s, &name);
        SinkKind::Mqtt(check_mqtt(c, s, &name, uri.as_ref(), &metadata))
    } else {
        super::http::check_http(c, s, &name)
    };
    if c.problems.len() > before {
        return None;
    }
    let retry = &s.retry;
    Some(SinkSpec {
        name,
        description,
        metadata,
        file: c.file().to_owned(),
        url,
        kind,
        events,
        exclude,
        enabled: s.enabled,
        timeout: s.timeout.get_ref().0,
        max_in_flight,
        ca_file: s.ca_file.as_ref().map(|p| c.resolve(p.get_ref())),
        client_cert: s.client_cert.as_ref().map(|p| c.resolve(p.get_ref())),
        client_key: s.client_key.as_ref().map(|p| c.resolve(p.get_ref())),
        signer: signer?,
        secret,
        retry_initial: retry.initial.get_ref().0,
        retry_max: retry.max.get_ref().0,
        max_attempts: *retry.max_attempts.get_ref(),
    })
}

fn check_events(
    c: &mut Checker<'_>,
    s: &SinkFile,
    name: &str,
) -> (Vec<glob::Pattern>, Vec<glob::Pattern>) {
    let (mut events, mut exclude) = (Vec::new(), Vec::new());
    for p in &s.events {
        let (list, text) = match p.get_ref().strip_prefix('!') {
            Some(rest) => (&mut exclude, rest),
            None => (&mut events, p.get_ref().as_str()),
        };
        match glob::Pattern::new(text) {
            Ok(pat) => list.push(pat),
            Err(e) => c.at(p, format!("sink `{name}`: bad event pattern: {e}")),
        }
    }
    if s.events.is_empty() {
        c.at(
            &s.name,
            format!("sink `{name}`: `events` is empty; it would receive nothing"),
        );
    }
    (events, exclude)
}

fn check_retry(c: &mut Checker<'_>, s: &SinkFile) {
    let retry = &s.retry;
    if retry.max.get_ref().0 < retry.initial.get_ref().0 {
        c.at(
            &retry.max,
            "`retry.max` must not be less than `retry.initial`",
        );
    }
    if *retry.max_attempts.get_ref() == 0 {
        c.at(
            &retry.max_attempts,
            "`retry.max_attempts` must be at least 1",
        );
    }
}

fn check_tls_files(c: &mut Checker<'_>, s: &SinkFile, name: &str) {
    for file in [&s.ca_file, &s.client_cert, &s.client_key]
        .into_iter()
        .flatten()
    {
        if !c.resolve(file.get_ref()).is_file() {
            let shown = c.resolve(file.get_ref()).display().to_string();
            c.at(file, format!("sink `{name}`: no such file {shown}"));
        }
    }
    if let Some(key) = &s.client_key {
        let key = c.resolve(key.get_ref());
        c.warn_if_exposed(&key, "client key");
    }
    if s.client_cert.is_some() != s.client_key.is_some() {
        c.at(
            &s.name,
            format!("sink `{name}`: `client_cert` and `client_key` go together"),
        );
    }
}

fn check_description(c: &mut Checker<'_>, s: &SinkFile, name: &str) -> Option<String> {
    let d = s.description.as_ref()?;
    let text = d.get_ref();
    if text.chars().count() > MAX_DESCRIPTION || text.chars().any(char::is_control) {
        c.at(
            d,
            format!(
                "sink `{name}`: `description` is one line of at most {MAX_DESCRIPTION} characters"
            ),
        );
    }
    Some(text.clone())
}

fn check_metadata(c: &mut Checker<'_>, s: &SinkFile, name: &str) -> BTreeMap<String, String> {
    let Some(m) = &s.metadata else {
        return BTreeMap::new();
    };
    for (k, v) in m.get_ref() {
        if !valid_metadata_key(k) {
            c.at(
                m,
                format!(
                    "sink `{name}`: metadata key `{k}` must be 1 to 64 letters, digits, `.`, `_` or `-`"
                ),
            );
        }
        if v.chars().count() > MAX_METADATA_VALUE || v.contains('\0') {
            c.at(
                m,
                format!(
                    "sink `{name}`: metadata `{k}` must be at most {MAX_METADATA_VALUE} characters, without NUL"
                ),
            );
        }
    }
    m.get_ref().clone()
}

/// Whether `key` may be a `metadata` key (and so appear in `{metadata.KEY}`).
fn valid_metadata_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 64
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

/// Reports each key of `keys` that is present, as belonging to `what` only.
pub(super) fn refuse(
    c: &mut Checker<'_>,
    name: &str,
    keys: &[(&str, Option<std::ops::Range<usize>>)],
    what: &str,
) {
    for (field, span) in keys {
        if let Some(span) = span {
            c.at_span(
                span.clone(),
                format!("sink `{name}`: `{field}` is for {what} only"),
            );
        }
    }
}

/// The span of an optional key.
pub(super) fn span<T>(v: &Option<Spanned<T>>) -> Option<std::ops::Range<usize>> {
    v.as_ref().map(Spanned::span)
}

/// The scheme of `uri` in lower case: schemes are case-insensitive (RFC 3986, 3.1), so
/// `HTTP://` and `Mqtts://` are classified as `http` and `mqtts`.
pub(super) fn scheme_of(uri: &http::Uri) -> String {
    uri.scheme_str().unwrap_or("").to_ascii_lowercase()
}

/// Whether the URL's host is loopback by its text alone (no resolving): `localhost`, a
/// `*.localhost` name (RFC 6761), or a loopback address, IPv4-mapped ones included.
pub fn is_loopback_url(url: &str) -> bool {
    let host = url
        .parse::<http::Uri>()
        .ok()
        .and_then(|u| u.host().map(str::to_string))
        .unwrap_or_default();
    is_loopback_host(&host)
}

/// Whether `host` (a name, or an address with or without brackets) is loopback by its text.
pub(super) fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let host = host.to_ascii_lowercase();
    host == "localhost"
        || host.ends_with(".localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.to_canonical().is_loopback())
}

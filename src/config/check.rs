//! The semantic checks that follow parsing: every problem is collected with its position,
//! secrets are read and decoded, and the result is a [`Config`] that cannot be wrong in a way
//! a file could have said.

use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use super::file::{ConfigFile, SchemeName, SinkFile};
use super::{Config, Device, Ingest, Inventory, Locator, Problem, Storage};
use crate::sinks::signing::{Scheme, Signer};

/// One checked `[[sink]]`.
#[derive(Debug, Clone)]
pub struct SinkSpec {
    /// The sink's identity in the outbox.
    pub name: String,
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
    },
    /// `mqtt://` or `mqtts://`.
    Mqtt(MqttSpec),
}

/// The MQTT settings of a sink.
#[derive(Debug, Clone)]
pub struct MqttSpec {
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// `mqtts://`.
    pub tls: bool,
    /// Topic template.
    pub topic: String,
    /// 1 or 2.
    pub qos: u8,
    /// User name.
    pub username: Option<String>,
    /// Password, read from `password` or `password_file`.
    pub password: Option<String>,
    /// Client id template.
    pub client_id: String,
    /// MQTT keep-alive.
    pub keep_alive: Duration,
    /// Presence topic template.
    pub status_topic: String,
}

impl SinkSpec {
    /// Whether events of this type go to this sink.
    pub fn wants(&self, event_type: &str) -> bool {
        self.enabled
            && !self.exclude.iter().any(|p| p.matches(event_type))
            && (self.events.is_empty() || self.events.iter().any(|p| p.matches(event_type)))
    }

    /// The URL as it may be logged: no credentials, no query string.
    pub fn display_url(&self) -> String {
        display_url(&self.url)
    }
}

/// `url` without user information or query string.
pub fn display_url(url: &str) -> String {
    match url.parse::<http::Uri>() {
        Ok(u) => {
            let host = u.authority().map_or(String::new(), |a| {
                let hp = a.as_str();
                hp.rsplit_once('@').map_or(hp, |(_, h)| h).to_string()
            });
            format!("{}://{}{}", u.scheme_str().unwrap_or(""), host, u.path())
                .trim_end_matches('/')
                .to_string()
        }
        Err(_) => "<invalid url>".into(),
    }
}

struct Checker<'a> {
    locate: &'a Locator<'a>,
    problems: Vec<Problem>,
}

impl Checker<'_> {
    fn at<T>(&mut self, spanned: &Spanned<T>, message: impl Into<String>) {
        self.problems
            .push(self.locate.problem(spanned.span(), message.into()));
    }

    fn read_file(&mut self, path: &Spanned<PathBuf>, what: &str) -> Option<String> {
        let full = self.resolve(path.get_ref());
        match std::fs::read_to_string(&full) {
            Ok(text) => Some(text.trim().to_string()),
            Err(e) => {
                self.at(path, format!("cannot read {what} {}: {e}", full.display()));
                None
            }
        }
    }

    fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_owned()
        } else {
            self.locate.dir().join(p)
        }
    }
}

pub(super) fn check(raw: ConfigFile, locate: &Locator<'_>) -> Result<Config, Vec<Problem>> {
    let mut c = Checker {
        locate,
        problems: Vec::new(),
    };
    if let Some(id) = &raw.device.id {
        if id.get_ref().trim().is_empty() || id.get_ref().len() > 128 {
            c.at(id, "`device.id` must be 1 to 128 characters");
        }
    }
    if let Some(identity) = &raw.device.identity {
        if identity.get_ref().is_empty() {
            c.at(identity, "`device.identity` needs at least one key");
        }
    }
    if raw.inventory.interval.get_ref().0 < Duration::from_secs(1) {
        c.at(&raw.inventory.interval, "`interval` must be at least 1s");
    }
    if raw.inventory.script_timeout.get_ref().0 < Duration::from_millis(10) {
        c.at(
            &raw.inventory.script_timeout,
            "`script_timeout` must be at least 10ms",
        );
    }
    if *raw.storage.max_events.get_ref() == 0 {
        c.at(&raw.storage.max_events, "`max_events` must be at least 1");
    }
    if raw.storage.max_bytes.get_ref().0 < 4096 {
        c.at(&raw.storage.max_bytes, "`max_bytes` must be at least 4KiB");
    }
    let max_line = raw.ingest.max_event_bytes.get_ref().0;
    if !(256..=16 * 1024 * 1024).contains(&max_line) {
        c.at(
            &raw.ingest.max_event_bytes,
            "`max_event_bytes` must be between 256 and 16MiB",
        );
    }
    let mut sinks: Vec<SinkSpec> = Vec::new();
    for sink in &raw.sinks {
        if let Some(dup) = sinks
            .iter()
            .find(|s| s.name == *sink.get_ref().name.get_ref())
        {
            let name = dup.name.clone();
            c.at(
                &sink.get_ref().name,
                format!("sink `{name}` is defined twice"),
            );
            continue;
        }
        if let Some(spec) = check_sink(&mut c, sink.get_ref()) {
            sinks.push(spec);
        }
    }
    if !c.problems.is_empty() {
        return Err(c.problems);
    }
    Ok(Config {
        path: locate.file.to_owned(),
        device: Device {
            id: raw.device.id.map(Spanned::into_inner),
            tenant_id: raw.device.tenant_id,
            device_type: raw.device.device_type,
            identity: raw.device.identity.map(Spanned::into_inner),
        },
        inventory: Inventory {
            builtin: raw.inventory.builtin,
            scripts_dirs: raw
                .inventory
                .scripts_dirs
                .iter()
                .map(|d| c.resolve(d))
                .collect(),
            interval: raw.inventory.interval.into_inner().0,
            script_timeout: raw.inventory.script_timeout.into_inner().0,
        },
        storage: Storage {
            path: c.resolve(&raw.storage.path),
            durability: raw.storage.durability,
            max_events: raw.storage.max_events.into_inner(),
            max_bytes: raw.storage.max_bytes.into_inner().0,
            when_full: raw.storage.when_full,
            max_age: raw.storage.max_age.0,
            max_dead_letters: raw.storage.max_dead_letters,
        },
        ingest: Ingest {
            socket: c.resolve(&raw.ingest.socket),
            group: raw.ingest.group,
            max_event_bytes: max_line,
            max_connections: raw.ingest.max_connections.max(1),
        },
        log_level: raw.log.level,
        shutdown_timeout: raw.daemon.shutdown_timeout.0,
        sinks,
    })
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && name.len() <= 64
        && chars.all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

fn check_sink(c: &mut Checker<'_>, s: &SinkFile) -> Option<SinkSpec> {
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
    let scheme = uri.as_ref().and_then(|u| u.scheme_str()).unwrap_or("");
    let host = uri
        .as_ref()
        .and_then(|u| u.host())
        .unwrap_or("")
        .to_string();
    let is_mqtt = matches!(scheme, "mqtt" | "mqtts");
    if !matches!(scheme, "http" | "https" | "mqtt" | "mqtts") || host.is_empty() {
        c.at(
            &s.url,
            format!("sink `{name}`: the url must be http(s)://host/… or mqtt(s)://host:port"),
        );
    }
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
    let max_in_flight = match &s.max_in_flight {
        Some(m) if !(1..=64).contains(m.get_ref()) => {
            c.at(m, "`max_in_flight` must be between 1 and 64");
            1
        }
        Some(m) => *m.get_ref() as usize,
        None if is_mqtt => 16,
        None => 1,
    };
    let retry = &s.retry;
    if retry.initial.get_ref().0.is_zero() {
        c.at(&retry.initial, "`retry.initial` must be more than zero");
    }
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
    let signer = check_signing(c, s, &name);
    for file in [&s.ca_file, &s.client_cert, &s.client_key]
        .into_iter()
        .flatten()
    {
        if !c.resolve(file.get_ref()).is_file() {
            let shown = c.resolve(file.get_ref()).display().to_string();
            c.at(file, format!("sink `{name}`: no such file {shown}"));
        }
    }
    if s.client_cert.is_some() != s.client_key.is_some() {
        c.at(
            &s.name,
            format!("sink `{name}`: `client_cert` and `client_key` go together"),
        );
    }
    let kind = if is_mqtt {
        if let Some(h) = &s.headers {
            c.at(
                h,
                format!("sink `{name}`: `headers` are for HTTP sinks only"),
            );
        }
        SinkKind::Mqtt(check_mqtt(
            c,
            s,
            &name,
            uri.as_ref(),
            host,
            scheme == "mqtts",
        ))
    } else {
        for (field, present) in [
            ("topic", s.topic.as_ref().map(Spanned::span)),
            ("qos", s.qos.as_ref().map(Spanned::span)),
            ("username", s.username.as_ref().map(Spanned::span)),
            ("password", s.password.as_ref().map(Spanned::span)),
            ("password_file", s.password_file.as_ref().map(Spanned::span)),
            ("client_id", s.client_id.as_ref().map(Spanned::span)),
            ("keep_alive", s.keep_alive.as_ref().map(Spanned::span)),
            ("status_topic", s.status_topic.as_ref().map(Spanned::span)),
        ] {
            if let Some(span) = present {
                let p = c.locate.problem(
                    span,
                    format!("sink `{name}`: `{field}` is for MQTT sinks only"),
                );
                c.problems.push(p);
            }
        }
        let headers: Vec<(String, String)> = s
            .headers
            .as_ref()
            .map(|h| {
                h.get_ref()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default();
        for (k, v) in &headers {
            let bad_name = http::HeaderName::from_bytes(k.as_bytes()).is_err();
            let bad_value = http::HeaderValue::from_str(v).is_err();
            if bad_name || bad_value {
                let h = s.headers.as_ref().expect("headers exist");
                c.at(
                    h,
                    format!("sink `{name}`: header `{k}` is not a valid HTTP header"),
                );
            }
        }
        SinkKind::Http { headers }
    };
    if c.problems.len() > before {
        return None;
    }
    Some(SinkSpec {
        name,
        url,
        kind,
        events,
        exclude,
        enabled: s.enabled,
        timeout: s.timeout.0,
        max_in_flight,
        ca_file: s.ca_file.as_ref().map(|p| c.resolve(p.get_ref())),
        client_cert: s.client_cert.as_ref().map(|p| c.resolve(p.get_ref())),
        client_key: s.client_key.as_ref().map(|p| c.resolve(p.get_ref())),
        signer: signer?,
        retry_initial: retry.initial.get_ref().0,
        retry_max: retry.max.get_ref().0,
        max_attempts: *retry.max_attempts.get_ref(),
    })
}

fn check_signing(c: &mut Checker<'_>, s: &SinkFile, name: &str) -> Option<Signer> {
    let Some(signing) = &s.signing else {
        c.at(
            &s.name,
            format!(
                "sink `{name}` has no [sink.signing]: set `scheme` with a `secret` or `secret_file`, or `scheme = \"none\"`"
            ),
        );
        return None;
    };
    let sg = signing.get_ref();
    let scheme = match sg.scheme {
        SchemeName::Standard => Scheme::Standard,
        SchemeName::Mender => Scheme::Mender,
        SchemeName::None => Scheme::None,
    };
    let current = match (&sg.secret, &sg.secret_file) {
        (Some(secret), Some(_)) => {
            c.at(
                secret,
                format!("sink `{name}`: give `secret` or `secret_file`, not both"),
            );
            return None;
        }
        (Some(secret), None) => Some((secret.get_ref().clone(), secret.span())),
        (None, Some(file)) => Some((c.read_file(file, "secret file")?, file.span())),
        (None, None) => None,
    };
    if scheme == Scheme::None && (current.is_some() || !sg.previous_secrets.is_empty()) {
        c.at(
            signing,
            format!("sink `{name}`: scheme `none` takes no secret"),
        );
        return None;
    }
    let mut previous = Vec::new();
    for p in &sg.previous_secrets {
        match crate::sinks::signing::parse_secret(scheme, p.get_ref()) {
            Ok(_) => previous.push(p.get_ref().as_str()),
            Err(e) => c.at(p, format!("sink `{name}`: previous secret: {e}")),
        }
    }
    let span = current
        .as_ref()
        .map_or(signing.span(), |(_, span)| span.clone());
    match Signer::new(scheme, current.as_ref().map(|(s, _)| s.as_str()), &previous) {
        Ok(signer) => Some(signer),
        Err(e) => {
            let p = c.locate.problem(span, format!("sink `{name}`: {e}"));
            c.problems.push(p);
            None
        }
    }
}

fn check_mqtt(
    c: &mut Checker<'_>,
    s: &SinkFile,
    name: &str,
    uri: Option<&http::Uri>,
    host: String,
    tls: bool,
) -> MqttSpec {
    let qos = match &s.qos {
        Some(q) if *q.get_ref() == 0 => {
            c.at(
                q,
                format!("sink `{name}`: QoS 0 cannot confirm delivery; use `qos = 1` or `qos = 2`"),
            );
            1
        }
        Some(q) if *q.get_ref() > 2 => {
            c.at(q, format!("sink `{name}`: `qos` is 1 or 2"));
            1
        }
        Some(q) => *q.get_ref(),
        None => 1,
    };
    let password = match (&s.password, &s.password_file) {
        (Some(p), Some(_)) => {
            c.at(
                p,
                format!("sink `{name}`: give `password` or `password_file`, not both"),
            );
            None
        }
        (Some(p), None) => Some(p.get_ref().clone()),
        (None, Some(f)) => c.read_file(f, "password file"),
        (None, None) => None,
    };
    if password.is_some() && s.username.is_none() {
        c.at(
            &s.name,
            format!("sink `{name}`: a password needs a `username`"),
        );
    }
    let template = |t: &Option<Spanned<String>>, default: &str, c: &mut Checker<'_>| {
        let text = t
            .as_ref()
            .map_or(default.to_string(), |t| t.get_ref().clone());
        if let Some(t) = t {
            if let Err(e) = check_template(&text) {
                c.at(t, format!("sink `{name}`: {e}"));
            }
        }
        text
    };
    MqttSpec {
        host,
        port: uri
            .and_then(http::Uri::port_u16)
            .unwrap_or(if tls { 8883 } else { 1883 }),
        tls,
        topic: template(&s.topic, "edgehook/{device_id}/events/{type}", c),
        qos,
        username: s.username.as_ref().map(|u| u.get_ref().clone()),
        password,
        client_id: template(&s.client_id, "edgehook-{device_id}", c),
        keep_alive: s
            .keep_alive
            .as_ref()
            .map_or(Duration::from_secs(30), |k| k.get_ref().0),
        status_topic: template(&s.status_topic, "edgehook/{device_id}/status", c),
    }
}

/// Checks a topic template's placeholders.
pub fn check_template(t: &str) -> Result<(), String> {
    let mut rest = t;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let close = after
            .find('}')
            .ok_or_else(|| format!("unclosed `{{` in `{t}`"))?;
        let key = &after[..close];
        if !matches!(key, "device_id" | "type" | "sink") && !key.starts_with("metadata.") {
            return Err(format!(
                "unknown placeholder `{{{key}}}` in `{t}` (expected {{device_id}}, {{type}} or {{sink}})"
            ));
        }
        rest = &after[close + 1..];
    }
    if t.contains('+') || t.contains('#') {
        return Err(format!("`{t}` contains an MQTT wildcard"));
    }
    Ok(())
}

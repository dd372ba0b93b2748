//! `edgehook sink add`, `update` and `remove`: each changes one drop-in file of `sinks.d/`
//! (`add` writes `sinks.d/NAME.toml`), checks the whole config with the change before keeping
//! it (exit 78 with the reasons, nothing changed), and asks a running daemon to reload.

use std::path::{Path, PathBuf};

use toml::{Table, Value};

use super::dropin::{DropIn, Reload};
use super::find;
use crate::cli::exit::{Code, Failure};
use crate::config::{Config, SecretSource, dropin_dir, valid_name};

/// What `add` and `update` may set; each one given replaces what the sink had.
#[derive(Debug, clap::Args)]
pub struct Settings {
    /// An HTTP header sent with every request (repeatable; sets that header)
    #[arg(long = "header", value_name = "'NAME: VALUE'")]
    pub headers: Vec<String>,
    /// An event type pattern, `!` excluding (repeatable; replaces the list) [add: *]
    #[arg(long = "events", value_name = "GLOB")]
    pub events: Vec<String>,
    /// The signing scheme [add: standard, with a generated secret; none for --format slack]
    #[arg(long, value_parser = ["standard", "mender", "none"])]
    pub scheme: Option<String>,
    /// A file holding the signing secret (without one a secret is generated)
    #[arg(long, value_name = "PATH")]
    pub secret_file: Option<PathBuf>,
    /// A file of headers that are secrets, `Name: value` a line, kept 0600 ("" removes it)
    #[arg(long, value_name = "PATH")]
    pub headers_file: Option<PathBuf>,
    /// The body: envelope (the event), data (only its data) or slack (a Slack message)
    #[arg(long, value_parser = ["envelope", "data", "slack"])]
    pub format: Option<String>,
    /// A metadata pair (repeatable; sets that key)
    #[arg(long = "metadata", value_name = "KEY=VALUE")]
    pub metadata: Vec<String>,
    /// What the sink is for ("" removes it)
    #[arg(long)]
    pub description: Option<String>,
    /// Slack: the channel to post in ("" removes it)
    #[arg(long)]
    pub channel: Option<String>,
    /// Slack: who the message is from; MQTT: the broker user name ("" removes it)
    #[arg(long)]
    pub username: Option<String>,
    /// Slack: an emoji as the icon, such as :satellite: ("" removes it)
    #[arg(long)]
    pub icon_emoji: Option<String>,
    /// Slack: an image URL as the icon ("" removes it)
    #[arg(long)]
    pub icon_url: Option<String>,
    /// MQTT: the topic template ("" removes it)
    #[arg(long)]
    pub topic: Option<String>,
}

/// Arguments of `sink add`.
#[derive(Debug, clap::Args)]
pub struct AddArgs {
    /// The new sink's name (also its file's: sinks.d/NAME.toml)
    pub name: String,
    /// Where events go: http(s)://… or mqtt(s)://host:port
    #[arg(long)]
    pub url: String,
    /// The settings.
    #[command(flatten)]
    pub settings: Settings,
    /// Add it disabled: it receives nothing until `sink update NAME --enable`
    #[arg(long)]
    pub disabled: bool,
}

/// Arguments of `sink update`.
#[derive(Debug, clap::Args)]
pub struct UpdateArgs {
    /// The sink, by name
    pub name: String,
    /// A new URL
    #[arg(long)]
    pub url: Option<String>,
    /// The settings.
    #[command(flatten)]
    pub settings: Settings,
    /// Stop sending this header (repeatable)
    #[arg(long = "remove-header", value_name = "NAME")]
    pub remove_headers: Vec<String>,
    /// Remove this metadata key (repeatable)
    #[arg(long = "remove-metadata", value_name = "KEY")]
    pub remove_metadata: Vec<String>,
    /// Enable the sink
    #[arg(long, conflicts_with = "disable")]
    pub enable: bool,
    /// Disable the sink: it receives nothing, its queue waits
    #[arg(long)]
    pub disable: bool,
}

/// Arguments of `sink remove`.
#[derive(Debug, clap::Args)]
pub struct RemoveArgs {
    /// The sink, by name
    pub name: String,
}

pub(super) fn add(config_path: &Path, a: AddArgs) -> Result<Code, Failure> {
    if !valid_name(&a.name) {
        return Err(Failure::new(
            Code::Config,
            format!(
                "`{}` cannot name a sink: a sink name is 1 to 64 letters, digits, `.`, `_` or `-`, starting with a letter or digit",
                a.name.chars().take(80).collect::<String>()
            ),
        ));
    }
    let config = crate::cli::load(config_path)?;
    let path = dropin_dir(config_path).join(format!("{}.toml", a.name));
    if let Some(existing) = config.sink(&a.name) {
        return Err(Failure::new(
            Code::Config,
            format!(
                "sink `{}` is defined already, in {}; adding it to {} would define it twice",
                a.name,
                existing.file.display(),
                path.display()
            ),
        ));
    }
    let mut file = DropIn::open(config_path, path)?;
    if file.existed() {
        return Err(Failure::new(
            Code::Config,
            format!(
                "{} exists already; choose another name, or edit that file",
                file.path.display()
            ),
        ));
    }
    let mut sink = Table::new();
    sink.insert("name".into(), a.name.clone().into());
    sink.insert("url".into(), a.url.clone().into());
    if a.disabled {
        sink.insert("enabled".into(), false.into());
    }
    let slack = a.settings.format.as_deref() == Some("slack");
    let scheme = if slack { "none" } else { "standard" };
    sub_table(&mut sink, "signing").insert("scheme".into(), scheme.into());
    apply(&mut sink, &a.settings)?;
    file.sinks_mut().push(Value::Table(sink));
    let path = file.path.clone();
    let (config, reload) = file.commit(config_path)?;
    outln!("Added sink {} in {}", a.name, path.display());
    tell(&reload);
    if let Some(SecretSource::Generated(_)) = config.sink(&a.name).map(|s| &s.secret) {
        outln!(
            "Its signing secret is generated when the daemon starts it; `sudo edgehook sink show {} --reveal-secret` shows it for the receiver.",
            a.name
        );
    }
    Ok(Code::Ok)
}

pub(super) fn update(config_path: &Path, a: UpdateArgs) -> Result<Code, Failure> {
    let config = crate::cli::load(config_path)?;
    let mut file = open_defining(config_path, &config, &a.name)?;
    let sink = defined(&mut file, &a.name)?;
    if let Some(url) = &a.url {
        sink.insert("url".into(), url.clone().into());
    }
    apply(sink, &a.settings)?;
    for (key, names) in [
        ("headers", &a.remove_headers),
        ("metadata", &a.remove_metadata),
    ] {
        for n in names {
            let found = sink
                .get_mut(key)
                .and_then(Value::as_table_mut)
                .and_then(|t| t.remove(n));
            if found.is_none() {
                return Err(Failure::new(
                    Code::Usage,
                    format!("sink `{}` has no {key} key `{n}`", a.name),
                ));
            }
        }
    }
    for key in ["headers", "metadata"] {
        if sink
            .get(key)
            .and_then(Value::as_table)
            .is_some_and(Table::is_empty)
        {
            sink.remove(key);
        }
    }
    if a.enable || a.disable {
        sink.insert("enabled".into(), a.enable.into());
    }
    let path = file.path.clone();
    let (_, reload) = file.commit(config_path)?;
    outln!("Updated sink {} in {}", a.name, path.display());
    tell(&reload);
    Ok(Code::Ok)
}

pub(super) fn remove(config_path: &Path, a: RemoveArgs) -> Result<Code, Failure> {
    let config = crate::cli::load(config_path)?;
    let secret = find(&config, &a.name)?.secret.clone();
    let mut file = open_defining(config_path, &config, &a.name)?;
    defined(&mut file, &a.name)?;
    file.sinks_mut()
        .retain(|s| s.get("name").and_then(Value::as_str) != Some(a.name.as_str()));
    let path = file.path.clone();
    let (_, reload) = file.commit(config_path)?;
    outln!(
        "Removed sink {} from {}; its queue stays in the outbox (`status` shows it orphaned) and resumes if a sink of that name comes back",
        a.name,
        path.display()
    );
    tell(&reload);
    if let SecretSource::Generated(p) = secret {
        outln!(
            "Its generated secret stays in {}, for a sink of that name; remove the file to have a new one generated.",
            p.display()
        );
    }
    Ok(Code::Ok)
}

/// The drop-in that defines `name`, opened for a change; a sink of the main file is refused.
fn open_defining(config_path: &Path, config: &Config, name: &str) -> Result<DropIn, Failure> {
    let spec = find(config, name)?;
    if spec.file == config.path {
        return Err(Failure::new(
            Code::Config,
            format!(
                "sink `{name}` is defined in the main config file {}; `edgehook sink` changes only the drop-in files of {}: edit that file",
                config.path.display(),
                dropin_dir(config_path).display()
            ),
        ));
    }
    DropIn::open(config_path, spec.file.clone())
}

/// The table of sink `name` in `file` (which changed under us if it is not there).
fn defined<'a>(file: &'a mut DropIn, name: &str) -> Result<&'a mut Table, Failure> {
    let path = file.path.display().to_string();
    file.sink_mut(name).ok_or_else(|| {
        Failure::new(
            Code::Config,
            format!("sink `{name}` is no longer in {path}; it changed meanwhile"),
        )
    })
}

/// Applies `s` to the sink table `sink`.
fn apply(sink: &mut Table, s: &Settings) -> Result<(), Failure> {
    for (n, h) in s.headers.iter().enumerate() {
        // Not echoed: a header's value is often a credential.
        let (k, v) = h.split_once(':').ok_or_else(|| {
            Failure::new(
                Code::Usage,
                format!(
                    "--header takes 'Name: value'; --header number {} has no `:`",
                    n + 1
                ),
            )
        })?;
        sub_table(sink, "headers").insert(k.trim().into(), v.trim().into());
    }
    for m in &s.metadata {
        let (k, v) = m.split_once('=').ok_or_else(|| {
            Failure::new(
                Code::Usage,
                format!("--metadata takes KEY=VALUE, not `{m}`"),
            )
        })?;
        sub_table(sink, "metadata").insert(k.trim().into(), v.into());
    }
    if !s.events.is_empty() {
        let events = s.events.iter().map(|e| Value::from(e.as_str())).collect();
        sink.insert("events".into(), Value::Array(events));
    }
    let signing = sub_table(sink, "signing");
    if let Some(scheme) = &s.scheme {
        // A secret belongs to its scheme: another scheme starts without it (and so gets a
        // generated one, unless --secret-file gives one).
        if signing.get("scheme").and_then(Value::as_str) != Some(scheme.as_str()) {
            for key in ["secret", "secret_file", "previous_secrets"] {
                signing.remove(key);
            }
        }
        signing.insert("scheme".into(), scheme.as_str().into());
    }
    if let Some(file) = &s.secret_file {
        let file = std::path::absolute(file).unwrap_or_else(|_| file.clone());
        signing.remove("secret");
        signing.insert("secret_file".into(), file.display().to_string().into());
    }
    match &s.headers_file {
        None => {}
        Some(file) if file.as_os_str().is_empty() => {
            sink.remove("headers_file");
        }
        Some(file) => {
            let file = std::path::absolute(file).unwrap_or_else(|_| file.clone());
            sink.insert("headers_file".into(), file.display().to_string().into());
        }
    }
    for (key, value) in [
        ("format", &s.format),
        ("description", &s.description),
        ("channel", &s.channel),
        ("username", &s.username),
        ("icon_emoji", &s.icon_emoji),
        ("icon_url", &s.icon_url),
        ("topic", &s.topic),
    ] {
        match value.as_deref() {
            None => {}
            Some("") => {
                sink.remove(key);
            }
            Some(v) => {
                sink.insert(key.into(), v.into());
            }
        }
    }
    Ok(())
}

/// The table `key` of `sink`, made if it is missing.
fn sub_table<'a>(sink: &'a mut Table, key: &str) -> &'a mut Table {
    let v = sink
        .entry(key)
        .or_insert_with(|| Value::Table(Table::new()));
    if !v.is_table() {
        *v = Value::Table(Table::new());
    }
    v.as_table_mut().expect("made a table")
}

/// Says what became of the reload.
fn tell(reload: &Reload) {
    match reload {
        Reload::Done(n) => outln!("The running daemon reloaded its config: {n} sink(s) running."),
        Reload::NotRunning => {
            outln!("The daemon is not running: the change applies when it starts.")
        }
        Reload::Unknown(e) => errln!(
            "edgehook: warning: the change is kept, but the daemon could not be asked to reload ({e}); reload it with `systemctl reload edgehook`"
        ),
    }
}

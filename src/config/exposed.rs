//! Secrets written into a config file itself: which keys of a sink hold one, and the warning
//! for a file holding some that users other than the daemon's can read. The mode such a file
//! should have is 0600, or 0640 with the group [`DAEMON_GROUP`].

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::file::{DropInFile, SinkFile};
use super::sink::url_holds_secret;

/// The group the packaged daemon runs as: a file holding a secret may be readable by it.
pub const DAEMON_GROUP: &str = "edgehook";

/// Whether a header called `name` carries a credential by its name: `Authorization`,
/// `Proxy-Authorization`, `Cookie`, or any name with `auth`, `token`, `key`, `secret`,
/// `password`, `signature`, `session` or `credential` in it (`X-Api-Key`, `X-Auth-Token`).
pub fn sensitive_header(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    name == "cookie"
        || [
            "auth",
            "token",
            "key",
            "secret",
            "password",
            "signature",
            "session",
            "credential",
        ]
        .iter()
        .any(|word| name.contains(word))
}

/// The keys of sink `s` that hold a secret written in the file, as a warning names them.
pub(super) fn inline_secrets(s: &SinkFile) -> Vec<String> {
    let mut held = Vec::new();
    if url_holds_secret(s.url.get_ref()) {
        held.push("`url`".to_string());
    }
    if let Some(signing) = &s.signing {
        if signing.get_ref().secret.is_some() {
            held.push("`secret`".into());
        }
        if !signing.get_ref().previous_secrets.is_empty() {
            held.push("`previous_secrets`".into());
        }
    }
    if s.password.is_some() {
        held.push("`password`".into());
    }
    if let Some(headers) = &s.headers {
        for name in headers.get_ref().keys().filter(|k| sensitive_header(k)) {
            held.push(format!("header `{name}`"));
        }
    }
    held
}

/// Whether the drop-in text `text` holds a secret (what [`inline_secrets`] finds); text that
/// does not parse holds none as far as this can tell.
pub fn dropin_holds_secret(text: &str) -> bool {
    toml::from_str::<DropInFile>(text).is_ok_and(|f| {
        f.sinks
            .iter()
            .any(|s| !inline_secrets(s.get_ref()).is_empty())
    })
}

/// The warning for the config file `path` when its sinks hold inline secrets and its group
/// (unless it is [`DAEMON_GROUP`], reading only) or others may read or change it.
pub(super) fn exposed_config_warning<'a>(
    path: &Path,
    sinks: impl IntoIterator<Item = &'a SinkFile>,
) -> Option<String> {
    let meta = std::fs::metadata(path).ok()?;
    let mode = meta.mode() & 0o7777;
    let daemon_group = || {
        nix::unistd::Group::from_name(DAEMON_GROUP)
            .ok()
            .flatten()
            .is_some_and(|g| g.gid.as_raw() == meta.gid())
    };
    if mode & 0o077 == 0 || (mode & 0o077 == 0o040 && daemon_group()) {
        return None;
    }
    let held: Vec<String> = sinks
        .into_iter()
        .flat_map(|s| {
            let name = s.name.get_ref();
            inline_secrets(s)
                .into_iter()
                .map(move |key| format!("sink `{name}`: {key}"))
        })
        .collect();
    if held.is_empty() {
        return None;
    }
    Some(format!(
        "The config file {} holds secrets ({}) and can be read or changed by its group or others (mode {mode:04o}); make it 0600, or 0640 with group {DAEMON_GROUP}, or move them to secret_file, password_file or headers_file",
        path.display(),
        held.join(", ")
    ))
}

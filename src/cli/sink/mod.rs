//! `edgehook sink`: the sinks as a device's webhook API (Magistrala's create, list, view,
//! update and remove): `list` and `show` read the config; `add`, `update` and `remove` change
//! one drop-in file of `sinks.d/` and ask a running daemon to reload.

mod dropin;
mod edit;
mod view;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::exit::{Code, Failure};
use crate::config::{Config, SinkSpec};

/// Arguments of `sink`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// What to do.
    #[command(subcommand)]
    pub action: Action,
}

/// `sink` actions.
#[derive(Debug, clap::Subcommand)]
pub enum Action {
    /// List the sinks: the main file's, then each drop-in's in file name order
    #[command(after_help = "Examples:\n  edgehook sink list\n  edgehook sink list --json")]
    List(view::ListArgs),
    /// Show one sink: its settings, description and metadata (never its secrets)
    #[command(
        after_help = "Examples:\n  edgehook sink show cloud\n  sudo edgehook sink show cloud --reveal-secret"
    )]
    Show(view::ShowArgs),
    /// Add a sink in its own drop-in file, sinks.d/NAME.toml, and reload a running daemon
    #[command(
        after_help = "Examples:\n  edgehook sink add pipeline --url https://ingest.example.com/mainflux --format data --header 'X-Api-Key: k-123' --metadata site=berlin\n  edgehook sink add chat --url https://hooks.slack.com/services/T0/B0/X --format slack --channel '#devices' --username edgehook --icon-emoji :satellite:"
    )]
    Add(Box<edit::AddArgs>),
    /// Change a sink defined in a drop-in file, and reload a running daemon
    #[command(
        after_help = "Examples:\n  edgehook sink update pipeline --url https://ingest.example.com/mainflux-v2\n  edgehook sink update pipeline --remove-header X-Api-Key --header 'Authorization: Bearer t'"
    )]
    Update(Box<edit::UpdateArgs>),
    /// Remove a sink defined in a drop-in file (its queue is kept, orphaned), and reload
    #[command(after_help = "Example:\n  edgehook sink remove pipeline")]
    Remove(edit::RemoveArgs),
}

pub(super) fn run(config_path: &Path, a: Args) -> Result<Code, Failure> {
    match a.action {
        Action::List(a) => view::list(config_path, a),
        Action::Show(a) => view::show(config_path, a),
        Action::Add(a) => edit::add(config_path, *a),
        Action::Update(a) => edit::update(config_path, *a),
        Action::Remove(a) => edit::remove(config_path, a),
    }
}

/// The sink called `name`, or the usage error naming the config.
fn find<'a>(config: &'a Config, name: &str) -> Result<&'a SinkSpec, Failure> {
    config.sink(name).ok_or_else(|| {
        Failure::new(
            Code::Usage,
            format!(
                "no sink is called `{name}` in {} or its sinks.d",
                config.path.display()
            ),
        )
    })
}

/// `metadata` for people: `k=v, k2=v2`, or `-`.
pub(super) fn metadata_text(metadata: &BTreeMap<String, String>) -> String {
    listed(metadata.iter().map(|(k, v)| format!("{k}={v}")))
}

/// Items for people: `a, b`, or `-` when there are none.
pub(super) fn listed(items: impl IntoIterator<Item = String>) -> String {
    let items: Vec<String> = items.into_iter().collect();
    if items.is_empty() {
        "-".into()
    } else {
        items.join(", ")
    }
}

/// Where a sink is defined, as people read it: relative to the config's directory.
fn shown_file(config: &Config, file: &Path) -> PathBuf {
    let dir = config.path.parent().unwrap_or(Path::new(""));
    file.strip_prefix(dir)
        .map(Path::to_path_buf)
        .unwrap_or_else(|_| file.to_path_buf())
}

//! The semantic checks that follow parsing: every problem is collected with its position,
//! secrets are read and decoded, and the result is a [`Config`] that cannot be wrong in a way
//! a file could have said.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use toml::Spanned;

use super::file::{ConfigFile, DropInFile, SinkFile};
use super::sink::{SinkSpec, check_sink};
use super::{Config, Device, Ingest, Inventory, Locator, Problem, Storage};

/// Collects the problems of the file being checked.
pub(super) struct Checker<'a> {
    /// The file being checked.
    locate: &'a Locator<'a>,
    /// Every problem found so far, in every file.
    pub(super) problems: Vec<Problem>,
    /// The directory of the outbox, where generated secrets are kept.
    pub(super) state_dir: PathBuf,
    /// What is allowed but unwise, such as a secret file others can read.
    pub(super) warnings: Vec<String>,
}

impl Checker<'_> {
    /// A problem at `spanned` in the file being checked.
    pub(super) fn at<T>(&mut self, spanned: &Spanned<T>, message: impl Into<String>) {
        self.at_span(spanned.span(), message);
    }

    /// A problem at the byte range `span` of the file being checked.
    pub(super) fn at_span(&mut self, span: std::ops::Range<usize>, message: impl Into<String>) {
        self.problems
            .push(self.locate.problem(span, message.into()));
    }

    /// The file being checked.
    pub(super) fn file(&self) -> &Path {
        self.locate.file
    }

    /// The trimmed text of the file `path` names, or a problem saying why it cannot be read.
    pub(super) fn read_file(&mut self, path: &Spanned<PathBuf>, what: &str) -> Option<String> {
        self.read_whole_file(path, what)
            .map(|text| text.trim().to_string())
    }

    /// The text of the file `path` names, as [`Self::read_file`] but untrimmed.
    pub(super) fn read_whole_file(
        &mut self,
        path: &Spanned<PathBuf>,
        what: &str,
    ) -> Option<String> {
        let full = self.resolve(path.get_ref());
        match std::fs::read_to_string(&full) {
            Ok(text) => {
                self.warn_if_exposed(&full, what);
                Some(text)
            }
            Err(e) => {
                self.at(path, format!("cannot read {what} {}: {e}", full.display()));
                None
            }
        }
    }

    /// Warns when the secret-holding file `path` is open to its group or to others: on a
    /// device any local process could then sign webhooks as this one.
    pub(super) fn warn_if_exposed(&mut self, path: &Path, what: &str) {
        let Ok(meta) = std::fs::metadata(path) else {
            return;
        };
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            self.warnings.push(format!(
                "The {what} {} can be read or changed by its group or others (mode {mode:04o}); make it 0600, owned by the user edgehook runs as",
                path.display()
            ));
        }
    }

    /// `p`, relative paths taken from the directory of the file being checked.
    pub(super) fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_owned()
        } else {
            self.locate.dir().join(p)
        }
    }
}

/// Checks the main file `raw` and the drop-in files after it; `parse_problems` are those
/// found while parsing drop-ins.
pub(super) fn check<'a>(
    raw: ConfigFile,
    locate: &'a Locator<'a>,
    dropins: &[(&'a Locator<'a>, DropInFile)],
    parse_problems: Vec<Problem>,
) -> Result<Config, Vec<Problem>> {
    let mut c = Checker {
        locate,
        problems: Vec::new(),
        state_dir: PathBuf::new(),
        warnings: Vec::new(),
    };
    c.state_dir = match c.resolve(&raw.storage.path).parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    };
    check_sections(&mut c, &raw);
    let files = std::iter::once((locate, raw.sinks.as_slice()))
        .chain(dropins.iter().map(|(l, f)| (*l, f.sinks.as_slice())));
    let sinks = check_sinks(&mut c, files);
    warn_exposed_configs(&mut c, locate, &raw, dropins);
    c.locate = locate;
    c.problems.extend(parse_problems);
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
            max_age: raw.storage.max_age.get_ref().0,
            max_dead_letters: *raw.storage.max_dead_letters.get_ref(),
        },
        ingest: Ingest {
            socket: c.resolve(&raw.ingest.socket),
            group: raw.ingest.group,
            max_event_bytes: raw.ingest.max_event_bytes.get_ref().0,
            max_connections: *raw.ingest.max_connections.get_ref(),
            admin_group: raw.ingest.admin_group.map(Spanned::into_inner),
            idle_timeout: raw.ingest.idle_timeout.get_ref().0,
        },
        log_level: raw.log.level,
        shutdown_timeout: raw.daemon.shutdown_timeout.get_ref().0,
        sinks,
        warnings: c.warnings,
    })
}

/// Warns about each config file holding inline secrets that others can read.
fn warn_exposed_configs(
    c: &mut Checker<'_>,
    locate: &Locator<'_>,
    raw: &ConfigFile,
    dropins: &[(&Locator<'_>, DropInFile)],
) {
    let files = std::iter::once((locate.file, raw.sinks.as_slice()))
        .chain(dropins.iter().map(|(l, f)| (l.file, f.sinks.as_slice())));
    for (file, sinks) in files {
        let sinks = sinks.iter().map(Spanned::get_ref);
        if let Some(warning) = super::exposed::exposed_config_warning(file, sinks) {
            c.warnings.push(warning);
        }
    }
}

fn check_sections(c: &mut Checker<'_>, raw: &ConfigFile) {
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
    super::ranges::check_section_ranges(c, raw);
    if let Some(group) = &raw.ingest.admin_group {
        if group.get_ref().trim().is_empty() {
            c.at(group, "`admin_group` must name a group");
        }
    }
}

/// The sinks of every file, in order: the main file's, then each drop-in's. A name defined
/// twice is reported where it comes again, naming where it came first.
fn check_sinks<'a, 'b>(
    c: &mut Checker<'a>,
    files: impl Iterator<Item = (&'a Locator<'a>, &'b [Spanned<SinkFile>])>,
) -> Vec<SinkSpec> {
    let mut sinks = Vec::new();
    let mut seen: Vec<(&'b str, String)> = Vec::new();
    for (locate, file_sinks) in files {
        c.locate = locate;
        for sink in file_sinks {
            let name = sink.get_ref().name.get_ref().as_str();
            if let Some((_, first)) = seen.iter().find(|(n, _)| *n == name) {
                let message = format!("sink `{name}` is defined twice; first at {first}");
                c.at(&sink.get_ref().name, message);
                continue;
            }
            let at = locate.problem(sink.get_ref().name.span(), String::new());
            seen.push((
                name,
                format!("{}:{}:{}", at.file.display(), at.line, at.col),
            ));
            if let Some(spec) = check_sink(c, sink.get_ref()) {
                sinks.push(spec);
            }
        }
    }
    sinks
}

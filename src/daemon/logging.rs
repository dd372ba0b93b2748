//! Logging: to the journal with structured fields when stderr is connected to journald,
//! plain lines on stderr otherwise.

use std::io::Write;

use log::kv::{Key, Value, VisitSource};
use log::{Level, LevelFilter, Log, Metadata, Record};

/// Installs the logger once; later calls only change the level.
pub fn init(level: LevelFilter) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let journal = systemd_journal_logger::connected_to_journal()
            .then(|| systemd_journal_logger::JournalLog::new().ok())
            .flatten();
        let _ = match journal {
            Some(j) => log::set_boxed_logger(Box::new(OwnDetailOnly(
                j.with_syslog_identifier("edgehook".into()),
            ))),
            None => log::set_boxed_logger(Box::new(OwnDetailOnly(Stderr))),
        };
    });
    log::set_max_level(level);
}

/// Passes edgehook's own lines at every level but other crates' only up to `info`: their
/// debug and trace lines show what edgehook keeps out of its log (ureq logs each request's URL
/// with its query string, where receivers often put a token).
struct OwnDetailOnly<L>(L);

impl<L: Log> OwnDetailOnly<L> {
    fn allowed(m: &Metadata<'_>) -> bool {
        let target = m.target();
        m.level() <= Level::Info || target == "edgehook" || target.starts_with("edgehook::")
    }
}

impl<L: Log> Log for OwnDetailOnly<L> {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        Self::allowed(m) && self.0.enabled(m)
    }

    fn log(&self, r: &Record<'_>) {
        if Self::allowed(r.metadata()) {
            self.0.log(r);
        }
    }

    fn flush(&self) {
        self.0.flush();
    }
}

struct Stderr;

struct Fields(String);

impl<'kvs> VisitSource<'kvs> for Fields {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), log::kv::Error> {
        use std::fmt::Write as _;
        let _ = write!(self.0, " {key}={value}");
        Ok(())
    }
}

impl Log for Stderr {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        m.level() <= log::max_level()
    }

    fn log(&self, r: &Record<'_>) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let level = match r.level() {
            Level::Error => "ERROR",
            Level::Warn => "WARN",
            Level::Info => "INFO",
            Level::Debug => "DEBUG",
            Level::Trace => "TRACE",
        };
        let mut fields = Fields(String::new());
        let _ = r.key_values().visit(&mut fields);
        let line = format!("edgehook {level} {}{}\n", r.args(), fields.0);
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

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
        let installed = match journal {
            Some(j) => j.with_syslog_identifier("edgehook".into()).install(),
            None => log::set_boxed_logger(Box::new(Stderr)),
        };
        if installed.is_err() {
            let _ = log::set_boxed_logger(Box::new(Stderr));
        }
    });
    log::set_max_level(level);
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

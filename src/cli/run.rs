//! `edgehook run`: the daemon in the foreground.

use std::path::Path;

use super::exit::{Code, Failure};
use crate::daemon::DaemonError;
use crate::outbox::StoreError;

pub(super) fn run(config_path: &Path) -> Result<Code, Failure> {
    crate::daemon::logging::init(log::LevelFilter::Info);
    let config = match super::load(config_path) {
        Ok(c) => c,
        Err(f) => {
            log::error!("{}", f.error);
            return Err(f);
        }
    };
    crate::daemon::logging::init(config.log_level.filter());
    match crate::daemon::run(config) {
        Ok(()) => Ok(Code::Ok),
        // A second daemon on a held outbox ran nothing: `report`'s one line says why.
        Err(e @ DaemonError::Store(StoreError::Held { .. })) => Err(e.into()),
        Err(e) => {
            log::error!("edgehook cannot run: {e}");
            Err(e.into())
        }
    }
}

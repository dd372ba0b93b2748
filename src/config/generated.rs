//! Secrets edgehook generates for signing sinks configured without one, as Mendix generates a
//! webhook's validation secret. Each lives in its own file, `secrets/NAME.SCHEME.secret` in the
//! state directory (the outbox's directory): 0600 in a 0700 directory, written once by the
//! daemon, read again at every start and reload, and shown only by
//! `edgehook sink show NAME --reveal-secret`.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use super::Config;
use super::signing::SecretSource;
use crate::sinks::signing::{Scheme, generate_secret};

/// Why a generated secret could not be kept.
#[derive(Debug, thiserror::Error)]
#[error("cannot keep the generated secret of sink {sink} in {path}: {source}")]
pub struct SecretError {
    /// The sink.
    pub sink: String,
    /// The file.
    pub path: PathBuf,
    /// The cause.
    pub source: std::io::Error,
}

/// Where the generated secret of sink `sink` under `scheme` is kept. The scheme is part of the
/// name: a sink whose scheme changes gets a new secret in that scheme's format.
pub fn path(state_dir: &Path, sink: &str, scheme: Scheme) -> PathBuf {
    state_dir
        .join("secrets")
        .join(format!("{sink}.{}.secret", scheme.name()))
}

/// The secret kept at `path`; `None` when there is none yet or this user may not read it.
pub(super) fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|t| t.trim().to_string())
}

/// Gives every sink of `config` that awaits a generated secret its secret: the one kept, or a
/// new one, written before it is used. Returns the sinks given a new one, with its file.
pub fn provide(config: &mut Config) -> Result<Vec<(String, PathBuf)>, SecretError> {
    let mut generated = Vec::new();
    for sink in &mut config.sinks {
        let SecretSource::Generated(path) = sink.secret.clone() else {
            continue;
        };
        if sink.signer.is_ready() {
            continue;
        }
        let fail = |source| SecretError {
            sink: sink.name.clone(),
            path: path.clone(),
            source,
        };
        let secret = match std::fs::read_to_string(&path) {
            Ok(text) => text.trim().to_string(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let secret = generate_secret(sink.signer.scheme());
                write(&path, &secret).map_err(fail)?;
                generated.push((sink.name.clone(), path.clone()));
                secret
            }
            Err(e) => return Err(fail(e)),
        };
        sink.signer = sink.signer.clone().with_current(&secret).map_err(|e| {
            fail(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{e}; remove the file to have a new one generated"),
            ))
        })?;
    }
    Ok(generated)
}

/// Writes `secret` to `path` (0600, in a 0700 directory), whole or not at all.
fn write(path: &Path, secret: &str) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    // The state directory keeps its own mode; only `secrets/` is the daemon's alone.
    if let Some(state) = dir.parent() {
        std::fs::create_dir_all(state)?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e),
        _ => {}
    }
    super::atomic::write(path, format!("{secret}\n").as_bytes(), 0o600, None)
}

//! `edgehook secret generate`: a new random signing secret, printed or written to a file of
//! mode 0600; and how `verify` and `receive` read a secret from a file.

use std::path::{Path, PathBuf};

use super::exit::{Code, Failure};
use crate::sinks::signing::{Scheme, generate_secret};

/// Arguments of `secret`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// What to do.
    #[command(subcommand)]
    pub action: Action,
}

/// `secret` actions.
#[derive(Debug, clap::Subcommand)]
pub enum Action {
    /// Print a new random secret (32 bytes): whsec_… for standard, hex for mender
    #[command(
        after_help = "Examples:\n  edgehook secret generate --output /etc/edgehook/cloud.secret\n  edgehook secret generate --scheme mender"
    )]
    Generate {
        /// The signing scheme the secret is for
        #[arg(long, default_value = "standard", value_parser = ["standard", "mender"])]
        scheme: String,
        /// Write the secret to FILE (mode 0600, written whole or not at all) instead of
        /// printing it; an existing FILE is kept unless --force
        #[arg(long, value_name = "FILE")]
        output: Option<PathBuf>,
        /// Replace an existing --output FILE
        #[arg(long, requires = "output")]
        force: bool,
    },
}

pub(super) fn run(a: Args) -> Result<Code, Failure> {
    let Action::Generate {
        scheme,
        output,
        force,
    } = a.action;
    let scheme: Scheme = scheme
        .parse()
        .map_err(|e: String| Failure::new(Code::Usage, e))?;
    let secret = generate_secret(scheme);
    let Some(path) = output else {
        outln!("{secret}");
        return Ok(Code::Ok);
    };
    // Checked before writing, so a typo does not replace the secret a receiver has.
    if !force && std::fs::symlink_metadata(&path).is_ok() {
        return Err(Failure::new(
            Code::Usage,
            format!(
                "{} exists: give --force to replace it (its receiver then needs the new secret)",
                path.display()
            ),
        ));
    }
    crate::config::atomic::write(&path, format!("{secret}\n").as_bytes(), 0o600, None)
        .map_err(|e| Failure::new(Code::IoErr, format!("cannot write {}: {e}", path.display())))?;
    errln!("Wrote a new {} secret to {}", scheme.name(), path.display());
    Ok(Code::Ok)
}

/// The secret given with `--secret` or read from `--secret-file` (trimmed), if either.
pub(super) fn given_secret(
    secret: Option<String>,
    file: Option<&Path>,
) -> Result<Option<String>, Failure> {
    let Some(file) = file else {
        return Ok(secret);
    };
    match std::fs::read_to_string(file) {
        Ok(text) => Ok(Some(text.trim().to_string())),
        Err(e) => Err(Failure::new(
            Code::Usage,
            format!("--secret-file: cannot read {}: {e}", file.display()),
        )),
    }
}

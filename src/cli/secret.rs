//! `edgehook secret generate`: a new random signing secret.

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
        after_help = "Examples:\n  edgehook secret generate > /etc/edgehook/cloud.secret\n  edgehook secret generate --scheme mender"
    )]
    Generate {
        /// The signing scheme the secret is for
        #[arg(long, default_value = "standard", value_parser = ["standard", "mender"])]
        scheme: String,
    },
}

pub(super) fn run(a: Args) -> Result<Code, Failure> {
    let Action::Generate { scheme } = a.action;
    let scheme: Scheme = scheme
        .parse()
        .map_err(|e: String| Failure::new(Code::Usage, e))?;
    outln!("{}", generate_secret(scheme));
    Ok(Code::Ok)
}

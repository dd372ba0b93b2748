//! `edgehook verify`: check a received webhook's signature, for the receiving side.

use std::io::Read;
use std::time::{Duration, SystemTime};

use super::exit::{Code, Failure};
use crate::sinks::signing::{Scheme, verify};

/// Arguments of `verify`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  edgehook verify --secret-file cloud.secret --header 'webhook-id: msg_1' --header 'webhook-timestamp: 1614265330' --header 'webhook-signature: v1,g0hM…' body.json\n  edgehook verify --scheme mender --secret \"$HEX\" --header \"X-Men-Signature: $SIG\" - < body.json"
)]
pub struct Args {
    /// The secret: whsec_… for standard, hex for mender. Other users can read it in the
    /// process list (/proc/PID/cmdline): prefer --secret-file
    #[arg(long, required_unless_present = "secret_file")]
    pub secret: Option<String>,
    /// A file holding the secret (surrounding white space ignored)
    #[arg(long, value_name = "FILE", conflicts_with = "secret")]
    pub secret_file: Option<std::path::PathBuf>,
    /// The signing scheme
    #[arg(long, default_value = "standard", value_parser = ["standard", "mender"])]
    pub scheme: String,
    /// How far `webhook-timestamp` may be from now, either way (standard)
    #[arg(long, default_value = "5m", value_parser = crate::config::units::parse_duration)]
    pub tolerance: Duration,
    /// A received header, `name: value`; repeat for each
    #[arg(long = "header", value_name = "NAME: VALUE")]
    pub headers: Vec<String>,
    /// The received body, byte for byte; `-` or absent reads standard input
    #[arg(value_name = "FILE")]
    pub file: Option<String>,
}

pub(super) fn run(a: Args) -> Result<Code, Failure> {
    let scheme: Scheme = a
        .scheme
        .parse()
        .map_err(|e: String| Failure::new(Code::Usage, e))?;
    let mut headers = Vec::with_capacity(a.headers.len());
    for h in &a.headers {
        let Some((name, value)) = h.split_once(':') else {
            return Err(Failure::new(
                Code::Usage,
                format!("--header takes `name: value`, not `{h}`"),
            ));
        };
        headers.push((name.trim().to_string(), value.trim().to_string()));
    }
    let mut body = Vec::new();
    match a.file.as_deref() {
        None | Some("-") => std::io::stdin().read_to_end(&mut body),
        Some(path) => std::fs::File::open(path).and_then(|mut f| f.read_to_end(&mut body)),
    }
    .map_err(|e| Failure::new(Code::DataErr, format!("cannot read the body: {e}")))?;
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let secret = super::secret::given_secret(a.secret, a.secret_file.as_deref())?
        .ok_or_else(|| Failure::new(Code::Usage, "give --secret-file or --secret"))?;
    match verify(scheme, &secret, &headers, &body, now, a.tolerance) {
        Ok(()) => {
            outln!("valid");
            Ok(Code::Ok)
        }
        Err(crate::sinks::signing::VerifyError::BadSecret(m)) => {
            Err(Failure::new(Code::Usage, format!("--secret: {m}")))
        }
        Err(e) => {
            outln!("invalid: {e}");
            Ok(Code::CheckFailed)
        }
    }
}

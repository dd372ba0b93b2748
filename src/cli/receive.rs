//! `edgehook receive`: a verifying webhook receiver that prints each event as one JSON line.

use std::io::Write;
use std::time::Duration;

use super::exit::{Code, Failure};
use crate::receiver::{Receiver, Verifier};
use crate::sinks::signing::Scheme;

/// Arguments of `receive`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Example:\n  edgehook receive --listen 127.0.0.1:8080 --secret-file cloud.secret | jq ."
)]
pub struct Args {
    /// Address to listen on (port 0 picks a free port; the address is printed on stderr)
    #[arg(long, value_name = "ADDR")]
    pub listen: String,
    /// The sink's secret; without it nothing is verified. Other users can read it in the
    /// process list (/proc/PID/cmdline): prefer --secret-file or the environment
    #[arg(long, env = "EDGEHOOK_SECRET", hide_env_values = true)]
    pub secret: Option<String>,
    /// A file holding the sink's secret (surrounding white space ignored); it takes the place
    /// of --secret and EDGEHOOK_SECRET
    #[arg(long, value_name = "FILE")]
    pub secret_file: Option<std::path::PathBuf>,
    /// The signing scheme [default: standard with a secret, none without]
    #[arg(long, value_parser = ["standard", "mender", "none"])]
    pub scheme: Option<String>,
    /// Largest clock difference accepted for `standard`
    #[arg(long, default_value = "5m", value_parser = crate::config::units::parse_duration)]
    pub tolerance: Duration,
    /// Exit after this many verified events
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
}

/// The verifier the arguments describe.
pub(super) fn verifier(
    secret: Option<String>,
    scheme: Option<&str>,
    tolerance: Duration,
) -> Result<Verifier, Failure> {
    let scheme: Scheme = match (scheme, &secret) {
        (Some(s), _) => s
            .parse()
            .map_err(|e: String| Failure::new(Code::Usage, e))?,
        (None, Some(_)) => Scheme::Standard,
        (None, None) => Scheme::None,
    };
    if scheme != Scheme::None && secret.is_none() {
        return Err(Failure::new(
            Code::Usage,
            format!(
                "the `{}` scheme needs --secret-file or --secret",
                scheme.name()
            ),
        ));
    }
    Ok(Verifier {
        scheme,
        secret: secret.unwrap_or_default(),
        tolerance,
    })
}

pub(super) fn run(a: Args) -> Result<Code, Failure> {
    let secret = super::secret::given_secret(a.secret, a.secret_file.as_deref())?;
    let v = verifier(secret, a.scheme.as_deref(), a.tolerance)?;
    let scheme = v.scheme;
    let receiver = Receiver::bind(&a.listen, v).map_err(|e| Failure::new(Code::Software, e))?;
    errln!(
        "edgehook receive: listening on http://{} ({} signatures)",
        receiver.addr(),
        scheme.name()
    );
    let mut seen = 0u64;
    let limit = a.count;
    receiver.serve(
        |r| {
            let mut out = std::io::stdout().lock();
            let mut line = crate::event::compact(&String::from_utf8_lossy(&r.body)).into_owned();
            line.push('\n');
            // Its reader gone (`edgehook receive | head -1`), nothing it receives can be shown:
            // it stops.
            let written = out.write_all(line.as_bytes()).and_then(|()| out.flush());
            seen += 1;
            written.is_ok() && limit.is_none_or(|n| seen < n)
        },
        |why| errln!("edgehook receive: {why}"),
    );
    Ok(Code::Ok)
}

//! The command line: argument definitions here, one file per command.
// `println!` and `eprintln!` panic when their reader has gone: commands use `out!`, `outln!`
// and `errln!` (`output`).
#![warn(clippy::print_stdout, clippy::print_stderr)]

/// `print!` for a command's output: a reader that has gone ends the command quietly
/// (`output`).
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cli::output::write(format_args!($($arg)*))
    };
}

/// `println!` for a command's output (`out!`).
macro_rules! outln {
    () => {
        $crate::cli::output::write(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::cli::output::write(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `eprintln!` for a command's errors and warnings: standard error gone, nothing is said
/// (`output`).
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::cli::output::write_err(format_args!("{}\n", format_args!($($arg)*)))
    };
}

mod activity;
mod check_config;
mod dead_letters;
mod demo;
mod emit;
pub mod exit;
mod inventory;
mod lifecycle;
mod output;
mod receive;
mod reload;
mod run;
mod secret;
mod sink;
mod status;
pub mod table;
mod test;
mod verify;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{Config, DEFAULT_PATH};
use exit::{Code, Failure};

/// edgehook: durable, signed webhooks from embedded Linux devices.
#[derive(Debug, Parser)]
#[command(name = "edgehook", version, about, long_about = None)]
pub struct Cli {
    /// The config file [default: /etc/edgehook/edgehook.toml]
    #[arg(long, global = true, env = "EDGEHOOK_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon in the foreground
    #[command(after_help = "Example:\n  edgehook --config /etc/edgehook/edgehook.toml run")]
    Run,
    /// Validate the config file and print a summary
    #[command(after_help = "Example:\n  edgehook --config ./edgehook.toml check-config")]
    CheckConfig,
    /// Emit one event through the running daemon; prints its id once durable
    Emit(emit::Args),
    /// Show each sink's queue, the outbox and the device (works with the daemon stopped)
    Status(status::Args),
    /// The latest delivery attempts: time, sink, event, outcome, HTTP status or MQTT reason
    Activity(activity::Args),
    /// The dead letters, with why each was given up on
    DeadLetters(dead_letters::ListArgs),
    /// Put dead letters back in their queues
    Redeliver(dead_letters::RedeliverArgs),
    /// Un-pause a sink paused by 410 Gone
    Resume(dead_letters::ResumeArgs),
    /// Make the running daemon read its config again; waits for the outcome (exit 78 if refused)
    #[command(after_help = "Example:\n  edgehook reload")]
    Reload,
    /// Send one webhook-test event to a sink now, outside the outbox (exit 1 if it fails)
    Test(test::Args),
    /// Check a received webhook's signature (exit 0 valid, 1 invalid)
    Verify(verify::Args),
    /// Signing secrets
    Secret(secret::Args),
    /// The sinks: list, show, and add, update or remove drop-in sinks (reloading the daemon)
    Sink(sink::Args),
    /// Collect and print the inventory; --refresh makes the daemon collect and emit if changed
    Inventory(inventory::Args),
    /// Announce a new device status (device-status-changed, only when it changes)
    SetStatus(lifecycle::SetStatusArgs),
    /// Decommission the device: sources stop, local events are refused, the backlog drains
    #[command(after_help = "Example:
  edgehook decommission")]
    Decommission,
    /// Undo `decommission` and announce the device again (device-provisioned)
    #[command(after_help = "Example:
  edgehook provision")]
    Provision,
    /// Run a verifying webhook receiver that prints each event as one JSON line
    Receive(receive::Args),
    /// See edgehook work end to end: outbox, daemon and a verifying receiver on loopback
    Demo(demo::Args),
}

/// Runs the command line; returns the process exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                    Code::Ok.into()
                }
                _ => Code::Usage.into(),
            };
        }
    };
    match dispatch(cli) {
        Ok(code) => code.into(),
        Err(f) => {
            exit::report(&f);
            f.code.into()
        }
    }
}

fn dispatch(cli: Cli) -> Result<Code, Failure> {
    let config_path = cli.config.unwrap_or_else(|| PathBuf::from(DEFAULT_PATH));
    match cli.command {
        Command::Run => run::run(&config_path),
        Command::CheckConfig => check_config::run(&config_path),
        Command::Emit(a) => emit::run(&config_path, a),
        Command::Status(a) => status::run(&config_path, a),
        Command::Activity(a) => activity::run(&config_path, a),
        Command::DeadLetters(a) => dead_letters::list(&config_path, a),
        Command::Redeliver(a) => dead_letters::redeliver(&config_path, a),
        Command::Resume(a) => dead_letters::resume(&config_path, a),
        Command::Reload => reload::run(&config_path),
        Command::Test(a) => test::run(&config_path, a),
        Command::Verify(a) => verify::run(a),
        Command::Secret(a) => secret::run(a),
        Command::Sink(a) => sink::run(&config_path, a),
        Command::Inventory(a) => inventory::run(&config_path, a),
        Command::SetStatus(a) => lifecycle::set_status(&config_path, a),
        Command::Decommission => lifecycle::decommission(&config_path),
        Command::Provision => lifecycle::provision(&config_path),
        Command::Receive(a) => receive::run(a),
        Command::Demo(a) => demo::run(a),
    }
}

/// Sends one request to the running daemon; a refusal becomes the matching exit code.
fn ask_daemon(
    config_path: &std::path::Path,
    request: crate::client::Control,
) -> Result<crate::client::Done, Failure> {
    let config = load(config_path)?;
    let mut client = crate::client::Client::connect(&config.ingest.socket)?;
    match client.call(&request)? {
        crate::client::Reply::Ok(done) => Ok(done),
        crate::client::Reply::Err { code, error } => Err(exit::refused(&code, &error)),
    }
}

/// The device id: the configured one, or the one the outbox keeps (none before the daemon's
/// first start).
fn device_id(config: &Config) -> Result<Option<String>, Failure> {
    if let Some(id) = &config.device.id {
        return Ok(Some(id.clone()));
    }
    Ok(crate::outbox::open_ro(&config.storage.path)?
        .map(|conn| crate::outbox::read_report(&conn))
        .transpose()?
        .and_then(|r| r.device_id))
}

/// Loads the config for a command, logging at its level.
fn load(path: &std::path::Path) -> Result<Config, Failure> {
    Config::load(path).map_err(|e| missing_config_hint(path, e))
}

/// A config file that does not exist is most often a first try without `--config`: the
/// failure says how to name one, or how to see edgehook work without one.
fn missing_config_hint(path: &std::path::Path, e: crate::config::ConfigError) -> Failure {
    match &e {
        crate::config::ConfigError::Read { path: p, cause }
            if p == path && cause.kind() == std::io::ErrorKind::NotFound =>
        {
            Failure::new(
                Code::Config,
                format!(
                    "{e}\n  hint: name the config file with `edgehook --config PATH …` (or EDGEHOOK_CONFIG=PATH), or run `edgehook demo` to see edgehook work without one"
                ),
            )
        }
        _ => e.into(),
    }
}

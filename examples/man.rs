//! Writes edgehook's man pages, generated from the command-line definition itself:
//! `edgehook.1` and one `edgehook-<command>.1` per command, into the directory given
//! (default `target/man`). The Debian package ships them.
//!
//! Usage: cargo run --example man [DIR]

use clap::CommandFactory;

fn main() -> std::io::Result<()> {
    let dir = std::path::PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "target/man".into()),
    );
    std::fs::create_dir_all(&dir)?;
    let cmd = edgehook::cli::Cli::command().version(env!("CARGO_PKG_VERSION"));
    clap_mangen::generate_to(cmd, &dir)?;
    println!("{}", dir.display());
    Ok(())
}

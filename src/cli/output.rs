//! A command's output on standard output. Every command keeps SIGPIPE ignored, as Rust's
//! runtime sets it: the daemon, `receive`, `demo`, `test` and the socket's clients talk over
//! sockets, where a peer that goes away must be an error they report (EPIPE), not a signal that
//! kills the process mid-write. So a reader that goes away (`edgehook status | head -1`) shows
//! up here as EPIPE, and ends the command at once, with exit 0 and nothing on stderr: the rest
//! of its output was not wanted. (`println!` panics there.) Errors and warnings go to standard
//! error through `errln!`, which cannot fail: if standard error is gone, there is nowhere left
//! to say anything (`eprintln!` panics there).

use std::io::Write;

use super::exit::Code;

/// Writes `args` to standard output; when the reader has gone, ends the process quietly.
/// Used through `out!` and `outln!`.
pub fn write(args: std::fmt::Arguments<'_>) {
    if let Err(e) = try_write(args) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(Code::Ok as i32);
        }
        write_err(format_args!(
            "edgehook: error: cannot write to standard output: {e}\n"
        ));
        std::process::exit(Code::IoErr as i32);
    }
}

/// Writes `args` to standard output, or says why it could not (for a command that has to
/// clean up before it ends: `demo`).
pub fn try_write(args: std::fmt::Arguments<'_>) -> std::io::Result<()> {
    std::io::stdout().lock().write_fmt(args)
}

/// Writes `args` to standard error, if it is still there. Used through `errln!`.
pub fn write_err(args: std::fmt::Arguments<'_>) {
    let _ = std::io::stderr().lock().write_fmt(args);
}

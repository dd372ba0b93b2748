//! The Standard Webhooks reference library (Python's `standardwebhooks`) as a receiver, on
//! 127.0.0.1 port 0: independent of edgehook's code, it says for each request whether the
//! signature verifies with its secret.

use std::io::{BufRead, BufReader, Lines};
use std::process::{Child, ChildStdout, Command, Stdio};

/// A running reference receiver.
pub struct ReferenceReceiver {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    pub port: u16,
}

impl ReferenceReceiver {
    /// Starts one that verifies with `secret`.
    pub fn start(secret: &str) -> ReferenceReceiver {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/receivers/standardwebhooks_receiver.py"
        );
        let mut child = Command::new("python3")
            .args([script, secret])
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs (scripts/test installs it with the standardwebhooks package)");
        let mut lines = BufReader::new(child.stdout.take().expect("a stdout pipe")).lines();
        let first = lines
            .next()
            .expect("the receiver starts (the standardwebhooks package is needed)")
            .expect("a line");
        let port = first
            .strip_prefix("listening ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("the receiver's port, not {first:?}"));
        ReferenceReceiver { child, lines, port }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    /// The next request's verdict: `ok ID` or `bad ID REASON`.
    pub fn next_line(&mut self) -> String {
        self.lines
            .next()
            .expect("a line per request")
            .expect("a readable line")
    }
}

impl Drop for ReferenceReceiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

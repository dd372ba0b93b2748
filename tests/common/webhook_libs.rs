//! The Python `standardwebhooks` and `svix` packages as independent signers and verifiers,
//! through one long-running helper process (tests/receivers/webhook_libs.py) spoken to over
//! its standard input and output.

use std::io::{BufRead, BufReader, Lines, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};

/// The libraries a test checks against.
pub const LIBS: [&str; 2] = ["standardwebhooks", "svix"];

/// Whether both packages can be imported; in CI their absence is a failure, elsewhere the test
/// says why it cannot run.
pub fn webhook_libs_available() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import standardwebhooks, svix"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        let why = "python3 with the standardwebhooks and svix packages is not installed (the README's test command installs them)";
        assert!(std::env::var_os("CI").is_none(), "{why}");
        eprintln!("cannot run this test here: {why}");
    }
    ok
}

/// A running helper.
pub struct WebhookLibs {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl WebhookLibs {
    pub fn start() -> WebhookLibs {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/receivers/webhook_libs.py"
        );
        let mut child = Command::new("python3")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs");
        let stdin = child.stdin.take().expect("a stdin pipe");
        let lines = BufReader::new(child.stdout.take().expect("a stdout pipe")).lines();
        WebhookLibs {
            child,
            stdin,
            lines,
        }
    }

    fn ask(&mut self, request: Value) -> Value {
        writeln!(self.stdin, "{request}").expect("the helper reads");
        let line = self
            .lines
            .next()
            .expect("the helper answers")
            .expect("a line");
        serde_json::from_str(&line).expect("a JSON answer")
    }

    /// `lib`'s verdict on a request: Ok, or the library's error.
    pub fn verify(
        &mut self,
        lib: &str,
        secret: &str,
        headers: &[(String, String)],
        body: &[u8],
    ) -> Result<(), String> {
        let headers: serde_json::Map<String, Value> = headers
            .iter()
            .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
            .collect();
        let a = self.ask(json!({"op": "verify", "lib": lib, "secret": secret,
            "headers": headers, "body": B64.encode(body)}));
        match a["ok"].as_bool() {
            Some(true) => Ok(()),
            _ => Err(a["error"].as_str().unwrap_or("no reason").to_string()),
        }
    }

    /// The `v1,…` signature `lib` makes.
    pub fn sign(
        &mut self,
        lib: &str,
        secret: &str,
        id: &str,
        timestamp: u64,
        body: &str,
    ) -> String {
        let a = self.ask(json!({"op": "sign", "lib": lib, "secret": secret, "id": id,
            "timestamp": timestamp, "body": B64.encode(body)}));
        a["signature"].as_str().expect("a signature").to_string()
    }
}

impl Drop for WebhookLibs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

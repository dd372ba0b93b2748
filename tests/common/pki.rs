//! A test PKI made with openssl: a CA, a server certificate for 127.0.0.1 and one for another
//! name.

pub fn openssl_available() -> bool {
    let ok = std::process::Command::new("openssl")
        .arg("version")
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok();
    if !ok {
        assert!(std::env::var_os("CI").is_none(), "openssl is not installed");
        eprintln!("cannot run this test here: openssl is not installed");
    }
    ok
}

/// A test CA, a server certificate for 127.0.0.1 and one for another name, with openssl.
pub fn make_pki(dir: &std::path::Path) {
    std::fs::create_dir_all(dir).unwrap();
    let run = |args: &[&str]| openssl(dir, args);
    self_signed(dir, "ca", "/CN=edgehook test CA", &[]);
    for (name, san) in [
        ("server", "IP:127.0.0.1"),
        ("elsewhere", "DNS:elsewhere.test"),
    ] {
        run(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/CN={name}"),
        ]);
        std::fs::write(
            dir.join(format!("{name}.ext")),
            format!("subjectAltName={san}\n"),
        )
        .unwrap();
        run(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &format!("{name}.pem"),
            "-days",
            "2",
            "-extfile",
            &format!("{name}.ext"),
        ]);
    }
}

/// Runs `openssl ARGS…` in `dir`; it must succeed.
fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A self-signed (not a CA) certificate for 127.0.0.1 in `dir`, `self.pem` with `self.key`:
/// valid for the name, signed by nobody a sink trusts.
pub fn make_self_signed(dir: &std::path::Path) {
    self_signed(
        dir,
        "self",
        "/CN=127.0.0.1",
        &[
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-addext",
            "basicConstraints=critical,CA:FALSE",
        ],
    );
}

/// `NAME.pem` self-signed for `subject` with its key `NAME.key`, and openssl options `more`.
fn self_signed(dir: &std::path::Path, name: &str, subject: &str, more: &[&str]) {
    let (key, pem) = (format!("{name}.key"), format!("{name}.pem"));
    let mut args = vec![
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &pem, "-days",
        "2", "-subj", subject,
    ];
    args.extend_from_slice(more);
    openssl(dir, &args);
}

/// HMAC-SHA256 of `body` with the hex key `hex_key`, as lowercase hex, computed by openssl.
pub fn openssl_hmac_sha256(hex_key: &str, body: &[u8]) -> String {
    use std::io::Write;
    let mut openssl = std::process::Command::new("openssl")
        .args([
            "dgst",
            "-sha256",
            "-mac",
            "HMAC",
            "-macopt",
            &format!("hexkey:{hex_key}"),
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("openssl runs");
    openssl
        .stdin
        .take()
        .expect("a stdin pipe")
        .write_all(body)
        .expect("openssl reads the body");
    let out = openssl.wait_with_output().expect("openssl finishes");
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .rsplit(' ')
        .next()
        .unwrap_or_default()
        .to_string()
}

//! Inputs for the parsers of untrusted input that the fuzz targets (fuzz/, `scripts/fuzz`)
//! check, kept in the normal suite with the same expectations: the hostile cases the seeds
//! start from, and every input a fuzzer ever crashed on, as bytes, once fixed.

use std::path::Path;
use std::time::Duration;

use edgehook::config::{Config, ConfigError};
use edgehook::sinks::signing::{Scheme, Signer, VerifyError, verify};
use edgehook::sources::ingest::{Decoded, Line, LineCodec, decode};
use edgehook::sources::inventory::scripts;
use tokio_util::bytes::BytesMut;
use tokio_util::codec::Decoder;

/// The config target's expectation: problems inside the text, each with a message.
fn config_problems(text: &str) -> Vec<(usize, usize)> {
    let path = Path::new("/nonexistent/edgehook-fuzz/edgehook.toml");
    match Config::parse(path, text) {
        Ok(_) => Vec::new(),
        Err(ConfigError::Invalid(problems)) => {
            let lines = text.split('\n').count();
            problems
                .iter()
                .inspect(|p| assert!(p.line >= 1 && p.line <= lines && p.col >= 1, "{p}"))
                .inspect(|p| assert!(!p.message.is_empty()))
                .map(|p| (p.line, p.col))
                .collect()
        }
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn config_errors_at_multibyte_characters_and_at_the_end_have_a_position_inside_the_text() {
    for text in [
        "é = 1",
        "[storage]\nmax_bytes = \"10 ÉB\"",
        "[[sink]]\nname = \"ü\u{1F600}\"",
        "[storage]\npath = \"unterminated",
        "[",
        "[storage]\r\nmax_age = \"-1s\"\r\n",
        "[[sink]]\n[sink.signing]\nsecret = \"whsec_é\"",
    ] {
        assert!(!config_problems(text).is_empty(), "{text:?} is refused");
    }
    assert_eq!(
        config_problems("[storage]\nmax_age = \"1d\"\n\u{1F600} = 1"),
        [(3, 1)]
    );
}

/// Lines as the socket cuts `data` arriving in `chunk`-byte pieces, with the limit `max`
/// (without `Line::Started` and `Line::Large`, which only mark when a line began, to time its
/// rest, and when it grew large, to take a slot).
fn lines(data: &[u8], chunk: usize, max: usize) -> Vec<Line> {
    let mut codec = LineCodec::new(max);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for piece in data.chunks(chunk) {
        buf.extend_from_slice(piece);
        while let Some(l) = codec.decode(&mut buf).unwrap() {
            out.push(l);
        }
    }
    while let Some(l) = codec.decode_eof(&mut buf).unwrap() {
        out.push(l);
    }
    out.retain(|l| !matches!(l, Line::Started | Line::Large));
    out
}

/// The code of an error reply.
fn refusal(reply: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(reply).expect("a JSON reply");
    assert_eq!(v["ok"], false, "{v}");
    v["code"].as_str().expect("a code").to_string()
}

#[test]
fn socket_lines_at_over_and_under_the_limit_in_any_chunks_decode_to_one_answer_each() {
    let max = 32;
    let at_limit = format!("{{\"type\":\"a\",\"data\":\"{}\"}}", "x".repeat(max - 22));
    assert_eq!(at_limit.len(), max);
    let input = format!("{at_limit}\n{at_limit}y\n\r\n{{\"op\":\"ping\"}}\r\nhalf");
    for chunk in [1, 2, 7, 33, 1000] {
        let got = lines(input.as_bytes(), chunk, max);
        assert!(
            matches!(&got[0], Line::Complete(l) if l.len() == max),
            "{chunk}"
        );
        assert_eq!(got[1], Line::TooLong, "chunk {chunk}");
        assert_eq!(got.len(), 5, "chunk {chunk}: {got:?}");
    }
    assert!(decode(b"\r").is_none(), "a blank line is no request");
    assert!(
        matches!(decode(b"{\"op\":\"ping\"}\r"), Some(Decoded::Reply(r)) if r == b"{\"ok\":true}\n")
    );
    let Some(Decoded::Reply(r)) = decode(b"half") else {
        panic!("an unfinished line is an invalid request");
    };
    assert_eq!(refusal(&r), "invalid");
    let deep = format!(
        "{{\"type\":\"a\",\"data\":{}{}}}",
        "[".repeat(200),
        "]".repeat(200)
    );
    for hostile in [
        deep.as_bytes(),
        &b"\xff\xfe{}"[..],
        // Valid by the grammar, refused by most receivers' parsers: refused at the socket rather
        // than dead-lettered later.
        b"{\"type\":\"a\",\"data\":1e999999}",
        b"{\"type\":\"a\",\"data\":{\"k\":[-1e400]}}",
        b"{\"type\":\"a\",\"data\":\"\\ud800\"}",
        b"{\"type\":\"a\",\"data\":{\"\\udfff\":1}}",
        b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
        b"{\"op\":\"emit\",\"type\":\"a\",\"id\":\"\\u0000\"}",
        b"{\"op\":\"redeliver\",\"ids\":[],\"all\":true}",
    ] {
        match decode(hostile) {
            Some(Decoded::Reply(r)) => assert_eq!(refusal(&r), "invalid", "{hostile:?}"),
            other => panic!("{hostile:?} gave {other:?}"),
        }
    }
}

#[test]
fn inventory_output_with_nul_bytes_carriage_returns_and_invalid_utf8_keeps_mender_rules() {
    let mut warnings = Vec::new();
    let out = b"a=1\r\r\n\x00=\x00\n=x\n\xff\xfe=v\n \n k = v \nnoeq\r\nb==";
    let pairs = scripts::parse(Path::new("mender-inventory-x"), out, &mut warnings);
    let keys: Vec<&str> = pairs.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["a", "\0", "\u{fffd}\u{fffd}", " k ", "b"]);
    assert_eq!(pairs[0].1, "1\r", "only one trailing \\r is dropped");
    assert_eq!(pairs[4].1, "=");
    assert_eq!(warnings.len(), 2, "{warnings:?}");
}

#[test]
fn verification_of_hostile_headers_and_secrets_refuses_without_panicking() {
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let h = |id: &str, ts: &str, sig: &str| {
        vec![
            ("webhook-id".to_string(), id.to_string()),
            ("webhook-timestamp".to_string(), ts.to_string()),
            ("webhook-signature".to_string(), sig.to_string()),
        ]
    };
    let tol = Duration::from_secs(300);
    let check = |headers: &[(String, String)], secret: &str, now: u64| {
        verify(Scheme::Standard, secret, headers, b"{}", now, tol)
    };
    assert_eq!(
        check(&h("i", "99999999999999999999", "v1,AA=="), secret, 0),
        Err(VerifyError::BadTimestamp)
    );
    assert_eq!(
        check(&h("i", "-1", "v1,"), secret, 0),
        Err(VerifyError::BadTimestamp)
    );
    assert_eq!(
        check(&h("i", &u64::MAX.to_string(), "v1,"), secret, 0).unwrap_err(),
        VerifyError::Stale(u64::MAX)
    );
    let many = "v1, ".repeat(10_000);
    assert_eq!(
        check(&h("i", "5", &many), secret, 5),
        Err(VerifyError::Mismatch)
    );
    assert!(matches!(
        check(&h("i", "5", "v1,x"), "whsec_", 5),
        Err(VerifyError::Mismatch)
    ));
    assert!(matches!(
        check(&h("i", "5", "v1,x"), "whsec_é", 5),
        Err(VerifyError::BadSecret(_))
    ));
    let mender = verify(
        Scheme::Mender,
        "ab",
        &[("x-men-signature".into(), "zz".into())],
        b"",
        0,
        tol,
    );
    assert_eq!(mender, Err(VerifyError::Mismatch));
    // What a signer makes verifies, the empty body and id included.
    let s = Signer::new(Scheme::Standard, Some(secret), &[]).unwrap();
    let signed: Vec<(String, String)> = s
        .headers("", 7, b"")
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    assert_eq!(
        verify(Scheme::Standard, secret, &signed, b"", 7, tol),
        Ok(())
    );
}

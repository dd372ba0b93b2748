//! The ingest socket's line decoding: bytes arriving in any chunks are cut into lines of at
//! most the limit (longer ones become `too_large` items), and each line decodes to a control
//! request, an event whose envelope is JSON with its keys in order, or one JSON error line
//! with a code from the protocol's list. Nothing panics.
#![no_main]

use edgehook::sources::ingest::{Decoded, Line, LineCodec, decode};
use libfuzzer_sys::fuzz_target;
use tokio_util::bytes::BytesMut;
use tokio_util::codec::Decoder;

const CODES: [&str; 6] = [
    "invalid",
    "too_large",
    "full",
    "decommissioned",
    "unknown_op",
    "internal",
];

fuzz_target!(|input: (u8, u8, &[u8])| {
    let (max, chunk, data) = input;
    let max = 16 + usize::from(max) * 4;
    let chunk = usize::from(chunk).max(1);
    let mut codec = LineCodec::new(max);
    let mut buf = BytesMut::new();
    for piece in data.chunks(chunk) {
        buf.extend_from_slice(piece);
        while let Some(line) = codec.decode(&mut buf).expect("decoding never fails") {
            check(line, max);
        }
    }
    while let Some(line) = codec.decode_eof(&mut buf).expect("decoding never fails") {
        check(line, max);
    }
});

fn check(line: Line, max: usize) {
    let Line::Complete(line) = line else {
        return;
    };
    assert!(
        line.len() <= max,
        "a line of {} bytes passed the limit {max}",
        line.len()
    );
    assert!(!line.contains(&b'\n'), "a line holds no newline");
    match decode(&line) {
        None => assert!(line.iter().all(u8::is_ascii_whitespace)),
        Some(Decoded::Reply(reply)) => {
            assert_eq!(reply.last(), Some(&b'\n'));
            assert_eq!(
                reply.iter().filter(|b| **b == b'\n').count(),
                1,
                "one reply line"
            );
            let v: serde_json::Value = serde_json::from_slice(&reply).expect("a JSON reply");
            if v["ok"] == false {
                let code = v["code"].as_str().expect("an error has a code");
                assert!(CODES.contains(&code), "code {code}");
                assert!(v["error"].is_string());
            } else {
                assert_eq!(v["ok"], true);
            }
        }
        Some(Decoded::Control(_)) => {}
        Some(Decoded::Event(ev)) => {
            let v: serde_json::Map<String, serde_json::Value> =
                serde_json::from_slice(&ev.body).expect("the envelope is JSON");
            let keys: Vec<&str> = v.keys().map(String::as_str).collect();
            let mut sorted = keys.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, ["data", "id", "time", "type"]);
            assert_eq!(v["id"], ev.id.as_str());
            assert_eq!(v["type"], ev.event_type.as_str());
            assert!(ev.body.starts_with(b"{\"id\":"), "`id` comes first");
        }
    }
}

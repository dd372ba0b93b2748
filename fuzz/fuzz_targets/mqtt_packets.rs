//! What an MQTT broker sends the sink (`mqtt_wire::decode`): bytes arriving in any chunks
//! decode to whole packets, or stop at a protocol error, never a panic. A packet decoded whole
//! takes exactly its header and remaining length, and decoding never reads past what arrived.
#![no_main]

use edgehook::sinks::mqtt_wire::{MAX_INCOMING, decode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (u8, &[u8])| {
    let (chunk, data) = input;
    let chunk = usize::from(chunk).max(1);
    let mut read = Vec::new();
    let mut used = 0;
    for piece in data.chunks(chunk) {
        read.extend_from_slice(piece);
        loop {
            match decode(&read[used..]) {
                Ok(Some((_, len))) => {
                    assert!(len >= 2 && len <= read.len() - used, "a packet of {len} bytes");
                    assert!(len <= 5 + MAX_INCOMING as usize);
                    // The same bytes decode the same way alone: nothing beyond them was read.
                    let alone = decode(&read[used..used + len]).expect("it decoded before");
                    assert_eq!(alone.map(|(_, n)| n), Some(len));
                    used += len;
                }
                Ok(None) => break,
                Err(e) => {
                    assert!(!e.0.is_empty(), "an error says what is wrong");
                    return;
                }
            }
        }
    }
});

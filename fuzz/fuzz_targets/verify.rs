//! Signature verification (`edgehook verify`): any secret, headers, body and clock give a
//! verdict without panicking; whatever a signer made from a valid secret verifies, and the
//! same request with its body changed does not.
#![no_main]

use std::time::Duration;

use arbitrary::Arbitrary;
use edgehook::sinks::signing::{Scheme, Signer, VerifyError, parse_secret, verify};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Input {
    mender: bool,
    secret: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    id: String,
    timestamp: u64,
    now: u64,
    tolerance: u32,
}

fuzz_target!(|i: Input| {
    let scheme = if i.mender {
        Scheme::Mender
    } else {
        Scheme::Standard
    };
    let tolerance = Duration::from_secs(u64::from(i.tolerance));
    let _ = verify(scheme, &i.secret, &i.headers, &i.body, i.now, tolerance);

    if parse_secret(scheme, &i.secret).is_err() {
        return;
    }
    let signer = Signer::new(scheme, Some(&i.secret), &[]).expect("a parsed secret signs");
    let signed: Vec<(String, String)> = signer
        .headers(&i.id, i.timestamp, &i.body)
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    // Headers are read trimmed, as HTTP does; an id with outer spaces is not one a sender makes.
    if i.id.trim() != i.id {
        return;
    }
    let r = verify(scheme, &i.secret, &signed, &i.body, i.timestamp, tolerance);
    assert_eq!(r, Ok(()), "a signed request verifies");
    let mut tampered = i.body.clone();
    tampered.push(b' ');
    let r = verify(
        scheme,
        &i.secret,
        &signed,
        &tampered,
        i.timestamp,
        tolerance,
    );
    assert_eq!(r, Err(VerifyError::Mismatch), "a changed body does not");
});

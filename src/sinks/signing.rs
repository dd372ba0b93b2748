//! Signing schemes: Standard Webhooks (`webhook-signature`) and Mender (`X-Men-Signature`),
//! with the matching verification used by `edgehook verify` and `edgehook receive`.
//! Secrets live only here; `Debug` never shows them.

use std::fmt;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The prefix of a Standard Webhooks secret.
pub const STANDARD_PREFIX: &str = "whsec_";

/// Which signature a sink adds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// Standard Webhooks.
    Standard,
    /// Mender's server webhooks.
    Mender,
    /// No signature headers.
    None,
}

impl Scheme {
    /// The name used in the config file and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Scheme::Standard => "standard",
            Scheme::Mender => "mender",
            Scheme::None => "none",
        }
    }
}

impl std::str::FromStr for Scheme {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "standard" => Ok(Scheme::Standard),
            "mender" => Ok(Scheme::Mender),
            "none" => Ok(Scheme::None),
            other => Err(format!(
                "unknown signing scheme `{other}` (expected standard, mender or none)"
            )),
        }
    }
}

/// Signs outgoing events with one sink's keys (the current one first, then previous ones).
#[derive(Clone)]
pub struct Signer {
    scheme: Scheme,
    keys: Vec<Key>,
    /// The current secret is still to be generated (`keys` holds only previous ones).
    awaiting: bool,
}

/// One secret, and an HMAC already keyed with it. HMAC-SHA256 hashes its key into two blocks
/// before the message; a clone of the keyed one starts after them, which saves two of the
/// about eleven blocks that sign a 256-byte event's envelope (a drain signs every delivery).
#[derive(Clone)]
struct Key {
    secret: Vec<u8>,
    keyed: HmacSha256,
}

impl Key {
    fn new(secret: Vec<u8>) -> Key {
        let keyed = HmacSha256::new_from_slice(&secret).expect("HMAC takes keys of any length");
        Key { secret, keyed }
    }

    /// The HMAC of `parts` one after the other.
    fn mac(&self, parts: &[&[u8]]) -> Vec<u8> {
        let mut m = self.keyed.clone();
        for p in parts {
            m.update(p);
        }
        m.finalize().into_bytes().to_vec()
    }
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Signer({}, {} key(s){})",
            self.scheme.name(),
            self.keys.len(),
            if self.awaiting { ", awaiting one" } else { "" }
        )
    }
}

impl Signer {
    /// A signer from secrets as written in the config: `current` first, then `previous`.
    pub fn new(scheme: Scheme, current: Option<&str>, previous: &[&str]) -> Result<Self, String> {
        if scheme == Scheme::None {
            return Ok(Signer {
                scheme,
                keys: Vec::new(),
                awaiting: false,
            });
        }
        let current = current.ok_or_else(|| {
            format!(
                "the `{}` scheme needs `secret` or `secret_file`",
                scheme.name()
            )
        })?;
        Signer::awaiting(scheme, previous)?.with_current(current)
    }

    /// A signer whose current secret is generated later ([`Signer::with_current`]); until
    /// then it cannot sign, and sinks refuse to start with it.
    pub fn awaiting(scheme: Scheme, previous: &[&str]) -> Result<Self, String> {
        let keys = previous
            .iter()
            .map(|p| parse_secret(scheme, p).map(Key::new))
            .collect::<Result<_, _>>()?;
        Ok(Signer {
            scheme,
            keys,
            awaiting: scheme != Scheme::None,
        })
    }

    /// This signer with `current` as its current secret, before the previous ones.
    pub fn with_current(mut self, current: &str) -> Result<Self, String> {
        if self.scheme == Scheme::None {
            return Ok(self);
        }
        let key = parse_secret(self.scheme, current)?;
        if !self.awaiting {
            self.keys.remove(0);
        }
        self.keys.insert(0, Key::new(key));
        self.awaiting = false;
        Ok(self)
    }

    /// Whether it can sign: `false` while its secret is still to be generated.
    pub fn is_ready(&self) -> bool {
        !self.awaiting
    }

    /// The current secret, written as the scheme writes it (for `sink show --reveal-secret`
    /// only; nothing else may print it).
    pub fn reveal(&self) -> Option<String> {
        let key = &self.keys.first().filter(|_| !self.awaiting)?.secret;
        match self.scheme {
            Scheme::Standard => Some(format!("{STANDARD_PREFIX}{}", B64.encode(key))),
            Scheme::Mender => Some(hex::encode(key)),
            Scheme::None => None,
        }
    }

    /// The scheme.
    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// The headers that sign `body` for the event `id`, sent at Unix second `timestamp`.
    pub fn headers(&self, id: &str, timestamp: u64, body: &[u8]) -> Vec<(&'static str, String)> {
        match self.scheme {
            Scheme::None => Vec::new(),
            Scheme::Mender => vec![("X-Men-Signature", hex::encode(self.keys[0].mac(&[body])))],
            Scheme::Standard => {
                let ts = timestamp.to_string();
                let signatures = self
                    .keys
                    .iter()
                    .map(|k| standard_signature(k, id, &ts, body))
                    .collect::<Vec<_>>()
                    .join(" ");
                vec![
                    ("webhook-id", id.to_string()),
                    ("webhook-timestamp", ts),
                    ("webhook-signature", signatures),
                ]
            }
        }
    }
}

fn standard_signature(key: &Key, id: &str, ts: &str, body: &[u8]) -> String {
    let sig = key.mac(&[id.as_bytes(), b".", ts.as_bytes(), b".", body]);
    format!("v1,{}", B64.encode(sig))
}

/// Decodes a secret as the scheme writes it: `whsec_` + base64 of 24 to 64 bytes, or even-length
/// hex of at most 128 characters. The error never contains the secret.
pub fn parse_secret(scheme: Scheme, secret: &str) -> Result<Vec<u8>, String> {
    let secret = secret.trim();
    match scheme {
        Scheme::None => Ok(Vec::new()),
        Scheme::Standard => {
            let body = secret
                .strip_prefix(STANDARD_PREFIX)
                .ok_or_else(|| format!("a `standard` secret starts with `{STANDARD_PREFIX}`"))?;
            let key = B64
                .decode(body)
                .map_err(|_| "a `standard` secret is `whsec_` followed by base64".to_string())?;
            if !(24..=64).contains(&key.len()) {
                return Err(format!(
                    "a `standard` secret holds 24 to 64 bytes, this one {}",
                    key.len()
                ));
            }
            Ok(key)
        }
        Scheme::Mender => {
            if secret.is_empty() || secret.len() > 128 || secret.len() % 2 != 0 {
                return Err(
                    "a `mender` secret is hex text of even length, at most 128 characters".into(),
                );
            }
            hex::decode(secret).map_err(|_| "a `mender` secret is hex text".to_string())
        }
    }
}

/// A new random secret in the scheme's format (`none` has none).
pub fn generate_secret(scheme: Scheme) -> String {
    let mut bytes = [0u8; 32];
    rand::Rng::fill(&mut rand::rng(), &mut bytes[..]);
    match scheme {
        Scheme::Standard => format!("{STANDARD_PREFIX}{}", B64.encode(bytes)),
        Scheme::Mender => hex::encode(bytes),
        Scheme::None => String::new(),
    }
}

/// Why a received webhook did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// A header the scheme needs is absent.
    #[error("missing header `{0}`")]
    MissingHeader(&'static str),
    /// `webhook-timestamp` is not a number.
    #[error("`webhook-timestamp` is not a Unix time")]
    BadTimestamp,
    /// The timestamp is outside the tolerance.
    #[error("timestamp is {0} s away from now, outside the tolerance")]
    Stale(u64),
    /// No signature matched.
    #[error("no signature matches the body")]
    Mismatch,
    /// The secret given to the verifier is malformed.
    #[error("{0}")]
    BadSecret(String),
}

/// Checks a received request: `headers` as (name, value) pairs, names compared case-insensitively
/// (for `standard`, `svix-id`, `svix-timestamp` and `svix-signature` stand in for missing
/// `webhook-` ones, as Svix sends them).
/// For `standard`, `now` and `tolerance` bound the timestamp. Comparisons are constant-time.
pub fn verify(
    scheme: Scheme,
    secret: &str,
    headers: &[(String, String)],
    body: &[u8],
    now: u64,
    tolerance: Duration,
) -> Result<(), VerifyError> {
    let find = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
    };
    // Svix sends the Standard Webhooks scheme under `svix-` names, and its libraries accept
    // either; so does this, the standard names first.
    let header = |name: &'static str| {
        find(name)
            .or_else(|| find(&name.replacen("webhook-", "svix-", 1)))
            .ok_or(VerifyError::MissingHeader(name))
    };
    match scheme {
        Scheme::None => Ok(()),
        Scheme::Mender => {
            let key = parse_secret(scheme, secret).map_err(VerifyError::BadSecret)?;
            let given =
                hex::decode(header("X-Men-Signature")?).map_err(|_| VerifyError::Mismatch)?;
            let mut m = HmacSha256::new_from_slice(&key).expect("any key length");
            m.update(body);
            m.verify_slice(&given).map_err(|_| VerifyError::Mismatch)
        }
        Scheme::Standard => {
            // The reference libraries accept a secret with or without its prefix.
            let b64 = secret
                .trim()
                .strip_prefix(STANDARD_PREFIX)
                .unwrap_or(secret.trim());
            let key = B64
                .decode(b64)
                .map_err(|_| VerifyError::BadSecret("the secret is not base64".into()))?;
            let id = header("webhook-id")?;
            let ts_text = header("webhook-timestamp")?;
            let ts: u64 = ts_text.parse().map_err(|_| VerifyError::BadTimestamp)?;
            let skew = now.abs_diff(ts);
            if skew > tolerance.as_secs() {
                return Err(VerifyError::Stale(skew));
            }
            for candidate in header("webhook-signature")?.split(' ') {
                let Some(sig) = candidate.strip_prefix("v1,") else {
                    continue;
                };
                let Ok(sig) = B64.decode(sig) else { continue };
                let mut m = HmacSha256::new_from_slice(&key).expect("any key length");
                m.update(id.as_bytes());
                m.update(b".");
                m.update(ts_text.as_bytes());
                m.update(b".");
                m.update(body);
                if m.verify_slice(&sig).is_ok() {
                    return Ok(());
                }
            }
            Err(VerifyError::Mismatch)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TS: u64 = 1614265330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;

    fn as_pairs(h: Vec<(&'static str, String)>) -> Vec<(String, String)> {
        h.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }

    #[test]
    fn standard_signature_matches_the_specs_known_answer() {
        let s = Signer::new(Scheme::Standard, Some(SECRET), &[]).unwrap();
        let h = s.headers(ID, TS, BODY);
        assert_eq!(h[0], ("webhook-id", ID.to_string()));
        assert_eq!(h[1], ("webhook-timestamp", TS.to_string()));
        assert_eq!(
            h[2],
            (
                "webhook-signature",
                "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=".to_string()
            )
        );
        // Every signature starts from the key alone: the same answer after signing another
        // message with the same signer.
        s.headers("msg_other", TS + 1, b"{}");
        assert_eq!(s.headers(ID, TS, BODY), h);
    }

    #[test]
    fn standard_signature_matches_the_reference_librarys_known_answer() {
        let s = Signer::new(
            Scheme::Standard,
            Some("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"),
            &[],
        )
        .unwrap();
        let h = s.headers(
            "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
            1649367553,
            br#"{"email":"test@example.com","username":"test_user"}"#,
        );
        assert_eq!(h[2].1, "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=");
    }

    #[test]
    fn the_known_answer_with_its_last_character_changed_is_refused() {
        let headers = vec![
            ("webhook-id".to_string(), ID.to_string()),
            ("webhook-timestamp".to_string(), TS.to_string()),
            (
                "webhook-signature".to_string(),
                "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA=".to_string(),
            ),
        ];
        let r = verify(
            Scheme::Standard,
            SECRET,
            &headers,
            BODY,
            TS,
            Duration::from_secs(300),
        );
        assert_eq!(r, Err(VerifyError::Mismatch));
    }

    #[test]
    fn rotation_sends_one_signature_per_secret_current_first_and_either_verifies() {
        let old = generate_secret(Scheme::Standard);
        let s = Signer::new(Scheme::Standard, Some(SECRET), &[old.as_str()]).unwrap();
        let h = as_pairs(s.headers(ID, TS, BODY));
        let sigs: Vec<&str> = h[2].1.split(' ').collect();
        assert_eq!(sigs.len(), 2);
        assert_eq!(sigs[0], "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        for secret in [SECRET, old.as_str()] {
            verify(
                Scheme::Standard,
                secret,
                &h,
                BODY,
                TS + 10,
                Duration::from_secs(300),
            )
            .unwrap();
        }
        let stranger = generate_secret(Scheme::Standard);
        assert_eq!(
            verify(
                Scheme::Standard,
                &stranger,
                &h,
                BODY,
                TS,
                Duration::from_secs(300)
            ),
            Err(VerifyError::Mismatch)
        );
    }

    #[test]
    fn a_stale_timestamp_is_refused() {
        let s = Signer::new(Scheme::Standard, Some(SECRET), &[]).unwrap();
        let h = as_pairs(s.headers(ID, TS, BODY));
        let r = verify(
            Scheme::Standard,
            SECRET,
            &h,
            BODY,
            TS + 301,
            Duration::from_secs(300),
        );
        assert_eq!(r, Err(VerifyError::Stale(301)));
    }

    #[test]
    fn mender_signature_is_lowercase_hex_hmac_of_the_body_with_the_hex_decoded_key() {
        let secret = "6d656e646572";
        let s = Signer::new(Scheme::Mender, Some(secret), &[]).unwrap();
        let h = s.headers(ID, TS, BODY);
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].0, "X-Men-Signature");
        let mut m = HmacSha256::new_from_slice(b"mender").unwrap();
        m.update(BODY);
        assert_eq!(h[0].1, hex::encode(m.finalize().into_bytes()));
        assert!(
            h[0].1
                .chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
        );
        let h = as_pairs(h);
        verify(Scheme::Mender, secret, &h, BODY, 0, Duration::ZERO).unwrap();
        assert_eq!(
            verify(Scheme::Mender, secret, &h, b"{}", 0, Duration::ZERO),
            Err(VerifyError::Mismatch)
        );
    }

    #[test]
    fn malformed_secrets_are_refused_without_echoing_them() {
        for (scheme, bad) in [
            (Scheme::Standard, "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
            (Scheme::Standard, "whsec_!!!notbase64"),
            (Scheme::Standard, "whsec_c2hvcnQ="),
            (Scheme::Mender, "abc"),
            (Scheme::Mender, "zz"),
        ] {
            let e = parse_secret(scheme, bad).unwrap_err();
            assert!(!e.contains(bad), "{e}");
        }
    }

    #[test]
    fn a_signer_awaiting_its_secret_cannot_sign_until_it_has_one_and_then_signs_first_with_it() {
        let previous = generate_secret(Scheme::Standard);
        let waiting = Signer::awaiting(Scheme::Standard, &[previous.as_str()]).unwrap();
        assert!(!waiting.is_ready());
        assert_eq!(waiting.reveal(), None);
        let s = waiting.with_current(SECRET).unwrap();
        assert!(s.is_ready());
        assert_eq!(s.reveal().as_deref(), Some(SECRET));
        let h = s.headers(ID, TS, BODY);
        assert!(
            h[2].1
                .starts_with("v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE= v1,")
        );
        let mender = Signer::new(Scheme::Mender, Some("6D656E646572"), &[]).unwrap();
        assert_eq!(mender.reveal().as_deref(), Some("6d656e646572"));
    }

    #[test]
    fn generated_secrets_parse_in_their_own_scheme() {
        for scheme in [Scheme::Standard, Scheme::Mender] {
            let s = generate_secret(scheme);
            assert_eq!(parse_secret(scheme, &s).unwrap().len(), 32);
        }
    }
}

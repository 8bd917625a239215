//! The `arc1.<key_version>.<base64url>` ciphertext string.
//!
//! The input, as text, goes through the strict parser and through
//! `Keyring::decrypt` with a fixed keyring: neither may panic; a parsed value
//! must format back to exactly the input (one spelling per value); a string
//! the keyring opens must parse and name a held version. The input, as
//! plaintext, is sealed and must open to itself; the same string with any
//! one byte changed, or with other associated data, must be refused.
#![no_main]

use agentregistry_fuzz::{AAD, KEY_VERSIONS, KEYRING};
use crypto_service::Error;
use crypto_service::ciphertext::{self, TAG_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        parse_and_open(text);
    }
    seal_and_tamper(data);
});

fn parse_and_open(text: &str) {
    let parsed = ciphertext::parse(text);
    match &parsed {
        Ok(envelope) => {
            let formatted =
                ciphertext::format(envelope.key_version, &envelope.nonce, &envelope.sealed);
            assert_eq!(
                formatted, text,
                "a second spelling of one value was accepted"
            );
            assert_eq!(envelope.header, ciphertext::header(envelope.key_version));
            assert!(envelope.key_version >= 1);
            assert!(envelope.sealed.len() >= TAG_LEN);
            assert_eq!(ciphertext::key_version_of(text), Ok(envelope.key_version));
        }
        Err(error) => assert_eq!(ciphertext::key_version_of(text), Err(*error)),
    }
    match KEYRING.decrypt(text, AAD, "ciphertext") {
        Ok(opened) => {
            let envelope = parsed.expect("an opened ciphertext parses");
            assert_eq!(opened.key_version, envelope.key_version);
            assert!(KEY_VERSIONS.contains(&opened.key_version));
        }
        Err(Error::BadRequest(_)) => assert!(parsed.is_err(), "parsed text reported as malformed"),
        Err(Error::UnknownKeyVersion { version, .. }) => {
            assert!(!KEY_VERSIONS.contains(&version));
            assert_eq!(parsed.map(|e| e.key_version), Ok(version));
        }
        Err(Error::NotAuthentic { .. }) => {
            let envelope = parsed.expect("only parsed text reaches authentication");
            assert!(KEY_VERSIONS.contains(&envelope.key_version));
        }
        Err(other) => panic!("unexpected error {other:?}"),
    }
}

fn seal_and_tamper(plaintext: &[u8]) {
    let sealed = KEYRING.encrypt(plaintext, AAD).expect("encrypt");
    let text = sealed.ciphertext;
    let opened = KEYRING
        .decrypt(&text, AAD, "ciphertext")
        .expect("own ciphertext opens");
    assert_eq!(opened.plaintext.as_slice(), plaintext);
    assert_eq!(opened.key_version, sealed.key_version);

    let mut other_aad = AAD.to_vec();
    other_aad.push(b'x');
    assert!(
        KEYRING.decrypt(&text, &other_aad, "ciphertext").is_err(),
        "AAD not bound"
    );

    // One byte changed, at a position and to a value the input picks.
    let seed = plaintext.iter().fold(0usize, |acc, b| {
        acc.wrapping_mul(31).wrapping_add(usize::from(*b))
    });
    let mut bytes = text.clone().into_bytes();
    let index = seed % bytes.len();
    let replacement = REPLACEMENTS[seed / 7 % REPLACEMENTS.len()];
    if bytes[index] == replacement {
        return;
    }
    bytes[index] = replacement;
    let altered = String::from_utf8(bytes).expect("ASCII stays UTF-8");
    assert!(
        KEYRING.decrypt(&altered, AAD, "ciphertext").is_err(),
        "altered ciphertext {altered:?} (from {text:?}) opened"
    );
}

/// Bytes a tampered position is set to: the format's own characters and a few
/// that base64url does not have.
const REPLACEMENTS: &[u8] = b"arc1.0123456789ABCXYZabcxyz-_=+/ \x00";

//! Fernet tokens (`FernetKey::decrypt`), plain or in the platform's stored
//! (base64-again) form, under the Python fixtures' legacy key.
//!
//! The input, as text, must never panic the parser and is accepted only if
//! its HMAC-SHA256 tag, checked here independently, is right. The input, as
//! plaintext, is sealed here into a token (timestamp and IV from the input)
//! that must open to itself in both forms, and must be refused with any one
//! byte of the token changed.
#![no_main]

use aes::Aes128;
use aes::cipher::block_padding::Pkcs7;
use aes::cipher::{BlockModeEncrypt, KeyIvInit};
use agentregistry_fuzz::{FERNET_KEY_BYTES, hs256};
use base64::Engine;
use base64::alphabet;
use base64::engine::general_purpose::URL_SAFE;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use crypto_service::fernet::{FernetError, FernetKey, VERSION};
use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;

static KEY: LazyLock<FernetKey> = LazyLock::new(|| FernetKey::from_bytes(&FERNET_KEY_BYTES));

/// URL-safe base64 with or without padding, as the platform's readers take it.
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        open(text);
    }
    seal_and_tamper(data);
});

fn open(text: &str) {
    let Ok(plaintext) = KEY.decrypt(text) else {
        return;
    };
    // Accepted: some decoding of the text (once, or twice for the stored
    // form) must be a well-formed token whose tag is right under the key.
    let once = LENIENT
        .decode(text.trim())
        .expect("accepted text is base64");
    let twice = LENIENT.decode(&once).ok();
    let authentic = |raw: &[u8]| {
        raw.len() >= 1 + 8 + 16 + 16 + 32
            && raw[0] == VERSION
            && (raw.len() - (1 + 8 + 16 + 32)).is_multiple_of(16)
            && hs256(&FERNET_KEY_BYTES[..16], &raw[..raw.len() - 32]) == raw[raw.len() - 32..]
    };
    assert!(
        authentic(&once) || twice.as_deref().is_some_and(authentic),
        "accepted a token that does not authenticate"
    );
    let body = if authentic(&once) {
        once.len()
    } else {
        twice.map_or(0, |t| t.len())
    } - (1 + 8 + 16 + 32);
    assert!(
        plaintext.len() < body,
        "PKCS#7 always strips at least one byte"
    );
}

fn seal_and_tamper(plaintext: &[u8]) {
    let seed = plaintext.iter().fold(0u64, |acc, b| {
        acc.wrapping_mul(131).wrapping_add(u64::from(*b))
    });
    let iv = seed.to_le_bytes().repeat(2);
    let token = seal(&seed.to_be_bytes(), &iv, plaintext);
    let plain = URL_SAFE.encode(&token);
    let stored = URL_SAFE.encode(plain.as_bytes());
    for form in [&plain, &stored] {
        let opened = KEY.decrypt(form).expect("own token opens");
        assert_eq!(opened.as_slice(), plaintext);
    }

    let mut altered = token.clone();
    let index = usize::try_from(seed % altered.len() as u64).expect("fits");
    altered[index] ^= 1 << (seed % 8);
    let expected = if index == 0 {
        FernetError::WrongVersion
    } else {
        FernetError::NotAuthentic
    };
    assert_eq!(
        KEY.decrypt(&URL_SAFE.encode(&altered)).err(),
        Some(expected)
    );
}

/// A Fernet token made independently of the code under test.
fn seal(timestamp: &[u8; 8], iv: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let key = &*FERNET_KEY_BYTES;
    let encryptor =
        cbc::Encryptor::<Aes128>::new_from_slices(&key[16..], iv).expect("16-byte key and IV");
    let mut buffer = plaintext.to_vec();
    buffer.resize(plaintext.len() + 16, 0);
    let ciphertext = encryptor
        .encrypt_padded::<Pkcs7>(&mut buffer, plaintext.len())
        .expect("room for the padding")
        .to_vec();
    let mut token = vec![VERSION];
    token.extend_from_slice(timestamp);
    token.extend_from_slice(iv);
    token.extend_from_slice(&ciphertext);
    let tag = hs256(&key[..16], &token);
    token.extend_from_slice(&tag);
    token
}

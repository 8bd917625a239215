//! Fernet, read-only: verifies and decrypts the tokens the Python platform
//! stored, so `ImportFernet` can re-encrypt them under the keyring.
//!
//! A token is `0x80 ‖ timestamp (8, big-endian) ‖ IV (16) ‖ AES-128-CBC
//! ciphertext (PKCS#7) ‖ HMAC-SHA256 (32)`, URL-safe base64. The 32-byte
//! key's first half signs, its second half encrypts. The tag is checked (in
//! constant time) before anything is decrypted, so padding errors are
//! reported only for tokens the legacy key really made. The timestamp is not
//! checked: stored keys are old by design.
//!
//! Error messages describe the token's shape only; they never quote the
//! token, its plaintext or the key.

use std::fmt;

use aes::Aes128;
use aes::cipher::block_padding::Pkcs7;
use aes::cipher::{BlockModeDecrypt, KeyIvInit};
use base64::Engine;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::keyring::{KEY_LEN, pbkdf2_root};

/// The only Fernet version byte.
pub const VERSION: u8 = 0x80;

const HALF: usize = 16;
const TIMESTAMP_LEN: usize = 8;
const IV_LEN: usize = 16;
const TAG_LEN: usize = 32;
const BLOCK_LEN: usize = 16;
/// Version, timestamp and IV: the header the tag also covers.
const HEADER_LEN: usize = 1 + TIMESTAMP_LEN + IV_LEN;

/// URL-safe base64, padding optional (Python writes it; people strip it).
const URL_SAFE_LENIENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A Fernet key: 16 bytes that sign, 16 that encrypt. Zeroized on drop;
/// `Debug` prints nothing of it.
pub struct FernetKey {
    signing: Zeroizing<[u8; HALF]>,
    encryption: Zeroizing<[u8; HALF]>,
}

impl fmt::Debug for FernetKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FernetKey(<redacted>)")
    }
}

/// Why a key setting could not be read (no key bytes in it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The text is not URL-safe (or standard) base64.
    #[error("is not URL-safe base64 (a Fernet key, as the platform's ENCRYPTION_KEY)")]
    NotBase64,
    /// It decodes to the wrong number of bytes.
    #[error("must be base64 of exactly {KEY_LEN} bytes (a Fernet key), got {0} bytes")]
    WrongLength(usize),
}

/// Why a token could not be decrypted. The messages are safe to return to
/// callers: they hold no token, plaintext or key bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FernetError {
    /// Empty input.
    #[error("token is empty")]
    Empty,
    /// Neither a token nor a base64-encoded token.
    #[error("not a Fernet token: not URL-safe base64")]
    NotBase64,
    /// The first byte is not 0x80.
    #[error("not a Fernet token: unknown version byte")]
    WrongVersion,
    /// Shorter than the smallest token, or the ciphertext is not whole blocks.
    #[error("not a Fernet token: wrong length")]
    WrongLength,
    /// The HMAC does not match: another key, or an altered token.
    #[error("token does not authenticate with the legacy key (another key, or an altered token)")]
    NotAuthentic,
    /// Authentic, but the plaintext padding is broken (a faulty writer).
    #[error("token authenticates but its padding is invalid")]
    BadPadding,
}

impl FernetKey {
    /// A key from its 32 bytes (signing half first).
    pub fn from_bytes(key: &[u8; KEY_LEN]) -> Self {
        let mut signing = Zeroizing::new([0u8; HALF]);
        let mut encryption = Zeroizing::new([0u8; HALF]);
        signing.copy_from_slice(&key[..HALF]);
        encryption.copy_from_slice(&key[HALF..]);
        Self {
            signing,
            encryption,
        }
    }

    /// A key written as the platform's `ENCRYPTION_KEY`: URL-safe base64 of
    /// 32 bytes (standard base64 and missing padding are accepted too).
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        let text = text.trim();
        let decoded = [
            URL_SAFE_LENIENT,
            GeneralPurpose::new(
                &alphabet::STANDARD,
                GeneralPurposeConfig::new()
                    .with_decode_padding_mode(DecodePaddingMode::Indifferent),
            ),
        ]
        .iter()
        .find_map(|engine| engine.decode(text).ok())
        .map(Zeroizing::new)
        .ok_or(KeyError::NotBase64)?;
        let bytes: &[u8; KEY_LEN] = decoded
            .as_slice()
            .try_into()
            .map_err(|_| KeyError::WrongLength(decoded.len()))?;
        Ok(Self::from_bytes(bytes))
    }

    /// The key the platform derives without `ENCRYPTION_KEY`:
    /// PBKDF2-HMAC-SHA256(`MASTER_SECRET`, `ENCRYPTION_SALT`, 100,000).
    pub fn from_master_secret(secret: &[u8], salt: &[u8]) -> Self {
        Self::from_bytes(&pbkdf2_root(secret, salt))
    }

    /// The whole 32-byte key (signing half first), for the start-up check
    /// that no keyring version is this key or follows from it alone.
    pub fn to_bytes(&self) -> Zeroizing<[u8; KEY_LEN]> {
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        key[..HALF].copy_from_slice(self.signing.as_ref());
        key[HALF..].copy_from_slice(self.encryption.as_ref());
        key
    }

    /// Verifies and decrypts `token`: a Fernet token (`gAAAAA…`) or, as the
    /// platform's `api_key` column holds it, that token base64-encoded once
    /// more.
    pub fn decrypt(&self, token: &str) -> Result<Zeroizing<Vec<u8>>, FernetError> {
        let raw = unwrap_token(token)?;
        self.decrypt_raw(&raw)
    }

    fn decrypt_raw(&self, raw: &[u8]) -> Result<Zeroizing<Vec<u8>>, FernetError> {
        if raw.first() != Some(&VERSION) {
            return Err(FernetError::WrongVersion);
        }
        let Some(body_len) = raw.len().checked_sub(HEADER_LEN + TAG_LEN) else {
            return Err(FernetError::WrongLength);
        };
        if body_len == 0 || body_len % BLOCK_LEN != 0 {
            return Err(FernetError::WrongLength);
        }
        let (signed, tag) = raw.split_at(raw.len() - TAG_LEN);

        // HMAC takes keys of any length, so this cannot fail.
        let mut mac = Hmac::<Sha256>::new_from_slice(self.signing.as_slice())
            .map_err(|_| FernetError::NotAuthentic)?;
        mac.update(signed);
        // `verify_slice` compares in constant time.
        mac.verify_slice(tag)
            .map_err(|_| FernetError::NotAuthentic)?;

        let iv = &signed[1 + TIMESTAMP_LEN..HEADER_LEN];
        let mut buffer = Zeroizing::new(signed[HEADER_LEN..].to_vec());
        // Slices in, so no unzeroized copy of the key is made on the way;
        // the cipher state zeroizes itself on drop.
        let decryptor = cbc::Decryptor::<Aes128>::new_from_slices(self.encryption.as_slice(), iv)
            .map_err(|_| FernetError::WrongLength)?;
        let plaintext_len = decryptor
            .decrypt_padded::<Pkcs7>(buffer.as_mut_slice())
            .map_err(|_| FernetError::BadPadding)?
            .len();
        // Zeroize on the Vec clears its whole capacity, the cut-off tail too.
        buffer.truncate(plaintext_len);
        Ok(buffer)
    }
}

/// The raw token bytes of `text`, which is either a token or a token
/// base64-encoded once more.
fn unwrap_token(text: &str) -> Result<Vec<u8>, FernetError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(FernetError::Empty);
    }
    let once = URL_SAFE_LENIENT
        .decode(text)
        .map_err(|_| FernetError::NotBase64)?;
    // A token's first byte is 0x80 (base64 `g`); the platform's stored form
    // decodes to the token's own text, which starts with `g` (0x67).
    if once.first() == Some(&VERSION) {
        return Ok(once);
    }
    // Not the text of a token: take the bytes as a token, whose version
    // byte check then reports it.
    Ok(URL_SAFE_LENIENT.decode(&once).unwrap_or(once))
}

#[cfg(test)]
mod tests {
    use super::*;
    use aes::cipher::BlockModeEncrypt;
    use aes::cipher::block_padding::NoPadding;
    use base64::engine::general_purpose::URL_SAFE;

    /// The fixtures `tests/python/make_fernet_fixtures.py` made with Python
    /// `cryptography`.
    fn fixtures() -> serde_json::Value {
        serde_json::from_str(include_str!("../../tests/fixtures/fernet/expected.json"))
            .expect("fixture JSON")
    }

    fn text<'a>(value: &'a serde_json::Value, pointer: &str) -> &'a str {
        value
            .pointer(pointer)
            .and_then(serde_json::Value::as_str)
            .unwrap_or_else(|| panic!("fixture {pointer}"))
    }

    fn legacy_key(fixtures: &serde_json::Value) -> FernetKey {
        FernetKey::from_base64(text(fixtures, "/legacy/fernet_key")).expect("fixture key")
    }

    /// A token made here, for shapes Python will not write.
    fn seal(key: &[u8; 32], version: u8, body: &[u8], pad: bool) -> Vec<u8> {
        let iv = [7u8; IV_LEN];
        let encryption: [u8; HALF] = key[HALF..].try_into().expect("half");
        let encryptor = cbc::Encryptor::<Aes128>::new(&encryption.into(), &iv.into());
        let mut buffer = body.to_vec();
        buffer.resize(body.len() + BLOCK_LEN, 0);
        let ciphertext = if pad {
            encryptor.encrypt_padded::<Pkcs7>(&mut buffer, body.len())
        } else {
            encryptor.encrypt_padded::<NoPadding>(&mut buffer, body.len())
        }
        .expect("room for the padding")
        .to_vec();
        let mut token = vec![version];
        token.extend_from_slice(&1_700_000_000u64.to_be_bytes());
        token.extend_from_slice(&iv);
        token.extend_from_slice(&ciphertext);
        let mut mac = Hmac::<Sha256>::new_from_slice(&key[..HALF]).expect("hmac");
        mac.update(&token);
        token.extend_from_slice(&mac.finalize().into_bytes());
        token
    }

    fn assert_fails(key: &FernetKey, token: &str, expected: FernetError, secret: &str) {
        let error = key.decrypt(token).expect_err("must not decrypt");
        assert_eq!(error, expected);
        let message = error.to_string();
        assert!(!message.contains(secret), "{message}");
        assert!(token.is_empty() || !message.contains(token), "{message}");
    }

    #[test]
    fn python_tokens_decrypt_plain_and_in_the_platforms_stored_form() {
        let fixtures = fixtures();
        let key = legacy_key(&fixtures);
        let plaintext = text(&fixtures, "/tokens/plaintext");
        for form in ["/tokens/plain", "/tokens/stored"] {
            let opened = key.decrypt(text(&fixtures, form)).expect(form);
            assert_eq!(opened.as_slice(), plaintext.as_bytes(), "{form}");
        }
        let empty = key
            .decrypt(text(&fixtures, "/tokens/empty"))
            .expect("empty");
        assert!(empty.is_empty());
        // Padding stripped, or whitespace around it: still the same token.
        let stripped = text(&fixtures, "/tokens/plain").trim_end_matches('=');
        assert_eq!(
            key.decrypt(&format!(" {stripped}\n"))
                .expect("lenient")
                .as_slice(),
            plaintext.as_bytes()
        );
    }

    #[test]
    fn the_platforms_pbkdf2_derivation_gives_its_fernet_key() {
        let fixtures = fixtures();
        let derived = FernetKey::from_master_secret(
            text(&fixtures, "/legacy/master_secret").as_bytes(),
            text(&fixtures, "/legacy/encryption_salt").as_bytes(),
        );
        let opened = derived
            .decrypt(text(&fixtures, "/tokens/stored"))
            .expect("derived key opens the token");
        assert_eq!(
            opened.as_slice(),
            text(&fixtures, "/tokens/plaintext").as_bytes()
        );
    }

    #[test]
    fn altered_foreign_short_and_malformed_tokens_fail_without_quoting_anything() {
        let fixtures = fixtures();
        let key = legacy_key(&fixtures);
        let secret = text(&fixtures, "/tokens/plaintext");
        let plain = text(&fixtures, "/tokens/plain");
        let raw = URL_SAFE_LENIENT.decode(plain).expect("token bytes");

        // Every single flipped bit past the version byte is caught.
        for index in 1..raw.len() {
            let mut flipped = raw.clone();
            flipped[index] ^= 0x01;
            assert_fails(
                &key,
                &URL_SAFE.encode(&flipped),
                FernetError::NotAuthentic,
                secret,
            );
        }
        let mut version = raw.clone();
        version[0] ^= 0x01;
        assert_fails(
            &key,
            &URL_SAFE.encode(&version),
            FernetError::WrongVersion,
            secret,
        );

        // Another key, from Python.
        assert_fails(
            &key,
            text(&fixtures, "/tokens/other_key"),
            FernetError::NotAuthentic,
            secret,
        );
        let wrong = FernetKey::from_bytes(&[0x42; 32]);
        assert_fails(&wrong, plain, FernetError::NotAuthentic, secret);

        // Truncations: a block short, a byte short, the tag gone, only the header.
        for cut in [16, 1, TAG_LEN] {
            let short = URL_SAFE.encode(&raw[..raw.len() - cut]);
            let error = key.decrypt(&short).expect_err("truncated");
            assert!(
                matches!(error, FernetError::WrongLength | FernetError::NotAuthentic),
                "{error:?}"
            );
        }
        assert_fails(
            &key,
            &URL_SAFE.encode(&raw[..HEADER_LEN]),
            FernetError::WrongLength,
            secret,
        );

        // Authentic, but not a padded plaintext (made by Python's primitives).
        assert_fails(
            &key,
            text(&fixtures, "/tokens/bad_padding"),
            FernetError::BadPadding,
            secret,
        );
        // Correctly signed with another version byte.
        assert_fails(
            &key,
            text(&fixtures, "/tokens/version_0x81"),
            FernetError::WrongVersion,
            secret,
        );

        assert_fails(&key, "", FernetError::Empty, secret);
        assert_fails(&key, "not a token!", FernetError::NotBase64, secret);
    }

    #[test]
    fn tokens_made_here_round_trip_and_their_faults_are_named() {
        let key_bytes = [0x3c; 32];
        let key = FernetKey::from_bytes(&key_bytes);
        let secret = "sk-made-here-😀-0123456789abcdef";
        let good = URL_SAFE.encode(seal(&key_bytes, VERSION, secret.as_bytes(), true));
        assert_eq!(
            key.decrypt(&good).expect("round trip").as_slice(),
            secret.as_bytes()
        );
        let stored = URL_SAFE.encode(good.as_bytes());
        assert_eq!(
            key.decrypt(&stored).expect("stored form").as_slice(),
            secret.as_bytes()
        );

        // A whole block with a last byte of 0: not PKCS#7.
        let unpadded = URL_SAFE.encode(seal(&key_bytes, VERSION, &[0u8; 32], false));
        assert_fails(&key, &unpadded, FernetError::BadPadding, secret);
        let version = URL_SAFE.encode(seal(&key_bytes, 0x00, secret.as_bytes(), true));
        assert_fails(&key, &version, FernetError::WrongVersion, secret);
    }

    #[test]
    fn keys_read_as_the_platform_writes_them_and_never_print() {
        let fixtures = fixtures();
        let written = text(&fixtures, "/legacy/fernet_key");
        assert!(FernetKey::from_base64(written).is_ok());
        assert!(FernetKey::from_base64(written.trim_end_matches('=')).is_ok());
        assert_eq!(
            FernetKey::from_base64(&URL_SAFE.encode([1u8; 16])).err(),
            Some(KeyError::WrongLength(16))
        );
        assert_eq!(
            FernetKey::from_base64("*not base64*").err(),
            Some(KeyError::NotBase64)
        );
        let printed = format!("{:?}", FernetKey::from_bytes(&[0xAB; 32]));
        assert_eq!(printed, "FernetKey(<redacted>)");
    }
}

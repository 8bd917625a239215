//! The keyring: numbered AES-256-GCM keys, the newest of which encrypts.
//!
//! Key bytes are derived once, when the keyring is built: a 32-byte root
//! (given directly, or PBKDF2-HMAC-SHA256 of a master secret and salt with
//! 100,000 iterations) goes through a labelled HKDF-SHA256 step, so the same
//! secret never yields the bytes of the Python platform's Fernet key. Only
//! the cipher state is kept; it and every intermediate buffer are zeroized
//! on drop, and nothing here prints key material, even through `Debug`.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::{Zeroize, Zeroizing};

use crate::ciphertext::{self, NONCE_LEN};
use crate::error::Error;

/// PBKDF2-HMAC-SHA256 iterations for master secrets (the platform's value).
pub const PBKDF2_ITERATIONS: u32 = 100_000;
/// Bytes of every key.
pub const KEY_LEN: usize = 32;

const HKDF_SALT: &[u8] = b"agentregistry/crypto/v1";
const HKDF_INFO: &[u8] = b"agentregistry aes-256-gcm data key";
const CHECK_VALUE_LABEL: &[u8] = b"agentregistry key check value";

/// Where one key version's bytes come from.
pub enum KeyMaterial {
    /// A 32-byte root key.
    Direct(Zeroizing<[u8; KEY_LEN]>),
    /// A master secret and salt for PBKDF2.
    Pbkdf2 {
        /// The master secret.
        secret: Zeroizing<Vec<u8>>,
        /// The salt.
        salt: Zeroizing<Vec<u8>>,
    },
}

impl fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Direct(_) => f.write_str("KeyMaterial::Direct(<redacted>)"),
            Self::Pbkdf2 { .. } => f.write_str("KeyMaterial::Pbkdf2(<redacted>)"),
        }
    }
}

/// How a key version was obtained (reported by `GetKeyInfo`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Derivation {
    /// From a 32-byte root key.
    Direct,
    /// From a master secret and salt through PBKDF2.
    Pbkdf2,
}

/// A ciphertext and the key version that made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    /// The ciphertext string.
    pub ciphertext: String,
    /// The key version that sealed it.
    pub key_version: u32,
}

/// A decrypted value; the bytes are zeroized when it is dropped.
pub struct Opened {
    /// The plaintext.
    pub plaintext: Zeroizing<Vec<u8>>,
    /// The key version that had sealed it.
    pub key_version: u32,
}

impl fmt::Debug for Opened {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Opened")
            .field("plaintext", &"<redacted>")
            .field("key_version", &self.key_version)
            .finish()
    }
}

/// The result of moving one ciphertext to the active key version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewrapped {
    /// The ciphertext under the active version.
    pub sealed: Sealed,
    /// The version that protected it before.
    pub previous_key_version: u32,
}

/// A description of one key version without its material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionInfo {
    /// The version number.
    pub version: u32,
    /// Whether it encrypts new values.
    pub active: bool,
    /// The key check value, 16 hex characters.
    pub check_value: String,
    /// How it was obtained.
    pub derivation: Derivation,
    /// Encryptions made with it since start.
    pub encryptions: u64,
}

struct VersionedKey {
    cipher: Aes256Gcm,
    check_value: String,
    derivation: Derivation,
    encryptions: AtomicU64,
}

/// Numbered keys; the highest version encrypts, every version decrypts.
pub struct Keyring {
    keys: BTreeMap<u32, Arc<VersionedKey>>,
    active: u32,
}

/// The keyring a running service uses: replaced whole on reload (SIGHUP)
/// or when a version is retired; each call works on one snapshot.
#[derive(Debug, Clone)]
pub struct SharedKeyring(Arc<RwLock<Arc<Keyring>>>);

impl SharedKeyring {
    /// Shares `keyring`.
    pub fn new(keyring: Keyring) -> Self {
        Self(Arc::new(RwLock::new(Arc::new(keyring))))
    }

    /// The keyring in force now.
    pub fn current(&self) -> Arc<Keyring> {
        // A poisoned lock still holds a whole keyring: replacing it is one
        // assignment, so no writer can leave it half-changed.
        match self.0.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Puts `keyring` in force for every later call.
    pub fn replace(&self, keyring: Keyring) {
        let keyring = Arc::new(keyring);
        match self.0.write() {
            Ok(mut guard) => *guard = keyring,
            Err(poisoned) => *poisoned.into_inner() = keyring,
        }
    }
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("versions", &self.keys.keys().collect::<Vec<_>>())
            .field("active", &self.active)
            .finish_non_exhaustive()
    }
}

impl Keyring {
    /// Derives every version's key. `setting` names where the material came
    /// from, for the start-up error.
    pub fn new(versions: Vec<(u32, KeyMaterial)>, setting: &str) -> Result<Self, Error> {
        let mut keys = BTreeMap::new();
        for (version, material) in versions {
            if version == 0 {
                return Err(Error::config(setting, "key versions start at 1"));
            }
            let key = Arc::new(VersionedKey::derive(&material));
            if keys.insert(version, key).is_some() {
                return Err(Error::config(
                    setting,
                    format!("key version {version} is listed twice"),
                ));
            }
        }
        let active = *keys
            .keys()
            .next_back()
            .ok_or_else(|| Error::config(setting, "no key versions given"))?;
        Ok(Self { keys, active })
    }

    /// The version that encrypts new values.
    pub fn active_version(&self) -> u32 {
        self.active
    }

    /// This keyring without `version`; refused for the active version or
    /// one it does not hold. Other versions keep their keys and counters.
    pub fn without(&self, version: u32) -> Result<Self, Error> {
        if version == self.active {
            return Err(Error::KeyVersionActive { version });
        }
        if !self.keys.contains_key(&version) {
            return Err(Error::UnknownKeyVersion {
                field: "version".to_owned(),
                version,
            });
        }
        let keys = self
            .keys
            .iter()
            .filter(|(v, _)| **v != version)
            .map(|(v, key)| (*v, Arc::clone(key)))
            .collect();
        Ok(Self {
            keys,
            active: self.active,
        })
    }

    /// Encrypts `plaintext` bound to `aad` under the active version.
    pub fn encrypt(&self, plaintext: &[u8], aad: &[u8]) -> Result<Sealed, Error> {
        self.seal_with(self.active, plaintext, aad)
    }

    /// Decrypts a ciphertext string bound to `aad`. `field` names the request
    /// field for errors.
    pub fn decrypt(&self, text: &str, aad: &[u8], field: &str) -> Result<Opened, Error> {
        let envelope = ciphertext::parse(text)
            .map_err(|problem| Error::bad_field(field, problem.to_string()))?;
        let key = self
            .keys
            .get(&envelope.key_version)
            .ok_or_else(|| Error::UnknownKeyVersion {
                field: field.to_owned(),
                version: envelope.key_version,
            })?;
        let full_aad = Zeroizing::new([envelope.header.as_bytes(), aad].concat());
        let plaintext = key
            .cipher
            .decrypt(
                &Nonce::from(envelope.nonce),
                Payload {
                    msg: &envelope.sealed,
                    aad: &full_aad,
                },
            )
            .map_err(|_| Error::NotAuthentic {
                field: field.to_owned(),
            })?;
        Ok(Opened {
            plaintext: Zeroizing::new(plaintext),
            key_version: envelope.key_version,
        })
    }

    /// Moves a ciphertext to the active version; one already there comes back
    /// unchanged after it is authenticated.
    pub fn rewrap(&self, text: &str, aad: &[u8], field: &str) -> Result<Rewrapped, Error> {
        let opened = self.decrypt(text, aad, field)?;
        let sealed = if opened.key_version == self.active {
            Sealed {
                ciphertext: text.to_owned(),
                key_version: self.active,
            }
        } else {
            self.encrypt(&opened.plaintext, aad)?
        };
        Ok(Rewrapped {
            sealed,
            previous_key_version: opened.key_version,
        })
    }

    /// Describes every version, ascending.
    pub fn versions(&self) -> Vec<VersionInfo> {
        self.keys
            .iter()
            .map(|(&version, key)| VersionInfo {
                version,
                active: version == self.active,
                check_value: key.check_value.clone(),
                derivation: key.derivation,
                encryptions: key.encryptions.load(Ordering::Relaxed),
            })
            .collect()
    }

    fn seal_with(&self, version: u32, plaintext: &[u8], aad: &[u8]) -> Result<Sealed, Error> {
        let key = self
            .keys
            .get(&version)
            .ok_or_else(|| Error::config("keyring", "active key version missing"))?;
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|_| Error::Random)?;
        let header = ciphertext::header(version);
        let full_aad = Zeroizing::new([header.as_bytes(), aad].concat());
        let sealed = key
            .cipher
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: plaintext,
                    aad: &full_aad,
                },
            )
            // AES-GCM encryption fails only for inputs beyond 2^36 bytes,
            // far above the request size limit.
            .map_err(|_| Error::bad_field("plaintext", "too large to encrypt"))?;
        key.encryptions.fetch_add(1, Ordering::Relaxed);
        Ok(Sealed {
            ciphertext: ciphertext::format(version, &nonce, &sealed),
            key_version: version,
        })
    }
}

impl VersionedKey {
    fn derive(material: &KeyMaterial) -> Self {
        let (root, derivation) = match material {
            KeyMaterial::Direct(key) => (key.clone(), Derivation::Direct),
            KeyMaterial::Pbkdf2 { secret, salt } => (pbkdf2_root(secret, salt), Derivation::Pbkdf2),
        };
        let data_key = separate(&root);
        let check_value = check_value(&data_key);
        let cipher = Aes256Gcm::new(&(*data_key).into());
        Self {
            cipher,
            check_value,
            derivation,
            encryptions: AtomicU64::new(0),
        }
    }
}

/// PBKDF2-HMAC-SHA256 with [`PBKDF2_ITERATIONS`], the Python platform's
/// derivation (whose output it base64-encodes into a Fernet key).
pub fn pbkdf2_root(secret: &[u8], salt: &[u8]) -> Zeroizing<[u8; KEY_LEN]> {
    pbkdf2_sha256(secret, salt, PBKDF2_ITERATIONS)
}

fn pbkdf2_sha256(secret: &[u8], salt: &[u8], iterations: u32) -> Zeroizing<[u8; KEY_LEN]> {
    let mut root = Zeroizing::new([0u8; KEY_LEN]);
    pbkdf2::pbkdf2_hmac::<Sha256>(secret, salt, iterations, root.as_mut());
    root
}

/// The labelled HKDF step between a root key and the AES key.
fn separate(root: &[u8; KEY_LEN]) -> Zeroizing<[u8; KEY_LEN]> {
    let mut data_key = Zeroizing::new([0u8; KEY_LEN]);
    // HKDF-SHA256 can expand up to 255 * 32 bytes; 32 always fits.
    let expanded = Hkdf::<Sha256>::new(Some(HKDF_SALT), root).expand(HKDF_INFO, data_key.as_mut());
    debug_assert!(expanded.is_ok());
    data_key
}

fn check_value(data_key: &[u8; KEY_LEN]) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(data_key) else {
        return String::new();
    };
    mac.update(CHECK_VALUE_LABEL);
    let mut digest = mac.finalize().into_bytes();
    let value = hex::encode(&digest[..8]);
    digest.zeroize();
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    fn direct(byte: u8) -> KeyMaterial {
        KeyMaterial::Direct(Zeroizing::new([byte; KEY_LEN]))
    }

    #[test]
    fn pbkdf2_matches_the_rfc_7914_vectors() {
        // RFC 7914 §11, PBKDF2-HMAC-SHA256, first 32 bytes of dkLen = 64.
        let short = pbkdf2_sha256(b"passwd", b"salt", 1);
        assert_eq!(
            hex::encode(*short),
            "55ac046e56e3089fec1691c22544b605f94185216dde0465e68b9d57c20dacbc"
        );
        let long = pbkdf2_sha256(b"Password", b"NaCl", 80_000);
        assert_eq!(
            hex::encode(*long),
            "4ddcd8f60b98be21830cee5ef22701f9641a4418d04c0414aeff08876b34ab56"
        );
    }

    #[test]
    fn same_plaintext_gives_different_ciphertexts() {
        let ring = Keyring::new(vec![(1, direct(1))], "test").expect("keyring");
        let a = ring.encrypt(b"secret", b"aad").expect("encrypt");
        let b = ring.encrypt(b"secret", b"aad").expect("encrypt");
        assert_ne!(a.ciphertext, b.ciphertext);
    }

    #[test]
    fn debug_output_names_no_key_bytes() {
        let ring = Keyring::new(vec![(3, direct(0xAB))], "test").expect("keyring");
        let printed = format!("{ring:?} {:?}", direct(0xAB));
        assert!(!printed.to_lowercase().contains("ab, "));
        assert!(printed.contains("redacted"));
        assert!(!printed.contains("171"));
    }
}

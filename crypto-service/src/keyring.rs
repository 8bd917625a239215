//! The keyring: numbered AES-256-GCM keys, the newest of which encrypts.
//!
//! Key bytes are derived once, when the keyring is built: a 32-byte root
//! goes through a labelled HKDF-SHA256 step into the AES key. The root is
//! given directly, or comes from a master secret and salt through
//! PBKDF2-HMAC-SHA256 (100,000 iterations) in one of two ways:
//!
//! - [`Derivation::Pbkdf2`] (`pbkdf2-v2`), the only one that encrypts:
//!   the PBKDF2 salt is [`PBKDF2_SALT_LABEL`] followed by the configured
//!   salt. The Python platform ran PBKDF2 over the bare salt and used the
//!   output as its Fernet key; with the label inside PBKDF2's own input, a
//!   holder of that Fernet key learns nothing about this root (computing it
//!   needs the master secret itself).
//! - [`Derivation::LegacyPbkdf2`] (`legacy-pbkdf2`): PBKDF2 over the bare
//!   salt, as this service did before. Its root *is* the platform's Fernet
//!   key, and the HKDF step after it is public, so anyone holding that key
//!   can open what it sealed. It exists only so old ciphertexts keep
//!   decrypting until `Rewrap` moves them to the active version: a keyring
//!   whose active (highest) version uses it is refused.
//!
//! [`Keyring::overlapping_legacy`] finds versions whose AES key is the
//! legacy Fernet key or follows from it alone, so start-up can refuse them.
//!
//! Only the cipher state is kept; it and every intermediate buffer are
//! zeroized on drop, and nothing here prints key material, even through
//! `Debug`.

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

/// What precedes the configured salt in PBKDF2's salt input for
/// [`Derivation::Pbkdf2`]: fixed and versioned, so this root never equals
/// a PBKDF2 output the Python platform computed from the same values.
pub const PBKDF2_SALT_LABEL: &[u8] = b"agentregistry/root-key/pbkdf2-v2:";

const HKDF_SALT: &[u8] = b"agentregistry/crypto/v1";
const HKDF_INFO: &[u8] = b"agentregistry aes-256-gcm data key";
const CHECK_VALUE_LABEL: &[u8] = b"agentregistry key check value";

/// Where one key version's bytes come from.
pub enum KeyMaterial {
    /// A 32-byte root key.
    Direct(Zeroizing<[u8; KEY_LEN]>),
    /// A master secret and salt for PBKDF2 with the labelled salt
    /// ([`Derivation::Pbkdf2`]).
    Pbkdf2 {
        /// The master secret.
        secret: Zeroizing<Vec<u8>>,
        /// The salt.
        salt: Zeroizing<Vec<u8>>,
    },
    /// A master secret and salt for the old, unlabelled PBKDF2
    /// ([`Derivation::LegacyPbkdf2`]): decrypt-only.
    LegacyPbkdf2 {
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
            Self::LegacyPbkdf2 { .. } => f.write_str("KeyMaterial::LegacyPbkdf2(<redacted>)"),
        }
    }
}

/// How a key version was obtained (reported by `GetKeyInfo`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Derivation {
    /// From a 32-byte root key.
    Direct,
    /// From a master secret and salt through PBKDF2 over the labelled salt
    /// (`pbkdf2-v2`).
    Pbkdf2,
    /// From a master secret and salt through PBKDF2 over the bare salt
    /// (`legacy-pbkdf2`): the Python platform's Fernet key. Decrypt-only.
    LegacyPbkdf2,
}

impl Derivation {
    /// The name used in keyring files and logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Pbkdf2 => "pbkdf2-v2",
            Self::LegacyPbkdf2 => "legacy-pbkdf2",
        }
    }
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
        let (&active, active_key) = keys
            .iter()
            .next_back()
            .ok_or_else(|| Error::config(setting, "no key versions given"))?;
        if active_key.derivation == Derivation::LegacyPbkdf2 {
            return Err(Error::config(
                setting,
                format!(
                    "key version {active} uses derivation legacy-pbkdf2, which only decrypts: \
                     add a higher version (a direct key, or a master secret with pbkdf2-v2) \
                     to encrypt, then rewrap"
                ),
            ));
        }
        Ok(Self { keys, active })
    }

    /// The versions whose AES key is the legacy Fernet key `legacy`, or
    /// follows from it by public steps alone: the key itself, or the key
    /// through this keyring's HKDF step once or twice (a Fernet key, or an
    /// old derived key, pasted in as a direct key; a `legacy-pbkdf2` version
    /// of the same master secret and salt). Compared by key check value.
    pub fn overlapping_legacy(&self, legacy: &[u8; KEY_LEN]) -> Vec<u32> {
        let once = separate(legacy);
        let twice = separate(&once);
        let forbidden = [check_value(legacy), check_value(&once), check_value(&twice)];
        self.keys
            .iter()
            .filter(|(_, key)| forbidden.contains(&key.check_value))
            .map(|(&version, _)| version)
            .collect()
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
            KeyMaterial::Pbkdf2 { secret, salt } => {
                (labelled_root(secret, salt), Derivation::Pbkdf2)
            }
            KeyMaterial::LegacyPbkdf2 { secret, salt } => {
                (pbkdf2_root(secret, salt), Derivation::LegacyPbkdf2)
            }
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

/// The `pbkdf2-v2` root: PBKDF2-HMAC-SHA256 of the master secret over
/// [`PBKDF2_SALT_LABEL`] ‖ salt, with [`PBKDF2_ITERATIONS`].
pub fn labelled_root(secret: &[u8], salt: &[u8]) -> Zeroizing<[u8; KEY_LEN]> {
    let labelled = Zeroizing::new([PBKDF2_SALT_LABEL, salt].concat());
    pbkdf2_sha256(secret, &labelled, PBKDF2_ITERATIONS)
}

/// PBKDF2-HMAC-SHA256 with [`PBKDF2_ITERATIONS`] over the bare salt: the
/// Python platform's derivation (whose output it base64-encodes into a
/// Fernet key), and the `legacy-pbkdf2` root.
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

    fn secret_and_salt(labelled: bool) -> KeyMaterial {
        let secret = Zeroizing::new(b"dev-master-secret".to_vec());
        let salt = Zeroizing::new(b"dev-salt".to_vec());
        if labelled {
            KeyMaterial::Pbkdf2 { secret, salt }
        } else {
            KeyMaterial::LegacyPbkdf2 { secret, salt }
        }
    }

    /// PBKDF2-HMAC-SHA256 of "dev-master-secret" over "dev-salt" (legacy)
    /// and over "agentregistry/root-key/pbkdf2-v2:dev-salt" (v2), 100,000
    /// iterations, computed independently with Python's `hashlib`.
    const LEGACY_VECTOR: &str = "23318e03161f0ac545575ad87bafa305edeb61a13b2134ca2a553a1bce002968";
    const LABELLED_VECTOR: &str =
        "dc09b028e00aa9a5bf55bbb1647d2c1c636cc83614fd952eea2a4442f49ba698";

    #[test]
    fn the_labelled_root_is_not_the_platforms_fernet_key() {
        let legacy = pbkdf2_root(b"dev-master-secret", b"dev-salt");
        let labelled = labelled_root(b"dev-master-secret", b"dev-salt");
        assert_eq!(hex::encode(*legacy), LEGACY_VECTOR);
        assert_eq!(hex::encode(*labelled), LABELLED_VECTOR);
        assert_ne!(*legacy, *labelled);
        // Nor is the AES key anything the public HKDF step makes of it.
        assert_ne!(*separate(&labelled), *separate(&legacy));
        assert_ne!(*separate(&labelled), *legacy);
    }

    #[test]
    fn each_derivation_is_reported_and_legacy_only_decrypts() {
        let ring = Keyring::new(
            vec![(1, secret_and_salt(false)), (2, secret_and_salt(true))],
            "test",
        )
        .expect("keyring");
        let derivations: Vec<_> = ring.versions().iter().map(|v| v.derivation).collect();
        assert_eq!(derivations, [Derivation::LegacyPbkdf2, Derivation::Pbkdf2]);
        assert_eq!(ring.active_version(), 2);

        let refused = Keyring::new(
            vec![(1, direct(1)), (2, secret_and_salt(false))],
            "ENCRYPTION_KEYRING_FILE",
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(
            refused.starts_with(
                "ENCRYPTION_KEYRING_FILE: key version 2 uses derivation legacy-pbkdf2"
            ),
            "{refused}"
        );
    }

    #[test]
    fn legacy_versions_still_open_what_they_sealed_and_rewrap_moves_it() {
        let legacy_root = pbkdf2_root(b"dev-master-secret", b"dev-salt");
        // A keyring of the old code: the PBKDF2 output was used as a root.
        let old =
            Keyring::new(vec![(1, KeyMaterial::Direct(legacy_root))], "test").expect("old keyring");
        let sealed = old.encrypt(b"old value", b"aad").expect("encrypt");
        let ring = Keyring::new(
            vec![(1, secret_and_salt(false)), (2, secret_and_salt(true))],
            "test",
        )
        .expect("keyring");
        let opened = ring.decrypt(&sealed.ciphertext, b"aad", "c").expect("open");
        assert_eq!(opened.plaintext.as_slice(), b"old value");
        let moved = ring
            .rewrap(&sealed.ciphertext, b"aad", "c")
            .expect("rewrap");
        assert_eq!(moved.previous_key_version, 1);
        assert_eq!(moved.sealed.key_version, 2);
        let v2_only = ring.without(1).expect("retire v1");
        let reopened = v2_only
            .decrypt(&moved.sealed.ciphertext, b"aad", "c")
            .expect("open after rewrap");
        assert_eq!(reopened.plaintext.as_slice(), b"old value");
    }

    #[test]
    fn versions_derived_from_the_legacy_key_alone_are_found() {
        let fernet = pbkdf2_root(b"dev-master-secret", b"dev-salt");
        let old_data_key = separate(&fernet);
        let ring = Keyring::new(
            vec![
                (1, secret_and_salt(false)),
                (2, KeyMaterial::Direct(fernet.clone())),
                (3, KeyMaterial::Direct(old_data_key)),
                (4, direct(4)),
                (5, secret_and_salt(true)),
            ],
            "test",
        )
        .expect("keyring");
        assert_eq!(ring.overlapping_legacy(&fernet), [1, 2, 3]);
        let other = pbkdf2_root(b"another-master-secret", b"dev-salt");
        assert!(ring.overlapping_legacy(&other).is_empty());
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

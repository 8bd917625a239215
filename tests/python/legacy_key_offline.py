#!/usr/bin/env python3
"""The offline attack of issue 15, item 4, run against a real ciphertext.

An attacker holds only what the Python platform had: its ENCRYPTION_KEY,
which the platform derived from MASTER_SECRET and ENCRYPTION_SALT with
PBKDF2-HMAC-SHA256 (100,000 iterations) and wrote as URL-safe base64. This
script derives that Fernet key exactly as the platform did, then tries to
open a ciphertext crypto-service sealed from the same MASTER_SECRET and
ENCRYPTION_SALT: with the Fernet key as the AES-256-GCM key, and with the
public HKDF step crypto-service applies to a root key. Neither may open it,
and neither may reproduce the key check value crypto-service reports.

As a control (so a failure above cannot come from misreading the format),
the documented pbkdf2-v2 derivation, which needs the master secret itself,
opens it and reproduces the check value.

Ciphertext format: `arc1.<version>.<base64url(nonce(12) || ct || tag(16))>`;
the AES-GCM associated data is the header `arc1.<version>.` followed by the
caller's associated data.

Exits non-zero on the first failed check; prints
`legacy key offline: all N checks passed` last.
"""

import argparse
import base64
import hashlib
import hmac
import sys

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

# crypto-service's public constants (crypto-service/src/keyring.rs).
HKDF_SALT = b"agentregistry/crypto/v1"
HKDF_INFO = b"agentregistry aes-256-gcm data key"
CHECK_VALUE_LABEL = b"agentregistry key check value"
PBKDF2_SALT_LABEL = b"agentregistry/root-key/pbkdf2-v2:"
ITERATIONS = 100_000

checks = 0


def check(condition, what):
    global checks
    if not condition:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)
    checks += 1
    print(f"ok: {what}")


def platform_fernet_key(master_secret, salt):
    """The Python platform's ENCRYPTION_KEY, as it derived it."""
    kdf = PBKDF2HMAC(
        algorithm=hashes.SHA256(), length=32, salt=salt, iterations=ITERATIONS
    )
    return base64.urlsafe_b64encode(kdf.derive(master_secret))


def hkdf_step(root):
    """crypto-service's public step from a root key to the AES key."""
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=HKDF_SALT, info=HKDF_INFO
    ).derive(root)


def check_value(data_key):
    return hmac.new(data_key, CHECK_VALUE_LABEL, hashlib.sha256).digest()[:8].hex()


def opens(key, nonce, sealed, aad):
    try:
        return AESGCM(key).decrypt(nonce, sealed, aad)
    except InvalidTag:
        return None


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--master-secret", required=True)
    parser.add_argument("--salt", required=True)
    parser.add_argument("--ciphertext", required=True)
    parser.add_argument("--associated-data", required=True)
    parser.add_argument("--check-value", required=True)
    parser.add_argument("--plaintext", required=True)
    args = parser.parse_args()

    tag, version, payload = args.ciphertext.split(".", 2)
    header = f"{tag}.{version}.".encode()
    raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    nonce, sealed = raw[:12], raw[12:]
    aad = header + args.associated_data.encode()
    secret, salt = args.master_secret.encode(), args.salt.encode()

    fernet_key = base64.urlsafe_b64decode(platform_fernet_key(secret, salt))
    check(len(fernet_key) == 32, "the platform's Fernet key is 32 bytes")
    check(
        opens(fernet_key, nonce, sealed, aad) is None,
        "the Fernet key itself does not open the ciphertext",
    )
    check(
        opens(hkdf_step(fernet_key), nonce, sealed, aad) is None,
        "the public HKDF step over the Fernet key does not open it",
    )
    check(
        args.check_value
        not in (check_value(fernet_key), check_value(hkdf_step(fernet_key))),
        "no key derived from the Fernet key matches the key check value",
    )

    # Control: the documented derivation, from the master secret itself.
    root = hashlib.pbkdf2_hmac(
        "sha256", secret, PBKDF2_SALT_LABEL + salt, ITERATIONS, 32
    )
    data_key = hkdf_step(root)
    check(
        opens(data_key, nonce, sealed, aad) == args.plaintext.encode(),
        "control: the pbkdf2-v2 root (needs MASTER_SECRET) opens it",
    )
    check(
        check_value(data_key) == args.check_value,
        "control: the pbkdf2-v2 root gives the reported key check value",
    )
    print(f"legacy key offline: all {checks} checks passed")


if __name__ == "__main__":
    main()

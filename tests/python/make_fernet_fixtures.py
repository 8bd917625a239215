#!/usr/bin/env python3
"""Builds the Python platform's provider table for the `import-fernet` tests.

Writes, next to each other in tests/fixtures/fernet/:

  legacy.db      a SQLite database with the platform's `tenants` and
                 `llm_providers` tables (columns exactly as app/models.py
                 declares them, values as SQLAlchemy stores them: enum
                 *names*, 0/1 booleans, JSON text), whose `api_key` column
                 holds urlsafe_b64encode(Fernet token), as app/encryption.py
                 writes it;
  expected.json  what the tokens hold (provider name -> plaintext key), the
                 legacy MASTER_SECRET / ENCRYPTION_SALT and the Fernet key
                 they derive, and a few loose tokens for the Fernet unit
                 tests of crypto-service.

Every secret here is a test-only value. The output is the same on every run
except for Fernet's random IVs and timestamps. Run it from anywhere:

    python3 tests/python/make_fernet_fixtures.py

Needs the `cryptography` package (the one the platform uses).
"""

import base64
import json
import os
import sqlite3
from pathlib import Path

from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import hashes, hmac, padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

OUT = Path(__file__).resolve().parent.parent / "fixtures" / "fernet"

# Test-only legacy settings, used exactly as app/encryption.py uses
# MASTER_SECRET and ENCRYPTION_SALT.
MASTER_SECRET = "legacy-master-secret-for-tests-only-7c1d"
ENCRYPTION_SALT = "legacy-salt-for-tests-only"
PBKDF2_ITERATIONS = 100_000

CREATED_AT = "2024-05-01 09:00:00.000000"

TENANTS = [
    # (id, name, schema_name)
    (1, "Acme Corporation", "acme"),
    (2, "Globex", "globex"),
]

# (tenant_id, name, provider_type (SQLAlchemy stores the enum *name*),
#  model_name, api_base, plaintext api_key or None, config, is_active,
#  is_default) and what the registry should make of it.
PROVIDERS = [
    {
        "tenant_id": 1,
        "name": "OpenAI GPT-4",
        "provider_type": "OPENAI",
        "model_name": "gpt-4",
        "api_base": None,
        "api_key": "sk-legacy-openai-9f8e7d6c5b4a39218273",
        "config": {"temperature": 0.7, "max_tokens": 2048},
        "is_active": True,
        "is_default": True,
        "expected": {"provider_type": "PROVIDER_TYPE_OPENAI", "base_url": "", "is_default": True},
    },
    {
        "tenant_id": 1,
        "name": "Claude Sonnet",
        "provider_type": "ANTHROPIC",
        "model_name": "claude-3-5-sonnet-20241022",
        "api_base": None,
        "api_key": "sk-ant-legacy-0a1b2c3d4e5f67890fed",
        "config": {},
        "is_active": True,
        "is_default": False,
        "expected": {"provider_type": "PROVIDER_TYPE_ANTHROPIC", "base_url": "", "is_default": False},
    },
    {
        "tenant_id": 1,
        "name": "Local Llama",
        "provider_type": "OLLAMA",
        "model_name": "llama3.1:8b",
        "api_base": "http://localhost:11434",
        "api_key": None,
        "config": {},
        "is_active": True,
        "is_default": False,
        "expected": {
            "provider_type": "PROVIDER_TYPE_OLLAMA",
            "base_url": "http://localhost:11434",
            "is_default": False,
        },
    },
    {
        "tenant_id": 1,
        "name": "vLLM Mixtral",
        "provider_type": "VLLM",
        "model_name": "mistralai/Mixtral-8x7B-Instruct-v0.1",
        "api_base": "http://vllm.internal:8000/v1",
        # Non-ASCII on purpose: UTF-8 must survive both encryptions.
        "api_key": "vllm-clé-ключ-密钥-🔑-4b1e",
        "config": {"top_p": 0.9},
        "is_active": True,
        "is_default": False,
        "expected": {
            "provider_type": "PROVIDER_TYPE_OPENAI_COMPATIBLE",
            "base_url": "http://vllm.internal:8000/v1",
            "is_default": False,
        },
    },
    {
        "tenant_id": 1,
        "name": "Custom Gateway",
        "provider_type": "CUSTOM",
        "model_name": "gpt-4o-mini",
        "api_base": "https://llm-gateway.example.com/v1",
        "api_key": "gw-legacy-5e6f7a8b9c0d1e2f3a4b",
        "config": {"timeout": 60, "retries": 3},
        "is_active": False,
        "is_default": False,
        "expected": {
            "provider_type": "PROVIDER_TYPE_OPENAI_COMPATIBLE",
            "base_url": "https://llm-gateway.example.com/v1",
            "is_default": False,
        },
    },
    {
        # Another tenant's provider: never imported into acme.
        "tenant_id": 2,
        "name": "Globex OpenAI",
        "provider_type": "OPENAI",
        "model_name": "gpt-4",
        "api_base": None,
        "api_key": "sk-globex-legacy-must-not-be-imported-61d0",
        "config": {},
        "is_active": True,
        "is_default": True,
        "expected": None,
    },
]


def legacy_fernet_key() -> bytes:
    """app/encryption.py's key: PBKDF2-HMAC-SHA256, then urlsafe base64."""
    kdf = PBKDF2HMAC(
        algorithm=hashes.SHA256(),
        length=32,
        salt=ENCRYPTION_SALT.encode(),
        iterations=PBKDF2_ITERATIONS,
    )
    return base64.urlsafe_b64encode(kdf.derive(MASTER_SECRET.encode()))


def stored_form(fernet: Fernet, plaintext: str) -> str:
    """app/encryption.py's EncryptionService.encrypt: the token, base64'd again."""
    return base64.urlsafe_b64encode(fernet.encrypt(plaintext.encode())).decode()


def token_with_bad_padding(key: bytes) -> str:
    """A token whose HMAC is valid but whose last block does not unpad."""
    raw = base64.urlsafe_b64decode(key)
    signing, encryption = raw[:16], raw[16:]
    iv = os.urandom(16)
    block = b"sixteen byte blk"  # one full block, no padding block after it
    encryptor = Cipher(algorithms.AES(encryption), modes.CBC(iv)).encryptor()
    ciphertext = encryptor.update(block) + encryptor.finalize()
    body = b"\x80" + (1714554000).to_bytes(8, "big") + iv + ciphertext
    mac = hmac.HMAC(signing, hashes.SHA256())
    mac.update(body)
    return base64.urlsafe_b64encode(body + mac.finalize()).decode()


def token_with_version(key: bytes, version: int, plaintext: bytes) -> str:
    """A correctly signed token with another version byte."""
    raw = base64.urlsafe_b64decode(key)
    signing, encryption = raw[:16], raw[16:]
    iv = os.urandom(16)
    padder = padding.PKCS7(128).padder()
    padded = padder.update(plaintext) + padder.finalize()
    encryptor = Cipher(algorithms.AES(encryption), modes.CBC(iv)).encryptor()
    ciphertext = encryptor.update(padded) + encryptor.finalize()
    body = bytes([version]) + (1714554000).to_bytes(8, "big") + iv + ciphertext
    mac = hmac.HMAC(signing, hashes.SHA256())
    mac.update(body)
    return base64.urlsafe_b64encode(body + mac.finalize()).decode()


SCHEMA = """
CREATE TABLE tenants (
    id INTEGER NOT NULL,
    created_at DATETIME NOT NULL,
    updated_at DATETIME NOT NULL,
    name VARCHAR(255) NOT NULL,
    schema_name VARCHAR(63) NOT NULL,
    status VARCHAR(32) NOT NULL,
    PRIMARY KEY (id),
    UNIQUE (schema_name)
);
CREATE TABLE llm_providers (
    id INTEGER NOT NULL,
    created_at DATETIME NOT NULL,
    updated_at DATETIME NOT NULL,
    tenant_id INTEGER NOT NULL,
    name VARCHAR(255) NOT NULL,
    provider_type VARCHAR(9) NOT NULL,
    model_name VARCHAR(255) NOT NULL,
    api_base VARCHAR(255),
    api_key VARCHAR(255),
    config JSON NOT NULL,
    is_active BOOLEAN NOT NULL,
    is_default BOOLEAN NOT NULL,
    PRIMARY KEY (id),
    FOREIGN KEY(tenant_id) REFERENCES tenants (id)
);
CREATE INDEX ix_llm_providers_tenant_id ON llm_providers (tenant_id);
"""


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    key = legacy_fernet_key()
    fernet = Fernet(key)

    database = OUT / "legacy.db"
    database.unlink(missing_ok=True)
    connection = sqlite3.connect(database)
    connection.executescript(SCHEMA)
    for tenant_id, name, schema_name in TENANTS:
        connection.execute(
            "INSERT INTO tenants (id, created_at, updated_at, name, schema_name, status)"
            " VALUES (?, ?, ?, ?, ?, 'active')",
            (tenant_id, CREATED_AT, CREATED_AT, name, schema_name),
        )
    for row_id, provider in enumerate(PROVIDERS, start=1):
        api_key = provider["api_key"]
        stored = stored_form(fernet, api_key) if api_key else None
        # Sanity: the platform's own decrypt gives the key back.
        if stored is not None:
            assert fernet.decrypt(base64.urlsafe_b64decode(stored)).decode() == api_key
            assert len(stored) <= 255, "fits the platform's VARCHAR(255)"
        connection.execute(
            "INSERT INTO llm_providers (id, created_at, updated_at, tenant_id, name,"
            " provider_type, model_name, api_base, api_key, config, is_active, is_default)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                row_id,
                CREATED_AT,
                CREATED_AT,
                provider["tenant_id"],
                provider["name"],
                provider["provider_type"],
                provider["model_name"],
                provider["api_base"],
                stored,
                json.dumps(provider["config"]),
                int(provider["is_active"]),
                int(provider["is_default"]),
            ),
        )
    connection.commit()
    connection.execute("VACUUM")
    connection.close()

    plain = "sk-loose-token-3e2d1c0b"
    expected = {
        "_comment": "Test-only values, generated by tests/python/make_fernet_fixtures.py.",
        "legacy": {
            "master_secret": MASTER_SECRET,
            "encryption_salt": ENCRYPTION_SALT,
            "fernet_key": key.decode(),
        },
        "tenant": {"id": 1, "schema_name": "acme"},
        "api_keys": {p["name"]: p["api_key"] for p in PROVIDERS if p["tenant_id"] == 1},
        "providers": {
            p["name"]: dict(p["expected"], model_name=p["model_name"])
            for p in PROVIDERS
            if p["tenant_id"] == 1
        },
        "other_tenants": {p["name"]: p["api_key"] for p in PROVIDERS if p["tenant_id"] != 1},
        "tokens": {
            "plaintext": plain,
            "plain": fernet.encrypt(plain.encode()).decode(),
            "stored": stored_form(fernet, plain),
            "empty": fernet.encrypt(b"").decode(),
            "bad_padding": token_with_bad_padding(key),
            "version_0x81": token_with_version(key, 0x81, plain.encode()),
            "other_key": Fernet(Fernet.generate_key()).encrypt(plain.encode()).decode(),
        },
    }
    (OUT / "expected.json").write_text(
        json.dumps(expected, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    print(f"wrote {database} and {OUT / 'expected.json'}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Writes the committed seed corpora under fuzz/corpus/<target>/.

A few small valid and near-valid inputs per target, made with the Python
standard library only (protobuf is encoded by hand). Deterministic: running
it again rewrites the same files. The constants mirror fuzz/src/lib.rs and
the fuzz targets (scope parts, HS256 secret, issuer, audience).
"""

import base64
import hashlib
import hmac
import json
import os
import random
import struct

ROOT = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(ROOT, "..", "tests", "fixtures", "fernet", "expected.json")


def write(target, name, data):
    folder = os.path.join(ROOT, "corpus", target)
    os.makedirs(folder, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(folder, name), "wb") as f:
        f.write(data)


def b64url(data, pad=False):
    text = base64.urlsafe_b64encode(data).decode()
    return text if pad else text.rstrip("=")


# --- ciphertext: arc1.<version>.<base64url(nonce ‖ sealed ‖ tag)>
payload = bytes(range(12)) + bytes(range(100, 140))
for name, text in {
    "v1": "arc1.1." + b64url(payload),
    "v2": "arc1.2." + b64url(payload),
    "unknown_version": "arc1.7." + b64url(payload),
    "leading_zero": "arc1.01." + b64url(payload),
    "padded": "arc1.1." + b64url(payload, pad=True),
    "truncated": "arc1.1." + b64url(payload[:20]),
    "other_tag": "arc2.1." + b64url(payload),
    "version_overflow": "arc1.4294967296." + b64url(payload),
    "plaintext": "sk-live-0123456789abcdef",
}.items():
    write("ciphertext", name, text)

# --- fernet: the Python-made fixture tokens and broken forms of them.
with open(FIXTURES) as f:
    fixtures = json.load(f)
tokens = fixtures["tokens"]
for name in ["plain", "stored", "empty", "bad_padding", "version_0x81", "other_key"]:
    write("fernet", name, tokens[name])
plain = tokens["plain"]
write("fernet", "unpadded", plain.rstrip("="))
write("fernet", "whitespace", " " + plain + "\n")
raw = base64.urlsafe_b64decode(plain)
write("fernet", "short", b64url(raw[: 1 + 8 + 16 + 32], pad=True))
write("fernet", "not_base64", "gAAAAA!!")

# --- page_token: base64url(JSON {"k": last key, "s": scope fingerprint}).
def scope(parts):
    h = hashlib.sha256()
    for part in parts:
        data = part.encode()
        h.update(struct.pack(">Q", len(data)))
        h.update(data)
    return h.digest()[:12].hex()


def page_token(key, parts):
    body = json.dumps({"k": key, "s": scope(parts)}, separators=(",", ":"))
    return b64url(body.encode())


parts = ["tenant-a", "ListAgentVersions", "agent-1"]
write("page_token", "version_cursor", page_token("42", parts))
write("page_token", "uuid_key", page_token("0190a5d2-7c1e-7000-8000-000000000001", parts))
write("page_token", "other_tenant", page_token("42", ["tenant-b"] + parts[1:]))
write("page_token", "nul_key", page_token("4\u00002", parts))
write("page_token", "padded", b64url(json.dumps({"k": "1", "s": scope(parts)}).encode(), pad=True))
write("page_token", "not_json", b64url(b"{\"k\":"))
write("page_token", "last_key", "agent-17")

# --- agent_update / provider_update: protobuf UpdateXRequest by hand.
def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field(number, wire, value):
    key = varint(number << 3 | wire)
    if wire == 0:
        return key + varint(value & 0xFFFFFFFFFFFFFFFF)
    if wire == 1:
        return key + struct.pack("<d", value)
    return key + varint(len(value)) + value


def s(number, text):
    return field(number, 2, text.encode())


def mask(*paths):
    return field(2, 2, b"".join(s(1, p) for p in paths))


params = s(1, "gpt-4o-mini") + field(2, 1, 0.2) + field(3, 0, 256) + s(8, "STOP")
agent = (
    s(1, "0190a5d2-7c1e-7000-8000-0000000000aa")
    + s(2, "writer")
    + s(3, "Editor")
    + s(4, "Write well")
    + s(6, "search")
    + s(6, "browse")
    + field(11, 2, params)
    + field(12, 1, 0.9)
    + field(20, 0, 1)
    + field(23, 0, 30)
    + field(24, 0, 100)
)
request = field(1, 2, agent)
write("agent_update", "no_mask", request)
write("agent_update", "star", request + mask("*"))
write("agent_update", "paths", request + mask("name", "tools", "llm_overrides.temperature", "max_rpm"))
write("agent_update", "reset", field(1, 2, s(1, "x")) + mask("temperature", "max_iter", "llm_overrides"))
write("agent_update", "unknown_path", request + mask("etag", "llm_overrides.nope"))
write("agent_update", "star_and_more", request + mask("*", "name"))
write("agent_update", "bad_values", field(1, 2, s(2, "n") + field(12, 1, float("nan")) + field(23, 0, -1)) + mask("temperature", "max_iter"))

provider = (
    s(1, "0190a5d2-7c1e-7000-8000-0000000000bb")
    + s(2, "openai")
    + field(3, 0, 1)
    + s(4, "gpt-4o")
    + field(7, 2, field(4, 1, 0.5) + field(7, 0, 60))
    + field(8, 0, 1)
    + s(20, "sk-test-0123456789")
)
request = field(1, 2, provider)
write("provider_update", "no_mask", request)
write("provider_update", "star", request + mask("*"))
write("provider_update", "key_only", field(1, 2, s(20, "sk-new")) + mask("api_key"))
write("provider_update", "clear_key", mask("api_key"))
write("provider_update", "paths", request + mask("model_name", "default_parameters.top_p", "is_default"))
write("provider_update", "azure", field(1, 2, field(3, 0, 3) + s(5, "https://x.openai.azure.com") + s(6, "2024-06-01")) + mask("provider_type", "base_url", "api_version"))
write("provider_update", "model_name_param", request + mask("default_parameters.model_name"))

# --- version_diff: arbitrary bytes (the target builds JSON from them).
rng = random.Random(7)
for n in range(6):
    write("version_diff", f"random_{n}", bytes(rng.randrange(256) for _ in range(16 << n)))

# --- jwt_token / jwt_claims.
SECRET = b"fuzz-secret-fuzz-secret-fuzz-secret-0123"
HEADER = b'{"alg":"HS256","typ":"JWT"}'
FAR = 4102444800  # 2100-01-01


def claims(**extra):
    body = {"sub": "alice", "tenant": "tenant-a", "roles": ["editor"],
            "iss": "https://issuer.test", "aud": "agentregistry", "exp": FAR}
    body.update(extra)
    return json.dumps(body, separators=(",", ":")).encode()


def sign(header, payload, secret=SECRET):
    signing_input = b64url(header) + "." + b64url(payload)
    tag = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64url(tag)


write("jwt_token", "valid", sign(HEADER, claims()))
write("jwt_token", "admin_aud_list", sign(HEADER, claims(roles=["admin", "x"], aud=["a", "agentregistry"])))
write("jwt_token", "expired", sign(HEADER, claims(exp=1_000_000_000)))
write("jwt_token", "wrong_secret", sign(HEADER, claims(), b"another-secret-another-secret-0000"))
write("jwt_token", "alg_none", b64url(b'{"alg":"none"}') + "." + b64url(claims()) + ".")
write("jwt_token", "es256_header", sign(b'{"alg":"ES256","kid":"k1"}', claims()))
write("jwt_token", "no_tenant", sign(HEADER, claims(tenant="")))
write("jwt_token", "garbage", "a.b.c")

write("jwt_claims", "valid", HEADER + b"\xff" + claims())
write("jwt_claims", "plain_header", claims(roles=["runtime"]))
write("jwt_claims", "nbf_future", HEADER + b"\xff" + claims(nbf=FAR))
write("jwt_claims", "exp_float", HEADER + b"\xff" + claims(exp=4102444800.5))
write("jwt_claims", "sub_number", HEADER + b"\xff" + claims(sub=7))
write("jwt_claims", "nul_tenant", HEADER + b"\xff" + claims(tenant="a\u0000b"))
write("jwt_claims", "kid_and_crit", b'{"alg":"HS256","kid":"x","crit":["exp"]}' + b"\xff" + claims())
write("jwt_claims", "wrong_issuer", HEADER + b"\xff" + claims(iss="https://evil.test"))
# JSON is UTF-8 with valid escapes: a non-UTF-8 byte (found by CI's fuzz
# run; 0x9b, as 0xFF splits header from claims here) or a lone surrogate
# escape in a member nobody reads.
write("jwt_claims", "claims_not_utf8", claims(note="?").replace(b"?", b"\x9b"))
write("jwt_claims", "header_not_utf8", b'{"alg":"HS256","x":"\x9b"}' + b"\xff" + claims())
write("jwt_claims", "lone_surrogate", claims(note="?").replace(b"?", b"\\ud800"))
# A roles claim may also be one space-separated string (the form of scope).
write("jwt_claims", "roles_string", HEADER + b"\xff" + claims(roles="viewer runtime"))

# --- claim_paths: path, 0xFF, claims JSON.
NESTED = json.dumps({
    "realm_access": {"roles": ["registry-admin", "viewer"]},
    "https://example.com/roles": ["admin"],
    "scope": "openid viewer registry-admin",
    "org": {"tenant": "acme", "list": [{"tenant": "x"}]},
    "a~b": "tilde",
}, separators=(",", ":")).encode()
for name, path in {
    "dotted": "realm_access.roles",
    "pointer": "/https:~1~1example.com~1roles",
    "scope": "scope",
    "tenant": "org.tenant",
    "into_array": "org.list.0.tenant",
    "tilde": "/a~0b",
    "bad_escape": "/a~2b",
}.items():
    write("claim_paths", name, path.encode() + b"\xff" + NESTED)

//! JWT header and claims JSON, signed here with the right HS256 secret so
//! the input reaches claim validation in `auth::Authenticator::verify`.
//! Input: header JSON, a 0xFF byte, claims JSON (no 0xFF: the whole input is
//! the claims under a plain HS256 header).
//!
//! Invariants: an accepted token meets every expectation (string sub and
//! tenant without NUL, exp not past, nbf not ahead, issuer, audience, HS256)
//! and the identity is read from it; the same token with an altered
//! signature or signed with another secret is refused; an HS256 token
//! signed with the ES256 public key as its secret (algorithm confusion) is
//! refused by the ES256 authenticator.
#![no_main]

use agentregistry_fuzz::{
    ES256, ES256_PUBLIC_PEM, HS256, HS256_SECRET, METHODS, assert_acceptable, assert_admission,
    sign_hs256,
};
use libfuzzer_sys::fuzz_target;

const PLAIN_HEADER: &[u8] = br#"{"alg":"HS256","typ":"JWT"}"#;

fuzz_target!(|data: &[u8]| {
    let (header, claims) = match data.iter().position(|&b| b == 0xFF) {
        Some(split) => (&data[..split], &data[split + 1..]),
        None => (PLAIN_HEADER, data),
    };
    let token = sign_hs256(HS256_SECRET, header, claims);
    if let Ok(identity) = HS256.verify(&token) {
        assert_acceptable(&token, &identity);
    }
    assert_admission(&HS256, METHODS[data.len() % METHODS.len()], &token);

    // The signature's first character changed: another first byte.
    let dot = token.rfind('.').expect("three parts");
    let mut altered = token.clone().into_bytes();
    altered[dot + 1] = if altered[dot + 1] == b'A' { b'B' } else { b'A' };
    let altered = String::from_utf8(altered).expect("ASCII");
    assert!(
        HS256.verify(&altered).is_err(),
        "altered signature accepted"
    );

    let mut other_secret = HS256_SECRET.to_vec();
    other_secret[0] ^= 1;
    assert!(
        HS256
            .verify(&sign_hs256(&other_secret, header, claims))
            .is_err(),
        "token signed with another secret accepted"
    );
    let confused = sign_hs256(ES256_PUBLIC_PEM.as_bytes(), header, claims);
    assert!(
        ES256.verify(&confused).is_err(),
        "algorithm confusion: HS256 with the public key accepted"
    );
    assert!(
        ES256.verify(&token).is_err(),
        "ES256 accepted an HS256 token"
    );
});

//! Bearer tokens as callers send them, through `auth::Authenticator`
//! (`verify`, `admit`) configured for HS256 with issuer and audience, and for
//! ES256 with a public key whose private half nobody holds.
//!
//! Invariants: nothing panics; a refusal is UNAUTHENTICATED with one of the
//! fixed reasons (never quoting the token); HS256 accepts only a token whose
//! signature, checked here independently, is right and whose claims meet
//! every expectation; ES256 accepts nothing; `admit` agrees with `verify`
//! and the role table.
#![no_main]

use agentregistry_fuzz::{
    AUTH_REASONS, ES256, HS256, METHODS, assert_acceptable, assert_admission,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    match HS256.verify(token) {
        Ok(identity) => assert_acceptable(token, &identity),
        Err(status) => {
            assert_eq!(status.code(), tonic::Code::Unauthenticated);
            assert!(
                AUTH_REASONS.contains(&status.message()),
                "reason {:?}",
                status.message()
            );
        }
    }
    if let Ok(identity) = ES256.verify(token) {
        panic!("ES256 accepted a token nobody can sign: {identity:?}");
    }
    let method = METHODS[data.len() % METHODS.len()];
    assert_admission(&HS256, method, token);
});

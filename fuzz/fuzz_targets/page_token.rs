//! Page tokens (`page::Scope::resume_after`), which clients send back as
//! opaque strings.
//!
//! The input, as a token, must never panic the decoder; a key it yields is
//! free of NUL and comes from a token bound to this scope. The input, as a
//! last key, must round-trip through `token_after` in its own scope (unless
//! it holds a NUL, which is refused) and be refused in any other scope.
#![no_main]

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use libfuzzer_sys::fuzz_target;
use registry_service::page::Scope;

/// The parts the committed seeds' tokens were made for.
const PARTS: [&str; 3] = ["tenant-a", "ListAgentVersions", "agent-1"];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let scope = Scope::new(&PARTS);

    if let Ok(Some(key)) = scope.resume_after(text) {
        assert!(!key.contains('\0'), "a key with NUL reached the store");
        let bytes = URL_SAFE_NO_PAD
            .decode(text)
            .expect("accepted token is base64url");
        let token: serde_json::Value =
            serde_json::from_slice(&bytes).expect("accepted token is JSON");
        assert_eq!(token["k"].as_str(), Some(key.as_str()));
        // The fingerprint is the one this scope writes.
        let own: serde_json::Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(scope.token_after(""))
                .expect("own token"),
        )
        .expect("own token is JSON");
        assert_eq!(token["s"], own["s"], "token of another scope accepted");
    }
    assert!(matches!(scope.resume_after(""), Ok(None)));

    // The input as the last key of a page.
    let token = scope.token_after(text);
    match scope.resume_after(&token) {
        Ok(Some(key)) => assert_eq!(key, text),
        Ok(None) => panic!("a token was read as the first page"),
        Err(_) => assert!(text.contains('\0'), "own token refused"),
    }
    // The same token in a scope that differs in any part, or in how the
    // parts split, is refused.
    let middle = (0..=text.len() / 2)
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0);
    let (head, tail) = text.split_at(middle);
    for other in [
        vec![text, PARTS[1], PARTS[2]],
        vec![PARTS[0], PARTS[1], PARTS[2], text],
        vec![head, tail],
    ] {
        if other == PARTS {
            continue;
        }
        assert!(
            Scope::new(&other).resume_after(&token).is_err(),
            "token used in scope {other:?}"
        );
    }
});

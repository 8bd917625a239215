//! Properties of the code that meets hostile input first, checked in
//! process (no servers) over generated inputs: the version diff engine and
//! its inverse, the ciphertext parser and keyring, page tokens, update masks
//! and page sizes. Case counts are fixed so the file stays well under 20 s
//! in a debug build on two cores; failures are not persisted to disk (the
//! seed is in the failure message).

use std::collections::BTreeSet;

use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::TestCaseError;
use prost_types::FieldMask;
use proto::v1 as pb;
use serde_json::{Map, Value, json};
use tonic::Code;
use tonic_types::StatusExt;

use crypto_service::ciphertext::{self, Envelope, NONCE_LEN, ParseError, TAG_LEN};
use crypto_service::keyring::{KeyMaterial, Keyring};
use registry_service::api::{OUTPUT_ONLY_PATHS, mask_paths};
use registry_service::error::Error;
use registry_service::model::Snapshot;
use registry_service::model::agent::{self, AgentSpec};
use registry_service::model::params;
use registry_service::model::provider::{self, ProviderSpec};
use registry_service::model::version::{self, Change, ChangeKind};
use registry_service::page::{self, Scope};

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// The field names of a BadRequest, or why it is not one.
fn violation_fields(error: Error) -> Result<Vec<String>, String> {
    match error {
        Error::BadRequest(violations) => Ok(violations.into_iter().map(|v| v.field).collect()),
        other => Err(format!("not a BadRequest: {other:?}")),
    }
}

/// Code and BadRequest fields of the status a handler would send.
fn as_status(error: Error) -> (Code, Vec<String>) {
    let status = tonic::Status::from(error);
    let fields = status
        .get_details_bad_request()
        .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default();
    (status.code(), fields)
}

// ---------------------------------------------------------------------------
// The diff engine and its inverse.
// ---------------------------------------------------------------------------

/// Object keys: a small pool (so two generated objects share keys and nested
/// diffs happen), including keys that sort below `.` (`a-`, `a b`) and
/// non-ASCII ones, plus any non-empty string without a `.` — dotted paths
/// cannot name keys that hold a `.` (see `dotted_keys_…` below).
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => select(vec!["a", "b", "c", "name", "llm_overrides", "a-", "a b", "é", "键", "😀", "\u{202e}x", "_"])
            .prop_map(str::to_owned),
        1 => "[^.]{1,6}",
    ]
}

fn finite_f64() -> impl Strategy<Value = f64> {
    use proptest::num::f64 as f;
    prop_oneof![
        f::POSITIVE | f::NEGATIVE | f::NORMAL | f::SUBNORMAL | f::ZERO,
        select(vec![
            0.7,
            0.8,
            0.1 + 0.2,
            -0.0,
            0.0,
            1.0,
            f64::MAX,
            f64::MIN,
            f64::MIN_POSITIVE,
            f64::EPSILON,
            1e-300,
        ]),
    ]
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        // Values that collide often, so unchanged and modified leaves both
        // occur: 1 and 1.0 and -0.0 and 0 are distinct to serde_json.
        3 => select(vec![json!(null), json!(true), json!(false), json!(0), json!(1), json!(1.0),
                         json!(-0.0), json!(""), json!("x"), json!([]), json!({})]),
        1 => any::<bool>().prop_map(Value::Bool),
        1 => any::<i64>().prop_map(Value::from),
        1 => any::<u64>().prop_map(Value::from),
        2 => finite_f64().prop_map(Value::from),
        2 => any::<String>().prop_map(Value::String),
        1 => select(vec!["\u{202e}evil", "a\u{200d}b", "👩‍👩‍👧", "\0", "a.b", "'); DROP TABLE agents; --"])
            .prop_map(|s| Value::String(s.to_owned())),
    ]
}

fn object_of(values: impl Strategy<Value = Value>) -> impl Strategy<Value = Value> {
    prop::collection::btree_map(key(), values, 0..6)
        .prop_map(|fields| Value::Object(fields.into_iter().collect()))
}

/// A JSON object nested at most four objects deep, with arrays anywhere.
fn json_object() -> impl Strategy<Value = Value> {
    let value = leaf().prop_recursive(3, 40, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            object_of(inner),
        ]
    });
    object_of(value)
}

/// `a` changed key by key as `choices` says: keep a value, descend into an
/// object to change it inside, replace a value (by `c`'s, or a small
/// number), drop it, or add `c`'s keys — so the result shares most of its
/// structure with `a` and differs from it at every depth.
fn blend(a: &Value, c: &Value, choices: &mut impl Iterator<Item = u8>) -> Value {
    let Value::Object(x) = a else {
        return if choices.next().unwrap_or(0).is_multiple_of(2) {
            a.clone()
        } else {
            c.clone()
        };
    };
    let empty = Map::new();
    let y = c.as_object().unwrap_or(&empty);
    let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
    let mut out = Map::new();
    for key in keys {
        let pick = choices.next().unwrap_or(0);
        let value = match (x.get(key), y.get(key), pick % 6) {
            (Some(u), v, 0 | 1) if u.is_object() => {
                Some(blend(u, v.unwrap_or(&Value::Null), choices))
            }
            (Some(u), _, 0..=2) => Some(u.clone()),
            (_, Some(v), 3 | 4) => Some(v.clone()),
            (Some(_), None, 4) => Some(Value::from(pick / 6)),
            _ => None,
        };
        if let Some(value) = value {
            out.insert(key.clone(), value);
        }
    }
    Value::Object(out)
}

/// Two objects: independent, or the second mostly derived from the first.
fn json_pair() -> impl Strategy<Value = (Value, Value)> {
    prop_oneof![
        1 => (json_object(), json_object()),
        3 => (
            json_object(),
            json_object(),
            prop::collection::vec(any::<u8>(), 1..64)
        )
            .prop_map(|(a, c, choices)| {
                let b = blend(&a, &c, &mut choices.iter().copied().cycle());
                (a, b)
            }),
    ]
}

/// The value at a dotted path, through objects only.
fn at<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.')
        .try_fold(value, |v, segment| v.as_object()?.get(segment))
}

fn segments(change: &Change) -> Vec<&str> {
    change.path.split('.').collect()
}

fn check_diff(a: &Value, b: &Value) -> Result<(), TestCaseError> {
    let changes = version::diff(a, b);

    // The inverse: applying diff(a, b) to a gives b.
    prop_assert_eq!(&version::apply(a, &changes), b);

    // Sorted and unique, segment by segment (which is string order except
    // where a key holds a character below '.', e.g. "a.x" before "a-"), and
    // no path lies inside another: every change is at a leaf of the diff.
    let paths: Vec<Vec<&str>> = changes.iter().map(segments).collect();
    for pair in paths.windows(2) {
        prop_assert!(pair[0] < pair[1], "paths out of order: {:?}", pair);
        prop_assert!(
            !pair[1].starts_with(&pair[0]),
            "{:?} lies inside {:?}",
            pair[1],
            pair[0]
        );
    }

    // Each kind agrees with presence in a and b, and carries their values.
    for change in &changes {
        let (old, new) = (at(a, &change.path), at(b, &change.path));
        match change.kind {
            ChangeKind::Added => {
                prop_assert!(old.is_none() && new.is_some(), "{:?}", change);
                prop_assert!(change.old.is_none() && change.new.as_ref() == new);
            }
            ChangeKind::Removed => {
                prop_assert!(old.is_some() && new.is_none(), "{:?}", change);
                prop_assert!(change.old.as_ref() == old && change.new.is_none());
            }
            ChangeKind::Modified => {
                prop_assert!(old.is_some() && new.is_some(), "{:?}", change);
                prop_assert!(change.old.as_ref() == old && change.new.as_ref() == new);
                prop_assert_ne!(old, new);
                prop_assert!(
                    !(old.is_some_and(Value::is_object) && new.is_some_and(Value::is_object)),
                    "two objects are compared field by field, not modified whole: {:?}",
                    change
                );
            }
        }
    }

    // The reverse diff mirrors it.
    let mirrored: Vec<Change> = changes
        .iter()
        .map(|c| Change {
            path: c.path.clone(),
            kind: match c.kind {
                ChangeKind::Added => ChangeKind::Removed,
                ChangeKind::Removed => ChangeKind::Added,
                ChangeKind::Modified => ChangeKind::Modified,
            },
            old: c.new.clone(),
            new: c.old.clone(),
        })
        .collect();
    prop_assert_eq!(version::diff(b, a), mirrored);

    // The stored form reads back as the same changes (null values aside:
    // see `a_stored_diff_keeps_null_values`).
    let carries_null = changes.iter().any(|c| {
        c.old.as_ref().is_some_and(Value::is_null) || c.new.as_ref().is_some_and(Value::is_null)
    });
    if !carries_null {
        prop_assert_eq!(
            version::changes_from_json(&version::changes_to_json(&changes)),
            changes
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(15_000))]

    #[test]
    fn applying_a_diff_gives_the_new_value_and_paths_are_sorted_unique_and_consistent(
        (a, b) in json_pair()
    ) {
        check_diff(&a, &b)?;
    }

    #[test]
    fn a_value_has_no_diff_with_itself(a in json_object()) {
        prop_assert!(version::diff(&a, &a).is_empty());
        prop_assert_eq!(version::apply(&a, &[]), a.clone());
        prop_assert_eq!(version::apply(&json!({}), &version::diff(&json!({}), &a)), a);
    }
}

#[test]
fn apply_handles_the_root_and_values_that_are_not_objects() {
    for (a, b) in [
        (json!(1), json!("x")),
        (json!({"a": 1}), json!([1, 2])),
        (json!({"a": {"b": 1}}), json!({"a": 5})),
        (json!({"a": 5}), json!({"a": {"b": {"c": null}}})),
        (json!({"a": {"b": [1]}}), json!({"a": {}})),
    ] {
        assert_eq!(version::apply(&a, &version::diff(&a, &b)), b, "{a} -> {b}");
    }
    // A removal of an absent path, or a change without its value, is a no-op.
    let base = json!({"a": 1});
    let noop = [
        Change {
            path: "x.y".into(),
            kind: ChangeKind::Removed,
            old: Some(json!(1)),
            new: None,
        },
        Change {
            path: "a".into(),
            kind: ChangeKind::Modified,
            old: Some(json!(1)),
            new: None,
        },
    ];
    assert_eq!(version::apply(&base, &noop), base);
}

/// Keys that hold `.` make dotted paths ambiguous. Snapshot keys are fixed
/// field names, so no request reaches this; it pins the engine's limit.
#[test]
#[ignore = "BUG (latent, unreachable through the API: snapshot keys are fixed identifiers): \
            diff() joins keys with '.' without escaping, so {\"a.b\":1,\"a\":{\"b\":2}} vs \
            {\"a.b\":3,\"a\":{\"b\":4}} yields two changes with the same path \"a.b\", and \
            apply() cannot tell them apart"]
fn dotted_keys_give_unambiguous_paths() {
    let a = json!({"a.b": 1, "a": {"b": 2}});
    let b = json!({"a.b": 3, "a": {"b": 4}});
    let changes = version::diff(&a, &b);
    let paths: BTreeSet<&str> = changes.iter().map(|c| c.path.as_str()).collect();
    assert_eq!(paths.len(), changes.len(), "duplicate paths: {changes:?}");
    assert_eq!(version::apply(&a, &changes), b);
}

/// A change to or from `null` is stored as `"new": null` / `"old": null`,
/// which reads back as no value at all. Snapshots never hold `null` (every
/// optional field is skipped when unset), so no request reaches this.
#[test]
fn a_stored_diff_keeps_null_values() {
    let (a, b) = (json!({"a": 1, "b": null}), json!({"a": null, "c": null}));
    let changes = version::diff(&a, &b);
    let stored = version::changes_from_json(&version::changes_to_json(&changes));
    assert_eq!(stored, changes);
    assert_eq!(version::apply(&a, &stored), b);
}

// ---------------------------------------------------------------------------
// The ciphertext parser and the keyring behind it.
// ---------------------------------------------------------------------------

fn keyring(versions: &BTreeSet<u32>, seed: u8) -> Keyring {
    let material = versions
        .iter()
        .map(|&v| {
            let mut key = [seed; 32];
            key[..4].copy_from_slice(&v.to_be_bytes());
            (v, KeyMaterial::Direct(key.into()))
        })
        .collect();
    Keyring::new(material, "test").expect("keyring")
}

fn envelope_parts(e: &Envelope<'_>) -> (String, u32, [u8; NONCE_LEN], Vec<u8>) {
    (
        e.header.to_owned(),
        e.key_version,
        e.nonce,
        e.sealed.clone(),
    )
}

/// Every single-byte change (to `replacement`, or to the next byte when
/// that is the same), insertion (of `insert`) and removal of `text`.
fn single_byte_mutations(text: &str, replacement: u8, insert: u8) -> Vec<Vec<u8>> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len() * 3 + 1);
    for i in 0..bytes.len() {
        let mut changed = bytes.to_vec();
        changed[i] = if bytes[i] == replacement {
            replacement.wrapping_add(1)
        } else {
            replacement
        };
        out.push(changed);
        let mut removed = bytes.to_vec();
        removed.remove(i);
        out.push(removed);
    }
    for i in 0..=bytes.len() {
        let mut inserted = bytes.to_vec();
        inserted.insert(i, insert);
        out.push(inserted);
    }
    out
}

/// A mutated ciphertext is refused by the parser or parses to another
/// envelope, and never decrypts. Bytes that are not UTF-8 cannot reach
/// the parser (a protobuf `string` is UTF-8), so they count as refused.
fn check_mutation(
    ring: &Keyring,
    original: &str,
    mutated: &[u8],
    aad: &[u8],
) -> Result<(), TestCaseError> {
    let Ok(text) = std::str::from_utf8(mutated) else {
        return Ok(());
    };
    let before = ciphertext::parse(original).expect("the original parses");
    if let Ok(after) = ciphertext::parse(text) {
        prop_assert_ne!(
            envelope_parts(&after),
            envelope_parts(&before),
            "{:?} parses to the same envelope as {:?}",
            text,
            original
        );
    }
    prop_assert!(
        ring.decrypt(text, aad, "ciphertext").is_err(),
        "{:?} (mutated from {:?}) decrypted",
        text,
        original
    );
    Ok(())
}

proptest! {
    #![proptest_config(config(25_000))]

    #[test]
    fn format_then_parse_gives_the_parts_back(
        version in 1u32..,
        nonce in any::<[u8; NONCE_LEN]>(),
        sealed in prop::collection::vec(any::<u8>(), 0..120),
    ) {
        let text = ciphertext::format(version, &nonce, &sealed);
        let header = ciphertext::header(version);
        if sealed.len() < TAG_LEN {
            prop_assert_eq!(ciphertext::parse(&text), Err(ParseError::Truncated));
        } else {
            let expected = Envelope { header: &header, key_version: version, nonce, sealed: sealed.clone() };
            prop_assert_eq!(ciphertext::parse(&text), Ok(expected));
            prop_assert_eq!(ciphertext::key_version_of(&text), Ok(version));
        }
    }

    /// Arbitrary strings, and strings shaped like ciphertexts, never panic
    /// the parser; whatever it accepts is the one canonical spelling of
    /// what it parsed to.
    #[test]
    fn parse_never_panics_and_accepts_only_canonical_spellings(
        text in prop_oneof![
            any::<String>(),
            "arc1\\.[0-9+\\-]{0,12}\\.[A-Za-z0-9_\\-+/=]{0,80}",
            "arc1\\.[1-9][0-9]{0,3}\\.[A-Za-z0-9_\\-]{38,60}",
            any::<String>().prop_map(|s| format!("arc1.{s}")),
            any::<String>().prop_map(|s| format!("arc1.1.{s}")),
        ]
    ) {
        if let Ok(envelope) = ciphertext::parse(&text) {
            prop_assert_eq!(
                ciphertext::format(envelope.key_version, &envelope.nonce, &envelope.sealed),
                text.clone()
            );
            prop_assert_eq!(envelope.header, ciphertext::header(envelope.key_version));
            prop_assert!(envelope.key_version >= 1);
            prop_assert!(envelope.sealed.len() >= TAG_LEN);
        }
    }
}

proptest! {
    #![proptest_config(config(1200))]

    /// encrypt → change, insert or remove any one byte → decrypt fails, for
    /// every position of the ciphertext, with several key versions present
    /// (so a relabelled version can name another real key).
    #[test]
    fn every_single_byte_mutation_of_a_ciphertext_is_refused_or_fails_to_decrypt(
        versions in prop::collection::btree_set(1u32..40, 1..4),
        seed in any::<u8>(),
        plaintext in prop::collection::vec(any::<u8>(), 0..40),
        aad in prop::collection::vec(any::<u8>(), 0..16),
        replacement in prop_oneof![3 => 0x20u8..0x7f, 1 => any::<u8>()],
        insert in prop_oneof![3 => 0x20u8..0x7f, 1 => any::<u8>()],
    ) {
        let ring = keyring(&versions, seed);
        let sealed = ring.encrypt(&plaintext, &aad).expect("encrypt");
        let opened = ring.decrypt(&sealed.ciphertext, &aad, "ciphertext").expect("decrypts unchanged");
        prop_assert_eq!(&opened.plaintext[..], &plaintext[..]);
        for mutated in single_byte_mutations(&sealed.ciphertext, replacement, insert) {
            check_mutation(&ring, &sealed.ciphertext, &mutated, &aad)?;
        }
        // Other associated data never decrypts either.
        let mut other = aad.clone();
        other.push(0);
        prop_assert!(ring.decrypt(&sealed.ciphertext, &other, "ciphertext").is_err());
    }
}

/// Exhaustive for one ciphertext under key version 12 of twelve: every
/// position changed to every byte value, and every byte value inserted
/// everywhere ("arc1.12." → "arc1.11." or "arc1.2." names a real key).
#[test]
fn every_byte_value_at_every_position_is_refused_or_fails_to_decrypt() {
    let ring = keyring(&(1..=12).collect(), 0x42);
    let aad = b"tenant:acme/provider:p1";
    let sealed = ring.encrypt(b"sk-live-0123456789", aad).expect("encrypt");
    assert!(sealed.ciphertext.starts_with("arc1.12."));
    let original = sealed.ciphertext.as_bytes();
    let mut checked = 0;
    for value in 0..=u8::MAX {
        for i in 0..=original.len() {
            let mut inserted = original.to_vec();
            inserted.insert(i, value);
            let mut candidates = vec![inserted];
            if i < original.len() && original[i] != value {
                let mut changed = original.to_vec();
                changed[i] = value;
                candidates.push(changed);
            }
            for mutated in candidates {
                check_mutation(&ring, &sealed.ciphertext, &mutated, aad)
                    .unwrap_or_else(|e| panic!("{e}"));
                checked += 1;
            }
        }
    }
    for i in 0..original.len() {
        let mut removed = original.to_vec();
        removed.remove(i);
        check_mutation(&ring, &sealed.ciphertext, &removed, aad).unwrap_or_else(|e| panic!("{e}"));
    }
    assert!(checked > 30_000, "{checked}");
    // Version 0 is never written (Keyring::new refuses it) and never parses.
    let zero = ciphertext::format(0, &[0; NONCE_LEN], &[0; TAG_LEN]);
    assert_eq!(ciphertext::parse(&zero), Err(ParseError::BadKeyVersion));
}

// ---------------------------------------------------------------------------
// Page tokens and page sizes.
// ---------------------------------------------------------------------------

fn scope_parts() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(
        prop_oneof![
            select(vec![
                "acme",
                "globex",
                "ListAgents",
                "ListAgentVersions",
                "",
                "a",
                "ab"
            ])
            .prop_map(str::to_owned),
            any::<String>(),
        ],
        0..4,
    )
}

fn scope(parts: &[String]) -> Scope {
    Scope::new(&parts.iter().map(String::as_str).collect::<Vec<_>>())
}

fn assert_refused(result: Result<Option<String>, Error>) -> Result<(), TestCaseError> {
    match result {
        Ok(key) => Err(TestCaseError::fail(format!(
            "accepted, resuming after {key:?}"
        ))),
        Err(error) => {
            prop_assert_eq!(
                as_status(error),
                (Code::InvalidArgument, vec!["page_token".to_owned()])
            );
            Ok(())
        }
    }
}

/// A token is refused, or it decodes for `own` and for no other scope.
fn check_foreign_token(own: &Scope, other: &Scope, token: &str) -> Result<(), TestCaseError> {
    match own.resume_after(token) {
        Ok(None) => prop_assert!(token.is_empty()),
        Ok(Some(_)) => assert_refused(other.resume_after(token))?,
        Err(error) => prop_assert_eq!(
            as_status(error),
            (Code::InvalidArgument, vec!["page_token".to_owned()])
        ),
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(12_000))]

    #[test]
    fn a_page_token_resumes_after_its_key_in_its_own_scope_only(
        parts in scope_parts(),
        other_parts in scope_parts(),
        key in prop_oneof![any::<String>(), "[0-9]{1,19}", "-?[0-9]{1,25}"],
    ) {
        let own = scope(&parts);
        let token = own.token_after(&key);
        prop_assert!(!token.is_empty());
        prop_assert!(token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'), "{}", token);
        prop_assert_eq!(own.resume_after(&token).ok().flatten(), Some(key.clone()));
        prop_assert_eq!(scope(&parts).resume_after(&token).ok().flatten(), Some(key));
        if other_parts != parts {
            assert_refused(scope(&other_parts).resume_after(&token))?;
        }
    }

    #[test]
    fn arbitrary_and_mutated_page_tokens_never_panic_and_are_refused_elsewhere(
        parts in scope_parts(),
        key in any::<String>(),
        garbage in prop_oneof![
            any::<String>(),
            "[A-Za-z0-9_\\-]{0,64}",
            "[A-Za-z0-9_\\-=+/]{1,64}",
        ],
        position in any::<prop::sample::Index>(),
        byte in 0x20u8..0x7f,
    ) {
        let own = scope(&parts);
        let mut other_parts = parts.clone();
        other_parts.push("other".to_owned());
        let other = scope(&other_parts);
        check_foreign_token(&own, &other, &garbage)?;
        if !garbage.is_empty() {
            // Random text is not a token: nothing it could name is trusted.
            assert_refused(other.resume_after(&garbage))?;
        }
        // A valid token with one byte changed, inserted or removed.
        let token = own.token_after(&key);
        let i = position.index(token.len());
        let mut changed = token.clone().into_bytes();
        changed[i] = byte;
        let mut inserted = token.clone().into_bytes();
        inserted.insert(i, byte);
        let mut removed = token.into_bytes();
        removed.remove(i);
        for mutated in [changed, inserted, removed] {
            let text = String::from_utf8(mutated).expect("ASCII");
            check_foreign_token(&own, &other, &text)?;
        }
    }
}

proptest! {
    #![proptest_config(config(50_000))]

    #[test]
    fn page_size_defaults_clamps_and_refuses_negatives(requested in any::<i32>()) {
        check_page_size(requested)?;
    }
}

fn check_page_size(requested: i32) -> Result<(), TestCaseError> {
    match page::size(requested) {
        Ok(size) => {
            prop_assert!(requested >= 0, "{} accepted", requested);
            let expected = match requested {
                0 => page::DEFAULT_PAGE_SIZE,
                n => u64::try_from(n).expect("positive").min(page::MAX_PAGE_SIZE),
            };
            prop_assert_eq!(size, expected);
        }
        Err(error) => {
            prop_assert!(requested < 0, "{} refused", requested);
            prop_assert_eq!(
                as_status(error),
                (Code::InvalidArgument, vec!["page_size".to_owned()])
            );
        }
    }
    Ok(())
}

/// Every i32 near the edges and around zero, on top of the random ones.
#[test]
fn page_size_at_every_edge() {
    let edges = (i32::MIN..=i32::MIN + 20_000)
        .chain(-20_000..=20_000)
        .chain(i32::MAX - 20_000..=i32::MAX);
    for requested in edges {
        check_page_size(requested).unwrap_or_else(|e| panic!("{e}"));
    }
}

#[test]
fn scopes_do_not_collide_when_parts_are_split_differently() {
    let token = Scope::new(&["ab", "c"]).token_after("k");
    for parts in [
        &["a", "bc"][..],
        &["abc"],
        &["ab", "c", ""],
        &["", "ab", "c"],
        &[],
    ] {
        assert!(Scope::new(parts).resume_after(&token).is_err(), "{parts:?}");
    }
}

// ---------------------------------------------------------------------------
// Update masks: mask_paths, AgentSpec::apply / validated, ProviderSpec.
// ---------------------------------------------------------------------------

fn agent_mask_paths() -> Vec<String> {
    agent::FIELDS
        .iter()
        .map(|f| (*f).to_owned())
        .chain(params::FIELDS.iter().map(|p| format!("llm_overrides.{p}")))
        .collect()
}

fn provider_mask_paths() -> Vec<String> {
    provider::FIELDS
        .iter()
        .map(|f| (*f).to_owned())
        .chain(
            params::FIELDS
                .iter()
                .filter(|p| **p != "model_name")
                .map(|p| format!("default_parameters.{p}")),
        )
        .collect()
}

/// Known paths, `*`, near misses and anything at all.
fn mask_path(known: Vec<String>) -> impl Strategy<Value = String> {
    prop_oneof![
        3 => select(known),
        1 => Just("*".to_owned()),
        2 => select(vec![
            "", " ", "name ", " name", "Name", "agent.name", "provider.name", "id", "version", "etag",
            "create_time", "api_key_set", "llm_overrides.", "llm_overrides.bogus",
            "llm_overrides.temperature.x", "default_parameters.model_name", "default_parameters.",
            "*.name", "llm_overrides.*", "tools[0]", "name,role", "**", "\0", "name\0",
        ]).prop_map(str::to_owned),
        2 => any::<String>(),
    ]
}

/// What `mask_paths` must answer for `paths`: paths naming an output-only
/// field (or a field inside one) dropped, one `update_mask.paths[i]`
/// violation per unknown path.
fn check_mask(
    paths: &[String],
    is_known: fn(&str) -> bool,
    output_only: &[&str],
) -> Result<(), TestCaseError> {
    let mask = FieldMask {
        paths: paths.to_vec(),
    };
    let result = mask_paths(
        Some(&mask),
        || vec!["<fields set>".to_owned()],
        is_known,
        output_only,
    );
    let ignored = |path: &str| {
        let field = path.split('.').next().unwrap_or(path);
        OUTPUT_ONLY_PATHS.contains(&field) || output_only.contains(&field)
    };
    let unknown: Vec<(usize, &String)> = paths
        .iter()
        .enumerate()
        .filter(|(_, p)| *p != "*" && !ignored(p) && !is_known(p))
        .collect();
    let star = paths.iter().any(|p| p == "*");
    let too_many = paths.len() > 64;
    match result {
        Ok(None) => prop_assert_eq!(paths, &["*".to_owned()][..]),
        Ok(Some(applied)) if paths.is_empty() => {
            prop_assert_eq!(applied, vec!["<fields set>".to_owned()]);
        }
        Ok(Some(applied)) => {
            prop_assert!(unknown.is_empty() && !star && !too_many);
            // Each path once, in the order first given; output-only ones
            // dropped.
            let mut once: Vec<&String> = Vec::new();
            for path in paths {
                if !ignored(path) && !once.contains(&path) {
                    once.push(path);
                }
            }
            prop_assert_eq!(applied.iter().collect::<Vec<_>>(), once);
        }
        Err(error) => {
            prop_assert!(
                !unknown.is_empty() || (star && paths.len() > 1) || too_many,
                "refused {:?}",
                paths
            );
            let status = tonic::Status::from(error);
            let violations = status
                .get_details_bad_request()
                .map(|b| b.field_violations)
                .unwrap_or_default();
            prop_assert_eq!(status.code(), Code::InvalidArgument);
            if too_many {
                prop_assert_eq!(violations.len(), 1);
                prop_assert_eq!(violations[0].field.as_str(), "update_mask.paths");
            } else if star && paths.len() > 1 {
                let stars: Vec<String> = paths
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| *p == "*")
                    .map(|(i, _)| format!("update_mask.paths[{i}]"))
                    .collect();
                let named: Vec<String> = violations.into_iter().map(|v| v.field).collect();
                prop_assert_eq!(named, stars);
            } else {
                prop_assert_eq!(violations.len(), unknown.len());
                for (violation, (i, path)) in violations.iter().zip(&unknown) {
                    prop_assert_eq!(&violation.field, &format!("update_mask.paths[{i}]"));
                    // Long paths are quoted to 64 characters.
                    let quoted: String = path.chars().take(64).collect();
                    prop_assert!(
                        violation.description.contains(quoted.as_str()),
                        "{} not named in {}",
                        path,
                        violation.description
                    );
                }
            }
        }
    }
    Ok(())
}

fn uuid_text() -> impl Strategy<Value = String> {
    any::<u128>().prop_map(|n| {
        let h = format!("{n:032x}");
        format!(
            "{}-{}-{}-{}-{}",
            &h[..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..]
        )
    })
}

/// A valid value, or (when `hostile`) sometimes one of `bad`.
fn either<T: Clone + std::fmt::Debug + 'static>(
    hostile: bool,
    good: impl Strategy<Value = T> + 'static,
    bad: impl Strategy<Value = T> + 'static,
) -> BoxedStrategy<T> {
    if hostile {
        prop_oneof![3 => good, 1 => bad].boxed()
    } else {
        good.boxed()
    }
}

fn required_text(hostile: bool, max: usize) -> BoxedStrategy<String> {
    either(
        hostile,
        "[A-Za-z0-9é😀\u{202e}\u{200d}][A-Za-z0-9 é😀\u{202e}\u{200d}'%_;]{0,30}",
        prop_oneof![
            select(vec!["", " ", "\t\n", "\0"]).prop_map(str::to_owned),
            Just("x".repeat(max + 1)),
            any::<String>(),
        ],
    )
}

fn unit_f64(hostile: bool, lo: f64, hi: f64) -> BoxedStrategy<Option<f64>> {
    either(
        hostile,
        prop::option::of(lo..=hi),
        prop::option::of(prop_oneof![
            select(vec![
                f64::NAN,
                f64::INFINITY,
                f64::NEG_INFINITY,
                hi + 1e-9,
                lo - 1e-9,
                f64::MAX
            ]),
            any::<f64>(),
        ]),
    )
}

fn int(hostile: bool, lo: i32, hi: i32) -> BoxedStrategy<Option<i32>> {
    either(
        hostile,
        prop::option::of(lo..=hi),
        prop::option::of(prop_oneof![
            select(vec![lo - 1, hi.saturating_add(1), i32::MIN, i32::MAX]),
            any::<i32>(),
        ]),
    )
}

fn model_params(hostile: bool) -> BoxedStrategy<pb::ModelParameters> {
    let stop = either(
        hostile,
        prop::collection::vec("[a-z\n#]{1,8}", 0..4),
        prop_oneof![
            prop::collection::vec("[a-z]{1,3}", 17..40),
            Just(vec![String::new()]),
            Just(vec!["y".repeat(201)]),
        ],
    );
    (
        prop::option::of(required_text(hostile, 200)),
        unit_f64(hostile, 0.0, 2.0),
        int(hostile, 1, 1_000_000),
        unit_f64(hostile, 0.0, 1.0),
        unit_f64(hostile, -2.0, 2.0),
        unit_f64(hostile, -2.0, 2.0),
        int(hostile, 1, 3600),
        stop,
    )
        .prop_map(
            |(
                model_name,
                temperature,
                max_tokens,
                top_p,
                frequency_penalty,
                presence_penalty,
                timeout_seconds,
                stop,
            )| pb::ModelParameters {
                model_name,
                temperature,
                max_tokens,
                top_p,
                frequency_penalty,
                presence_penalty,
                timeout_seconds,
                stop,
            },
        )
        .boxed()
}

/// An agent message: every field valid, or (when `hostile`) each field now
/// and then out of range, blank, too long, NaN or malformed.
fn agent_input(hostile: bool) -> BoxedStrategy<pb::Agent> {
    let texts = (
        required_text(hostile, 200),
        required_text(hostile, 2000),
        required_text(hostile, 2000),
        either(hostile, "\\PC{0,40}", Just("b".repeat(10_001))),
        either(
            hostile,
            prop::collection::btree_set("[a-z_]{1,12}", 0..5).prop_map(|s| s.into_iter().collect()),
            prop_oneof![
                Just(vec!["dup".to_owned(), "dup".to_owned()]),
                Just(vec![String::new()]),
                Just((0..65).map(|i| format!("t{i}")).collect()),
            ],
        ),
        either(
            hostile,
            prop::option::of(prop_oneof![uuid_text(), Just(String::new())]),
            prop::option::of(prop_oneof![Just("not-a-uuid".to_owned()), any::<String>()]),
        ),
    );
    let numbers = (
        prop::option::of(model_params(hostile)),
        unit_f64(hostile, 0.0, 2.0),
        int(hostile, 1, 1000),
        int(hostile, 1, 100_000),
        int(hostile, 1, 86_400),
        int(hostile, 0, 100),
        any::<[Option<bool>; 6]>(),
    );
    (texts, numbers)
        .prop_map(
            |(
                (name, role, goal, backstory, tools, llm_provider_id),
                (
                    llm_overrides,
                    temperature,
                    max_iter,
                    max_rpm,
                    max_execution_time,
                    max_retry_limit,
                    flags,
                ),
            )| pb::Agent {
                name,
                role,
                goal,
                backstory,
                tools,
                llm_provider_id,
                llm_overrides,
                temperature,
                allow_delegation: flags[0],
                verbose: flags[1],
                cache: flags[2],
                max_iter,
                max_rpm,
                max_execution_time,
                allow_code_execution: flags[3],
                respect_context_window: flags[4],
                max_retry_limit,
                ..Default::default()
            },
        )
        .boxed()
}

fn provider_input(hostile: bool) -> BoxedStrategy<pb::Provider> {
    let known_type = prop_oneof![
        Just(pb::ProviderType::Openai),
        Just(pb::ProviderType::Anthropic),
        Just(pb::ProviderType::Google),
        Just(pb::ProviderType::Bedrock),
        Just(pb::ProviderType::Ollama),
        Just(pb::ProviderType::Mistral),
        Just(pb::ProviderType::Cohere),
        Just(pb::ProviderType::Groq),
        Just(pb::ProviderType::AzureOpenai),
        Just(pb::ProviderType::OpenaiCompatible),
    ]
    .prop_map(i32::from);
    (
        required_text(hostile, 200),
        either(
            hostile,
            known_type,
            prop_oneof![Just(0), Just(99), Just(-1), any::<i32>()],
        ),
        required_text(hostile, 200),
        either(
            hostile,
            Just("https://llm.example.test/v1".to_owned()),
            prop_oneof![
                Just("ftp://x".to_owned()),
                Just(format!("https://{}", "h".repeat(2050))),
                any::<String>()
            ],
        ),
        either(hostile, Just("2024-06-01".to_owned()), Just("v".repeat(65))),
        prop::option::of(model_params(hostile)).prop_map(|p| {
            p.map(|p| pb::ModelParameters {
                model_name: None,
                ..p
            })
        }),
        any::<bool>(),
        either(hostile, "[a-z0-9-]{0,20}", Just("k".repeat(4097))),
    )
        .prop_map(
            |(
                name,
                provider_type,
                model_name,
                base_url,
                api_version,
                default_parameters,
                is_default,
                api_key,
            )| {
                let azure = provider_type == i32::from(pb::ProviderType::AzureOpenai);
                pb::Provider {
                    name,
                    provider_type,
                    model_name,
                    base_url,
                    api_version: azure.then_some(api_version),
                    default_parameters,
                    is_default,
                    api_key,
                    ..Default::default()
                }
            },
        )
        .boxed()
}

fn top_level(spec: &Value) -> &Map<String, Value> {
    spec.as_object().expect("a snapshot is an object")
}

proptest! {
    #![proptest_config(config(12_000))]

    #[test]
    fn mask_paths_never_panics_ignores_output_only_paths_and_names_each_unknown_path(
        agent_paths in prop::collection::vec(mask_path(agent_mask_paths()), 0..6),
        provider_paths in prop::collection::vec(mask_path(provider_mask_paths()), 0..6),
    ) {
        check_mask(&agent_paths, agent::is_mask_path, &[])?;
        check_mask(
            &provider_paths,
            provider::is_mask_path,
            &["api_key_set", "api_key_revision"],
        )?;
    }
}

proptest! {
    #![proptest_config(config(6000))]

    /// Known paths from any input onto a valid agent: a valid agent or
    /// violations under `agent.`; only the named fields change; and when
    /// the input is valid as a whole, so is the result.
    #[test]
    fn applying_known_paths_to_a_valid_agent_gives_a_valid_agent_or_agent_violations(
        base in agent_input(false),
        input in prop_oneof![agent_input(false), agent_input(true)],
        paths in prop::sample::subsequence(agent_mask_paths(), 0..=25).prop_shuffle(),
        unknown in any::<String>(),
    ) {
        let base = AgentSpec::from_proto(&base).expect("valid base");
        let mut spec = base.clone();
        for path in &paths {
            prop_assert!(spec.apply(&input, path), "{} refused", path);
        }
        // Debug, not ==: a NaN copied from the input is not equal to itself.
        let unchanged = format!("{spec:?}");
        if !agent::is_mask_path(&unknown) {
            prop_assert!(!spec.apply(&input, &unknown));
            prop_assert_eq!(format!("{spec:?}"), unchanged);
        }
        let (after, before) = (spec.to_json(), base.to_json());
        let fields: BTreeSet<&String> = top_level(&before).keys().chain(top_level(&after).keys()).collect();
        for field in fields {
            let named = paths.iter().any(|p| p == field || p.starts_with(&format!("{field}.")));
            if !named {
                prop_assert_eq!(top_level(&after).get(field), top_level(&before).get(field), "{} changed", field);
            }
        }
        let input_valid = AgentSpec::from_proto(&input).is_ok();
        match spec.validated() {
            Ok(_) => {}
            Err(error) => {
                prop_assert!(!input_valid, "a valid input over a valid agent was refused: {:?}", error);
                let fields = violation_fields(error).map_err(TestCaseError::fail)?;
                prop_assert!(!fields.is_empty());
                for field in &fields {
                    prop_assert!(field.starts_with("agent."), "violation {:?}", field);
                }
            }
        }
        // Creating from the input (mask `*`) answers the same way.
        match AgentSpec::from_proto(&input) {
            Ok(_) => {}
            Err(error) => {
                let fields = violation_fields(error).map_err(TestCaseError::fail)?;
                prop_assert!(!fields.is_empty() && fields.iter().all(|f| f.starts_with("agent.")), "{:?}", fields);
            }
        }
    }

    #[test]
    fn applying_known_paths_to_a_valid_provider_gives_a_valid_provider_or_provider_violations(
        base in provider_input(false),
        input in prop_oneof![provider_input(false), provider_input(true)],
        paths in prop::sample::subsequence(provider_mask_paths(), 0..=15).prop_shuffle(),
    ) {
        let base = ProviderSpec::from_proto(&base).expect("valid base").spec;
        match base.updated(&input, &paths) {
            Ok(updated) => {
                let named_key = paths.iter().any(|p| p == "api_key");
                prop_assert_eq!(updated.new_api_key.is_some(), named_key);
            }
            Err(error) => {
                let fields = violation_fields(error).map_err(TestCaseError::fail)?;
                prop_assert!(!fields.is_empty());
                for field in &fields {
                    prop_assert!(field.starts_with("provider."), "violation {:?}", field);
                }
            }
        }
        if let Err(error) = ProviderSpec::from_proto(&input) {
            let fields = violation_fields(error).map_err(TestCaseError::fail)?;
            prop_assert!(!fields.is_empty() && fields.iter().all(|f| f.starts_with("provider.")), "{:?}", fields);
        }
    }
}

//! The version diff engine (`model::version::diff` / `apply`) on arbitrary
//! JSON pairs.
//!
//! Invariants: `apply(a, diff(a, b)) == b`; `diff(a, b)` is empty exactly
//! when `a == b`; paths are unique and in key order (depth first, which is
//! segment-wise order — not plain string order, since `-` and `!` sort
//! before `.`); each change's old/new values are what `a`/`b` hold at its
//! path; the stored form (`changes_to_json` / `changes_from_json`) gives
//! the same changes back.
//!
//! Known limitation, kept out of the inputs: object keys must be non-empty
//! and free of `.` (paths are dot-joined, so `{"a.b": 1}` and
//! `{"a": {"b": 1}}` share a path). Configuration snapshots have only
//! identifier keys.
#![no_main]

use agentregistry_fuzz::json;
use arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;
use registry_service::model::version::{
    ChangeKind, apply, changes_from_json, changes_to_json, diff,
};
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let (Ok(a), Ok(b)) = (json(&mut u, 4), json(&mut u, 4)) else {
        return;
    };
    // Often let b be a's near copy, so nested objects diff field by field.
    let b = if u.arbitrary::<bool>().unwrap_or(false) {
        mutate(&a, &mut u)
    } else {
        b
    };

    let changes = diff(&a, &b);
    assert_eq!(changes.is_empty(), a == b, "empty diff iff equal");
    assert_eq!(
        apply(&a, &changes),
        b,
        "apply(a, diff(a, b)) != b; diff = {changes:?}"
    );
    assert!(diff(&b, &b).is_empty());

    let segments: Vec<Vec<&str>> = changes
        .iter()
        .map(|c| {
            if c.path.is_empty() {
                Vec::new()
            } else {
                c.path.split('.').collect()
            }
        })
        .collect();
    assert!(
        segments.windows(2).all(|w| w[0] < w[1]),
        "paths out of order or repeated: {changes:?}"
    );
    for (change, path) in changes.iter().zip(&segments) {
        let (old, new) = (at(&a, path), at(&b, path));
        match change.kind {
            ChangeKind::Added => assert!(old.is_none() && new.is_some()),
            ChangeKind::Removed => assert!(old.is_some() && new.is_none()),
            ChangeKind::Modified => assert!(old.is_some() && new.is_some() && old != new),
        }
        assert_eq!(change.old.as_ref(), old);
        assert_eq!(change.new.as_ref(), new);
    }
    assert_eq!(
        changes_from_json(&changes_to_json(&changes)),
        changes,
        "stored diff round trip"
    );
});

/// The value at a dotted path, `None` when absent.
fn at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter()
        .try_fold(value, |v, key| v.as_object()?.get(*key))
}

/// `value` with some fields replaced, removed or added.
fn mutate(value: &Value, u: &mut Unstructured<'_>) -> Value {
    match value {
        Value::Object(fields) => {
            let mut out = serde_json::Map::new();
            for (key, field) in fields {
                match u.int_in_range(0..=3).unwrap_or(0) {
                    0 => {
                        out.insert(key.clone(), field.clone());
                    }
                    1 => {}
                    2 => {
                        out.insert(key.clone(), mutate(field, u));
                    }
                    _ => {
                        out.insert(key.clone(), json(u, 2).unwrap_or(Value::Null));
                    }
                }
            }
            if u.arbitrary::<bool>().unwrap_or(false)
                && let Ok(Value::Object(extra)) = json(u, 2)
            {
                out.extend(extra);
            }
            Value::Object(out)
        }
        _ => json(u, 2).unwrap_or(Value::Null),
    }
}

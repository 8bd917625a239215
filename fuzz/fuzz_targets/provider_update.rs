//! Update masks on providers: an `UpdateProviderRequest` as it comes off the
//! wire (protobuf bytes), through `api::mask_paths` and
//! `ProviderSpec::from_proto` / `updated` onto a fixed current provider, as
//! `UpdateProvider` does.
//!
//! Invariants: `*` alone means full replace, `*` with others and unknown
//! paths are refused, an empty mask means the fields set; the stored key
//! (ciphertext) is never touched by the spec update and a new key is taken
//! exactly when `api_key` is in the mask; the result differs from the
//! current provider only under the mask paths; an accepted provider
//! survives its message and snapshot forms unchanged.
#![no_main]

use agentregistry_fuzz::{covered, current_provider};
use libfuzzer_sys::fuzz_target;
use prost::Message;
use proto::v1 as pb;
use registry_service::api::{OUTPUT_ONLY_PATHS, mask_paths};
use registry_service::model::Snapshot;
use registry_service::model::provider::{self, ProviderSpec};
use registry_service::model::version::diff;

fuzz_target!(|data: &[u8]| {
    let Ok(request) = pb::UpdateProviderRequest::decode(data) else {
        return;
    };
    let input = request.provider.clone().unwrap_or_default();
    let current = current_provider();
    let sent: Vec<String> = request
        .update_mask
        .as_ref()
        .map(|m| m.paths.clone())
        .unwrap_or_default();

    // Paths naming output-only fields are dropped, not refused.
    let output_only: &[&str] = &["api_key_set", "api_key_revision"];
    let ignored = |path: &str| {
        let field = path.split('.').next().unwrap_or(path);
        OUTPUT_ONLY_PATHS.contains(&field) || output_only.contains(&field)
    };
    let paths = mask_paths(
        request.update_mask.as_ref(),
        || ProviderSpec::fields_set(&input),
        provider::is_mask_path,
        output_only,
    );
    let stars = sent.iter().filter(|p| *p == "*").count();
    let updated = match paths {
        Err(_) => {
            assert!(
                (stars > 0 && sent.len() > 1)
                    || sent
                        .iter()
                        .any(|p| p != "*" && !ignored(p) && !provider::is_mask_path(p)),
                "mask {sent:?} refused"
            );
            return;
        }
        Ok(None) => {
            assert_eq!(sent, ["*"], "full replace without `*`");
            let Ok(replaced) = ProviderSpec::from_proto(&input) else {
                return;
            };
            assert_eq!(
                replaced.spec.api_key, None,
                "a spec from a request holds no ciphertext"
            );
            assert_eq!(
                replaced.new_api_key.as_ref().map(|k| k.as_str()),
                (!input.api_key.is_empty()).then_some(input.api_key.as_str())
            );
            replaced.spec
        }
        Ok(Some(paths)) => {
            assert_eq!(stars, 0);
            if sent.is_empty() {
                assert_eq!(paths, ProviderSpec::fields_set(&input));
            } else {
                // Each path once, in the order first sent; output-only
                // ones dropped.
                let mut expected: Vec<String> = Vec::new();
                for path in sent.iter().filter(|p| !ignored(p)) {
                    if !expected.contains(path) {
                        expected.push(path.clone());
                    }
                }
                assert_eq!(paths, expected);
            }
            assert!(paths.iter().all(|p| provider::is_mask_path(p)));
            let Ok(updated) = current.updated(&input, &paths) else {
                return;
            };
            assert_eq!(
                updated.spec.api_key, current.api_key,
                "the stored key changed"
            );
            let named = paths.iter().any(|p| p == "api_key");
            assert_eq!(
                updated.new_api_key.as_ref().map(|k| k.as_str()),
                named.then_some(input.api_key.as_str()),
                "new key taken without `api_key` in the mask, or lost"
            );
            for change in diff(&current.to_json(), &updated.spec.to_json()) {
                assert!(change.path != "api_key", "ciphertext in the diff");
                assert!(
                    covered(&change.path, &paths),
                    "{} changed outside mask {paths:?}",
                    change.path
                );
            }
            updated.spec
        }
    };
    // The key and its revision are the server's: a message carries neither
    // back in.
    let keyless = ProviderSpec {
        api_key: None,
        api_key_revision: None,
        ..updated.clone()
    };
    let again = ProviderSpec::from_proto(&updated.to_proto()).map(|i| i.spec);
    assert_eq!(again.ok().as_ref(), Some(&keyless), "message round trip");
    assert_eq!(
        ProviderSpec::from_json(&updated.to_json()).ok().as_ref(),
        Some(&updated),
        "snapshot round trip"
    );
});

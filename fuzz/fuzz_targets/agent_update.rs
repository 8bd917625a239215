//! Update masks on agents: an `UpdateAgentRequest` as it comes off the wire
//! (protobuf bytes), through `api::mask_paths` and `AgentSpec::apply` onto a
//! fixed current agent, as `UpdateAgent` does.
//!
//! Invariants: `*` alone means full replace, `*` with others and unknown
//! paths are refused, an empty mask means the fields set; a path is applied
//! exactly when it is a known mask path, and an unknown one changes
//! nothing; the result differs from the current agent only under the mask
//! paths; applying twice is applying once; an accepted agent survives its
//! message and snapshot forms unchanged.
#![no_main]

use agentregistry_fuzz::{covered, current_agent};
use libfuzzer_sys::fuzz_target;
use prost::Message;
use proto::v1 as pb;
use registry_service::api::{OUTPUT_ONLY_PATHS, mask_paths};
use registry_service::model::Snapshot;
use registry_service::model::agent::{self, AgentSpec};
use registry_service::model::version::diff;

fuzz_target!(|data: &[u8]| {
    let Ok(request) = pb::UpdateAgentRequest::decode(data) else {
        return;
    };
    let input = request.agent.clone().unwrap_or_default();
    let current = current_agent();
    let sent: Vec<String> = request
        .update_mask
        .as_ref()
        .map(|m| m.paths.clone())
        .unwrap_or_default();

    // Each path alone: applied iff known; an unknown path changes nothing.
    for path in &sent {
        let mut spec = current.clone();
        let applied = spec.apply(&input, path);
        assert_eq!(applied, agent::is_mask_path(path), "path {path:?}");
        if !applied {
            assert_eq!(spec, current, "unknown path {path:?} changed the agent");
        }
    }

    // Paths naming output-only fields are dropped, not refused.
    let output_only: &[&str] = &[];
    let ignored = |path: &str| {
        let field = path.split('.').next().unwrap_or(path);
        OUTPUT_ONLY_PATHS.contains(&field) || output_only.contains(&field)
    };
    let paths = mask_paths(
        request.update_mask.as_ref(),
        || AgentSpec::fields_set(&input),
        agent::is_mask_path,
        output_only,
    );
    let stars = sent.iter().filter(|p| *p == "*").count();
    let updated = match paths {
        Err(_) => {
            assert!(
                (stars > 0 && sent.len() > 1)
                    || sent
                        .iter()
                        .any(|p| p != "*" && !ignored(p) && !agent::is_mask_path(p)),
                "mask {sent:?} refused"
            );
            return;
        }
        Ok(None) => {
            assert_eq!(sent, ["*"], "full replace without `*`");
            AgentSpec::from_proto(&input)
        }
        Ok(Some(paths)) => {
            assert_eq!(stars, 0);
            if sent.is_empty() {
                assert_eq!(paths, AgentSpec::fields_set(&input));
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
            let mut spec = current.clone();
            for path in &paths {
                assert!(
                    spec.apply(&input, path),
                    "accepted path {path:?} not applied"
                );
            }
            // NaN (a legal protobuf double) is not equal to itself: compare
            // the Debug forms.
            let once = format!("{spec:?}");
            for path in &paths {
                spec.apply(&input, path);
            }
            assert_eq!(format!("{spec:?}"), once, "applying twice differs");
            for change in diff(&current.to_json(), &spec.to_json()) {
                assert!(
                    covered(&change.path, &paths),
                    "{} changed outside mask {paths:?}",
                    change.path
                );
            }
            spec.validated()
        }
    };
    let Ok(spec) = updated else {
        return;
    };
    assert_eq!(
        spec.clone().validated().ok().as_ref(),
        Some(&spec),
        "valid agent re-validated differently"
    );
    assert_eq!(
        AgentSpec::from_proto(&spec.to_proto()).ok().as_ref(),
        Some(&spec),
        "message round trip"
    );
    assert_eq!(
        AgentSpec::from_json(&spec.to_json()).ok().as_ref(),
        Some(&spec),
        "snapshot round trip"
    );
});

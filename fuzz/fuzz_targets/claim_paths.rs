//! Claim paths and the claims they read (`auth::claims`): the path is
//! operator configuration, the claims come from any token a trusted key
//! signed. Input: path bytes, a 0xFF byte, claims JSON.
//!
//! Invariants: parsing never panics; a parsed path finds exactly what
//! serde_json's own JSON pointer finds for the same keys, when every step
//! is an object; a tenant read is the string found there; every role
//! granted is a name found there (as a list member or a space-separated
//! word) that the role map (or, without one, the registry) knows.
#![no_main]

use libfuzzer_sys::fuzz_target;
use registry_service::auth::claims::{ClaimMapping, ClaimPath, TenantSource};
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Some(split) = data.iter().position(|&b| b == 0xFF) else {
        return;
    };
    let Ok(spelled) = std::str::from_utf8(&data[..split]) else {
        return;
    };
    let Ok(claims) = serde_json::from_slice::<Value>(&data[split + 1..]) else {
        return;
    };
    let Ok(path) = ClaimPath::parse(spelled) else {
        return;
    };
    let found = path.find(&claims);
    // The same keys as an RFC 6901 pointer, built here independently.
    let pointer: String = if spelled.starts_with('/') {
        spelled.to_owned()
    } else {
        spelled
            .split('.')
            .map(|key| format!("/{}", key.replace('~', "~0").replace('/', "~1")))
            .collect()
    };
    if let Some(value) = found {
        assert_eq!(claims.pointer(&pointer), Some(value), "{spelled:?}");
    }

    let words: Vec<&str> = match found {
        Some(Value::String(text)) => text.split_whitespace().collect(),
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    let role_map = ClaimMapping::parse_role_map(&["registry-admin=admin".to_owned()])
        .expect("a valid role map");
    for map in [None, Some(role_map)] {
        let mapped = map.is_some();
        let mapping = ClaimMapping {
            tenant: TenantSource::Claim(path.clone()),
            roles: vec![path.clone()],
            role_map: map,
        };
        if let Ok(tenant) = mapping.tenant(&claims) {
            assert_eq!(found, Some(&Value::String(tenant)));
        }
        if let Ok(roles) = mapping.roles(&claims) {
            for role in roles {
                let name = if mapped {
                    "registry-admin"
                } else {
                    role.as_str()
                };
                assert!(words.contains(&name), "{role:?} granted from {found:?}");
            }
        }
    }
});

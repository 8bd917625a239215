//! Where a token keeps the caller's tenant and roles.
//!
//! By default they are the top-level claims `tenant` and `roles`. Identity
//! providers put them elsewhere — Keycloak nests realm roles under
//! `realm_access.roles`, Auth0 wants namespaced claim names such as
//! `https://example.com/roles`, others use `groups` or the space-separated
//! `scope` — so both are read from configurable claim paths, and IdP role
//! names can be mapped onto the registry's roles.
//!
//! A path is spelled one of two ways:
//! - dotted, `realm_access.roles`: each dot steps into a nested object;
//! - a JSON pointer (RFC 6901) when it starts with `/`, for names that hold
//!   dots or slashes: `/https:~1~1example.com~1roles` (`~1` is `/`, `~0`
//!   is `~`).
//!
//! Either walks objects only (an array index is not a step).

use std::collections::HashMap;

use serde_json::Value;

use super::Role;

/// One place in a token's claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimPath {
    /// The object keys to step through, outermost first.
    keys: Vec<String>,
}

impl ClaimPath {
    /// Parses a dotted path or a JSON pointer (see the module docs); the
    /// problem, for a start-up error, when it names no claim.
    pub fn parse(spelled: &str) -> Result<Self, String> {
        let keys: Vec<String> = if let Some(pointer) = spelled.strip_prefix('/') {
            let mut keys = Vec::new();
            for token in pointer.split('/') {
                keys.push(unescape_pointer_token(token).ok_or_else(|| {
                    format!("{spelled:?}: in a JSON pointer `~` must be followed by 0 or 1")
                })?);
            }
            keys
        } else {
            spelled.split('.').map(str::to_owned).collect()
        };
        if keys.iter().any(String::is_empty) {
            return Err(format!(
                "{spelled:?} has an empty step; write a claim name, a dotted path \
                 (realm_access.roles) or a JSON pointer (/https:~1~1example.com~1roles)"
            ));
        }
        Ok(Self { keys })
    }

    /// The value at this path, when every step is an object holding the
    /// next key.
    pub fn find<'a>(&self, claims: &'a Value) -> Option<&'a Value> {
        self.keys
            .iter()
            .try_fold(claims, |value, key| value.as_object()?.get(key))
    }
}

/// Where the tenant comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TenantSource {
    /// A string claim at this path.
    Claim(ClaimPath),
    /// Every caller is in this one tenant (an IdP with no tenant claim, a
    /// single-tenant deployment).
    Fixed(String),
}

/// How a verified token's claims become a tenant and roles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimMapping {
    /// Where the tenant is.
    pub tenant: TenantSource,
    /// Every path roles are read from; the caller holds the union.
    pub roles: Vec<ClaimPath>,
    /// IdP role name → the registry roles it grants. When set, only the
    /// names it lists grant anything (a registry role name in the token
    /// counts only when mapped); when `None`, the names are the registry's
    /// own (`viewer`, `editor`, `admin`, `runtime`, `platform-operator`).
    pub role_map: Option<HashMap<String, Vec<Role>>>,
}

impl Default for ClaimMapping {
    /// The top-level `tenant` and `roles` claims, role names as they are.
    fn default() -> Self {
        Self {
            tenant: TenantSource::Claim(ClaimPath {
                keys: vec!["tenant".to_owned()],
            }),
            roles: vec![ClaimPath {
                keys: vec!["roles".to_owned()],
            }],
            role_map: None,
        }
    }
}

/// Why a token's claims do not name a tenant and roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

impl ClaimMapping {
    /// Parses the role map setting: `idp-name=role` pairs, comma-separated;
    /// one IdP name may appear several times to grant several roles.
    pub fn parse_role_map(entries: &[String]) -> Result<HashMap<String, Vec<Role>>, String> {
        let mut map: HashMap<String, Vec<Role>> = HashMap::new();
        for entry in entries.iter().map(|e| e.trim()).filter(|e| !e.is_empty()) {
            let (name, role) = entry
                .rsplit_once('=')
                .ok_or_else(|| format!("{entry:?} is not `idp-role=registry-role`"))?;
            let (name, role) = (name.trim(), role.trim());
            let role = Role::parse(role).ok_or_else(|| {
                format!(
                    "{entry:?}: {role:?} is not a registry role \
                     (viewer, editor, admin, runtime, platform-operator)"
                )
            })?;
            if name.is_empty() {
                return Err(format!("{entry:?} maps an empty IdP role name"));
            }
            let roles = map.entry(name.to_owned()).or_default();
            if !roles.contains(&role) {
                roles.push(role);
            }
        }
        if map.is_empty() {
            return Err("maps no role".to_owned());
        }
        Ok(map)
    }

    /// The tenant: the string at the tenant path, or the fixed tenant
    /// (`Authenticator::verify` then holds it to `check_identity_name`).
    pub fn tenant(&self, claims: &Value) -> Result<String, Malformed> {
        match &self.tenant {
            TenantSource::Fixed(tenant) => Ok(tenant.clone()),
            TenantSource::Claim(path) => match path.find(claims) {
                Some(Value::String(tenant)) => Ok(tenant.clone()),
                _ => Err(Malformed),
            },
        }
    }

    /// The registry roles the claims grant. A roles claim may be absent
    /// (no roles from it), a list of strings, or one string of
    /// space-separated names (the form of `scope`); anything else is
    /// malformed. Unknown names grant nothing.
    pub fn roles(&self, claims: &Value) -> Result<Vec<Role>, Malformed> {
        let mut granted = Vec::new();
        let mut grant = |name: &str| match &self.role_map {
            Some(map) => {
                for role in map.get(name).into_iter().flatten() {
                    if !granted.contains(role) {
                        granted.push(*role);
                    }
                }
            }
            None => {
                if let Some(role) = Role::parse(name).filter(|r| !granted.contains(r)) {
                    granted.push(role);
                }
            }
        };
        for path in &self.roles {
            match path.find(claims) {
                None | Some(Value::Null) => {}
                Some(Value::String(names)) => names.split_whitespace().for_each(&mut grant),
                Some(Value::Array(names)) => {
                    for name in names {
                        grant(name.as_str().ok_or(Malformed)?);
                    }
                }
                Some(_) => return Err(Malformed),
            }
        }
        Ok(granted)
    }
}

/// An RFC 6901 reference token with `~1` → `/` and `~0` → `~`; `None`
/// for any other `~` escape.
fn unescape_pointer_token(token: &str) -> Option<String> {
    let mut out = String::with_capacity(token.len());
    let mut chars = token.chars();
    while let Some(c) = chars.next() {
        if c == '~' {
            match chars.next() {
                Some('0') => out.push('~'),
                Some('1') => out.push('/'),
                _ => return None,
            }
        } else {
            out.push(c);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn mapping(tenant: &str, roles: &[&str], map: Option<&[&str]>) -> ClaimMapping {
        ClaimMapping {
            tenant: TenantSource::Claim(ClaimPath::parse(tenant).expect("tenant path")),
            roles: roles
                .iter()
                .map(|p| ClaimPath::parse(p).expect("roles path"))
                .collect(),
            role_map: map.map(|entries| {
                let entries: Vec<String> = entries.iter().map(|e| (*e).to_owned()).collect();
                ClaimMapping::parse_role_map(&entries).expect("role map")
            }),
        }
    }

    #[test]
    fn keycloak_nested_roles_and_auth0_namespaced_claims_are_found() {
        let claims = json!({
            "org": {"id": "acme"},
            "realm_access": {"roles": ["registry-editor", "offline_access"]},
            "https://example.com/roles": ["registry-admin"],
            "https://example.com/tenant": "globex",
            "scope": "openid registry-viewer",
        });
        let keycloak = mapping(
            "org.id",
            &["realm_access.roles"],
            Some(&["registry-editor=editor", "registry-editor=viewer"]),
        );
        assert_eq!(keycloak.tenant(&claims), Ok("acme".to_owned()));
        assert_eq!(
            keycloak.roles(&claims),
            Ok(vec![Role::Editor, Role::Viewer])
        );

        let auth0 = mapping(
            "/https:~1~1example.com~1tenant",
            &["/https:~1~1example.com~1roles", "scope"],
            Some(&["registry-admin=admin", "registry-viewer=viewer"]),
        );
        assert_eq!(auth0.tenant(&claims), Ok("globex".to_owned()));
        assert_eq!(auth0.roles(&claims), Ok(vec![Role::Admin, Role::Viewer]));
    }

    #[test]
    fn with_a_role_map_only_mapped_names_grant_roles() {
        let claims = json!({"tenant": "t", "roles": ["admin", "registry-viewer"]});
        let mapped = mapping("tenant", &["roles"], Some(&["registry-viewer=viewer"]));
        assert_eq!(mapped.roles(&claims), Ok(vec![Role::Viewer]));
        let plain = ClaimMapping::default();
        assert_eq!(plain.roles(&claims), Ok(vec![Role::Admin]));
    }

    #[test]
    fn wrong_forms_are_malformed_and_absent_roles_grant_none() {
        let plain = ClaimMapping::default();
        assert_eq!(plain.tenant(&json!({"tenant": ["t"]})), Err(Malformed));
        assert_eq!(plain.tenant(&json!({})), Err(Malformed));
        assert_eq!(plain.roles(&json!({"roles": [1]})), Err(Malformed));
        assert_eq!(plain.roles(&json!({"roles": {"a": 1}})), Err(Malformed));
        assert_eq!(plain.roles(&json!({})), Ok(vec![]));
        // A dotted path does not step into arrays or strings.
        let nested = mapping("a.b", &["a.b"], None);
        assert_eq!(nested.tenant(&json!({"a": [{"b": "t"}]})), Err(Malformed));
        assert_eq!(nested.tenant(&json!({"a.b": "t"})), Err(Malformed));
    }

    #[test]
    fn paths_and_role_maps_are_checked_when_read() {
        assert!(ClaimPath::parse("").is_err());
        assert!(ClaimPath::parse("a..b").is_err());
        assert!(ClaimPath::parse("/a~2").is_err());
        assert_eq!(
            ClaimPath::parse("/a.b~0c").expect("pointer").keys,
            vec!["a.b~c".to_owned()]
        );
        for bad in [&["x"][..], &["x=owner"], &["=admin"], &[]] {
            let entries: Vec<String> = bad.iter().map(|e| (*e).to_owned()).collect();
            assert!(ClaimMapping::parse_role_map(&entries).is_err(), "{bad:?}");
        }
    }
}

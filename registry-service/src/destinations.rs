//! The hosts a deployment lets provider keys be sent to
//! (`PROVIDER_ALLOWED_HOSTS`). With a list, a provider's `base_url` must
//! name one of its hosts to be stored, and `ResolveAgent` hands a key out
//! only with a `base_url` the list still allows (a provider stored before
//! the list, or restored by a rollback, gets no key). Without a list every
//! host is allowed. A provider without a `base_url` uses its API's own
//! endpoint, which the registry does not choose, and is always allowed.

use crate::error::Error;
use crate::model::provider::base_url_host;

/// The allowed destination hosts, or any host.
#[derive(Debug, Clone, Default)]
pub struct Destinations {
    /// `None`: no list, every host is allowed.
    allowed: Option<Vec<HostPattern>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    /// `api.example.com`: that host only.
    Exact(String),
    /// `*.example.com`: any host under `example.com` (not the name itself).
    Subdomains(String),
}

impl Destinations {
    /// From the setting's entries (`host` or `*.domain`, case-insensitive);
    /// an empty list allows every host. `setting` names it in errors.
    pub fn parse(entries: &[String], setting: &str) -> Result<Self, Error> {
        let patterns = entries
            .iter()
            .map(|entry| entry.trim().to_ascii_lowercase())
            .filter(|entry| !entry.is_empty())
            .map(|entry| {
                let (pattern, name) = match entry.strip_prefix("*.") {
                    Some(domain) => (
                        HostPattern::Subdomains(domain.to_owned()),
                        domain.to_owned(),
                    ),
                    None => (HostPattern::Exact(entry.clone()), entry.clone()),
                };
                if is_host_name(&name) {
                    Ok(pattern)
                } else {
                    Err(Error::config(
                        setting,
                        format!("{entry:?} is not a host name or *.domain"),
                    ))
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            allowed: (!patterns.is_empty()).then_some(patterns),
        })
    }

    /// Whether a key may be sent to `base_url` (a URL the provider
    /// validation has accepted, or one stored earlier).
    pub fn allows(&self, base_url: &str) -> bool {
        let Some(allowed) = &self.allowed else {
            return true;
        };
        let Some(host) = host_of(base_url) else {
            return false;
        };
        allowed.iter().any(|pattern| match pattern {
            HostPattern::Exact(name) => host == *name,
            HostPattern::Subdomains(domain) => host
                .strip_suffix(domain.as_str())
                .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
        })
    }

    /// Whether a list is configured.
    pub fn is_restricted(&self) -> bool {
        self.allowed.is_some()
    }
}

/// The host a `base_url` sends to (see [`base_url_host`]); `None` when
/// the URL names none, or carries user information
/// (`https://trusted.example@other.example/` sends to `other.example`:
/// refused rather than guessed).
pub fn host_of(url: &str) -> Option<String> {
    base_url_host(url).ok()
}

fn is_host_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(entries: &[&str]) -> Destinations {
        let entries: Vec<String> = entries.iter().map(|e| (*e).to_owned()).collect();
        Destinations::parse(&entries, "PROVIDER_ALLOWED_HOSTS").expect("valid list")
    }

    #[test]
    fn hosts_are_matched_exactly_or_under_a_domain_and_tricks_are_refused() {
        let allowed = list(&["llm.internal.example", "*.openai.azure.com"]);
        for url in [
            "https://llm.internal.example/v1",
            "https://LLM.internal.example.:8443/v1?x=1",
            "http://llm.internal.example",
            "https://acme.openai.azure.com/openai",
            "https://a.b.openai.azure.com",
        ] {
            assert!(allowed.allows(url), "{url}");
        }
        for url in [
            "https://attacker.example/v1",
            "https://llm.internal.example@attacker.example/",
            "https://attacker.example/llm.internal.example",
            "https://llm.internal.example.attacker.example/",
            "https://openai.azure.com/",
            "https://evilopenai.azure.com/",
            "https://[::1]:8080/",
            "ftp://llm.internal.example/",
            "https:///v1",
        ] {
            assert!(!allowed.allows(url), "{url}");
        }
        assert!(Destinations::default().allows("https://anything.example/"));
        assert!(!allowed.allows("https://[::1]/"));
        assert_eq!(host_of("https://[::1]:8080/x").as_deref(), Some("::1"));
    }

    #[test]
    fn entries_that_are_not_host_names_are_refused() {
        for entry in ["https://x.example", "*", "x.example/path", "a..b"] {
            let refused = Destinations::parse(&[entry.to_owned()], "PROVIDER_ALLOWED_HOSTS");
            assert!(refused.is_err(), "{entry}");
        }
        assert!(!list(&["", " "]).is_restricted());
    }
}

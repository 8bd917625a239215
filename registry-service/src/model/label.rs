//! Label names: what a label of a versioned resource may be called.

/// The implicit label of the current version; never stored.
pub const LATEST: &str = "latest";
/// The longest label name (a DNS label).
pub const MAX_LABEL_CHARS: usize = 63;

/// Why `label` is not a label name one may set, if it is not one:
/// lowercase DNS-label syntax (`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`), at most
/// 63 characters, and not the reserved `latest`.
pub fn check_name(label: &str) -> Result<(), &'static str> {
    let alphanumeric = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = label.as_bytes();
    if label.is_empty() {
        return Err("is required");
    }
    if label.chars().count() > MAX_LABEL_CHARS {
        return Err("must be at most 63 characters");
    }
    let inner = bytes.iter().all(|b| alphanumeric(b) || *b == b'-');
    let ends = bytes.first().is_some_and(alphanumeric) && bytes.last().is_some_and(alphanumeric);
    if !inner || !ends {
        return Err(
            "must be a lowercase DNS label: a-z, 0-9 and '-', starting and ending with a letter \
             or digit",
        );
    }
    if label == LATEST {
        return Err("`latest` is implicit (the current version) and reserved");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_labels_of_at_most_63_characters_and_not_latest() {
        for good in ["production", "v2", "a", "canary-eu-1", &"a".repeat(63)] {
            assert_eq!(check_name(good), Ok(()), "{good:?}");
        }
        for bad in [
            "",
            "Production",
            "-a",
            "a-",
            "a_b",
            "a.b",
            "é",
            "latest",
            &"a".repeat(64),
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }
}

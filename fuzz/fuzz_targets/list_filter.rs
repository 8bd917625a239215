//! List filters (`filter::parse`, then `store::search::Search::new` for
//! each kind), which every List request carries as free text.
//!
//! No input panics either step; an accepted filter is within its limits,
//! and its canonical form (what page tokens are bound to) parses back to
//! itself; the input as an `order_by` never panics either.
#![no_main]

use libfuzzer_sys::fuzz_target;
use registry_service::filter::{self, Filter, MAX_BYTES, MAX_COMPARISONS};
use registry_service::store::agents::Agents;
use registry_service::store::providers::Providers;
use registry_service::store::search::Search;
use sea_orm::DbBackend;

fn comparisons(filter: &Filter) -> usize {
    match filter {
        Filter::All(items) | Filter::Any(items) => items.iter().map(comparisons).sum(),
        Filter::Not(inner) => comparisons(inner),
        Filter::Compare(_) => 1,
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(Some(parsed)) = filter::parse(text) {
        assert!(text.len() <= MAX_BYTES);
        assert!(comparisons(&parsed) <= MAX_COMPARISONS);
        let canonical = parsed.to_string();
        // The canonical form may exceed the byte limit (it adds quotes and
        // parentheses); below it, it reads back as itself.
        if canonical.len() <= MAX_BYTES {
            let again = filter::parse(&canonical)
                .expect("the canonical form parses")
                .expect("and is not empty");
            assert_eq!(again.to_string(), canonical);
        }
    }
    for backend in [DbBackend::Sqlite, DbBackend::Postgres] {
        let _ = Search::new::<Agents>("tenant", (text, ""), backend);
        let _ = Search::new::<Providers>("tenant", (text, ""), backend);
        let _ = Search::new::<Agents>("tenant", ("", text), backend);
    }
});

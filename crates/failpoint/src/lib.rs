//! Crash points for the kill tests: `LABLAKE_FAILPOINTS=name@n,…` aborts the
//! process (like a SIGKILL: no cleanup, no flush) the `n`-th time `name` is
//! reached. Unset (production), a failpoint reads one cached value.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex, PoisonError};

static HITS: LazyLock<Mutex<HashMap<String, u32>>> = LazyLock::new(|| Mutex::new(HashMap::new()));

/// `LABLAKE_FAILPOINTS`, read once.
static SPEC: LazyLock<Option<String>> = LazyLock::new(|| std::env::var("LABLAKE_FAILPOINTS").ok());

/// Every failpoint in the code, by crash window.
pub const NAMES: &[&str] = &[
    // The source: a record sent but not acknowledged; acknowledged but not checkpointed; checkpointed but the
    // server not told (PostgreSQL's slot).
    "source.after_send",
    "source.before_save",
    "source.after_save",
    // A snapshot chunk acknowledged, its progress not saved.
    "snapshot.before_progress",
    // The curator: intent recorded, no file; file durable, not committed; committed.
    "curate.after_begin",
    "curate.after_put",
    "curate.after_commit",
    // The Snowflake sink.
    "sink.after_copy",
    "sink.after_merge",
    "sink.rebuild_after_add",
    "sink.rebuild_after_drop",
];

/// Aborts the process if `name` is armed and reached for the armed time.
pub fn failpoint(name: &str) {
    let Some(spec) = SPEC.as_deref() else { return };
    if let Some(n) = armed(spec, name) {
        let mut hits = HITS.lock().unwrap_or_else(PoisonError::into_inner);
        let count = hits.entry(name.to_owned()).or_insert(0);
        *count += 1;
        if *count == n {
            tracing::error!(failpoint = name, hit = n, "failpoint reached: aborting the process");
            std::process::abort();
        }
    }
}

/// The hit at which `name` fires in `spec` (`a@2,b` — no count means the first).
fn armed(spec: &str, name: &str) -> Option<u32> {
    spec.split(',').map(str::trim).find_map(|p| match p.split_once('@') {
        Some((n, count)) if n == name => count.parse().ok(),
        None if p == name => Some(1),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_name_points_and_hits() {
        assert_eq!(armed("sink.after_copy@3,sink.after_merge", "sink.after_copy"), Some(3));
        assert_eq!(armed("sink.after_copy@3,sink.after_merge", "sink.after_merge"), Some(1));
        assert_eq!(armed("sink.after_copy@x", "sink.after_copy"), None);
        assert_eq!(armed("", "sink.after_copy"), None);
        // Unarmed points return.
        failpoint("never.armed");
        assert!(NAMES.iter().all(|n| n.contains('.') && !n.contains(['@', ','])), "names fit the spec syntax");
    }
}

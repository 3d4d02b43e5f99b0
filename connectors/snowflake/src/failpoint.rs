//! Crash points for the kill tests: `LABLAKE_FAILPOINTS=name@n,…` aborts the
//! process (like a SIGKILL: no cleanup, no flush) the `n`-th time `name` is
//! reached. Unset (production), a failpoint is one environment lookup.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex, PoisonError};

static HITS: LazyLock<Mutex<HashMap<String, u32>>> = LazyLock::new(|| Mutex::new(HashMap::new()));

/// Aborts the process if `name` is armed and reached for the armed time.
pub fn failpoint(name: &str) {
    let Ok(spec) = std::env::var("LABLAKE_FAILPOINTS") else { return };
    if let Some(n) = armed(&spec, name) {
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
    }
}

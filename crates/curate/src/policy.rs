use std::time::{Duration, Instant};

use serde::Deserialize;

/// When a curated batch closes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchPolicy {
    /// Close after this many rows.
    #[serde(default = "default_rows")]
    pub max_rows: usize,
    /// Close after this many bytes of (approximate, in-memory) row data.
    #[serde(default = "default_bytes")]
    pub max_bytes: usize,
    /// Close when a record's commit time is this far past the batch's first
    /// record (record time, not wall-clock time), e.g. `"60s"`.
    #[serde(default = "default_age", with = "humantime_serde")]
    pub max_age: Duration,
    /// Close when no record arrived for this long (wall-clock), so quiet
    /// tables still land, e.g. `"2s"`.
    #[serde(default = "default_idle", with = "humantime_serde")]
    pub idle_flush: Duration,
}

fn default_rows() -> usize {
    100_000
}
fn default_bytes() -> usize {
    64 * 1024 * 1024
}
fn default_age() -> Duration {
    Duration::from_secs(60)
}
fn default_idle() -> Duration {
    Duration::from_secs(2)
}

impl Default for BatchPolicy {
    fn default() -> Self {
        BatchPolicy {
            max_rows: default_rows(),
            max_bytes: default_bytes(),
            max_age: default_age(),
            idle_flush: default_idle(),
        }
    }
}

/// Why a batch closed (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    Rows,
    Bytes,
    Age,
    Idle,
    Schema,
    /// Rebuilding a batch whose intent was recorded before a restart.
    Replay,
    Shutdown,
}

impl CloseReason {
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Rows => "rows",
            CloseReason::Bytes => "bytes",
            CloseReason::Age => "age",
            CloseReason::Idle => "idle",
            CloseReason::Schema => "schema",
            CloseReason::Replay => "replay",
            CloseReason::Shutdown => "shutdown",
        }
    }
}

/// Size/age accounting of one open batch of one partition.
#[derive(Debug, Clone)]
pub struct OpenBatch {
    pub first_offset: i64,
    pub last_offset: i64,
    pub rows: usize,
    pub bytes: usize,
    pub first_commit_ms: Option<i64>,
    pub last_seen: Instant,
}

impl OpenBatch {
    pub fn new(first_offset: i64) -> Self {
        OpenBatch {
            first_offset,
            last_offset: first_offset - 1,
            rows: 0,
            bytes: 0,
            first_commit_ms: None,
            last_seen: Instant::now(),
        }
    }

    /// Whether a record with commit time `commit_ms` must start a new batch
    /// because this one is old enough (record time).
    pub fn too_old_for(&self, policy: &BatchPolicy, commit_ms: i64) -> bool {
        match self.first_commit_ms {
            Some(first) => commit_ms.saturating_sub(first) >= policy.max_age.as_millis() as i64,
            None => false,
        }
    }

    /// Accounts for a record at `offset` (a row when `row_bytes` is `Some`,
    /// a dead-lettered record otherwise).
    pub fn add(&mut self, offset: i64, row: Option<(usize, i64)>) {
        self.last_offset = offset;
        self.last_seen = Instant::now();
        if let Some((bytes, commit_ms)) = row {
            self.rows += 1;
            self.bytes += bytes;
            self.first_commit_ms.get_or_insert(commit_ms);
        }
    }

    /// Whether the batch is full after the last `add`.
    pub fn full(&self, policy: &BatchPolicy) -> Option<CloseReason> {
        if self.rows >= policy.max_rows {
            Some(CloseReason::Rows)
        } else if self.bytes >= policy.max_bytes {
            Some(CloseReason::Bytes)
        } else {
            None
        }
    }

    /// Whether the batch has been idle for the policy's idle flush.
    pub fn idle(&self, policy: &BatchPolicy) -> bool {
        self.last_offset >= self.first_offset && self.last_seen.elapsed() >= policy.idle_flush
    }

    pub fn is_empty(&self) -> bool {
        self.last_offset < self.first_offset
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closes_on_rows_bytes_and_record_age() {
        let p = BatchPolicy {
            max_rows: 3,
            max_bytes: 1000,
            max_age: Duration::from_secs(10),
            idle_flush: Duration::from_secs(1),
        };
        let mut b = OpenBatch::new(5);
        assert!(b.is_empty());
        b.add(5, Some((10, 1_000)));
        b.add(6, None);
        assert_eq!(b.full(&p), None);
        assert!(!b.too_old_for(&p, 10_999));
        assert!(b.too_old_for(&p, 11_000));
        b.add(7, Some((10, 2_000)));
        b.add(8, Some((10, 3_000)));
        assert_eq!(b.full(&p), Some(CloseReason::Rows));
        assert_eq!((b.first_offset, b.last_offset, b.rows), (5, 8, 3));
        let mut big = OpenBatch::new(0);
        big.add(0, Some((5000, 0)));
        assert_eq!(big.full(&p), Some(CloseReason::Bytes));
    }
}

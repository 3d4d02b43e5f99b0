//! Rules shared by every backend: argument checks, the state transitions of a
//! partition checkpoint, and the error messages. Keeping them here makes
//! [`crate::MemoryStore`] and [`crate::DynamoStore`] decide — and explain —
//! every case the same way.
//!
//! Messages name items (lease, group, topic, partition, table, object key),
//! never row values.

use lablake_model::TableId;

use crate::{
    BatchCommit, BatchIntent, CheckpointError, Fence, LeaseName, PartitionCheckpoint, PartitionRef, TableStatus,
};

/// Table name used for the per-database aggregate status row.
pub(crate) const ALL_TABLES: &str = "*";

pub(crate) use lablake_model::now_ms;

/// How a partition checkpoint is named in messages.
pub(crate) fn partition_label(p: &PartitionRef) -> String {
    format!("partition checkpoint `{}`/`{}`/{}", p.group, p.topic, p.partition)
}

pub(crate) fn lease_fenced(fence: &Fence) -> CheckpointError {
    CheckpointError::Fenced(format!("lease `{}` is no longer held at generation {}", fence.lease, fence.generation))
}

/// Why a holder may not take `lease` back after a restart.
pub(crate) fn taken_over(lease: &LeaseName, held: u64, now: u64) -> CheckpointError {
    CheckpointError::Fenced(format!(
        "lease `{lease}` was taken over (generation {now}, this holder had {held}) while this stage was starting \
         again; it is not taken back"
    ))
}

/// The answer of [`crate::LeaseStore::renew_lease`] to a superseded holder.
pub(crate) fn superseded(lease: &LeaseName, held: u64, now: u64) -> CheckpointError {
    CheckpointError::Fenced(format!(
        "lease `{lease}` was taken over (generation {now}, this holder has {held}); this holder stops"
    ))
}

/// What guards the writes of a source (its checkpoint and its snapshot
/// progress): the source's lease.
pub(crate) fn source_fence(source: &str, generation: u64) -> Fence {
    Fence::new(LeaseName::source(source), generation)
}

/// What guards the writes of a sink: the sink's lease.
pub(crate) fn sink_fence(sink: &str, generation: u64) -> Fence {
    Fence::new(LeaseName::sink(sink), generation)
}

/// A commit whose manifest entry exists already (`label`: the partition's).
pub(crate) fn already_listed(table: &TableId, label: &str, first_offset: i64) -> CheckpointError {
    CheckpointError::Fenced(format!(
        "manifest of {table} already lists the batch of {label} starting at offset {first_offset}"
    ))
}

/// Arguments that no correct writer passes. They are rejected as
/// [`CheckpointError::Fenced`]: the writer's view of the partition is wrong, it
/// must stop and reload instead of retrying.
pub(crate) fn check_partition_arg(label: &str, partition: i32) -> Result<(), CheckpointError> {
    if partition < 0 {
        return Err(CheckpointError::Fenced(format!("{label}: rejected, negative partition")));
    }
    Ok(())
}

pub(crate) fn check_intent(label: &str, intent: &BatchIntent) -> Result<(), CheckpointError> {
    if intent.first_offset < 0 || intent.last_offset < intent.first_offset {
        return Err(CheckpointError::Fenced(format!(
            "{label}: rejected, batch offsets {}..={} are not a valid range",
            intent.first_offset, intent.last_offset
        )));
    }
    if intent.object_key.is_empty() {
        return Err(CheckpointError::Fenced(format!("{label}: rejected, batch intent has an empty object key")));
    }
    Ok(())
}

/// The checkpoint `begin_batch` writes, given the current one; or why not.
pub(crate) fn plan_begin(
    label: &str,
    current: Option<&PartitionCheckpoint>,
    expected_version: Option<u64>,
    generation: u64,
    intent: &BatchIntent,
) -> Result<PartitionCheckpoint, CheckpointError> {
    check_intent(label, intent)?;
    match (current, expected_version) {
        (None, None) => Ok(PartitionCheckpoint {
            next_offset: intent.first_offset,
            pending: Some(intent.clone()),
            generation,
            version: 1,
            high_water: None,
        }),
        (None, Some(v)) => {
            Err(CheckpointError::Fenced(format!("{label}: expected version {v}, but it does not exist")))
        }
        (Some(cur), None) => {
            Err(CheckpointError::Fenced(format!("{label}: expected no checkpoint, but version {} exists", cur.version)))
        }
        (Some(cur), Some(v)) if cur.version != v => {
            Err(CheckpointError::Fenced(format!("{label}: expected version {v}, found version {}", cur.version)))
        }
        (Some(cur), Some(_)) => {
            if let Some(pending) = &cur.pending
                && pending != intent
            {
                return Err(CheckpointError::Fenced(format!(
                    "{label}: rejected, a different batch ({}..={} into `{}`) is pending; it must be rebuilt and committed first",
                    pending.first_offset, pending.last_offset, pending.object_key
                )));
            }
            if intent.first_offset < cur.next_offset {
                return Err(CheckpointError::Fenced(format!(
                    "{label}: rejected, batch starts at offset {} but offsets before {} are committed",
                    intent.first_offset, cur.next_offset
                )));
            }
            Ok(PartitionCheckpoint {
                next_offset: cur.next_offset,
                pending: Some(intent.clone()),
                generation,
                version: cur.version + 1,
                high_water: cur.high_water.clone(),
            })
        }
    }
}

/// The checkpoint `commit_batch` writes, given the current one; or why not.
pub(crate) fn plan_commit(
    label: &str,
    current: Option<&PartitionCheckpoint>,
    expected_version: u64,
    generation: u64,
    commit: &BatchCommit,
) -> Result<PartitionCheckpoint, CheckpointError> {
    check_intent(label, &commit.intent)?;
    let Some(cur) = current else {
        return Err(CheckpointError::Fenced(format!(
            "{label}: expected version {expected_version}, but it does not exist"
        )));
    };
    if cur.version != expected_version {
        return Err(CheckpointError::Fenced(format!(
            "{label}: expected version {expected_version}, found version {}",
            cur.version
        )));
    }
    match &cur.pending {
        None => Err(CheckpointError::Fenced(format!("{label}: rejected, no batch is pending"))),
        Some(p) if *p != commit.intent => Err(CheckpointError::Fenced(format!(
            "{label}: rejected, the pending batch ({}..={} into `{}`) is not the committed one ({}..={} into `{}`)",
            p.first_offset,
            p.last_offset,
            p.object_key,
            commit.intent.first_offset,
            commit.intent.last_offset,
            commit.intent.object_key
        ))),
        Some(_) => Ok(PartitionCheckpoint {
            next_offset: commit.intent.last_offset.saturating_add(1),
            pending: None,
            generation,
            version: cur.version + 1,
            high_water: commit.high_water.clone(),
        }),
    }
}

/// The checkpoint `move_partition` writes, given the current one; or why not.
pub(crate) fn plan_move(
    label: &str,
    current: Option<&PartitionCheckpoint>,
    expected_version: u64,
    generation: u64,
    next_offset: i64,
) -> Result<PartitionCheckpoint, CheckpointError> {
    let Some(cur) = current else {
        return Err(CheckpointError::Fenced(format!("{label}: no checkpoint to move")));
    };
    if cur.version != expected_version {
        return Err(CheckpointError::Fenced(format!(
            "{label}: expected version {expected_version}, found version {}",
            cur.version
        )));
    }
    if let Some(p) = &cur.pending {
        return Err(CheckpointError::Fenced(format!(
            "{label}: a batch is pending ({}..={}); start the curator once so it commits it, or recover the records",
            p.first_offset, p.last_offset
        )));
    }
    if next_offset <= cur.next_offset {
        return Err(CheckpointError::Fenced(format!(
            "{label}: moves only forward: next offset is {}, asked for {next_offset}",
            cur.next_offset
        )));
    }
    Ok(PartitionCheckpoint {
        next_offset,
        pending: None,
        generation,
        version: cur.version + 1,
        high_water: cur.high_water.clone(),
    })
}

/// Applies a committed batch to a status row, exactly as the DynamoDB update
/// expression does: counters are added, `max_commit_ts_ms`, `max_position` and
/// `updated_at_ms` are set to the batch's values (see the crate README).
pub(crate) fn apply_status(
    current: Option<TableStatus>,
    commit: &BatchCommit,
    table: &str,
    now_ms: i64,
) -> TableStatus {
    let mut s = current.unwrap_or_else(|| TableStatus {
        tenant: commit.table.tenant.to_string(),
        source: commit.source.clone(),
        database: commit.table.database.to_string(),
        table: table.to_owned(),
        rows: 0,
        files: 0,
        dead_lettered: 0,
        max_commit_ts_ms: 0,
        max_position: String::new(),
        updated_at_ms: 0,
    });
    s.rows = s.rows.saturating_add(commit.rows);
    s.files = s.files.saturating_add(1);
    s.dead_lettered = s.dead_lettered.saturating_add(commit.dead_lettered);
    s.max_commit_ts_ms = commit.max_commit_ts_ms;
    s.max_position.clone_from(&commit.max_position);
    s.updated_at_ms = now_ms;
    s
}

/// Sort order of [`crate::BatchStore::status`] results.
pub(crate) fn sort_status(rows: &mut [TableStatus]) {
    rows.sort_by(|a, b| {
        (&a.tenant, &a.source, &a.database, &a.table).cmp(&(&b.tenant, &b.source, &b.database, &b.table))
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn intent(first: i64, last: i64, key: &str) -> BatchIntent {
        BatchIntent { first_offset: first, last_offset: last, object_key: key.into() }
    }

    #[test]
    fn begin_checks_versions_pending_and_overlap() {
        let l = "p";
        let fresh = plan_begin(l, None, None, 3, &intent(10, 19, "a")).expect("fresh");
        assert_eq!(
            fresh,
            PartitionCheckpoint {
                next_offset: 10,
                pending: Some(intent(10, 19, "a")),
                generation: 3,
                version: 1,
                high_water: None
            }
        );
        assert!(matches!(plan_begin(l, None, Some(1), 3, &intent(0, 1, "a")), Err(CheckpointError::Fenced(_))));
        assert!(matches!(plan_begin(l, Some(&fresh), None, 3, &intent(0, 1, "a")), Err(CheckpointError::Fenced(_))));
        assert!(matches!(
            plan_begin(l, Some(&fresh), Some(2), 3, &intent(10, 19, "a")),
            Err(CheckpointError::Fenced(_))
        ));
        // Re-beginning the same pending batch is allowed; a different one is not.
        assert_eq!(plan_begin(l, Some(&fresh), Some(1), 4, &intent(10, 19, "a")).expect("same").version, 2);
        assert!(matches!(
            plan_begin(l, Some(&fresh), Some(1), 3, &intent(10, 19, "b")),
            Err(CheckpointError::Fenced(_))
        ));
        let done = PartitionCheckpoint { next_offset: 20, pending: None, generation: 3, version: 2, high_water: None };
        assert!(matches!(
            plan_begin(l, Some(&done), Some(2), 3, &intent(19, 25, "c")),
            Err(CheckpointError::Fenced(_))
        ));
        assert!(matches!(
            plan_begin(l, Some(&done), Some(2), 3, &intent(25, 24, "c")),
            Err(CheckpointError::Fenced(_))
        ));
        assert!(matches!(plan_begin(l, Some(&done), Some(2), 3, &intent(20, 24, "")), Err(CheckpointError::Fenced(_))));
        assert_eq!(plan_begin(l, Some(&done), Some(2), 3, &intent(22, 24, "c")).expect("gap ok").next_offset, 20);
    }
}

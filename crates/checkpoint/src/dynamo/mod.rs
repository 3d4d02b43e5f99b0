//! The checkpoint store on one DynamoDB table (single-table design).
//!
//! * [`setup`]: configuration, connecting, creating and checking the table;
//! * [`items`]: the keys and the encoding of every item (the layout is
//!   described in the crate README, "DynamoDB item layout");
//! * here: [`DynamoStore`] and the requests of each capability trait.
//!
//! Decisions (what a write may do, what a failed condition means) come from
//! [`crate::rules`], as for [`crate::MemoryStore`].

mod items;
mod setup;

use std::fmt::Display;
use std::time::Duration;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{BuildError, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{AttributeValue, ConditionCheck, Put, ReturnValue, TransactWriteItem, Update};
use lablake_model::TableId;

pub use setup::DynamoConfig;

use crate::rules::{self, ALL_TABLES};
use crate::store::{BatchStore, GenerationStore, LeaseStore, SchemaStore, SinkStore, SnapshotStore, SourceStore};
use crate::{
    BatchCommit, BatchIntent, CheckpointError, Fence, LeaseName, ManifestEntry, PartitionCheckpoint, PartitionRef,
    SchemaVersion, SinkCheckpoint, SnapshotProgress, SourceCheckpoint, TableStatus,
};
use items::{FORMAT, Item, LEASE_SK, SOURCE_SK, get_n, n, s};

/// Checkpoints in DynamoDB. See the crate README for the item layout and the
/// guarantees.
#[derive(Debug, Clone)]
pub struct DynamoStore {
    client: Client,
    table: String,
    /// The generation of curated data whose manifest, status and sink
    /// checkpoints this handle reads and writes ([`GenerationStore`]).
    data_gen: u32,
}

/// A unique id for one write, stored with the item it writes (attribute
/// `write_id`): when a retried request finds its condition failed, the item
/// carrying this id is the proof its first attempt was applied (a connection
/// reset after DynamoDB applied it), as opposed to another writer's change.
fn write_id() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("{}-{nanos}-{}", std::process::id(), NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
}

pub(super) const WRITE_ID: &str = "write_id";

/// Attempts of a transaction cancelled only by `TransactionConflict` (another
/// transaction on the same item, e.g. the shared database status row), and of
/// the read-then-create loops of snapshot requests and schema registration.
const CONFLICT_ATTEMPTS: u32 = 10;

/// The condition of every partial update (`UpdateItem`): never mix this
/// format's attributes into an item of a newer format.
const NOT_NEWER: &str = "attribute_not_exists(#fmt) OR #fmt <= :fmt";

/// The error reported when one item of a transaction fails its condition.
type OnCondition<'a> = Option<&'a (dyn Fn() -> CheckpointError + Sync)>;

/// Which items [`DynamoStore::read_all`] reads.
enum Read<'a> {
    /// `Query pk = <pk>`.
    Partition(&'a str),
    /// `Scan` filtered on `begins_with(pk, <prefix>)`.
    Prefix(&'a str),
}

impl DynamoStore {
    /// Name of the DynamoDB table.
    pub fn table(&self) -> &str {
        &self.table
    }

    async fn get(&self, pk: String, sk: String, what: &str) -> Result<Option<Item>, CheckpointError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", AttributeValue::S(pk))
            .key("sk", AttributeValue::S(sk))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| sdk_error(format!("reading {what}"), e))?;
        Ok(out.item)
    }

    /// A lease's item as stored (empty when the lease was never taken).
    async fn lease_item(&self, lease: &LeaseName, what: &str) -> Result<Item, CheckpointError> {
        Ok(self.get(items::lease_pk(lease.as_str()), LEASE_SK.into(), what).await?.unwrap_or_default())
    }

    async fn get_partition(
        &self,
        partition: &PartitionRef,
        label: &str,
    ) -> Result<Option<PartitionCheckpoint>, CheckpointError> {
        self.get(
            items::partition_pk(&partition.group),
            items::partition_sk(&partition.topic, partition.partition),
            label,
        )
        .await?
        .map(|item| items::parse_partition(&item, label))
        .transpose()
    }

    /// Every item `read` selects, strongly consistent, every page.
    async fn read_all(&self, read: Read<'_>, what: &str) -> Result<Vec<Item>, CheckpointError> {
        let mut items = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let (page, next) = match read {
                Read::Partition(pk) => {
                    let out = self
                        .client
                        .query()
                        .table_name(&self.table)
                        .key_condition_expression("#pk = :pk")
                        .expression_attribute_names("#pk", "pk")
                        .expression_attribute_values(":pk", s(pk))
                        .consistent_read(true)
                        .set_exclusive_start_key(start.take())
                        .send()
                        .await
                        .map_err(|e| sdk_error(format!("querying {what}"), e))?;
                    (out.items, out.last_evaluated_key)
                }
                Read::Prefix(prefix) => {
                    let out = self
                        .client
                        .scan()
                        .table_name(&self.table)
                        .filter_expression("begins_with(#pk, :prefix)")
                        .expression_attribute_names("#pk", "pk")
                        .expression_attribute_values(":prefix", s(prefix))
                        .consistent_read(true)
                        .set_exclusive_start_key(start.take())
                        .send()
                        .await
                        .map_err(|e| sdk_error(format!("scanning {what}"), e))?;
                    (out.items, out.last_evaluated_key)
                }
            };
            items.extend(page.unwrap_or_default());
            match next {
                Some(key) if !key.is_empty() => start = Some(key),
                _ => return Ok(items),
            }
        }
    }

    /// Every item of `pk`, each decoded from the JSON in attribute `attr`.
    async fn query_json<T: serde::de::DeserializeOwned>(
        &self,
        pk: &str,
        attr: &str,
        what: &str,
    ) -> Result<Vec<T>, CheckpointError> {
        self.read_all(Read::Partition(pk), what).await?.iter().map(|item| items::parse_json(item, attr, what)).collect()
    }

    /// Runs a transaction. `on_condition[i]` is the error reported when item
    /// `i` fails its condition (`None`: item without condition). Transactions
    /// cancelled only by conflicts with other transactions are retried: every
    /// item is conditional on absolute values, so a retry can never apply a
    /// write twice or over a newer one.
    async fn transact(
        &self,
        what: &str,
        items: Vec<TransactWriteItem>,
        on_condition: &[OnCondition<'_>],
    ) -> Result<(), TxError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = self.client.transact_write_items().set_transact_items(Some(items.clone())).send().await;
            let err = match result {
                Ok(_) => return Ok(()),
                Err(err) => err,
            };
            if let Some(TransactWriteItemsError::TransactionCanceledException(tce)) = err.as_service_error() {
                let codes: Vec<&str> = tce.cancellation_reasons().iter().map(|r| r.code().unwrap_or("None")).collect();
                if let Some(i) = codes.iter().position(|c| *c == "ConditionalCheckFailed") {
                    return Err(TxError::Condition(i, on_condition.get(i).copied().flatten().map(|f| f())));
                }
                if codes.contains(&"TransactionConflict") && attempt < CONFLICT_ATTEMPTS {
                    tracing::debug!(operation = what, attempt, "transaction conflict, retrying");
                    tokio::time::sleep(conflict_backoff(attempt)).await;
                    continue;
                }
            }
            return Err(TxError::Other(sdk_error(what, err)));
        }
    }

    /// A transaction item checking that `fence.lease` still has `fence.generation`.
    fn lease_check(&self, fence: &Fence) -> Result<TransactWriteItem, CheckpointError> {
        let check = ConditionCheck::builder()
            .table_name(&self.table)
            .key("pk", s(items::lease_pk(fence.lease.as_str())))
            .key("sk", s(LEASE_SK))
            .condition_expression("#generation = :generation")
            .expression_attribute_names("#generation", "generation")
            .expression_attribute_values(":generation", n(fence.generation))
            .build()
            .map_err(|e| backend(format!("lease `{}`", fence.lease), e))?;
        Ok(TransactWriteItem::builder().condition_check(check).build())
    }

    /// `[lease check, put]`, the put unconditional: a write guarded by the
    /// lease only. Fenced when the lease moved on.
    async fn guarded_put(&self, what: &str, fence: &Fence, item: Item) -> Result<(), TxError> {
        let put = Put::builder()
            .table_name(&self.table)
            .set_item(Some(item))
            .build()
            .map_err(|e| TxError::Other(backend(what, e)))?;
        let items =
            vec![self.lease_check(fence).map_err(TxError::Other)?, TransactWriteItem::builder().put(put).build()];
        let lease_err = || rules::lease_fenced(fence);
        self.transact(&format!("saving {what}"), items, &[Some(&lease_err), None]).await
    }

    /// The update of one status row (`table` = `*`: the database row) by a
    /// committed batch: counters added, the rest set.
    fn status_update(&self, commit: &BatchCommit, table: &str, now: i64) -> Result<Update, BuildError> {
        let t = &commit.table;
        Update::builder()
            .table_name(&self.table)
            .key("pk", s(items::status_pk(&t.tenant, self.data_gen)))
            .key("sk", s(items::status_sk(&commit.source, &t.database, table)))
            .update_expression(
                "ADD #rows :rows, #files :one, #dl :dl \
                 SET #kind = :kind, #tenant = :tenant, #source = :source, #database = :database, #table = :table, \
                 #ts = :ts, #position = :position, #updated = :now, #fmt = :fmt",
            )
            .condition_expression(NOT_NEWER)
            .expression_attribute_names("#rows", "rows")
            .expression_attribute_names("#files", "files")
            .expression_attribute_names("#dl", "dead_lettered")
            .expression_attribute_names("#kind", "kind")
            .expression_attribute_names("#tenant", "tenant")
            .expression_attribute_names("#source", "source")
            .expression_attribute_names("#database", "database")
            .expression_attribute_names("#table", "table")
            .expression_attribute_names("#ts", "max_commit_ts_ms")
            .expression_attribute_names("#position", "max_position")
            .expression_attribute_names("#updated", "updated_at_ms")
            .expression_attribute_names("#fmt", "fmt")
            .expression_attribute_values(":rows", n(commit.rows))
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":dl", n(commit.dead_lettered))
            .expression_attribute_values(":kind", s(if table == ALL_TABLES { "status-db" } else { "status-table" }))
            .expression_attribute_values(":tenant", s(&*t.tenant))
            .expression_attribute_values(":source", s(&commit.source))
            .expression_attribute_values(":database", s(&*t.database))
            .expression_attribute_values(":table", s(table))
            .expression_attribute_values(":ts", n(commit.max_commit_ts_ms))
            .expression_attribute_values(":position", s(&commit.max_position))
            .expression_attribute_values(":now", n(now))
            .expression_attribute_values(":fmt", n(FORMAT))
            .build()
    }

    /// After a failed condition on the partition item: whether the item now
    /// is the one this write (`id`, see [`write_id`]) set. Then the write was
    /// applied and only its answer lost (a connection reset after DynamoDB
    /// applied it, and the client's retry found its own write): a success,
    /// not a fence. The transaction is atomic, so the rest of it was applied too.
    async fn already_applied(
        &self,
        partition: &PartitionRef,
        label: &str,
        next: &PartitionCheckpoint,
        id: &str,
    ) -> bool {
        let item = self
            .get(
                items::partition_pk(&partition.group),
                items::partition_sk(&partition.topic, partition.partition),
                label,
            )
            .await;
        let Ok(Some(item)) = item else { return false };
        let ours = items::get_s(&item, WRITE_ID, label).is_ok_and(|w| w == id);
        match items::parse_partition(&item, label) {
            Ok(current) if ours && current == *next => {
                tracing::info!(
                    group = partition.group.as_str(),
                    topic = partition.topic.as_str(),
                    partition = partition.partition,
                    version = next.version,
                    "checkpoint write was applied although its answer was lost"
                );
                true
            }
            _ => false,
        }
    }

    /// After a failed condition on the partition item: re-read it and let the
    /// shared rules say why; `fallback` when the read does not explain it.
    async fn diagnose(
        &self,
        partition: &PartitionRef,
        label: &str,
        fallback: CheckpointError,
        explain: impl FnOnce(Option<&PartitionCheckpoint>) -> Option<CheckpointError>,
    ) -> CheckpointError {
        match self.get_partition(partition, label).await {
            Ok(current) => explain(current.as_ref()).unwrap_or(fallback),
            // Unreadable, e.g. a newer format: that is the better explanation.
            Err(e @ CheckpointError::Corrupt(_)) => e,
            Err(_) => fallback,
        }
    }
}

enum TxError {
    /// Item `.0` failed its condition; `.1` is its error, if it has one.
    Condition(usize, Option<CheckpointError>),
    Other(CheckpointError),
}

impl TxError {
    fn into_error(self, what: &str) -> CheckpointError {
        match self {
            TxError::Condition(_, Some(e)) | TxError::Other(e) => e,
            TxError::Condition(i, None) => CheckpointError::Fenced(format!("{what}: condition of item {i} failed")),
        }
    }
}

/// The generation a lease item holds (0: never taken).
fn generation_of(item: &Item, what: &str) -> u64 {
    get_n(item, "generation", what).unwrap_or(0)
}

impl LeaseStore for DynamoStore {
    async fn acquire_lease(&self, lease: &LeaseName) -> Result<u64, CheckpointError> {
        let what = format!("lease `{lease}`");
        let out = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(items::lease_pk(lease.as_str())))
            .key("sk", s(LEASE_SK))
            .update_expression("ADD #generation :one SET #kind = :kind, #name = :name, #updated = :now, #fmt = :fmt")
            .condition_expression(NOT_NEWER)
            .expression_attribute_names("#generation", "generation")
            .expression_attribute_names("#kind", "kind")
            .expression_attribute_names("#name", "name")
            .expression_attribute_names("#updated", "updated_at_ms")
            .expression_attribute_names("#fmt", "fmt")
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":kind", s("lease"))
            .expression_attribute_values(":name", s(lease.as_str()))
            .expression_attribute_values(":now", n(rules::now_ms()))
            .expression_attribute_values(":fmt", n(FORMAT))
            .return_values(ReturnValue::UpdatedNew)
            .send()
            .await;
        let out = match out {
            Ok(out) => out,
            Err(e) if e.as_service_error().is_some_and(|e| e.is_conditional_check_failed_exception()) => {
                return Err(items::newer_format(&what, None));
            }
            Err(e) => return Err(sdk_error(format!("acquiring {what}"), e)),
        };
        let attrs = out.attributes.unwrap_or_default();
        get_n(&attrs, "generation", &what)
    }

    async fn reacquire_lease(&self, lease: &LeaseName, held: u64) -> Result<u64, CheckpointError> {
        let what = format!("lease `{lease}`");
        let id = write_id();
        let out = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(items::lease_pk(lease.as_str())))
            .key("sk", s(LEASE_SK))
            .update_expression(
                "ADD #generation :one SET #owner = :owner, #updated = :now, #fmt = :fmt, #kind = :kind, #name = :name",
            )
            // `held` 0: only a lease nobody ever took.
            .condition_expression(if held == 0 {
                "attribute_not_exists(#generation) OR (#generation = :held AND #fmt <= :fmt)"
            } else {
                "#generation = :held AND #fmt <= :fmt"
            })
            .expression_attribute_names("#generation", "generation")
            .expression_attribute_names("#owner", WRITE_ID)
            .expression_attribute_names("#updated", "updated_at_ms")
            .expression_attribute_names("#fmt", "fmt")
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":held", n(held))
            .expression_attribute_values(":owner", s(&id))
            .expression_attribute_values(":now", n(rules::now_ms()))
            .expression_attribute_names("#kind", "kind")
            .expression_attribute_names("#name", "name")
            .expression_attribute_values(":kind", s("lease"))
            .expression_attribute_values(":name", s(lease.as_str()))
            .expression_attribute_values(":fmt", n(FORMAT))
            .return_values(ReturnValue::UpdatedNew)
            .send()
            .await;
        match out {
            Ok(out) => get_n(&out.attributes.unwrap_or_default(), "generation", &what),
            Err(e) if e.as_service_error().is_some_and(|e| e.is_conditional_check_failed_exception()) => {
                let item = self.lease_item(lease, &what).await?;
                let now = generation_of(&item, &what);
                let written = items::get_s(&item, WRITE_ID, &what).unwrap_or_default();
                if now == held + 1 && written == id {
                    // Our own update, applied on an attempt whose answer was lost.
                    return Ok(now);
                }
                Err(rules::taken_over(lease, held, now))
            }
            Err(e) => Err(sdk_error(format!("taking back {what}"), e)),
        }
    }

    async fn renew_lease(&self, lease: &LeaseName, held: u64) -> Result<(), CheckpointError> {
        let what = format!("lease `{lease}`");
        let out = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(items::lease_pk(lease.as_str())))
            .key("sk", s(LEASE_SK))
            .update_expression("SET #updated = :now")
            .condition_expression("#generation = :held")
            .expression_attribute_names("#generation", "generation")
            .expression_attribute_names("#updated", "updated_at_ms")
            .expression_attribute_values(":held", n(held))
            .expression_attribute_values(":now", n(rules::now_ms()))
            .send()
            .await;
        match out {
            Ok(_) => Ok(()),
            Err(e) if e.as_service_error().is_some_and(|e| e.is_conditional_check_failed_exception()) => {
                let now = generation_of(&self.lease_item(lease, &what).await?, &what);
                Err(rules::superseded(lease, held, now))
            }
            Err(e) => Err(sdk_error(format!("renewing {what}"), e)),
        }
    }

    async fn lease_state(&self, lease: &LeaseName) -> Result<Option<crate::LeaseState>, CheckpointError> {
        let what = format!("lease `{lease}`");
        let Some(item) = self.get(items::lease_pk(lease.as_str()), LEASE_SK.into(), &what).await? else {
            return Ok(None);
        };
        Ok(Some(crate::LeaseState {
            generation: get_n(&item, "generation", &what)?,
            renewed_ms: get_n(&item, "updated_at_ms", &what).unwrap_or(0),
        }))
    }
}

impl SourceStore for DynamoStore {
    async fn load_source(&self, source: &str) -> Result<Option<SourceCheckpoint>, CheckpointError> {
        let what = format!("source checkpoint `{source}`");
        match self.get(items::source_pk(source), SOURCE_SK.into(), &what).await? {
            None => Ok(None),
            Some(item) => items::parse_source(&item, &what).map(Some),
        }
    }

    async fn save_source(
        &self,
        source: &str,
        generation: u64,
        checkpoint: &SourceCheckpoint,
    ) -> Result<(), CheckpointError> {
        let what = format!("source checkpoint `{source}`");
        let fence = rules::source_fence(source, generation);
        let item = items::source_item(source, generation, checkpoint, rules::now_ms());
        self.guarded_put(&what, &fence, item).await.map_err(|e| e.into_error(&what))
    }
}

impl BatchStore for DynamoStore {
    async fn load_partition(&self, partition: &PartitionRef) -> Result<Option<PartitionCheckpoint>, CheckpointError> {
        self.get_partition(partition, &rules::partition_label(partition)).await
    }

    async fn begin_batch(
        &self,
        partition: &PartitionRef,
        fence: &Fence,
        expected_version: Option<u64>,
        intent: &BatchIntent,
    ) -> Result<PartitionCheckpoint, CheckpointError> {
        let label = rules::partition_label(partition);
        rules::check_partition_arg(&label, partition.partition)?;
        rules::check_intent(&label, intent)?;
        let generation = fence.generation;
        // With an expected version, read the checkpoint (strongly consistent)
        // to carry `next_offset` over and to check the intent against it. The
        // write below is conditional on that same version, so the item cannot
        // have changed in between without the write failing.
        let current = match expected_version {
            Some(_) => self.get_partition(partition, &label).await?,
            None => None,
        };
        let next = rules::plan_begin(&label, current.as_ref(), expected_version, generation, intent)?;

        let id = write_id();
        let mut item = items::partition_item(partition, &next, rules::now_ms());
        item.insert(WRITE_ID.into(), s(&id));
        let mut put = Put::builder().table_name(&self.table).set_item(Some(item));
        put = match expected_version {
            None => put.condition_expression("attribute_not_exists(#pk)").expression_attribute_names("#pk", "pk"),
            Some(v) => put
                .condition_expression("#version = :expected")
                .expression_attribute_names("#version", "version")
                .expression_attribute_values(":expected", n(v)),
        };
        let put = put.build().map_err(|e| backend(&label, e))?;
        let items = vec![self.lease_check(fence)?, TransactWriteItem::builder().put(put).build()];
        let lease_err = || rules::lease_fenced(fence);
        let partition_err = || match expected_version {
            None => CheckpointError::Fenced(format!("{label}: expected no checkpoint, but one exists")),
            Some(v) => {
                CheckpointError::Fenced(format!("{label}: expected version {v}, but it was changed concurrently"))
            }
        };
        match self
            .transact(&format!("beginning batch of {label}"), items, &[Some(&lease_err), Some(&partition_err)])
            .await
        {
            Ok(()) => {
                tracing::debug!(
                    group = partition.group.as_str(),
                    topic = partition.topic.as_str(),
                    partition = partition.partition,
                    version = next.version,
                    generation,
                    "batch begun"
                );
                Ok(next)
            }
            Err(TxError::Condition(1, _)) => {
                if self.already_applied(partition, &label, &next, &id).await {
                    return Ok(next);
                }
                // Say what changed, from a fresh read (diagnosis only).
                Err(self
                    .diagnose(partition, &label, partition_err(), |cur| {
                        rules::plan_begin(&label, cur, expected_version, generation, intent).err()
                    })
                    .await)
            }
            Err(e) => Err(e.into_error(&label)),
        }
    }

    async fn commit_batch(
        &self,
        partition: &PartitionRef,
        fence: &Fence,
        expected_version: u64,
        commit: &BatchCommit,
    ) -> Result<PartitionCheckpoint, CheckpointError> {
        let label = rules::partition_label(partition);
        rules::check_partition_arg(&label, partition.partition)?;
        rules::check_intent(&label, &commit.intent)?;
        let (intent, generation) = (&commit.intent, fence.generation);
        let next = PartitionCheckpoint {
            next_offset: intent.last_offset.saturating_add(1),
            pending: None,
            generation,
            version: expected_version + 1,
            high_water: commit.high_water.clone(),
        };
        let now = rules::now_ms();
        let b = |e: BuildError| backend(&label, e);

        // 1. The partition checkpoint: version and pending intent must match.
        let id = write_id();
        let mut item = items::partition_item(partition, &next, now);
        item.insert(WRITE_ID.into(), s(&id));
        let partition_put = Put::builder()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("#version = :expected AND #pfirst = :pfirst AND #plast = :plast AND #pkey = :pkey")
            .expression_attribute_names("#version", "version")
            .expression_attribute_names("#pfirst", "pending_first")
            .expression_attribute_names("#plast", "pending_last")
            .expression_attribute_names("#pkey", "pending_key")
            .expression_attribute_values(":expected", n(expected_version))
            .expression_attribute_values(":pfirst", n(intent.first_offset))
            .expression_attribute_values(":plast", n(intent.last_offset))
            .expression_attribute_values(":pkey", s(&intent.object_key))
            .build()
            .map_err(b)?;

        // 2. The manifest entry, never listed twice.
        let manifest_put = Put::builder()
            .table_name(&self.table)
            .set_item(Some(items::manifest_item(partition, commit, generation, self.data_gen, now)))
            .condition_expression("attribute_not_exists(#pk)")
            .expression_attribute_names("#pk", "pk")
            .build()
            .map_err(b)?;

        // 3. and 4. Status of the table and of its source database.
        let table_status = self.status_update(commit, &commit.table.table, now).map_err(b)?;
        let db_status = self.status_update(commit, ALL_TABLES, now).map_err(b)?;

        let items = vec![
            self.lease_check(fence)?,
            TransactWriteItem::builder().put(partition_put).build(),
            TransactWriteItem::builder().put(manifest_put).build(),
            TransactWriteItem::builder().update(table_status).build(),
            TransactWriteItem::builder().update(db_status).build(),
        ];
        let lease_err = || rules::lease_fenced(fence);
        let partition_err = || {
            CheckpointError::Fenced(format!(
                "{label}: expected version {expected_version} with the committed batch pending, but it was changed"
            ))
        };
        let manifest_err = || rules::already_listed(&commit.table, &label, intent.first_offset);
        let status_err = || items::newer_format(&format!("status of {}", commit.table), None);
        let on_condition: [OnCondition<'_>; 5] =
            [Some(&lease_err), Some(&partition_err), Some(&manifest_err), Some(&status_err), Some(&status_err)];
        match self.transact(&format!("committing batch of {label}"), items, &on_condition).await {
            Ok(()) => {
                tracing::debug!(
                    group = partition.group.as_str(),
                    topic = partition.topic.as_str(),
                    partition = partition.partition,
                    version = next.version,
                    generation,
                    "batch committed"
                );
                Ok(next)
            }
            Err(TxError::Condition(1, _)) if self.already_applied(partition, &label, &next, &id).await => Ok(next),
            Err(TxError::Condition(1, _)) => Err(self
                .diagnose(partition, &label, partition_err(), |cur| {
                    rules::plan_commit(&label, cur, expected_version, generation, commit).err()
                })
                .await),
            Err(e) => Err(e.into_error(&label)),
        }
    }

    async fn move_partition(
        &self,
        partition: &PartitionRef,
        fence: &Fence,
        expected_version: u64,
        next_offset: i64,
    ) -> Result<PartitionCheckpoint, CheckpointError> {
        let label = rules::partition_label(partition);
        rules::check_partition_arg(&label, partition.partition)?;
        let current = self.get_partition(partition, &label).await?;
        let next = rules::plan_move(&label, current.as_ref(), expected_version, fence.generation, next_offset)?;
        let id = write_id();
        let mut item = items::partition_item(partition, &next, rules::now_ms());
        item.insert(WRITE_ID.into(), s(&id));
        let put = Put::builder()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("#version = :expected AND attribute_not_exists(#pfirst)")
            .expression_attribute_names("#version", "version")
            .expression_attribute_names("#pfirst", "pending_first")
            .expression_attribute_values(":expected", n(expected_version))
            .build()
            .map_err(|e| backend(&label, e))?;
        let items = vec![self.lease_check(fence)?, TransactWriteItem::builder().put(put).build()];
        let lease_err = || rules::lease_fenced(fence);
        let partition_err =
            || CheckpointError::Fenced(format!("{label}: expected version {expected_version}, but it was changed"));
        match self.transact(&format!("moving {label}"), items, &[Some(&lease_err), Some(&partition_err)]).await {
            Ok(()) => Ok(next),
            Err(TxError::Condition(1, _)) if self.already_applied(partition, &label, &next, &id).await => Ok(next),
            Err(e) => Err(e.into_error(&label)),
        }
    }

    async fn manifest(&self, table: &TableId) -> Result<Vec<ManifestEntry>, CheckpointError> {
        let what = format!("manifest of {table}");
        let mut entries = self
            .read_all(Read::Partition(&items::manifest_pk(table, self.data_gen)), &what)
            .await?
            .iter()
            .map(|item| items::parse_manifest(item, &what))
            .collect::<Result<Vec<_>, CheckpointError>>()?;
        // The sort key already orders them; sorting again keeps the contract
        // independent of how topic names compare with the `#` separator.
        entries.sort_by(|a, b| (&a.topic, a.partition, a.first_offset).cmp(&(&b.topic, b.partition, b.first_offset)));
        Ok(entries)
    }

    async fn status(&self, tenant: Option<&str>) -> Result<Vec<TableStatus>, CheckpointError> {
        let items = match tenant {
            Some(t) => {
                self.read_all(Read::Partition(&items::status_pk(t, self.data_gen)), &format!("status of tenant `{t}`"))
                    .await?
            }
            None => self.read_all(Read::Prefix("status#"), "status rows").await?,
        };
        let mut rows = Vec::with_capacity(items.len());
        for item in &items {
            let row = items::parse_status(item, "status row")?;
            // A scan sees every generation's rows: keep this handle's.
            if items::get_s(item, "pk", "status row")? == items::status_pk(&row.tenant, self.data_gen) {
                rows.push(row);
            }
        }
        // Defensive: a tenant query only ever reads that tenant's partition.
        if let Some(t) = tenant {
            rows.retain(|r| r.tenant == t);
        }
        rules::sort_status(&mut rows);
        Ok(rows)
    }
}

impl SnapshotStore for DynamoStore {
    async fn request_snapshot(&self, source: &str, table: &TableId, if_absent: bool) -> Result<bool, CheckpointError> {
        let what = format!("snapshot request of `{source}` for {table}");
        // A read, then a put conditional on what was read: two racing
        // requests cannot both take the same number.
        for _ in 0..CONFLICT_ATTEMPTS {
            let current = self.get(items::snapshot_pk(source), items::table_sk(table), &what).await?;
            let previous: Option<u64> = match &current {
                Some(item) => {
                    items::check_format(item, &what)?;
                    Some(get_n(item, "request", &what)?)
                }
                None => None,
            };
            if if_absent && previous.is_some() {
                return Ok(false);
            }
            let now = rules::now_ms();
            let progress = SnapshotProgress::requested(table, previous.unwrap_or(0) + 1, now);
            let item = items::snapshot_item(source, &progress, now)?;
            let put = self.client.put_item().table_name(&self.table).set_item(Some(item));
            let put = match previous {
                None => put.condition_expression("attribute_not_exists(pk)"),
                Some(r) => put
                    .condition_expression("#request = :request")
                    .expression_attribute_names("#request", "request")
                    .expression_attribute_values(":request", n(r)),
            };
            match put.send().await {
                Ok(_) => return Ok(true),
                Err(e) if e.as_service_error().is_some_and(|e| e.is_conditional_check_failed_exception()) => {
                    if if_absent {
                        return Ok(false);
                    }
                    continue;
                }
                Err(e) => return Err(sdk_error(format!("writing {what}"), e)),
            }
        }
        Err(CheckpointError::Backend { message: format!("{what}: too many concurrent requests"), source: None })
    }

    async fn snapshots(&self, source: &str) -> Result<Vec<SnapshotProgress>, CheckpointError> {
        let what = format!("snapshots of `{source}`");
        let mut out: Vec<SnapshotProgress> = self.query_json(&items::snapshot_pk(source), "progress", &what).await?;
        out.sort_by(|a, b| a.table.cmp(&b.table));
        Ok(out)
    }

    async fn save_snapshot(
        &self,
        source: &str,
        generation: u64,
        progress: &SnapshotProgress,
    ) -> Result<bool, CheckpointError> {
        let what = format!("snapshot progress of `{source}` for {}", progress.table);
        let fence = rules::source_fence(source, generation);
        let put = Put::builder()
            .table_name(&self.table)
            .set_item(Some(items::snapshot_item(source, progress, rules::now_ms())?))
            .condition_expression("#request = :request")
            .expression_attribute_names("#request", "request")
            .expression_attribute_values(":request", n(progress.request))
            .build()
            .map_err(|e| backend(&what, e))?;
        let items = vec![self.lease_check(&fence)?, TransactWriteItem::builder().put(put).build()];
        let lease_err = || rules::lease_fenced(&fence);
        match self.transact(&format!("saving {what}"), items, &[Some(&lease_err), None]).await {
            Ok(()) => Ok(true),
            // The request was replaced by a newer one (or removed).
            Err(TxError::Condition(1, None)) => Ok(false),
            Err(e) => Err(e.into_error(&what)),
        }
    }
}

impl SchemaStore for DynamoStore {
    async fn register_schema(&self, table: &TableId, candidate: &SchemaVersion) -> Result<u32, CheckpointError> {
        let what = format!("schema history of {table}");
        // Read the history, then create the next entry conditionally: a racing
        // registrar that took the number first makes us read again.
        for _ in 0..CONFLICT_ATTEMPTS {
            let history = self.schema_history(table).await?;
            let entry = match crate::schema::register(&history, candidate) {
                crate::schema::Registration::Existing(v) => return Ok(v),
                crate::schema::Registration::Append(entry) => entry,
            };
            let put = self
                .client
                .put_item()
                .table_name(&self.table)
                .set_item(Some(items::schema_item(table, &entry)?))
                .condition_expression("attribute_not_exists(pk)");
            match put.send().await {
                Ok(_) => return Ok(entry.version),
                Err(e) if e.as_service_error().is_some_and(|e| e.is_conditional_check_failed_exception()) => continue,
                Err(e) => return Err(sdk_error(format!("writing {what}"), e)),
            }
        }
        Err(CheckpointError::Backend { message: format!("{what}: too many concurrent registrations"), source: None })
    }

    async fn schema_history(&self, table: &TableId) -> Result<Vec<SchemaVersion>, CheckpointError> {
        let what = format!("schema history of {table}");
        let mut out: Vec<SchemaVersion> = self.query_json(&items::schema_pk(table), "entry", &what).await?;
        out.sort_by_key(|v| v.version);
        Ok(out)
    }
}

impl SinkStore for DynamoStore {
    async fn load_sink(&self, sink: &str, table: &TableId) -> Result<Option<SinkCheckpoint>, CheckpointError> {
        let what = format!("sink checkpoint of `{sink}` for {table}");
        match self.get(items::sink_pk(sink, self.data_gen), items::table_sk(table), &what).await? {
            None => Ok(None),
            Some(item) => items::parse_json(&item, "checkpoint", &what).map(Some),
        }
    }

    async fn sinks(&self, sink: &str) -> Result<Vec<SinkCheckpoint>, CheckpointError> {
        let what = format!("sink checkpoints of `{sink}`");
        let mut out: Vec<SinkCheckpoint> =
            self.query_json(&items::sink_pk(sink, self.data_gen), "checkpoint", &what).await?;
        out.sort_by(|a, b| a.table.cmp(&b.table));
        Ok(out)
    }

    async fn save_sink(&self, sink: &str, generation: u64, checkpoint: &SinkCheckpoint) -> Result<(), CheckpointError> {
        let what = format!("sink checkpoint of `{sink}` for {}", checkpoint.table);
        let fence = rules::sink_fence(sink, generation);
        let item = items::sink_item(sink, generation, self.data_gen, checkpoint, rules::now_ms())?;
        self.guarded_put(&what, &fence, item).await.map_err(|e| e.into_error(&what))
    }
}

impl GenerationStore for DynamoStore {
    fn in_generation(&self, data_gen: u32) -> Self {
        DynamoStore { client: self.client.clone(), table: self.table.clone(), data_gen }
    }

    fn data_generation(&self) -> u32 {
        self.data_gen
    }

    async fn load_generations(&self, tenant: &str) -> Result<crate::Generations, CheckpointError> {
        let what = format!("generations of tenant `{tenant}`");
        match self.get(items::generations_pk(tenant), items::GENERATIONS_SK.into(), &what).await? {
            None => Ok(crate::Generations::initial(tenant)),
            Some(item) => {
                let mut g: crate::Generations = items::parse_json(&item, "generations", &what)?;
                g.version = get_n(&item, "version", &what)?;
                Ok(g)
            }
        }
    }

    async fn save_generations(&self, g: &crate::Generations) -> Result<u64, CheckpointError> {
        let what = format!("generations of tenant `{}`", g.tenant);
        let id = write_id();
        let next = g.version + 1;
        let item = items::generations_item(g, next, &id)?;
        let put = self.client.put_item().table_name(&self.table).set_item(Some(item));
        let put = if g.version == 0 {
            put.condition_expression("attribute_not_exists(pk)")
        } else {
            put.condition_expression("#version = :version")
                .expression_attribute_names("#version", "version")
                .expression_attribute_values(":version", n(g.version))
        };
        match put.send().await {
            Ok(_) => Ok(next),
            Err(e) if e.as_service_error().is_some_and(|e| e.is_conditional_check_failed_exception()) => {
                // Our own first attempt, applied with its answer lost?
                let stored = self.get(items::generations_pk(&g.tenant), items::GENERATIONS_SK.into(), &what).await?;
                let ours = stored.as_ref().is_some_and(|item| {
                    items::get_s(item, WRITE_ID, &what).is_ok_and(|w| w == id)
                        && get_n::<u64>(item, "version", &what).is_ok_and(|v| v == next)
                });
                if ours {
                    Ok(next)
                } else {
                    Err(CheckpointError::Fenced(format!(
                        "{what}: changed by another writer since version {}",
                        g.version
                    )))
                }
            }
            Err(e) => Err(sdk_error(format!("writing {what}"), e)),
        }
    }
}

// ---- errors ---------------------------------------------------------------

/// A failed AWS call: retryable. The message has the service's error code and
/// message, or the transport error chain — not the raw response.
fn sdk_error<E, R>(what: impl Display, err: SdkError<E, R>) -> CheckpointError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    let detail = match err.as_service_error() {
        Some(service) => format!(
            "{}: {}",
            service.code().unwrap_or("unknown service error"),
            service.message().unwrap_or("no message")
        ),
        None => error_chain(&err),
    };
    CheckpointError::Backend { message: format!("{what}: {detail}"), source: Some(Box::new(err)) }
}

fn backend(what: impl Display, err: impl std::error::Error + Send + Sync + 'static) -> CheckpointError {
    CheckpointError::Backend { message: format!("{what}: {}", error_chain(&err)), source: Some(Box::new(err)) }
}

/// `error: source: source …`, Display only.
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut next = err.source();
    while let Some(e) = next {
        out.push_str(": ");
        out.push_str(&e.to_string());
        next = e.source();
    }
    out
}

/// Exponential backoff with jitter for transaction conflicts: 10 ms · 2ⁿ, at
/// most 1 s, scaled by a factor in [0.5, 1).
fn conflict_backoff(attempt: u32) -> Duration {
    let base = 10u64.saturating_mul(1 << attempt.min(7)).min(1000);
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let jitter = u64::from(nanos % 500) + 500; // 500..1000 per mille
    Duration::from_millis(base * jitter / 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_bounded() {
        for attempt in 1..20 {
            let d = conflict_backoff(attempt);
            assert!(d <= Duration::from_secs(1));
        }
    }
}

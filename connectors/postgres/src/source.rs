//! The live source: a catalog connection (`tokio-postgres`) and the
//! replication stream (`pg_walstream`, raw XLogData), feeding [`PgDecoder`].
//!
//! [`PgSource`] implements [`ChangeSource`] and its delivery contract: items
//! come out in commit order; a change is followed by its transaction's
//! [`SourceItem::Commit`]. The server is told an LSN is flushed only through
//! the [`ChangeSource::saved_hook`] (or [`PgSource::ack`]), which the stage
//! calls after everything up to that Commit or Heartbeat is acknowledged by
//! Kafka and checkpointed — never earlier. Resuming from a saved LSN replays
//! no committed transaction before it and loses none after it
//! (at-least-once: the transaction in flight at a crash is sent again).

use std::sync::Arc;
use std::time::Duration;

use pg_walstream::{
    CancellationToken, LogicalReplicationStream, ReplicationStreamConfig, RetryConfig, SharedLsnFeedback, StreamingMode,
};
use secrecy::ExposeSecret;
use tokio_postgres::{Client, NoTls};
use tracing::{info, warn};

use lablake_model::Resume;
use lablake_source::{ChangeSource, Connector, SavedHook, SourceItem};

use crate::config::{HEARTBEAT_PREFIX, PgSourceConfig};
use crate::decoder::PgDecoder;
use crate::error::{PgError, lsn_text};
use crate::pgoutput::{self, Message};
use crate::snapshot::PgSnapshotter;
use crate::tls::TlsMode;
use crate::values::PgKind;

/// A running PostgreSQL source. See the module documentation.
pub struct PgSource {
    stream: LogicalReplicationStream,
    feedback: Arc<SharedLsnFeedback>,
    catalog: Arc<Client>,
    decoder: PgDecoder,
    cancel: CancellationToken,
    heartbeat: tokio::task::JoinHandle<()>,
}

pub(crate) fn connection(e: impl std::fmt::Display) -> PgError {
    PgError::Connection { reason: e.to_string() }
}

/// Connects the catalog client (TLS as configured).
pub async fn connect_catalog(cfg: &PgSourceConfig) -> Result<Client, PgError> {
    let mut pg: tokio_postgres::Config = cfg
        .url
        .expose_secret()
        .parse()
        .map_err(|e: tokio_postgres::Error| PgError::Config { key: "url".into(), reason: e.to_string() })?;
    let failed =
        |e: tokio_postgres::Error| PgError::Connection { reason: format!("catalog connection: {}", pg_reason(&e)) };
    fn drive(conn: impl std::future::Future<Output = Result<(), tokio_postgres::Error>> + Send + 'static) {
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                warn!(error = %pg_reason(&e), "catalog connection closed");
            }
        });
    }
    let client = if cfg.tls.mode == TlsMode::Disable {
        let (client, conn) = pg.connect(NoTls).await.map_err(failed)?;
        drive(conn);
        client
    } else {
        pg.ssl_mode(tokio_postgres::config::SslMode::Require);
        let tls = tokio_postgres_rustls::MakeRustlsConnect::new(crate::tls::client_config(&cfg.tls)?);
        let (client, conn) = pg.connect(tls).await.map_err(failed)?;
        drive(conn);
        client
    };
    Ok(client)
}

/// The replication connection's conninfo: the URL plus replication and TLS
/// parameters (percent-encoded path of the CA file).
fn replication_conninfo(cfg: &PgSourceConfig) -> String {
    let url = cfg.url.expose_secret();
    let sep = if url.contains('?') { '&' } else { '?' };
    let mut out = format!("{url}{sep}replication=database&sslmode={}", cfg.tls.mode.sslmode());
    if let Some(ca) = &cfg.tls.ca_file {
        out.push_str("&sslrootcert=");
        for b in ca.to_string_lossy().bytes() {
            if b.is_ascii_alphanumeric() || b"/-_.~".contains(&b) {
                out.push(char::from(b));
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
    }
    out
}

/// A tokio-postgres error without anything that could carry values.
pub(crate) fn pg_reason(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => e.to_string(),
    }
}

/// What the server says about the configured slot.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SlotState {
    wal_status: String,
    plugin: String,
    confirmed_flush: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotAction {
    Create,
    Use,
}

/// Decides whether the slot can serve `resume`. Every way the changes after
/// the checkpoint can be gone is [`PgError::PositionLost`], never a silent
/// skip: the slot was dropped, its WAL was removed, or it was moved past the
/// checkpoint by someone else (the server would start after it).
fn check_slot(name: &str, slot: Option<&SlotState>, resume: Option<u64>) -> Result<SlotAction, PgError> {
    let lost = |why: String| PgError::PositionLost {
        reason: format!("{why}; changes since the checkpoint are lost: take a new snapshot of this source's tables"),
    };
    match (slot, resume) {
        (None, None) => Ok(SlotAction::Create),
        (None, Some(lsn)) => Err(lost(format!(
            "replication slot `{name}` does not exist but the checkpoint is at {} (recreate the slot after the snapshot)",
            lsn_text(lsn)
        ))),
        (Some(s), _) if s.wal_status == "lost" => Err(lost(format!(
            "the WAL of replication slot `{name}` was removed (wal_status = lost; drop and recreate the slot)"
        ))),
        (Some(s), _) if s.plugin != "pgoutput" => Err(PgError::ServerConfig {
            setting: "slot".into(),
            reason: format!("slot `{name}` uses plugin `{}`, not pgoutput", s.plugin),
        }),
        (Some(SlotState { confirmed_flush: Some(flushed), .. }), Some(lsn)) if *flushed > lsn => Err(lost(format!(
            "replication slot `{name}` was advanced to {} past the checkpoint at {} by something else",
            lsn_text(*flushed),
            lsn_text(lsn)
        ))),
        (Some(_), _) => Ok(SlotAction::Use),
    }
}

/// Parses `X/Y` (PostgreSQL's LSN text).
fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.split_once('/')?;
    Some((u64::from(u32::from_str_radix(hi, 16).ok()?) << 32) | u64::from(u32::from_str_radix(lo, 16).ok()?))
}

/// Ends another reader of `slot`, if one is attached. The pipeline starts a
/// source only while it holds the source's lease, so another reader is a
/// superseded instance: paused, or gone without the server noticing yet. It
/// would keep the slot (PostgreSQL allows one reader) until
/// `wal_sender_timeout`; its changes are re-read from this instance's
/// checkpoint, and its own writes are fenced by the lease.
async fn end_other_reader(catalog: &tokio_postgres::Client, slot: &str) -> Result<(), PgError> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let row = catalog
            .query_opt(
                "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1 AND active \
                 AND active_pid IS DISTINCT FROM pg_backend_pid()",
                &[&slot],
            )
            .await
            .map_err(|e| connection(pg_reason(&e)))?;
        let Some(pid) = row.and_then(|r| r.get::<_, Option<i32>>(0)) else { return Ok(()) };
        if std::time::Instant::now() > deadline {
            return Err(connection(format!(
                "replication slot `{slot}` is still held by backend {pid} (another reader) after trying to end it"
            )));
        }
        warn!(slot, pid, "the replication slot is held by another reader (a superseded instance); ending it");
        if let Err(e) = catalog.execute("SELECT pg_terminate_backend($1)", &[&pid]).await {
            // Without the right to signal it, wait for wal_sender_timeout (the stage retries).
            return Err(connection(format!(
                "replication slot `{slot}` is held by backend {pid} and it cannot be ended: {}",
                pg_reason(&e)
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

impl PgSource {
    /// Checks the server, creates the publication and slot when missing,
    /// and starts streaming from `resume` (an acked LSN) or, on first start,
    /// from the slot's position. A missing slot or lost WAL when resuming is
    /// [`PgError::PositionLost`].
    pub async fn start(cfg: &PgSourceConfig, resume: Option<u64>) -> Result<PgSource, PgError> {
        let decoder = PgDecoder::new(cfg.decoder_config()?);
        let catalog = Arc::new(connect_catalog(cfg).await?);
        let one = |q: &'static str| {
            let c = catalog.clone();
            async move { c.query_one(q, &[]).await.map(|r| r.get::<_, String>(0)).map_err(|e| connection(pg_reason(&e))) }
        };
        let wal_level = one("SHOW wal_level").await?;
        if wal_level != "logical" {
            return Err(PgError::ServerConfig {
                setting: "wal_level".into(),
                reason: format!("is `{wal_level}`, logical replication needs `logical`"),
            });
        }
        let encoding = one("SHOW server_encoding").await?;
        if encoding != "UTF8" {
            return Err(PgError::ServerConfig {
                setting: "server_encoding".into(),
                reason: format!("is `{encoding}`, only UTF8 is supported"),
            });
        }
        let has_pub = catalog
            .query_opt("SELECT 1 FROM pg_publication WHERE pubname = $1", &[&cfg.publication])
            .await
            .map_err(|e| connection(pg_reason(&e)))?
            .is_some();
        if !has_pub {
            if !cfg.create_publication {
                return Err(PgError::Config {
                    key: "publication".into(),
                    reason: format!("publication `{}` does not exist (create_publication = false)", cfg.publication),
                });
            }
            info!(publication = %cfg.publication, "creating publication FOR ALL TABLES");
            catalog
                .batch_execute(&format!("CREATE PUBLICATION \"{}\" FOR ALL TABLES", cfg.publication))
                .await
                .map_err(|e| PgError::ServerConfig { setting: "publication".into(), reason: pg_reason(&e) })?;
        }
        crate::identity::check_publication(&catalog, cfg).await?;
        let slot = catalog
            .query_opt(
                "SELECT coalesce(wal_status, ''), plugin::text, confirmed_flush_lsn::text FROM pg_replication_slots \
                 WHERE slot_name = $1",
                &[&cfg.slot],
            )
            .await
            .map_err(|e| connection(pg_reason(&e)))?
            .map(|row| SlotState {
                wal_status: row.get(0),
                plugin: row.get(1),
                confirmed_flush: row.get::<_, Option<String>>(2).as_deref().and_then(parse_lsn),
            });
        if check_slot(&cfg.slot, slot.as_ref(), resume)? == SlotAction::Create {
            info!(slot = %cfg.slot, "creating logical replication slot");
            catalog
                .query_one("SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')", &[&cfg.slot])
                .await
                .map_err(|e| PgError::ServerConfig { setting: "slot".into(), reason: pg_reason(&e) })?;
        }
        let config = ReplicationStreamConfig::new(
            cfg.slot.clone(),
            cfg.publication.clone(),
            2,
            StreamingMode::On,
            cfg.status_interval,
            Duration::from_secs(30),
            Duration::from_secs(10),
            RetryConfig::default(),
        )
        .with_binary(true)
        .with_messages(true);
        end_other_reader(&catalog, &cfg.slot).await?;
        let conninfo = replication_conninfo(cfg);
        let mut stream = LogicalReplicationStream::new(&conninfo, config).await.map_err(connection)?;
        stream.start(resume).await.map_err(connection)?;
        let feedback = stream.shared_lsn_feedback.clone();
        info!(slot = %cfg.slot, from = %resume.map_or("slot position".into(), lsn_text), "streaming");
        let hb_client = catalog.clone();
        let period = cfg.heartbeat_interval;
        let heartbeat = tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(e) =
                    hb_client.execute("SELECT pg_logical_emit_message(false, $1, '')", &[&HEARTBEAT_PREFIX]).await
                {
                    warn!(error = %pg_reason(&e), "heartbeat failed");
                }
            }
        });
        Ok(PgSource { stream, feedback, catalog, decoder, cancel: CancellationToken::new(), heartbeat })
    }

    /// The next item. Reads the stream only when the decoder has nothing left.
    pub async fn next(&mut self) -> Result<SourceItem, PgError> {
        loop {
            if let Some(item) = self.decoder.pop()? {
                return Ok(item);
            }
            // pg_walstream checks its feedback timer only every 128 frames;
            // on a quiet stream that would hold acked WAL for minutes.
            self.stream.maybe_send_feedback().await;
            let raw = self.stream.next_raw_event(&self.cancel).await.map_err(connection)?;
            let end = raw.wal_end.value();
            if raw.data.is_empty() {
                continue;
            }
            if raw.data[0] == b'R' {
                match pgoutput::parse(&raw.data, self.decoder.in_stream()) {
                    Ok(Message::Relation { relation, .. }) => {
                        for oid in self.decoder.unknown_types(&relation) {
                            let kind = Box::pin(resolve_kind(&self.catalog, oid, 0)).await?;
                            self.decoder.put_kind(oid, kind);
                        }
                        let pk = primary_key(&self.catalog, relation.oid).await?;
                        self.decoder.put_relation(relation, &pk)?;
                    }
                    Ok(_) => {}
                    Err(reason) => return Err(PgError::Protocol { lsn: lsn_text(end), reason }),
                }
                continue;
            }
            self.decoder.push(&raw.data, end)?;
        }
    }

    /// Reports `lsn` (from a [`SourceItem::Commit`] or
    /// [`SourceItem::Heartbeat`]) as flushed: call only once everything
    /// before it is durable downstream. Reported to the server with the next
    /// status update (at most `status_interval` later, while the source is
    /// being read).
    pub fn ack(&self, lsn: u64) {
        ack(&self.feedback, lsn);
    }

    /// Sends a final status update and stops.
    pub async fn close(mut self) {
        self.heartbeat.abort();
        let _ = self.stream.stop().await;
        self.cancel.cancel();
    }
}

impl Drop for PgSource {
    fn drop(&mut self) {
        self.heartbeat.abort();
    }
}

fn ack(feedback: &SharedLsnFeedback, lsn: u64) {
    feedback.update_flushed_lsn(lsn);
    feedback.update_applied_lsn(lsn);
}

impl ChangeSource for PgSource {
    type Error = PgError;

    fn next(&mut self) -> impl std::future::Future<Output = Result<SourceItem, PgError>> + Send {
        PgSource::next(self)
    }

    /// Tells the slot: a saved LSN is flushed, the server may release the
    /// WAL before it.
    fn saved_hook(&self) -> SavedHook {
        let feedback = self.feedback.clone();
        SavedHook::new(move |resume| {
            if let Resume::Lsn(lsn) = resume {
                ack(&feedback, *lsn);
            }
        })
    }
}

impl lablake_source::SourceError for PgError {
    fn is_retryable(&self) -> bool {
        PgError::is_retryable(self)
    }
}

/// A PostgreSQL source kind: its configuration starts the replication
/// stream and opens snapshot readers.
impl Connector for PgSourceConfig {
    type Source = PgSource;
    type Snapshotter = PgSnapshotter;

    fn name(&self) -> &str {
        &self.name
    }

    async fn start(&self, resume: Option<Resume>) -> Result<PgSource, PgError> {
        let lsn = match resume {
            None => None,
            Some(Resume::Lsn(lsn)) => Some(lsn),
            Some(Resume::Binlog { .. }) => {
                return Err(PgError::Config {
                    key: "resume".into(),
                    reason: "is a binlog position; a PostgreSQL source resumes from an LSN".into(),
                });
            }
        };
        PgSource::start(self, lsn).await
    }

    async fn snapshotter(&self) -> Result<PgSnapshotter, PgError> {
        PgSnapshotter::connect(self).await
    }
}

/// The kind of a catalog type: enums, domains (their base type), arrays.
pub(crate) async fn resolve_kind(catalog: &Client, oid: u32, depth: u8) -> Result<PgKind, PgError> {
    if depth > 8 {
        return Ok(PgKind::Other);
    }
    let row = catalog
        .query_opt(
            "SELECT typtype::text, typbasetype, typtypmod, typelem, typcategory::text FROM pg_type WHERE oid = $1",
            &[&oid],
        )
        .await
        .map_err(|e| connection(pg_reason(&e)))?;
    let Some(row) = row else { return Ok(PgKind::Other) };
    let (typtype, base, typmod, elem, category): (String, u32, i32, u32, String) =
        (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
    let known = |oid: u32, typmod: i32| PgKind::builtin(oid, typmod);
    Ok(match (typtype.as_str(), category.as_str()) {
        ("e", _) => PgKind::Enum,
        ("d", _) => match known(base, typmod) {
            Some(k) => k,
            None => Box::pin(resolve_kind(catalog, base, depth + 1)).await?,
        },
        (_, "A") if elem != 0 => PgKind::Array(Box::new(match known(elem, -1) {
            Some(k) => k,
            None => Box::pin(resolve_kind(catalog, elem, depth + 1)).await?,
        })),
        _ => PgKind::Other,
    })
}

/// Primary-key column names of a table, in key order (empty without one).
pub(crate) async fn primary_key(catalog: &Client, rel: u32) -> Result<Vec<String>, PgError> {
    let rows = catalog
        .query(
            "SELECT a.attname::text FROM pg_index i \
             CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord) \
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
             WHERE i.indrelid = $1 AND i.indisprimary ORDER BY k.ord",
            &[&rel],
        )
        .await
        .map_err(|e| connection(pg_reason(&e)))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn state(wal_status: &str, plugin: &str, confirmed_flush: Option<u64>) -> SlotState {
        SlotState { wal_status: wal_status.into(), plugin: plugin.into(), confirmed_flush }
    }

    #[test]
    fn slot_checks_report_every_way_changes_can_be_lost() {
        assert_eq!(check_slot("s", None, None).unwrap(), SlotAction::Create);
        let ok = state("reserved", "pgoutput", Some(0x100));
        assert_eq!(check_slot("s", Some(&ok), None).unwrap(), SlotAction::Use);
        assert_eq!(check_slot("s", Some(&ok), Some(0x100)).unwrap(), SlotAction::Use);
        assert_eq!(check_slot("s", Some(&ok), Some(0x200)).unwrap(), SlotAction::Use);
        let lost = |r: Result<SlotAction, PgError>, needle: &str| match r {
            Err(PgError::PositionLost { reason }) => {
                assert!(reason.contains(needle) && reason.contains("snapshot"), "{reason}")
            }
            other => panic!("{other:?}"),
        };
        lost(check_slot("s", None, Some(0x1_0000_0010)), "does not exist but the checkpoint is at 1/10");
        lost(check_slot("s", Some(&state("lost", "pgoutput", Some(0x100))), Some(0x100)), "wal_status = lost");
        lost(check_slot("s", Some(&state("lost", "pgoutput", None)), None), "wal_status = lost");
        lost(check_slot("s", Some(&ok), Some(0xff)), "advanced to 0/100 past the checkpoint at 0/FF");
        assert!(matches!(
            check_slot("s", Some(&state("reserved", "test_decoding", None)), None),
            Err(PgError::ServerConfig { .. })
        ));
    }

    #[test]
    fn lsn_text_parses_back() {
        for lsn in [0u64, 0x16B3748, 0x1_0000_0010, u64::MAX] {
            assert_eq!(parse_lsn(&lsn_text(lsn)), Some(lsn));
        }
        assert_eq!(parse_lsn("0/16B3748"), Some(0x16B3748));
        assert!(parse_lsn("nope").is_none() && parse_lsn("1/").is_none() && parse_lsn("1/2/3").is_none());
    }
}

//! The live reader: connects as a replica, streams the binlog with
//! `mysql_async`'s `BinlogStream`, and feeds every event through the pure
//! [`BinlogDecoder`].

use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use mysql_async::prelude::Queryable;
use mysql_async::{BinlogStream, BinlogStreamRequest, Conn, Opts};
use mysql_common::packets::Sid;
use tracing::{info, warn};

use lablake_model::Resume;
use lablake_source::{ChangeSource, Connector, SourceItem};

use crate::config::{MysqlSourceConfig, StartPosition};
use crate::decode::Flavor;
use crate::snapshot::MysqlSnapshotter;
use crate::stream::{BinlogDecoder, CatalogRequest, parse_mariadb_gtid_list};
use crate::{MysqlError, catalog};

/// A MySQL/MariaDB binlog source (incremental load).
///
/// Implements [`ChangeSource`] with its delivery contract: after a restart
/// from a [`Resume::Binlog`] taken from a [`SourceItem::Commit`] or
/// [`SourceItem::Heartbeat`], the following transactions are delivered again
/// exactly as before (same positions), nothing earlier is. The server keeps
/// its binlogs by its own retention, so [`ChangeSource::saved_hook`] is the
/// default no-op.
///
/// After [`MysqlSource::next`] returns an error the source is finished: drop
/// it and [`MysqlSource::start`] again from the last saved resume point
/// (after a backoff when [`MysqlError::is_retryable`]).
pub struct MysqlSource {
    config: MysqlSourceConfig,
    opts: Opts,
    flavor: Flavor,
    stream: Option<BinlogStream>,
    control: Option<Conn>,
    decoder: BinlogDecoder,
    failed: bool,
}

/// Where the dump starts.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Start {
    File { file: String, pos: u64, gtid: Option<String> },
    Gtid { gtid: String },
}

struct ServerInfo {
    version: String,
    server_id: u32,
}

impl MysqlSource {
    /// Connects and starts streaming from `resume` (or from `config.start`
    /// when `None`). Checks the server settings (binary log on, `ROW`
    /// format, `FULL` row image, a distinct server id) first.
    pub async fn start(config: MysqlSourceConfig, resume: Option<Resume>) -> Result<Self, MysqlError> {
        let dcfg = config.decoder_config()?;
        ensure_crypto_provider();
        let opts = config.driver_opts()?;
        let target = config.redacted_target();
        info!(source = %config.name, target = %target, "connecting to the binlog source");
        let mut control = connect(&opts, config.connect_timeout).await?;
        let server = check_server(&mut control, &config).await?;
        let flavor = Flavor::from_server_version(&server.version);
        let start = resolve_start(&mut control, &config, resume, flavor).await?;
        let (file, gtid) = match &start {
            Start::File { file, gtid, .. } => (file.as_str(), gtid.as_deref()),
            Start::Gtid { gtid } => ("", Some(gtid.as_str())),
        };
        let mut decoder = BinlogDecoder::new(dcfg, file, gtid)?;
        decoder.set_flavor(flavor);
        let stream = open_stream(&opts, &config, &start, flavor).await?;
        match &start {
            Start::File { file, pos, gtid } => {
                info!(source = %config.name, server_version = %server.version, server_id = server.server_id,
                    file = %file, pos, gtid = ?gtid, "binlog stream started")
            }
            Start::Gtid { gtid } => {
                info!(source = %config.name, server_version = %server.version, server_id = server.server_id,
                    gtid = %gtid, "binlog stream started from GTID")
            }
        }
        Ok(MysqlSource { config, opts, flavor, stream: Some(stream), control: Some(control), decoder, failed: false })
    }

    /// The next item. Blocks until one is available. Memory bounded: at
    /// most one rows event is decoded at a time.
    pub async fn next(&mut self) -> Result<SourceItem, MysqlError> {
        if self.failed {
            return Err(MysqlError::Connection {
                reason: "the source failed earlier; start it again from the last resume point".into(),
                source: None,
            });
        }
        match self.next_inner().await {
            Ok(item) => Ok(item),
            Err(e) => {
                self.failed = true;
                warn!(source = %self.config.name, error = %e, retryable = e.is_retryable(), "binlog source failed");
                Err(e)
            }
        }
    }

    /// Closes both connections.
    pub async fn close(mut self) -> Result<(), MysqlError> {
        if let Some(stream) = self.stream.take() {
            stream.close().await.map_err(|e| MysqlError::from_driver(e, false))?;
        }
        if let Some(conn) = self.control.take() {
            conn.disconnect().await.map_err(|e| MysqlError::from_driver(e, false))?;
        }
        Ok(())
    }

    async fn next_inner(&mut self) -> Result<SourceItem, MysqlError> {
        loop {
            if let Some(item) = self.decoder.pop() {
                return Ok(item);
            }
            let stream = self
                .stream
                .as_mut()
                .ok_or_else(|| MysqlError::Connection { reason: "binlog stream closed".into(), source: None })?;
            let next = tokio::time::timeout(self.config.idle_timeout, AssertUnwindSafe(stream.next()).catch_unwind());
            let event = match next.await {
                Err(_) => {
                    return Err(MysqlError::Connection {
                        reason: format!("no event or heartbeat for {:?}", self.config.idle_timeout),
                        source: None,
                    });
                }
                Ok(Err(_panic)) => {
                    self.stream = None;
                    return Err(MysqlError::Protocol {
                        file: self.decoder.file().to_owned(),
                        pos: 0,
                        reason: "the binlog driver panicked on a malformed packet".into(),
                    });
                }
                Ok(Ok(None)) => {
                    return Err(MysqlError::Connection {
                        reason: "the server ended the binlog stream".into(),
                        source: None,
                    });
                }
                Ok(Ok(Some(Err(e)))) => return Err(MysqlError::from_driver(e, false)),
                Ok(Ok(Some(Ok(event)))) => event,
            };
            if let Some(req) = self.decoder.catalog_request(&event)? {
                let table = self.lookup(&req).await?;
                self.decoder.put_catalog(&req.database, &req.table, table);
            }
            self.decoder.push(&event)?;
        }
    }

    /// information_schema lookup on the control connection (reconnecting once).
    async fn lookup(&mut self, req: &CatalogRequest) -> Result<crate::decode::CatalogTable, MysqlError> {
        for attempt in 0..2 {
            if self.control.is_none() {
                self.control = Some(connect(&self.opts, self.config.connect_timeout).await?);
            }
            let Some(conn) = self.control.as_mut() else { continue };
            match catalog::fetch(conn, &req.database, &req.table, self.flavor).await {
                Ok(t) => {
                    if t.columns.is_empty() && req.required {
                        warn!(source = %self.config.name, database = %req.database, table = %req.table,
                            "table not found in information_schema");
                    }
                    return Ok(t);
                }
                Err(e) if attempt == 0 && e.is_retryable() => {
                    warn!(source = %self.config.name, error = %e, "information_schema lookup failed; reconnecting");
                    self.control = None;
                }
                Err(e) => return Err(e),
            }
        }
        Err(MysqlError::Connection { reason: "information_schema lookup failed".into(), source: None })
    }
}

impl ChangeSource for MysqlSource {
    type Error = MysqlError;

    fn next(&mut self) -> impl std::future::Future<Output = Result<SourceItem, MysqlError>> + Send {
        MysqlSource::next(self)
    }
}

impl lablake_source::SourceError for MysqlError {
    fn is_retryable(&self) -> bool {
        MysqlError::is_retryable(self)
    }
}

/// A MySQL/MariaDB source kind: its configuration starts the binlog reader
/// and opens snapshot readers.
impl Connector for MysqlSourceConfig {
    type Source = MysqlSource;
    type Snapshotter = MysqlSnapshotter;

    fn name(&self) -> &str {
        &self.name
    }

    async fn start(&self, resume: Option<Resume>) -> Result<MysqlSource, MysqlError> {
        MysqlSource::start(self.clone(), resume).await
    }

    async fn snapshotter(&self) -> Result<MysqlSnapshotter, MysqlError> {
        MysqlSnapshotter::connect(self).await
    }
}

pub(crate) async fn connect(opts: &Opts, timeout: Duration) -> Result<Conn, MysqlError> {
    match tokio::time::timeout(timeout, Conn::new(opts.clone())).await {
        Err(_) => Err(MysqlError::Connect { reason: format!("timed out after {timeout:?}"), source: None }),
        // rustls reports certificate failures as InvalidData I/O errors: they
        // repeat on every attempt, so they are configuration errors.
        Ok(Err(mysql_async::Error::Io(mysql_async::IoError::Io(e))))
            if opts.ssl_opts().is_some() && e.kind() == std::io::ErrorKind::InvalidData =>
        {
            Err(MysqlError::config("tls", e.to_string()))
        }
        Ok(Err(e)) => Err(MysqlError::from_driver(e, true)),
        Ok(Ok(c)) => Ok(c),
    }
}

pub(crate) fn query_err(context: &str) -> impl FnOnce(mysql_async::Error) -> MysqlError + '_ {
    move |e| match MysqlError::from_driver(e, false) {
        MysqlError::Connection { source: Some(source), .. } => {
            MysqlError::Query { context: context.to_owned(), source }
        }
        other => other,
    }
}

async fn check_server(conn: &mut Conn, config: &MysqlSourceConfig) -> Result<ServerInfo, MysqlError> {
    let row: Option<(String, String, String, String, String)> = conn
        .query_first("SELECT VERSION(), @@server_id, @@log_bin, @@binlog_format, @@binlog_row_image")
        .await
        .map_err(query_err("server settings"))?;
    let Some((version, server_id, log_bin, format, image)) = row else {
        return Err(MysqlError::ServerConfig { setting: "version".into(), reason: "no answer".into() });
    };
    let server_id: u32 = server_id.trim().parse().unwrap_or(0);
    if log_bin != "1" && !log_bin.eq_ignore_ascii_case("ON") {
        return Err(MysqlError::ServerConfig {
            setting: "log_bin".into(),
            reason: "binary logging is disabled".into(),
        });
    }
    if !format.eq_ignore_ascii_case("ROW") {
        return Err(MysqlError::ServerConfig {
            setting: "binlog_format".into(),
            reason: format!("is {format}; row-based capture needs ROW"),
        });
    }
    if !image.eq_ignore_ascii_case("FULL") {
        return Err(MysqlError::ServerConfig {
            setting: "binlog_row_image".into(),
            reason: format!("is {image}; complete row images need FULL"),
        });
    }
    if server_id == config.server_id {
        return Err(MysqlError::config("server_id", format!("equals the server's own @@server_id ({server_id})")));
    }
    let metadata: Result<Option<String>, _> = conn.query_first("SELECT @@binlog_row_metadata").await;
    match metadata {
        Ok(Some(m)) if m.eq_ignore_ascii_case("FULL") => {}
        _ => warn!(source = %config.name,
            "binlog_row_metadata is not FULL: column names come from information_schema (set it to FULL)"),
    }
    Ok(ServerInfo { version, server_id })
}

async fn resolve_start(
    conn: &mut Conn,
    config: &MysqlSourceConfig,
    resume: Option<Resume>,
    flavor: Flavor,
) -> Result<Start, MysqlError> {
    let start = match resume {
        Some(Resume::Binlog { file, pos, gtid }) if !file.is_empty() => {
            if lablake_model::position::binlog_file_seq(&file).is_none() {
                return Err(MysqlError::config("resume.file", "must be a binlog file name such as binlog.000042"));
            }
            Start::File { file, pos, gtid }
        }
        Some(Resume::Binlog { gtid: Some(g), .. }) if !g.trim().is_empty() => Start::Gtid { gtid: g },
        Some(Resume::Binlog { .. }) => return Err(MysqlError::config("resume", "needs a file or a GTID")),
        Some(Resume::Lsn(_)) => {
            return Err(MysqlError::config(
                "resume",
                "is a PostgreSQL LSN; a MySQL source resumes from a binlog position",
            ));
        }
        None => match &config.start {
            StartPosition::Earliest => {
                let first: Option<String> = conn
                    .query_first("SHOW BINARY LOGS")
                    .await
                    .map_err(query_err("SHOW BINARY LOGS"))?
                    .map(|row: mysql_async::Row| row.get::<String, usize>(0).unwrap_or_default());
                match first {
                    Some(file) if !file.is_empty() => Start::File { file, pos: 4, gtid: None },
                    _ => {
                        return Err(MysqlError::ServerConfig {
                            setting: "log_bin".into(),
                            reason: "the server lists no binary logs".into(),
                        });
                    }
                }
            }
            StartPosition::Current => {
                let status = match conn.query_first::<mysql_async::Row, _>("SHOW MASTER STATUS").await {
                    Ok(row) => row,
                    Err(_) => conn
                        .query_first::<mysql_async::Row, _>("SHOW BINARY LOG STATUS")
                        .await
                        .map_err(query_err("SHOW BINARY LOG STATUS"))?,
                };
                let Some(row) = status else {
                    return Err(MysqlError::ServerConfig {
                        setting: "log_bin".into(),
                        reason: "SHOW MASTER STATUS is empty".into(),
                    });
                };
                let file: String = row.get(0).unwrap_or_default();
                let pos: u64 = row.get(1).unwrap_or(4);
                Start::File { file, pos, gtid: None }
            }
            StartPosition::File { file, pos } => Start::File { file: file.clone(), pos: *pos, gtid: None },
            StartPosition::Gtid { gtid } => Start::Gtid { gtid: gtid.clone() },
        },
    };
    Ok(match start {
        // MariaDB: the GTID position at a file/pos start makes every resume
        // point usable as @slave_connect_state.
        Start::File { file, pos, gtid: None } if flavor == Flavor::MariaDb => {
            let state: Option<Option<String>> = conn
                .exec_first("SELECT BINLOG_GTID_POS(?, ?)", (file.as_str(), pos))
                .await
                .map_err(query_err("BINLOG_GTID_POS"))?;
            let gtid = state.flatten().filter(|s| !s.is_empty());
            Start::File { file, pos, gtid }
        }
        other => other,
    })
}

async fn open_stream(
    opts: &Opts,
    config: &MysqlSourceConfig,
    start: &Start,
    flavor: Flavor,
) -> Result<BinlogStream, MysqlError> {
    let mut conn = connect(opts, config.connect_timeout).await?;
    let period_ns = u64::try_from(config.heartbeat_interval.as_nanos()).unwrap_or(u64::MAX);
    let set = |what: &'static str| query_err(what);
    // MySQL 8.0.26+ reads `source_heartbeat_period`, older servers and MariaDB `master_heartbeat_period`.
    conn.query_drop(format!("SET @master_heartbeat_period = {period_ns}, @source_heartbeat_period = {period_ns}"))
        .await
        .map_err(set("heartbeat period"))?;
    let mut request = BinlogStreamRequest::new(config.server_id);
    let sids: Vec<Sid<'static>>;
    match start {
        Start::File { file, pos, .. } => {
            if flavor == Flavor::MariaDb {
                // Without this capability MariaDB hides GTID events from the replica.
                conn.query_drop("SET @mariadb_slave_capability = 4").await.map_err(set("slave capability"))?;
            }
            request = request.with_filename(file.as_bytes()).with_pos(*pos);
        }
        Start::Gtid { gtid } => match flavor {
            Flavor::MariaDb => {
                if parse_mariadb_gtid_list(gtid).is_none() {
                    return Err(MysqlError::config("start.gtid", "not a MariaDB GTID list (domain-server-seq,...)"));
                }
                conn.query_drop("SET @mariadb_slave_capability = 4").await.map_err(set("slave capability"))?;
                conn.exec_drop("SET @slave_connect_state = ?", (gtid.as_str(),))
                    .await
                    .map_err(set("slave_connect_state"))?;
                conn.query_drop("SET @slave_gtid_strict_mode = 1").await.map_err(set("gtid strict mode"))?;
                conn.query_drop("SET @slave_gtid_ignore_duplicates = 0").await.map_err(set("gtid duplicates"))?;
                request = request.with_filename(b"").with_pos(4u64);
            }
            Flavor::MySql => {
                sids = parse_mysql_gtid_set(gtid)?;
                request = request.with_gtid().with_gtid_set(sids);
            }
        },
    }
    conn.get_binlog_stream(request).await.map_err(|e| MysqlError::from_driver(e, true))
}

/// Parses a MySQL GTID set `uuid:1-5:7,uuid2:1-3`.
fn parse_mysql_gtid_set(set: &str) -> Result<Vec<Sid<'static>>, MysqlError> {
    let bad = |reason: &str| MysqlError::config("start.gtid", reason.to_owned());
    let mut out = Vec::new();
    for part in set.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        // Guard the driver's interval parser against u64 overflow.
        for n in part.split([':', '-']).skip(1) {
            if n.parse::<u64>().is_ok_and(|v| v >= u64::MAX - 1) {
                return Err(bad("GTID number out of range"));
            }
        }
        out.push(part.parse::<Sid<'static>>().map_err(|_| bad("not a MySQL GTID set (uuid:1-5,...)"))?);
    }
    if out.is_empty() {
        return Err(bad("empty GTID set"));
    }
    Ok(out)
}

/// rustls needs one process-wide crypto provider. When several are compiled in
/// (the AWS SDK brings aws-lc-rs, mysql_async ring), none is chosen by default and
/// the first TLS handshake would panic; install ring unless one is installed.
pub(crate) fn ensure_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Err only means another thread installed one first: fine either way.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The source and its `next()` future can move between tokio worker threads.
    #[allow(dead_code)]
    fn next_is_send(
        s: &mut MysqlSource,
    ) -> impl std::future::Future<Output = Result<SourceItem, MysqlError>> + Send + '_ {
        s.next()
    }

    #[allow(dead_code)]
    fn start_is_send(
        c: MysqlSourceConfig,
    ) -> impl std::future::Future<Output = Result<MysqlSource, MysqlError>> + Send {
        MysqlSource::start(c, None)
    }

    #[test]
    fn mysql_gtid_sets() {
        let s =
            parse_mysql_gtid_set("3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5:7, 4e11fa47-71ca-11e1-9e33-c80aa9429562:1")
                .unwrap();
        assert_eq!(s.len(), 2);
        assert!(parse_mysql_gtid_set("0-1-5").is_err());
        assert!(parse_mysql_gtid_set("3e11fa47-71ca-11e1-9e33-c80aa9429562:18446744073709551615").is_err());
        assert!(parse_mysql_gtid_set("").is_err());
    }
}

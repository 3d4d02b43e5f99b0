//! `lablake`: run the CDC pipeline, or one stage of it.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use lablake::config::{Config, LogFormat};
use lablake::status;
use lablake_checkpoint::{
    BatchStore, DynamoStore, Fence, GenerationStore, LeaseName, LeaseStore, PartitionRef, SchemaStore, SinkStore,
    SnapshotState, SnapshotStore,
};
use lablake_lake::Lake;
use lablake_model::TableId;
use lablake_pipeline::curator::GenerationMode;
use lablake_pipeline::source::SourceStage;
use lablake_pipeline::supervise::{LeaseHeld, supervise};
use lablake_pipeline::{Curator, SourceConfig, metrics, snapshot};
use tokio::sync::watch;
use tokio::task::JoinSet;

#[derive(Parser)]
#[command(
    name = "lablake",
    version,
    about = "Change-data-capture from MySQL/MariaDB and PostgreSQL to per-tenant Kafka topics, a curated Parquet \
             lake and Snowflake"
)]
struct Cli {
    /// Configuration file (TOML). `LABLAKE__SECTION__KEY` variables override it.
    #[arg(long, short, env = "LABLAKE_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs every configured source, the curators and (when `[snowflake]` is
    /// configured) the Snowflake sink in one process.
    Run {
        /// Shard name of the curator's lease.
        #[arg(long, default_value = "0")]
        shard: String,
    },
    /// Runs the sources only (binlog / replication slot → Kafka).
    Source {
        /// Only this source (default: all configured).
        #[arg(long)]
        name: Option<String>,
    },
    /// Runs the curator only (Kafka → curated Parquet).
    Curate {
        #[arg(long, default_value = "0")]
        shard: String,
    },
    /// Runs the Snowflake sink only (curated batches → Snowflake).
    Sink,
    /// Prints per tenant and table what is curated and how far behind.
    Status {
        #[arg(long)]
        tenant: Option<String>,
        /// JSON output.
        #[arg(long)]
        json: bool,
        /// Also read the curated files and count live rows (de-duplicated by key and position).
        #[arg(long)]
        lake: bool,
    },
    /// Requests a snapshot (full load) of a tenant's table, or of all its
    /// tables, from the running source, and follows its progress.
    Snapshot {
        #[arg(long)]
        tenant: String,
        /// `table` or `schema.table` (default: every table of the tenant).
        #[arg(long)]
        table: Option<String>,
        /// Only this source (default: every source).
        #[arg(long)]
        source: Option<String>,
        /// Return after recording the request.
        #[arg(long)]
        no_wait: bool,
    },
    /// Prints the schema history of a tenant's table: every version, where it
    /// was first seen and what changed.
    Schema {
        #[arg(long)]
        tenant: String,
        /// `database.table` (PostgreSQL: `schema.table`).
        #[arg(long)]
        table: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Sends the records a tenant's curators dead-lettered back to the topic
    /// they came from (after a fix), once: the redrive's own consumer group
    /// remembers how far it got. Source dead letters are counted, not sent.
    Redrive {
        #[arg(long)]
        tenant: String,
        /// Seconds without a new dead letter after which the topic counts as read.
        #[arg(long, default_value_t = 5)]
        quiet_secs: u64,
    },
    /// Moves a stopped partition of a curator past the records its log lost
    /// (take a snapshot of its tables first: the records in between are never
    /// curated). Takes the curator's lease, so a running curator of that
    /// group and shard stops, fenced; start it again afterwards.
    MovePartition {
        /// Consumer group (default: `curate.group`).
        #[arg(long)]
        group: Option<String>,
        #[arg(long, default_value = "0")]
        shard: String,
        #[arg(long)]
        topic: String,
        #[arg(long)]
        partition: i32,
        /// The new next offset (forward only).
        #[arg(long)]
        to: i64,
    },
    /// Rebuilds a tenant's curated data from its topics (from offset 0) into
    /// a new generation while the live path goes on, checks it against the
    /// active generation (row count and content digest per table), then
    /// makes it the active one in one conditional write (ADR 0013). Run it
    /// again after a kill: it continues the pending generation.
    Replay {
        #[arg(long)]
        tenant: String,
        /// Switch even when the rebuilt data differs from the active
        /// generation's (a replay after a curation fix).
        #[arg(long)]
        accept_difference: bool,
        /// Stop after the verification gate (the generation stays verified;
        /// run again without it to switch).
        #[arg(long)]
        no_cut_over: bool,
        /// Switch back to the generation active before the last cut-over.
        #[arg(long, conflicts_with_all = ["accept_difference", "no_cut_over"])]
        rollback: bool,
        /// Seconds between progress lines.
        #[arg(long, default_value_t = 5)]
        progress_secs: u64,
    },
    /// Validates the configuration and exits.
    CheckConfig,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let cfg = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    init_tracing(&cfg);
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli.command, cfg)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "lablake failed");
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_tracing(cfg: &Config) {
    let spec = std::env::var("LABLAKE_LOG").unwrap_or_else(|_| cfg.log.level.clone());
    let mut filter = tracing_subscriber::EnvFilter::new(&spec);
    // pg_walstream logs every standby status update at INFO; keep it quiet
    // unless asked for by name.
    if !spec.contains("pg_walstream")
        && let Ok(d) = "pg_walstream=warn".parse()
    {
        filter = filter.add_directive(d);
    }
    // Colours only on a terminal: log files and collectors get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let b = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr);
    if cfg.log.format == LogFormat::Json { b.json().init() } else { b.init() }
}

async fn run(command: Command, cfg: Config) -> anyhow::Result<()> {
    match command {
        Command::CheckConfig => {
            println!("configuration is valid");
            Ok(())
        }
        Command::Status { tenant, json, lake } => status(&cfg, tenant.as_deref(), json, lake).await,
        Command::Schema { tenant, table, json } => schema(&cfg, &tenant, &table, json).await,
        Command::Redrive { tenant, quiet_secs } => redrive(&cfg, &tenant, quiet_secs).await,
        Command::MovePartition { group, shard, topic, partition, to } => {
            let group = group.unwrap_or_else(|| cfg.curate.group.clone());
            move_partition(&cfg, &group, &shard, &topic, partition, to).await
        }
        Command::Replay { tenant, accept_difference, no_cut_over, rollback, progress_secs } => {
            if rollback {
                return rollback_generation(&cfg, &tenant).await;
            }
            replay(&cfg, &tenant, accept_difference, no_cut_over, progress_secs).await
        }
        Command::Snapshot { tenant, table, source, no_wait } => {
            request_snapshots(&cfg, &tenant, table.as_deref(), source.as_deref(), no_wait).await
        }
        Command::Run { shard } => {
            let sink = cfg.snowflake.is_some();
            run_stages(&cfg, Stages { sources: Some(None), curators: Some(shard), sink }).await
        }
        Command::Source { name } => run_stages(&cfg, Stages { sources: Some(name), curators: None, sink: false }).await,
        Command::Curate { shard } => {
            run_stages(&cfg, Stages { sources: None, curators: Some(shard), sink: false }).await
        }
        Command::Sink => {
            anyhow::ensure!(cfg.snowflake.is_some(), "no sink to run: configure [snowflake]");
            run_stages(&cfg, Stages { sources: None, curators: None, sink: true }).await
        }
    }
}

/// Connects to the checkpoint table. A retryable failure (a reset, a 5xx, a throttle: the
/// service is there but answered badly once) is tried again with backoff for up to a minute
/// before the process gives up; a configuration or permission error fails at once.
async fn store(cfg: &Config) -> anyhow::Result<Arc<DynamoStore>> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut failures = 0;
    loop {
        match DynamoStore::connect(&cfg.checkpoint).await {
            Ok(store) => return Ok(Arc::new(store)),
            Err(e) if e.is_retryable() && std::time::Instant::now() < deadline => {
                failures += 1;
                let wait = lablake_pipeline::supervise::backoff(failures);
                tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "connecting to DynamoDB failed; retrying");
                tokio::time::sleep(wait).await;
            }
            Err(e) => return Err(anyhow::Error::new(e).context("connecting to DynamoDB")),
        }
    }
}

/// `lablake replay`: builds, verifies and switches on a new generation.
async fn replay(
    cfg: &Config,
    tenant: &str,
    accept_difference: bool,
    no_cut_over: bool,
    progress_secs: u64,
) -> anyhow::Result<()> {
    let store = store(cfg).await?;
    let lanes = cfg.user_tables.curators(&cfg.curate).into_iter().map(|(lane, curate, _)| (lane, curate)).collect();
    let replay = lablake_pipeline::replay::Replay {
        bus: cfg.kafka.clone(),
        lake: Lake::new(cfg.lake.clone())?,
        store,
        lanes,
        tenant: tenant.to_owned(),
        accept_difference,
        no_cut_over,
        code_version: env!("CARGO_PKG_VERSION").to_owned(),
        config_hash: curation_config_hash(cfg),
        progress_every: std::time::Duration::from_secs(progress_secs.max(1)),
    };
    let report = replay.run(shutdown_on_signal()).await?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// A hash of the settings that decide what curation writes (`[curate]`,
/// `[user_tables]`, `[kafka] topic_prefix`), recorded with a generation.
fn curation_config_hash(cfg: &Config) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    format!("{:?}|{:?}|{}", cfg.curate, cfg.user_tables, cfg.kafka.topic_prefix).hash(&mut h);
    format!("{:016x}", h.finish())
}

/// `lablake replay --rollback`: the generation active before the last
/// cut-over becomes active again (one conditional write).
async fn rollback_generation(cfg: &Config, tenant: &str) -> anyhow::Result<()> {
    let store = store(cfg).await?;
    let mut g = store.load_generations(tenant).await?;
    let from = g.active;
    let to = g.rollback(metrics::now_ms())?;
    store.save_generations(&g).await.context("switching back (another change came in between: run it again)")?;
    println!("replay: tenant {tenant}: generation {to} is active again (was {from})");
    Ok(())
}

/// `lablake status`: the status table, its JSON, or what the lake holds.
async fn status(cfg: &Config, tenant: Option<&str>, json: bool, lake: bool) -> anyhow::Result<()> {
    let store = store(cfg).await?;
    let (rows, gens) = status::collect(store.as_ref(), tenant).await?;
    let active = |t: &str| gens.iter().find(|g| g.tenant == t).map_or(0, |g| g.active);
    if lake {
        let l = Lake::new(cfg.lake.clone())?;
        let mut out = Vec::new();
        for r in rows.iter().filter(|r| r.table != "*") {
            let t = TableId::new(&r.tenant, &r.database, &r.table);
            out.push(status::lake_table(&l, &t, active(&r.tenant)).await?);
        }
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        let mut sinks = Vec::new();
        if cfg.snowflake.is_some() {
            let mut seen = std::collections::BTreeSet::new();
            for g in gens.iter().map(|g| g.active).chain([0]) {
                if seen.insert(g) {
                    let loaded = store.in_generation(g).sinks(lablake_pipeline::sink::SINK).await?;
                    sinks.extend(loaded.into_iter().filter(|s| active(&s.table.tenant) == g));
                }
            }
        }
        print!("{}", status::render(&rows, &sinks, metrics::now_ms()));
        print!("{}", status::render_generations(&gens));
    }
    Ok(())
}

/// `lablake schema`: a table's schema history.
async fn schema(cfg: &Config, tenant: &str, table: &str, json: bool) -> anyhow::Result<()> {
    let Some((database, name)) = table.split_once('.') else {
        anyhow::bail!("--table must be `database.table`, got `{table}`");
    };
    let id = TableId::new(tenant, database, name);
    let history = store(cfg).await?.schema_history(&id).await?;
    if history.is_empty() {
        anyhow::bail!("no schema history for {id} (not captured yet, or not this tenant)");
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&history)?);
        return Ok(());
    }
    for v in &history {
        let cols: Vec<String> = v
            .columns
            .iter()
            .map(|c| format!("{} {}{}", c.name, c.ty, if c.nullable { "" } else { " not null" }))
            .collect();
        println!("v{} first at {}: {}", v.version, v.first_position, v.changes.join("; "));
        println!("    columns: {}; key: {}", cols.join(", "), v.primary_key.join(", "));
    }
    Ok(())
}

async fn move_partition(
    cfg: &Config,
    group: &str,
    shard: &str,
    topic: &str,
    partition: i32,
    to: i64,
) -> anyhow::Result<()> {
    let store = store(cfg).await?;
    let at = PartitionRef::new(group, topic, partition);
    let current = store.load_partition(&at).await?.with_context(|| format!("no checkpoint for {at}"))?;
    // The lease that guards the partition: its own with group assignment
    // (its current member stops writing it, fenced, and Kafka's group hands
    // it on), else the shard's (whose curator stops).
    let lease = match cfg.curate.assignment {
        lablake_pipeline::curator::Assignment::Group => LeaseName::partition(group, topic, partition),
        lablake_pipeline::curator::Assignment::All => LeaseName::curator(group, shard),
    };
    let generation = store.acquire_lease(&lease).await?;
    let moved = store.move_partition(&at, &Fence::new(lease, generation), current.version, to).await?;
    tracing::warn!(partition = %at, from = current.next_offset, to = moved.next_offset, "partition moved past a gap");
    println!("{at}: next offset {} -> {} (version {})", current.next_offset, moved.next_offset, moved.version);
    Ok(())
}

async fn redrive(cfg: &Config, tenant: &str, quiet_secs: u64) -> anyhow::Result<()> {
    let (bus, tenant) = (cfg.kafka.clone(), tenant.to_owned());
    let group = format!("{}-redrive", cfg.curate.group);
    let report = tokio::task::spawn_blocking(move || {
        lablake_bus::redrive::redrive_dead_letters(&bus, &tenant, &group, std::time::Duration::from_secs(quiet_secs))
    })
    .await??;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// Which stages a command runs in this process.
struct Stages {
    /// `Some(None)`: every source; `Some(Some(n))`: only source `n`.
    sources: Option<Option<String>>,
    /// The curators' shard name.
    curators: Option<String>,
    sink: bool,
}

/// Runs the stages until SIGTERM (they drain). A stage that fails with a
/// retryable error is started again in-process after a backoff
/// (`lablake_pipeline::supervise`); the first error that needs a person ends
/// the process, naming it (a supervisor may restart it; every stage
/// continues from its checkpoints).
async fn run_stages(cfg: &Config, stages: Stages) -> anyhow::Result<()> {
    let store = store(cfg).await?;
    if let Some(addr) = cfg.metrics.listen {
        tokio::spawn(async move {
            if let Err(e) = metrics::serve(addr).await {
                tracing::error!(error = %e, "metrics endpoint failed");
            }
        });
    }
    let shutdown = shutdown_on_signal();
    let mut tasks: JoinSet<Result<(), lablake_pipeline::PipelineError>> = JoinSet::new();
    if let Some(only) = &stages.sources {
        let sources: Vec<SourceConfig> =
            cfg.sources.iter().filter(|s| only.as_ref().is_none_or(|o| o == s.name())).cloned().collect();
        anyhow::ensure!(
            !sources.is_empty(),
            "no source to run: configure [[sources]] (kind = \"mysql\" or \"postgres\")"
        );
        lablake_pipeline::source::check_distinct_tables(&cfg.sources).await?;
        let lanes = cfg.user_tables.lanes(&cfg.snapshot);
        for source in sources {
            let (lanes, bus, store, stop) = (lanes.clone(), cfg.kafka.clone(), store.clone(), shutdown.clone());
            let name = format!("source `{}`", source.name());
            let lease = lease_held(cfg, &shutdown);
            tasks.spawn(supervise(name, shutdown.clone(), lease.is_standby(), move || {
                let stage = SourceStage {
                    lanes: lanes.clone(),
                    bus: bus.clone(),
                    store: store.clone(),
                    shutdown: stop.clone(),
                    lease: lease.clone(),
                };
                source.clone().run(stage)
            }));
        }
    }
    if let Some(shard) = &stages.curators {
        for (lane, curate, inherit_group) in cfg.user_tables.curators(&cfg.curate) {
            let (bus, lake, store, shard, stop) =
                (cfg.kafka.clone(), Lake::new(cfg.lake.clone())?, store.clone(), shard.clone(), shutdown.clone());
            let name = format!("curator `{}` ({} lane)", curate.group, lane.name());
            let lease = LeaseHeld::default();
            tasks.spawn(supervise(name, shutdown.clone(), false, move || {
                let curator = Curator {
                    bus: bus.clone(),
                    curate: curate.clone(),
                    lake: lake.clone(),
                    store: store.clone(),
                    shard: shard.clone(),
                    lane: lane.clone(),
                    inherit_group: inherit_group.clone(),
                    lease: lease.clone(),
                    generations: GenerationMode::Follow,
                };
                curator.run(stop.clone())
            }));
        }
    }
    if let (Some(sf), true) = (&cfg.snowflake, stages.sink) {
        let bucket = cfg.lake.bucket_per_tenant.clone().unwrap_or_else(|| cfg.lake.bucket.clone());
        let (sf, lake, store, stop) = (sf.clone(), Lake::new(cfg.lake.clone())?, store.clone(), shutdown.clone());
        let lease = lease_held(cfg, &shutdown);
        tasks.spawn(supervise("snowflake sink".into(), shutdown.clone(), lease.is_standby(), move || {
            let (sf, lake, bucket, store) = (sf.clone(), lake.clone(), bucket.clone(), store.clone());
            lablake_pipeline::sink::run_sink(sf, lake, bucket, store, stop.clone(), lease.clone())
        }));
    }
    while let Some(res) = tasks.join_next().await {
        res.context("task panicked")??;
    }
    Ok(())
}

/// How a source or sink stage holds its lease: taken at once, or as a
/// standby (`[leases] standby = true`).
fn lease_held(cfg: &Config, shutdown: &watch::Receiver<bool>) -> LeaseHeld {
    if cfg.leases.standby { LeaseHeld::standby(cfg.leases.ttl, shutdown.clone()) } else { LeaseHeld::default() }
}

/// A receiver that turns true on SIGTERM or Ctrl-C.
fn shutdown_on_signal() -> watch::Receiver<bool> {
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                return;
            }
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("shutting down: draining in-flight batches");
        let _ = stop_tx.send(true);
    });
    stop_rx
}

/// `lablake snapshot`: records requests the running sources pick up, then
/// prints progress until every requested table is done.
async fn request_snapshots(
    cfg: &Config,
    tenant: &str,
    table: Option<&str>,
    source: Option<&str>,
    no_wait: bool,
) -> anyhow::Result<()> {
    let store = store(cfg).await?;
    let wanted = |t: &TableId| {
        &*t.tenant == tenant && table.is_none_or(|x| *t.table == *x || format!("{}.{}", t.database, t.table) == x)
    };
    let mut requested: Vec<(String, TableId, u64)> = Vec::new();
    for scfg in cfg.sources.iter().filter(|s| source.is_none_or(|n| n == s.name())) {
        let name = scfg.name();
        let mut mine = Vec::new();
        for t in scfg.tables().await?.into_iter().filter(|t| wanted(t)) {
            store.request_snapshot(name, &t, false).await?;
            mine.push(t);
        }
        // The request numbers just recorded (one listing per source).
        let current = store.snapshots(name).await?;
        for t in mine {
            let request = current.iter().find(|p| p.table == t).map_or(0, |p| p.request);
            println!("requested: source {name} {t} (request {request})");
            requested.push((name.to_owned(), t, request));
        }
    }
    if requested.is_empty() {
        anyhow::bail!(
            "no table of tenant `{tenant}`{} in the sources{}",
            table.map(|t| format!(" named `{t}`")).unwrap_or_default(),
            source.map(|s| format!(" (source `{s}`)")).unwrap_or_default()
        );
    }
    if no_wait {
        return Ok(());
    }
    let mut last_lines: Vec<String> = Vec::new();
    loop {
        let mut lines = Vec::new();
        let mut all_done = true;
        for (src, t, request) in &requested {
            match store.snapshots(src).await?.into_iter().find(|p| &p.table == t) {
                Some(p) if p.request == *request => {
                    all_done &= p.state == SnapshotState::Done;
                    lines.push(snapshot::progress_line(&p, metrics::now_ms()));
                }
                Some(_) => lines.push(format!("{t}: superseded by a newer request")),
                None => {
                    all_done = false;
                    lines.push(format!("{t}: waiting"));
                }
            }
        }
        if lines != last_lines {
            for l in &lines {
                println!("{l}");
            }
            last_lines = lines;
        }
        if all_done {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

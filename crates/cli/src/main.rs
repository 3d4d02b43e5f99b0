//! `lablake`: run the CDC pipeline, or one stage of it.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use lablake::config::{Config, LogFormat};
use lablake::curator::Curator;
use lablake::lane::Lane;
use lablake::{metrics, snapshot, source, status};
use lablake_checkpoint::DynamoStore;
use lablake_lake::Lake;
use tokio::sync::watch;
use tokio::task::JoinSet;

#[derive(Parser)]
#[command(
    name = "lablake",
    version,
    about = "Change-data-capture from MySQL/MariaDB to per-tenant Kafka topics and a curated Parquet lake"
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
    /// Runs every configured source and the curator in one process.
    Run {
        /// Shard name of the curator's lease.
        #[arg(long, default_value = "0")]
        shard: String,
    },
    /// Runs the sources only (binlog → Kafka).
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
    if let Command::CheckConfig = command {
        println!("configuration is valid");
        return Ok(());
    }
    let store = Arc::new(DynamoStore::connect(&cfg.checkpoint).await.context("connecting to DynamoDB")?);
    if let Command::Status { tenant, json, lake } = command {
        let rows = status::collect(store.as_ref(), tenant.as_deref()).await?;
        if lake {
            let l = Lake::new(cfg.lake.clone())?;
            let mut out = Vec::new();
            for r in rows.iter().filter(|r| r.table != "*") {
                let t = lablake_model::TableId {
                    tenant: r.tenant.as_str().into(),
                    database: r.database.as_str().into(),
                    table: r.table.as_str().into(),
                };
                out.push(status::lake_table(&l, &t).await?);
            }
            println!("{}", serde_json::to_string_pretty(&out)?);
            return Ok(());
        }
        if json {
            println!("{}", serde_json::to_string_pretty(&rows)?);
        } else {
            let sinks = match cfg.snowflake {
                Some(_) => lablake_checkpoint::CheckpointStore::sinks(store.as_ref(), lablake::sink::SINK).await?,
                None => Vec::new(),
            };
            print!("{}", status::render(&rows, &sinks, (metrics::now_secs() * 1000.0) as i64));
        }
        return Ok(());
    }
    if let Command::Schema { tenant, table, json } = &command {
        use lablake_checkpoint::CheckpointStore;
        let Some((database, name)) = table.split_once('.') else {
            anyhow::bail!("--table must be `database.table`, got `{table}`");
        };
        let id =
            lablake_model::TableId { tenant: tenant.as_str().into(), database: database.into(), table: name.into() };
        let history = store.schema_history(&id).await?;
        if history.is_empty() {
            anyhow::bail!("no schema history for {tenant}/{table} (not captured yet, or not this tenant)");
        }
        if *json {
            println!("{}", serde_json::to_string_pretty(&history)?);
        } else {
            for v in &history {
                let cols: Vec<String> = v
                    .columns
                    .iter()
                    .map(|c| format!("{} {}{}", c.name, c.ty, if c.nullable { "" } else { " not null" }))
                    .collect();
                println!("v{} first at {}: {}", v.version, v.first_position, v.changes.join("; "));
                println!("    columns: {}; key: {}", cols.join(", "), v.primary_key.join(", "));
            }
        }
        return Ok(());
    }
    if let Command::Snapshot { tenant, table, source, no_wait } = command {
        return request_snapshots(&cfg, store.as_ref(), &tenant, table.as_deref(), source.as_deref(), no_wait).await;
    }
    if let Some(addr) = cfg.metrics.listen {
        tokio::spawn(async move {
            if let Err(e) = metrics::serve(addr).await {
                tracing::error!(error = %e, "metrics endpoint failed");
            }
        });
    }
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
    let mut tasks: JoinSet<anyhow::Result<()>> = JoinSet::new();
    let run_sink = matches!(command, Command::Run { .. } | Command::Sink);
    let sink_only = matches!(command, Command::Sink);
    let (run_sources, run_curator, only, shard) = match command {
        Command::Run { shard } => (true, true, None, shard),
        Command::Source { name } => (true, false, name, String::new()),
        Command::Curate { shard } => (false, true, None, shard),
        Command::Sink => (false, false, None, String::new()),
        Command::Status { .. } | Command::Snapshot { .. } | Command::Schema { .. } | Command::CheckConfig => {
            unreachable!("handled above")
        }
    };
    let rule = cfg.user_tables.rule();
    let lanes = snapshot::Lanes {
        core: cfg.snapshot.clone(),
        user: rule.is_enabled().then(|| (rule.clone(), cfg.user_tables.snapshot(&cfg.snapshot))),
    };
    if run_sources {
        let mut any = false;
        for scfg in cfg.sources.clone() {
            let name = scfg.name.clone();
            if only.as_ref().is_some_and(|o| o != &name) {
                continue;
            }
            any = true;
            let (bus, store, stop, snap) = (cfg.kafka.clone(), store.clone(), stop_rx.clone(), lanes.clone());
            tasks.spawn(async move { source::run_source(&name, scfg, &snap, &bus, store, stop).await });
        }
        for scfg in cfg.postgres_sources.clone() {
            let name = scfg.name.clone();
            if only.as_ref().is_some_and(|o| o != &name) {
                continue;
            }
            any = true;
            let (bus, store, stop, snap) = (cfg.kafka.clone(), store.clone(), stop_rx.clone(), lanes.clone());
            tasks.spawn(async move { source::run_pg_source(&name, scfg, &snap, &bus, store, stop).await });
        }
        if !any {
            anyhow::bail!("no source to run: configure [[sources]] or [[postgres_sources]]");
        }
    }
    if run_curator {
        let core_lane = if rule.is_enabled() { Lane::Core(rule.clone()) } else { Lane::All };
        let curator = Curator {
            bus: cfg.kafka.clone(),
            curate: cfg.curate.clone(),
            lake: Lake::new(cfg.lake.clone())?,
            store: store.clone(),
            shard: shard.clone(),
            lane: core_lane,
            inherit_group: None,
        };
        let stop = stop_rx.clone();
        tasks.spawn(async move { curator.run(stop).await });
        if rule.is_enabled() {
            // The user-defined lane: its own consumer group, lease and memory budget.
            let curator = Curator {
                bus: cfg.kafka.clone(),
                curate: cfg.user_tables.curate(&cfg.curate),
                lake: Lake::new(cfg.lake.clone())?,
                store: store.clone(),
                shard,
                lane: Lane::User(rule.clone()),
                inherit_group: Some(cfg.curate.group.clone()),
            };
            let stop = stop_rx.clone();
            tasks.spawn(async move { curator.run(stop).await });
        }
    }
    match (&cfg.snowflake, run_sink) {
        (Some(sf), true) => {
            let (sf, store, stop) = (sf.clone(), store.clone(), stop_rx.clone());
            let bucket = cfg.lake.bucket_per_tenant.clone().unwrap_or_else(|| cfg.lake.bucket.clone());
            let lake = Lake::new(cfg.lake.clone())?;
            tasks.spawn(async move { lablake::sink::run_sink(sf, lake, bucket, store, stop).await });
        }
        (None, true) if sink_only => {
            anyhow::bail!("no sink to run: configure [snowflake]");
        }
        _ => {}
    }
    // The first task to fail stops the process (a supervisor restarts it; all
    // state is in the checkpoints, so a restart loses and duplicates nothing).
    while let Some(res) = tasks.join_next().await {
        res.context("task panicked")??;
    }
    Ok(())
}

/// `lablake snapshot`: records requests the running sources pick up, then
/// prints progress until every requested table is done.
async fn request_snapshots(
    cfg: &Config,
    store: &DynamoStore,
    tenant: &str,
    table: Option<&str>,
    source: Option<&str>,
    no_wait: bool,
) -> anyhow::Result<()> {
    use lablake_checkpoint::{CheckpointStore, SnapshotState};
    let mut requested: Vec<(String, lablake_model::TableId, u64)> = Vec::new();
    let wanted = |t: &lablake_model::TableId| {
        &*t.tenant == tenant && table.is_none_or(|x| *t.table == *x || format!("{}.{}", t.database, t.table) == x)
    };
    let mut sources: Vec<(String, Vec<lablake_model::TableId>)> = Vec::new();
    for scfg in cfg.sources.iter().filter(|m| source.is_none_or(|s| s == m.name)) {
        let mut snapshotter = lablake_mysql::MysqlSnapshotter::connect(scfg)
            .await
            .with_context(|| format!("connecting to source `{}`", scfg.name))?;
        sources.push((scfg.name.clone(), snapshotter.tables().await?));
    }
    for scfg in cfg.postgres_sources.iter().filter(|p| source.is_none_or(|s| s == p.name)) {
        let mut snapshotter = lablake_postgres::PgSnapshotter::connect(scfg)
            .await
            .with_context(|| format!("connecting to source `{}`", scfg.name))?;
        sources.push((scfg.name.clone(), snapshotter.tables().await?));
    }
    for (name, tables) in sources {
        let mut mine = Vec::new();
        for t in tables.into_iter().filter(|t| wanted(t)) {
            store.request_snapshot(&name, &t, false).await?;
            mine.push(t);
        }
        // The request numbers just recorded (one listing per source).
        let current = store.snapshots(&name).await?;
        for t in mine {
            let request = current.iter().find(|p| p.table == t).map_or(0, |p| p.request);
            println!("requested: source {name} {}/{}.{} (request {request})", t.tenant, t.database, t.table);
            requested.push((name.clone(), t, request));
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
            let p = store.snapshots(src).await?.into_iter().find(|p| &p.table == t);
            match p {
                Some(p) if p.request == *request => {
                    all_done &= p.state == SnapshotState::Done;
                    lines.push(snapshot::progress_line(&p, (metrics::now_secs() * 1000.0) as i64));
                }
                Some(_) => {
                    lines.push(format!("{}/{}.{}: superseded by a newer request", t.tenant, t.database, t.table))
                }
                None => {
                    all_done = false;
                    lines.push(format!("{}/{}.{}: waiting", t.tenant, t.database, t.table));
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

//! Shared harness of the end-to-end tests.
//!
//! Every address comes from the environment (`dev/services env` prints them;
//! `docker/compose.env` gives the compose stack's), with the local defaults.
//! Each test uses its own tenants, topic prefix, consumer group and DynamoDB
//! table, so tests can share the services and run in parallel.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use arrow::array::{Array, RecordBatch};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use lablake_lake::{Lake, LakeConfig};
use mysql_async::prelude::Queryable;
use rand::Rng;

pub mod broker;
pub mod http_fault;
pub mod proxy;
pub mod snowflake;
use rdkafka::Message;
use rdkafka::consumer::Consumer;
use rdkafka::message::Headers;

/// A service address from the environment, or its local default.
/// The MariaDB `orders` table several end-to-end tests share.
pub const ORDERS_DDL: &str = "CREATE TABLE orders (
    id INT NOT NULL PRIMARY KEY,
    patient VARCHAR(40) NOT NULL,
    status ENUM('new','collected','resulted','cancelled') NOT NULL,
    amount DECIMAL(12,2),
    updated DATETIME(6) NOT NULL,
    note VARCHAR(200)
) ENGINE=InnoDB";

/// The first differing keys of two table states (key → columns), for a
/// failure message: `source` is `expected`, `label` names `got`.
pub fn state_diff(
    expected: &BTreeMap<String, BTreeMap<String, String>>,
    got: &BTreeMap<String, BTreeMap<String, String>>,
    label: &str,
) -> String {
    expected
        .iter()
        .filter(|(k, v)| got.get(*k) != Some(*v))
        .take(5)
        .map(|(k, v)| format!("{k}: source {v:?}\n   {label} {:?}", got.get(k)))
        .collect::<Vec<_>>()
        .join("\n")
}

pub fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

pub fn pg_url() -> String {
    env_or("LABLAKE_PG_URL", "postgres://postgres@127.0.0.1:25432/postgres")
}

/// A connected PostgreSQL client (the connection runs on its own task).
pub async fn pg_client() -> anyhow::Result<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(&pg_url(), tokio_postgres::NoTls)
        .await
        .context("connecting to PostgreSQL (is `dev/services up` running?)")?;
    tokio::spawn(conn);
    Ok(client)
}

pub fn mysql_url() -> String {
    env_or("LABLAKE_MYSQL_URL", "mysql://lablake:lablake@127.0.0.1:23306")
}
pub fn kafka_brokers() -> String {
    env_or("LABLAKE_KAFKA_BROKERS", "127.0.0.1:29092")
}
pub fn s3_endpoint() -> String {
    env_or("LABLAKE_S3_ENDPOINT", "http://127.0.0.1:25000")
}
pub fn s3_bucket() -> String {
    env_or("LABLAKE_S3_BUCKET", "lablake")
}
pub fn dynamodb_endpoint() -> String {
    env_or("LABLAKE_DYNAMODB_ENDPOINT", "http://127.0.0.1:25000")
}

/// Sets the AWS variables the local services accept, when unset.
pub fn aws_defaults() {
    for (k, v) in [
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
        ("AWS_ALLOW_HTTP", "true"),
    ] {
        if std::env::var_os(k).is_none() {
            unsafe_set_env(k, v);
        }
    }
}

#[allow(unsafe_code)]
fn unsafe_set_env(k: &str, v: &str) {
    // SAFETY: called at test start-up with the same constant values from every
    // test; nothing reads these variables concurrently in a way that races.
    unsafe { std::env::set_var(k, v) }
}

/// Runs the local services script (`LABLAKE_SERVICES`, default the
/// repository's `dev/services`) with `args`, e.g. `["restart", "--crash", "mysql"]`.
/// Against another stack (docker compose), point `LABLAKE_SERVICES` at a
/// script that takes the same commands.
pub fn services(args: &[&str]) -> anyhow::Result<()> {
    let script = std::env::var_os("LABLAKE_SERVICES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../dev/services"));
    let out = Command::new(&script).args(args).output().with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!(
            "{} {} failed ({}): {}",
            script.display(),
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Each crash window of the source, snapshot and curator stages as a
/// failpoint (`LABLAKE_FAILPOINTS=<name>@<hit>`, crate `lablake-failpoint`)
/// and the hit at which a test fires it: a record sent, not acknowledged; an
/// acknowledgement not checkpointed; a checkpoint the server was not told
/// of; a snapshot chunk without its progress; a batch intent without its
/// file; a file without its commit; a commit. `snapshot.before_progress`
/// needs a snapshot to run (a table with rows before the first start).
pub const CRASH_WINDOWS: &[(&str, u32)] = &[
    ("snapshot.before_progress", 1),
    ("source.after_send", 150),
    ("source.before_save", 2),
    ("source.after_save", 2),
    ("curate.after_begin", 2),
    ("curate.after_put", 2),
    ("curate.after_commit", 2),
];

/// Runs `statements` in one transaction in `database` of a `kind` source
/// (MariaDB through `pool`, PostgreSQL on a new connection to [`pg_url`]).
pub async fn exec_on(kind: Kind, pool: &mysql_async::Pool, database: &str, statements: &[&str]) -> anyhow::Result<()> {
    match kind {
        Kind::Mysql => {
            let mut c = pool.get_conn().await?;
            c.query_drop(format!("USE {database}")).await?;
            c.query_drop("START TRANSACTION").await?;
            for s in statements {
                c.query_drop(*s).await.with_context(|| s.to_string())?;
            }
            c.query_drop("COMMIT").await?;
        }
        Kind::Postgres => {
            let sql = format!("BEGIN; SET LOCAL search_path = {database}; {}; COMMIT", statements.join("; "));
            pg_client().await?.batch_execute(&sql).await.with_context(|| sql.clone())?;
        }
    }
    Ok(())
}

/// `GET /metrics` of a pipeline serving them at `addr` (`metrics.listen`),
/// within 10 s. Async: the callers' runtimes also run the fault proxies,
/// which a blocking read would stall.
pub async fn scrape_metrics(addr: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let scrape = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: lablake\r\n\r\n").await?;
        let mut out = String::new();
        s.read_to_string(&mut out).await?;
        anyhow::Ok(out)
    };
    tokio::time::timeout(Duration::from_secs(10), scrape).await.context("/metrics did not answer within 10 s")?
}

/// The samples of metric `name` in Prometheus text `text`, by the value of
/// their label `label` (e.g. `tenant`).
pub fn metric_by_label(text: &str, name: &str, label: &str) -> BTreeMap<String, f64> {
    let needle = format!("{label}=\"");
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .filter_map(|l| {
            let at = l.find(&needle)? + needle.len();
            let value = &l[at..at + l[at..].find('"')?];
            let number = l.rsplit(' ').next()?.parse().ok()?;
            Some((value.to_owned(), number))
        })
        .collect()
}

/// A child process killed (and reaped) when dropped, so a failing test
/// leaves no `lablake` behind.
pub struct Reaped(pub Child);

impl std::ops::Deref for Reaped {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Reaped {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A short random lowercase id.
pub fn rand_id(len: usize) -> String {
    let mut r = rand::rng();
    (0..len).map(|_| (b'a' + r.random_range(0..26u8)) as char).collect()
}

/// The `lablake` binary built next to the test executable.
pub fn lablake_bin() -> PathBuf {
    if let Ok(p) = std::env::var("LABLAKE_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    // target/debug/deps/<test> → target/debug/lablake
    let dir = exe.parent().and_then(Path::parent).map(Path::to_path_buf).unwrap_or_default();
    dir.join("lablake")
}

/// The kind of a test's source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Mysql,
    Postgres,
}

/// One test's isolated world: names, config file, running pipeline.
pub struct World {
    /// The source kind the world captures.
    pub kind: Kind,
    pub id: String,
    pub tenants: Vec<String>,
    pub prefix: String,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub pool: mysql_async::Pool,
    child: Option<Child>,
    pub log_path: PathBuf,
    /// The PostgreSQL source's slot and publication, dropped with the world.
    pub pg_slot: Option<String>,
}

impl World {
    /// Creates `n` tenants (databases `lab_<tenant>`), runs `ddl` in each,
    /// and writes a config that starts reading at the current binlog position.
    pub async fn new(n: usize, ddl: &[&str], extra_config: &str) -> anyhow::Result<World> {
        aws_defaults();
        let id = rand_id(8);
        let tenants: Vec<String> = (0..n).map(|i| format!("t{id}{i}")).collect();
        let pool = mysql_async::Pool::new(mysql_url().as_str());
        let mut conn = pool.get_conn().await.context("connecting to MariaDB (is `dev/services up` running?)")?;
        for t in &tenants {
            conn.query_drop(format!("CREATE DATABASE lab_{t}")).await?;
            for stmt in ddl {
                conn.query_drop(format!("USE lab_{t}")).await?;
                conn.query_drop(*stmt).await?;
            }
        }
        let row: Option<mysql_async::Row> = conn.query_first("SHOW MASTER STATUS").await?;
        let row = row.context("binary logging is off")?;
        let file: String = row.get(0).context("no binlog file")?;
        let pos: u64 = row.get(1).context("no binlog position")?;
        drop(conn);
        let dir = tempfile::tempdir()?;
        let prefix = format!("lt{id}");
        let config_path = dir.path().join("lablake.toml");
        let include: Vec<String> = tenants.iter().map(|t| format!("\"lab_{t}.*\"")).collect();
        let config = format!(
            r#"
[kafka]
brokers = "{brokers}"
topic_prefix = "{prefix}"
partitions = 2

[lake]
bucket = "{bucket}"
endpoint = "{s3}"
allow_http = true

[checkpoint]
table = "lablake_test_{id}"
endpoint = "{ddb}"

[curate]
group = "g{id}"
discovery_interval = "500ms"

[curate.batch]
max_rows = 5000
max_age = "30s"
idle_flush = "500ms"

[[sources]]
kind = "mysql"
name = "main"
url = "{mysql}"
server_id = {server_id}
include = [{include}]
tenant = {{ kind = "schema", pattern = "lab_{{tenant}}" }}
start = {{ file = "{file}", pos = {pos} }}
{extra_config}
"#,
            brokers = kafka_brokers(),
            bucket = s3_bucket(),
            s3 = s3_endpoint(),
            ddb = dynamodb_endpoint(),
            mysql = mysql_url(),
            server_id = 1000 + rand::rng().random_range(0..1_000_000u32),
            include = include.join(", "),
        );
        std::fs::write(&config_path, config)?;
        // Outside the temporary folder, so a failed run leaves its log behind.
        let log_path = std::env::temp_dir().join(format!("lablake-test-{id}.log"));
        Ok(World {
            kind: Kind::Mysql,
            id,
            tenants,
            prefix,
            dir,
            config_path,
            pool,
            child: None,
            log_path,
            pg_slot: None,
        })
    }

    /// [`World::new`] or [`World::new_postgres`], by `kind`: `n` tenants, each
    /// with its own database (`lab_<tenant>`) where `ddl` ran.
    pub async fn with_source(kind: Kind, n: usize, ddl: &[&str], extra_config: &str) -> anyhow::Result<World> {
        match kind {
            Kind::Mysql => World::new(n, ddl, extra_config).await,
            Kind::Postgres => World::new_postgres(n, ddl, extra_config).await,
        }
    }

    /// A world of `n` tenants sharing one database `shared_<id>` (tables
    /// created by `ddl` there), captured with the tenant-column rule on
    /// `tenant_column`. PostgreSQL gets its slot and publication as in
    /// [`World::new_postgres`].
    pub async fn with_shared_database(
        kind: Kind,
        n: usize,
        ddl: &[&str],
        tenant_column: &str,
    ) -> anyhow::Result<World> {
        let mut w = World::with_source(kind, 0, &[], "").await?;
        let tenants: Vec<String> = (0..n).map(|i| format!("t{}{i}", w.id)).collect();
        let db = w.shared_database();
        let config = std::fs::read_to_string(&w.config_path)?;
        let (base, source) = config.split_once("[[sources]]").context("world config without a source")?;
        let mut source = String::new() + source;
        match kind {
            Kind::Mysql => {
                let mut c = w.pool.get_conn().await?;
                c.query_drop(format!("CREATE DATABASE {db}")).await?;
                for stmt in ddl {
                    c.query_drop(format!("USE {db}")).await?;
                    c.query_drop(*stmt).await?;
                }
                // Start after the DDL, at the current position.
                let row: mysql_async::Row =
                    c.query_first("SHOW MASTER STATUS").await?.context("binary logging is off")?;
                let (file, pos): (String, u64) =
                    (row.get(0).context("no binlog file")?, row.get(1).context("no binlog position")?);
                let start = source.lines().find(|l| l.starts_with("start =")).unwrap_or_default().to_owned();
                source = source.replace(&start, &format!("start = {{ file = \"{file}\", pos = {pos} }}"));
            }
            Kind::Postgres => {
                let c = pg_client().await?;
                c.batch_execute(&format!("CREATE SCHEMA {db}")).await?;
                for stmt in ddl {
                    c.batch_execute(&format!("SET search_path = {db}; {stmt}; RESET search_path")).await?;
                }
            }
        }
        let include = source.lines().find(|l| l.starts_with("include =")).unwrap_or_default().to_owned();
        let rule = source.lines().find(|l| l.starts_with("tenant =")).unwrap_or_default().to_owned();
        let source = source
            .replace(&include, &format!("include = [\"{db}.*\"]"))
            .replace(&rule, &format!("tenant = {{ kind = \"column\", column = \"{tenant_column}\" }}"));
        std::fs::write(&w.config_path, format!("{base}[[sources]]{source}"))?;
        w.tenants = tenants;
        Ok(w)
    }

    /// Points the world's source at `url` instead of the service's own
    /// address (e.g. a [`proxy::FaultProxy`]); call before [`World::start`].
    pub fn set_source_url(&self, url: &str) -> anyhow::Result<()> {
        let config = std::fs::read_to_string(&self.config_path)?;
        let (base, source) = config.split_once("[[sources]]").context("world config without a source")?;
        let line = source.lines().find(|l| l.starts_with("url =")).context("source without url")?.to_owned();
        let source = source.replace(&line, &format!("url = \"{url}\""));
        std::fs::write(&self.config_path, format!("{base}[[sources]]{source}"))?;
        Ok(())
    }

    /// Points the world's pipeline at the Kafka API broker `brokers` (e.g. a
    /// [`broker::PrivateBroker`]); call before [`World::start`].
    pub fn set_kafka_brokers(&self, brokers: &str) -> anyhow::Result<()> {
        let config = std::fs::read_to_string(&self.config_path)?;
        let line = config.lines().find(|l| l.starts_with("brokers =")).context("config without kafka.brokers")?;
        let config = config.replacen(line, &format!("brokers = \"{brokers}\""), 1);
        std::fs::write(&self.config_path, config)?;
        Ok(())
    }

    /// Points the world's S3 and DynamoDB clients (`lake.endpoint`,
    /// `checkpoint.endpoint`) at `url` (e.g. an [`http_fault::HttpFaultProxy`]);
    /// call before [`World::start`]. The test's own reads keep the service's address.
    pub fn set_aws_endpoint(&self, url: &str) -> anyhow::Result<()> {
        let config = std::fs::read_to_string(&self.config_path)?;
        let mut out = String::with_capacity(config.len());
        for line in config.lines() {
            if line.starts_with("endpoint = ") && (line.contains(&s3_endpoint()) || line.contains(&dynamodb_endpoint()))
            {
                out.push_str(&format!("endpoint = \"{url}\""));
            } else {
                out.push_str(line);
            }
            out.push('\n');
        }
        std::fs::write(&self.config_path, out)?;
        Ok(())
    }

    /// The URL the world's source uses by default.
    pub fn source_url(&self) -> String {
        match self.kind {
            Kind::Mysql => mysql_url(),
            Kind::Postgres => pg_url(),
        }
    }

    /// The database of [`World::with_shared_database`].
    pub fn shared_database(&self) -> String {
        format!("shared_{}", self.id)
    }

    /// Runs `statements` in one transaction in `database` of the world's source.
    pub async fn exec_in(&self, database: &str, statements: &[&str]) -> anyhow::Result<()> {
        exec_on(self.kind, &self.pool, database, statements).await
    }

    /// Runs `statements` in one transaction in `tenant`'s database (`lab_<tenant>`).
    pub async fn exec(&self, tenant: &str, statements: &[&str]) -> anyhow::Result<()> {
        self.exec_in(&format!("lab_{tenant}"), statements).await
    }

    /// The source's rows of `database.table` as text, keyed by the first
    /// column: `columns` are plain column names, cast to text the source's way.
    pub async fn source_state_in(
        &self,
        database: &str,
        table: &str,
        columns: &[&str],
    ) -> anyhow::Result<BTreeMap<String, BTreeMap<String, String>>> {
        let select: Vec<String> = columns
            .iter()
            .map(|c| match self.kind {
                Kind::Mysql => format!("CAST({c} AS CHAR)"),
                Kind::Postgres => format!("({c})::text"),
            })
            .collect();
        let q = format!("SELECT {} FROM {database}.{table}", select.join(", "));
        let rows: Vec<Vec<Option<String>>> = match self.kind {
            Kind::Mysql => {
                let mut c = self.pool.get_conn().await?;
                c.query_drop("SET time_zone = '+00:00'").await?;
                let rows: Vec<mysql_async::Row> = c.query(q).await?;
                rows.into_iter()
                    .map(|r| (0..columns.len()).map(|i| r.get_opt(i).and_then(|x| x.ok()).unwrap_or(None)).collect())
                    .collect()
            }
            Kind::Postgres => pg_client()
                .await?
                .query(&q, &[])
                .await?
                .iter()
                .map(|r| (0..columns.len()).map(|i| r.get::<_, Option<String>>(i)).collect())
                .collect(),
        };
        let mut out = BTreeMap::new();
        for r in rows {
            let m: BTreeMap<String, String> =
                columns.iter().zip(r).map(|(c, v)| ((*c).to_owned(), v.unwrap_or_else(|| "NULL".into()))).collect();
            out.insert(m[columns[0]].clone(), m);
        }
        Ok(out)
    }

    /// [`World::source_state_in`] of `tenant`'s database.
    pub async fn source_state(
        &self,
        tenant: &str,
        table: &str,
        columns: &[&str],
    ) -> anyhow::Result<BTreeMap<String, BTreeMap<String, String>>> {
        self.source_state_in(&format!("lab_{tenant}"), table, columns).await
    }

    /// Like [`World::new`] with a PostgreSQL source: `n` tenants (schemas
    /// `lab_<tenant>` in `LABLAKE_PG_URL`'s database), `ddl` run in each with
    /// `search_path` set to it; the slot and publication are named after the
    /// world and dropped with it.
    pub async fn new_postgres(n: usize, ddl: &[&str], extra_config: &str) -> anyhow::Result<World> {
        let mut w = World::new(0, &[], "").await?;
        let client = pg_client().await?;
        let tenants: Vec<String> = (0..n).map(|i| format!("t{}{i}", w.id)).collect();
        for t in &tenants {
            client.batch_execute(&format!("CREATE SCHEMA lab_{t}")).await?;
            for stmt in ddl {
                client.batch_execute(&format!("SET search_path = lab_{t}; {stmt}; RESET search_path")).await?;
            }
        }
        let slot = format!("lablake_{}", w.id);
        let config = std::fs::read_to_string(&w.config_path)?;
        let base = config.split("[[sources]]").next().unwrap_or_default().to_owned();
        let include: Vec<String> = tenants.iter().map(|t| format!("\"lab_{t}.*\"")).collect();
        let config = format!(
            r#"{base}
[[sources]]
kind = "postgres"
name = "pg"
url = "{url}"
slot = "{slot}"
publication = "{slot}"
include = [{include}]
tenant = {{ kind = "schema", pattern = "lab_{{tenant}}" }}
heartbeat_interval = "1s"
{extra_config}
"#,
            url = pg_url(),
            include = include.join(", "),
        );
        std::fs::write(&w.config_path, config)?;
        // Create the publication and then the slot now (in that order: decoding
        // needs the publication to exist at the slot's start), so the changes
        // made before the first start are captured.
        client.batch_execute(&format!("CREATE PUBLICATION {slot} FOR ALL TABLES")).await?;
        client.query_one("SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')", &[&slot]).await?;
        w.tenants = tenants;
        w.pg_slot = Some(slot);
        w.kind = Kind::Postgres;
        Ok(w)
    }

    /// Starts `lablake run`.
    pub fn start(&mut self) -> anyhow::Result<()> {
        let child = self.spawn(&["run"])?;
        self.child = Some(child);
        Ok(())
    }

    /// Starts `lablake run` with extra environment variables (e.g. `LABLAKE_FAILPOINTS`).
    pub fn start_with_env(&mut self, env: &[(&str, &str)]) -> anyhow::Result<()> {
        let child = self.spawn_with_env(&["run"], env)?;
        self.child = Some(child);
        Ok(())
    }

    /// Waits until the pipeline exits on its own (a failpoint), up to `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let c = self.child.as_mut().context("not running")?;
            if let Some(status) = c.try_wait()? {
                self.child = None;
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("lablake still running after {timeout:?}; log:\n{}", self.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Spawns `lablake <args>` with this world's config, logging to its log file.
    pub fn spawn(&self, args: &[&str]) -> anyhow::Result<Child> {
        self.spawn_with_env(args, &[])
    }

    fn spawn_with_env(&self, args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<Child> {
        self.spawn_instance(args, env, &self.log_path)
    }

    /// Spawns `lablake <args>` with this world's config and extra
    /// environment variables, logging to `log` (one file per instance when
    /// several run side by side).
    pub fn spawn_instance(&self, args: &[&str], env: &[(&str, &str)], log: &Path) -> anyhow::Result<Child> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
        Command::new(lablake_bin())
            .arg("--config")
            .arg(&self.config_path)
            .args(args)
            .env("LABLAKE_LOG", "info,lablake=debug")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawning {} (run `cargo build -p lablake-cli` first)", lablake_bin().display()))
    }

    /// SIGKILLs and restarts the pipeline after random pauses of `pause_ms`,
    /// at least `min` times and until `done()` (at most `max` times); fails if
    /// it exited on its own in between. Returns the number of kills.
    pub async fn kill_repeatedly(
        &mut self,
        min: usize,
        max: usize,
        pause_ms: std::ops::Range<u64>,
        done: impl Fn() -> bool,
    ) -> anyhow::Result<usize> {
        let mut kills = 0;
        while kills < max && (kills < min || !done()) {
            let pause = rand::rng().random_range(pause_ms.clone());
            tokio::time::sleep(Duration::from_millis(pause)).await;
            self.assert_running()?;
            self.kill();
            kills += 1;
            self.start()?;
        }
        Ok(kills)
    }

    /// Runs `lablake <args>` with this world's config to completion.
    pub fn run_cli(&self, args: &[&str]) -> anyhow::Result<std::process::Output> {
        Ok(Command::new(lablake_bin())
            .arg("--config")
            .arg(&self.config_path)
            .args(args)
            .env("LABLAKE_LOG", "warn")
            .output()?)
    }

    /// The pipeline's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Takes the running pipeline's process out of the world without
    /// stopping it (e.g. a paused zombie to wake later); the world can start
    /// another meanwhile.
    pub fn detach(&mut self) -> Option<Child> {
        self.child.take()
    }

    /// SIGKILLs the pipeline.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERMs the pipeline and waits for it to exit.
    pub fn stop(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        let mut c = self.child.take().context("not running")?;
        let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(s) = c.try_wait()? {
                return Ok(s);
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                bail!("lablake did not stop within 60 s after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Fails if the pipeline exited on its own.
    pub fn assert_running(&mut self) -> anyhow::Result<()> {
        if let Some(c) = self.child.as_mut()
            && let Some(status) = c.try_wait()?
        {
            bail!("lablake exited with {status}; log:\n{}", self.log_tail());
        }
        Ok(())
    }

    pub fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    pub fn lake(&self) -> anyhow::Result<Lake> {
        Ok(Lake::new(LakeConfig {
            bucket: s3_bucket(),
            bucket_per_tenant: None,
            endpoint: Some(s3_endpoint()),
            region: "us-east-1".into(),
            allow_http: true,
            zstd_level: 3,
            max_retries: 3,
        })?)
    }

    /// Every curated row of a tenant's table, each as column → display string,
    /// in file order.
    pub async fn curated_rows(&self, tenant: &str, table: &str) -> anyhow::Result<Vec<BTreeMap<String, String>>> {
        curated_rows(&self.lake()?, tenant, table).await
    }

    /// Every curated row of `tenant`'s `database.table` (e.g. a shared database).
    pub async fn curated_rows_in(
        &self,
        tenant: &str,
        database: &str,
        table: &str,
    ) -> anyhow::Result<Vec<BTreeMap<String, String>>> {
        curated_rows_at(&self.lake()?, tenant, database, table).await
    }

    /// Waits until the curated state of a tenant's table (see [`curated_state`])
    /// equals `expected`, checking that the pipeline keeps running. After
    /// `timeout` the error lists the differing keys and the log tail.
    /// Every tenant's curated `table` equals the source's (`cols`, keyed by
    /// `pk`) within `timeout`, with each change once (no (key, position)
    /// twice in the curated files).
    pub async fn await_exact(&mut self, table: &str, pk: &str, cols: &[&str], timeout: Duration) -> anyhow::Result<()> {
        for t in self.tenants.clone() {
            let expected = self.source_state(&t, table, cols).await?;
            self.await_curated_state(&t, table, pk, &expected, timeout).await?;
            let rows = self.curated_rows(&t, table).await?;
            let twice = duplicated_changes(&rows, pk);
            anyhow::ensure!(twice == 0, "{twice} changes twice in {t}'s curated {table}");
        }
        Ok(())
    }

    pub async fn await_curated_state(
        &mut self,
        tenant: &str,
        table: &str,
        pk: &str,
        expected: &BTreeMap<String, BTreeMap<String, String>>,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            self.assert_running()?;
            let got = self.curated_state(tenant, table, pk).await?;
            if &got == expected {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let diff = state_diff(expected, &got, "lake");
                let extra = got.keys().filter(|k| !expected.contains_key(*k)).take(5).collect::<Vec<_>>();
                bail!(
                    "curated {table} of {tenant} differs from the source after {timeout:?}: source {} rows, lake {} \
                     rows\n{}\nonly in the lake: {extra:?}\nlog:\n{}",
                    expected.len(),
                    got.len(),
                    diff,
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// The world's checkpoint store (its own DynamoDB table).
    pub async fn checkpoint_store(&self) -> anyhow::Result<lablake_checkpoint::DynamoStore> {
        Ok(lablake_checkpoint::DynamoStore::connect(&lablake_checkpoint::DynamoConfig {
            table: format!("lablake_test_{}", self.id),
            endpoint: Some(dynamodb_endpoint()),
            region: Some("us-east-1".into()),
            create_table: true,
        })
        .await?)
    }

    /// A `kB` field (`VmHWM:`, `VmRSS:`) of the running pipeline's `/proc/<pid>/status`.
    pub fn proc_status_kb(&self, field: &str) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        status.lines().find(|l| l.starts_with(field))?.split_whitespace().nth(1)?.parse().ok()
    }

    /// See [`curated_state`].
    pub async fn curated_state(
        &self,
        tenant: &str,
        table: &str,
        pk: &str,
    ) -> anyhow::Result<BTreeMap<String, BTreeMap<String, String>>> {
        Ok(curated_state(self.curated_rows(tenant, table).await?, pk))
    }
}

/// Every curated row of a tenant's table (database `lab_<tenant>`), each as
/// column → display string, in file order.
pub async fn curated_rows(lake: &Lake, tenant: &str, table: &str) -> anyhow::Result<Vec<BTreeMap<String, String>>> {
    curated_rows_at(lake, tenant, &format!("lab_{tenant}"), table).await
}

/// Every curated row of a tenant's `database.table`, in file order.
pub async fn curated_rows_at(
    lake: &Lake,
    tenant: &str,
    database: &str,
    table: &str,
) -> anyhow::Result<Vec<BTreeMap<String, String>>> {
    curated_rows_of_generation(lake, tenant, database, table, 0).await
}

/// Every curated row of a tenant's `database.table` in generation
/// `data_gen` (ADR 0013), in file order.
pub async fn curated_rows_of_generation(
    lake: &Lake,
    tenant: &str,
    database: &str,
    table: &str,
    data_gen: u32,
) -> anyhow::Result<Vec<BTreeMap<String, String>>> {
    let prefix = lablake_lake::curated_prefix(&lablake_model::TableId::new(tenant, database, table), data_gen);
    let mut rows = Vec::new();
    for key in lake.list(tenant, &prefix).await? {
        let bytes = lake.get(tenant, &key).await?;
        for batch in lablake_lake::decode_parquet(bytes)? {
            rows.extend(batch_rows(&batch)?);
        }
    }
    Ok(rows)
}

/// How many curated rows repeat the `(pk, _position)` of an earlier row:
/// a change curated more than once.
pub fn duplicated_changes(rows: &[BTreeMap<String, String>], pk: &str) -> usize {
    let mut seen = std::collections::HashSet::with_capacity(rows.len());
    rows.iter().filter(|r| !seen.insert((r.get(pk).cloned().unwrap_or_default(), r["_position"].clone()))).count()
}

/// The change-by-change oracle: checks every curated change of every key
/// against a version column (`version`) the workload increments on each
/// update (an insert starts at 1). Per key, in source-position order (each
/// (key, position) once), a create carries 1, an update the previous version
/// plus one, a delete the previous version, a snapshot read (`r`, a state at
/// its watermark) any version not below the previous; so no change is
/// missing, repeated or out of order. Returns the first `limit` violations.
pub fn version_violations(rows: &[BTreeMap<String, String>], pk: &str, version: &str, limit: usize) -> Vec<String> {
    let mut by_key: BTreeMap<&str, BTreeMap<&str, &BTreeMap<String, String>>> = BTreeMap::new();
    for r in rows.iter().filter(|r| r["_op"] != "t") {
        let key = r.get(pk).map_or("", String::as_str);
        by_key.entry(key).or_default().insert(r["_position"].as_str(), r);
    }
    let mut out = Vec::new();
    for (key, changes) in by_key {
        let mut prev: Option<i64> = None;
        for (position, r) in changes {
            let v: Option<i64> = r.get(version).and_then(|v| v.parse().ok());
            let op = r["_op"].as_str();
            let ok = match (op, v) {
                ("c", Some(v)) => v == 1,
                ("u", Some(v)) => prev.is_some_and(|p| v == p + 1),
                ("d", Some(v)) => prev.is_none_or(|p| v == p),
                ("d", None) => true,
                ("r", Some(v)) => prev.is_none_or(|p| v >= p),
                _ => false,
            };
            if !ok {
                out.push(format!("key {key} at {position}: {op} with version {v:?} after {prev:?}"));
                if out.len() >= limit {
                    return out;
                }
            }
            prev = if op == "d" { None } else { v };
        }
    }
    out
}

/// Latest state per primary key (`pk` column) from curated rows:
/// deduplicated by (pk, _position), newest position wins, deletes removed,
/// rows older than the newest truncate (`_op = t`) removed, metadata columns
/// dropped. Values are taken as written: curation fills in unchanged TOAST
/// values itself.
pub fn curated_state(rows: Vec<BTreeMap<String, String>>, pk: &str) -> BTreeMap<String, BTreeMap<String, String>> {
    let truncated_at = rows.iter().filter(|r| r["_op"] == "t").map(|r| r["_position"].clone()).max();
    let mut latest: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for row in rows {
        if row["_op"] == "t" {
            continue;
        }
        let k = row.get(pk).cloned().unwrap_or_default();
        if latest.get(&k).is_none_or(|old| old["_position"] < row["_position"]) {
            latest.insert(k, row);
        }
    }
    latest.retain(|_, r| r["_op"] != "d" && truncated_at.as_ref().is_none_or(|t| r["_position"] > *t));
    for r in latest.values_mut() {
        r.retain(|c, _| !c.starts_with('_'));
    }
    latest
}

impl Drop for World {
    fn drop(&mut self) {
        self.kill();
        if let Some(slot) = self.pg_slot.take() {
            // Best effort, on a thread with its own runtime (drop cannot await):
            // a leftover slot would pin WAL on the shared server.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
                rt.block_on(async {
                    let c = pg_client().await.ok()?;
                    for _ in 0..50 {
                        match c.execute("SELECT pg_drop_replication_slot($1)", &[&slot]).await {
                            Ok(_) => break,
                            Err(e) if e.to_string().contains("does not exist") => break,
                            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                        }
                    }
                    c.batch_execute(&format!("DROP PUBLICATION IF EXISTS {slot}")).await.ok()
                })
            })
            .join();
        }
    }
}

/// Source rows of `SELECT <exprs> FROM lab_<tenant>.<table>` in PostgreSQL
/// (each expression cast to text), keyed by the first expression.
pub async fn pg_source_rows(
    client: &tokio_postgres::Client,
    tenant: &str,
    table: &str,
    exprs: &[(&str, &str)],
) -> anyhow::Result<BTreeMap<String, BTreeMap<String, String>>> {
    let select: Vec<String> = exprs.iter().map(|(_, e)| format!("({e})::text")).collect();
    let q = format!("SELECT {} FROM lab_{tenant}.{table}", select.join(", "));
    let mut out = BTreeMap::new();
    for r in client.query(&q, &[]).await? {
        let mut m = BTreeMap::new();
        for (i, (name, _)) in exprs.iter().enumerate() {
            let v: Option<String> = r.get(i);
            m.insert((*name).to_owned(), v.unwrap_or_else(|| "NULL".into()));
        }
        out.insert(m[exprs[0].0].clone(), m);
    }
    Ok(out)
}

/// Rows of a record batch as column → display string (binary as hex, nulls as `NULL`).
pub fn batch_rows(batch: &RecordBatch) -> anyhow::Result<Vec<BTreeMap<String, String>>> {
    let opts = FormatOptions::default()
        .with_null("NULL")
        .with_timestamp_format(Some("%Y-%m-%dT%H:%M:%S%.6f"))
        .with_timestamp_tz_format(Some("%Y-%m-%dT%H:%M:%S%.6f"));
    let schema = batch.schema();
    let mut formatters = Vec::new();
    for col in batch.columns() {
        formatters.push(ArrayFormatter::try_new(col.as_ref(), &opts)?);
    }
    let mut out = Vec::with_capacity(batch.num_rows());
    for i in 0..batch.num_rows() {
        let mut row = BTreeMap::new();
        for (j, f) in schema.fields().iter().enumerate() {
            let col = batch.column(j);
            let v = if col.is_null(i) {
                "NULL".to_owned()
            } else if let Some(b) = col.as_any().downcast_ref::<arrow::array::BinaryArray>() {
                b.value(i).iter().map(|x| format!("{x:02X}")).collect()
            } else {
                formatters[j].value(i).to_string()
            };
            row.insert(f.name().clone(), v);
        }
        out.push(row);
    }
    Ok(out)
}

/// Every partition of the topics starting with `prefix` on `brokers`, with
/// its log start and end offsets (`(topic, partition) → (low, high)`): a
/// log that keeps the full history starts at 0.
pub fn log_bounds(brokers: &str, prefix: &str) -> anyhow::Result<BTreeMap<(String, i32), (i64, i64)>> {
    let consumer: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("{prefix}-bounds"))
        .create()?;
    let md = consumer.fetch_metadata(None, Duration::from_secs(10))?;
    let mut out = BTreeMap::new();
    for t in md.topics().iter().filter(|t| t.name().starts_with(prefix)) {
        for p in t.partitions() {
            let bounds = consumer.fetch_watermarks(t.name(), p.id(), Duration::from_secs(10))?;
            out.insert((t.name().to_owned(), p.id()), bounds);
        }
    }
    Ok(out)
}

/// Records per topic: key, payload and headers (values as text), in order.
pub type Consumed = BTreeMap<String, Vec<(Option<Vec<u8>>, Option<Vec<u8>>, Vec<(String, String)>)>>;

/// Reads every record of every topic starting with `prefix` (until quiet for
/// `quiet`), e.g. a tenant's dead-letter topic `<prefix>-dlq.<tenant>`.
pub fn consume_all(prefix: &str, quiet: Duration) -> anyhow::Result<Consumed> {
    let consumer: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", kafka_brokers())
        .set("group.id", format!("{prefix}-check"))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()?;
    let md = consumer.fetch_metadata(None, Duration::from_secs(10))?;
    let mut tpl = rdkafka::TopicPartitionList::new();
    for t in md.topics().iter().filter(|t| t.name().starts_with(prefix)) {
        for p in t.partitions() {
            tpl.add_partition_offset(t.name(), p.id(), rdkafka::Offset::Beginning)?;
        }
    }
    consumer.assign(&tpl)?;
    let mut out: Consumed = BTreeMap::new();
    let mut last = std::time::Instant::now();
    while last.elapsed() < quiet {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| {
                                (h.key.to_owned(), String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned())
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                out.entry(m.topic().to_owned()).or_default().push((
                    m.key().map(<[u8]>::to_vec),
                    m.payload().map(<[u8]>::to_vec),
                    headers,
                ));
                last = std::time::Instant::now();
            }
            Some(Err(e)) => return Err(e.into()),
            None => {}
        }
    }
    Ok(out)
}

/// Source rows of `SELECT <exprs> FROM lab_<tenant>.<table>` keyed by the first expression.
pub async fn source_rows(
    pool: &mysql_async::Pool,
    tenant: &str,
    table: &str,
    exprs: &[(&str, &str)],
) -> anyhow::Result<BTreeMap<String, BTreeMap<String, String>>> {
    let mut conn = pool.get_conn().await?;
    conn.query_drop("SET time_zone = '+00:00'").await?;
    let select: Vec<String> = exprs.iter().map(|(_, e)| format!("CAST({e} AS CHAR)")).collect();
    let q = format!("SELECT {} FROM lab_{tenant}.{table}", select.join(", "));
    let rows: Vec<mysql_async::Row> = conn.query(q).await?;
    let mut out = BTreeMap::new();
    for r in rows {
        let mut m = BTreeMap::new();
        for (i, (name, _)) in exprs.iter().enumerate() {
            let v: Option<String> = r.get_opt(i).and_then(|x| x.ok()).unwrap_or(None);
            m.insert((*name).to_owned(), v.unwrap_or_else(|| "NULL".into()));
        }
        let k = m[exprs[0].0].clone();
        out.insert(k, m);
    }
    Ok(out)
}

#[cfg(test)]
mod oracle_tests {
    use super::*;

    fn row(id: &str, pos: &str, op: &str, version: &str) -> BTreeMap<String, String> {
        [("id", id), ("_position", pos), ("_op", op), ("version", version)]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    #[test]
    fn the_version_oracle_finds_missing_repeated_and_reordered_changes() {
        let good = vec![
            row("1", "01", "c", "1"),
            row("1", "02", "u", "2"),
            row("1", "03", "d", "2"),
            row("1", "04", "c", "1"),
        ];
        assert!(version_violations(&good, "id", "version", 10).is_empty());
        // A re-delivery at the same position counts once.
        let redelivered = [good.clone(), vec![row("1", "02", "u", "2")]].concat();
        assert!(version_violations(&redelivered, "id", "version", 10).is_empty());
        let missing = vec![row("2", "01", "c", "1"), row("2", "03", "u", "3")];
        assert_eq!(version_violations(&missing, "id", "version", 10).len(), 1);
        let reordered = vec![row("3", "01", "c", "1"), row("3", "02", "u", "3"), row("3", "03", "u", "2")];
        assert_eq!(version_violations(&reordered, "id", "version", 10).len(), 2);
        let snapshot = vec![row("4", "01", "r", "5"), row("4", "02", "u", "6"), row("4", "00", "u", "4")];
        assert_eq!(version_violations(&snapshot, "id", "version", 10).len(), 1, "an update without its predecessor");
    }
}

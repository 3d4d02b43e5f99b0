//! A private Kafka API broker for one fault test, so killing it touches no
//! other test: tansu (the binary `dev/services` built, `LABLAKE_TANSU_BIN`)
//! on its own port and cluster id, on the storage engine the shared broker
//! uses (`LABLAKE_KAFKA_STORAGE`): its own SQLite database in a temporary
//! folder (`sqlite`, the default), or the shared broker's S3 bucket (`s3`:
//! `LABLAKE_KAFKA_BUCKET`, prefix `clusters/<id>/`). A restart keeps
//! its topics, records and group offsets; [`PrivateBroker::crash`] is
//! SIGKILL.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::{env_or, rand_id, s3_endpoint};

/// See the module documentation.
pub struct PrivateBroker {
    bin: PathBuf,
    port: u16,
    /// The address it tells clients to connect to (its own, or a proxy's).
    advertised: String,
    cluster: String,
    log: PathBuf,
    /// The SQLite engine's folder (its working directory), or `None` on S3.
    data: Option<PathBuf>,
    child: Option<Child>,
}

impl PrivateBroker {
    /// The broker binary, or `None` when this machine runs no local tansu
    /// (e.g. against the docker compose stack, where the broker is Redpanda).
    pub fn binary() -> Option<PathBuf> {
        std::env::var_os("LABLAKE_TANSU_BIN").map(PathBuf::from).filter(|p| p.exists())
    }

    /// Starts a broker on a free 127.0.0.1 port and waits until it answers.
    pub fn start() -> anyhow::Result<PrivateBroker> {
        let port = Self::free_port()?;
        Self::start_on(port, &format!("127.0.0.1:{port}"))
    }

    /// A free 127.0.0.1 port.
    pub fn free_port() -> anyhow::Result<u16> {
        Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
    }

    /// Starts a broker listening on `port` that tells clients to connect to
    /// `advertised` (`host:port`, e.g. a fault proxy in front of it: then
    /// every connection of every client goes through the proxy, not only the
    /// bootstrap one).
    pub fn start_on(port: u16, advertised: &str) -> anyhow::Result<PrivateBroker> {
        let bin = Self::binary().context("LABLAKE_TANSU_BIN is not set (run `eval \"$(dev/services env)\"`)")?;
        let cluster = format!("fault-{}", rand_id(8));
        let log = std::env::temp_dir().join(format!("lablake-broker-{cluster}.log"));
        let data = match env_or("LABLAKE_KAFKA_STORAGE", "sqlite").as_str() {
            "sqlite" => {
                let dir = std::env::temp_dir().join(format!("lablake-broker-{cluster}"));
                std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
                Some(dir)
            }
            "s3" => None,
            other => bail!("LABLAKE_KAFKA_STORAGE is '{other}': sqlite or s3"),
        };
        let mut b = PrivateBroker { bin, port, advertised: advertised.to_owned(), cluster, log, data, child: None };
        b.spawn()?;
        Ok(b)
    }

    /// `host:port` for clients (the advertised address).
    pub fn brokers(&self) -> String {
        self.advertised.clone()
    }

    /// Whether a SIGKILL while records are being produced is part of what
    /// this broker's storage survives: SQLite writes each produce in one
    /// transaction (a killed one rolls back whole, offsets stay dense);
    /// tansu 0.6's S3 engine can leave an offset hole (docs/reliability.md).
    pub fn survives_crash_mid_produce(&self) -> bool {
        self.data.is_some()
    }

    /// Where the broker's output goes.
    pub fn log_path(&self) -> &PathBuf {
        &self.log
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let advertised = format!("tcp://{}", self.advertised);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        let mut cmd = Command::new(&self.bin);
        cmd.args(["broker", "--cluster-id", &self.cluster, "--listener-url", &url])
            .args(["--advertised-listener-url", &advertised])
            .arg("--storage-engine");
        match &self.data {
            // tansu opens a sqlite:// path relative to its working directory.
            Some(dir) => cmd.arg("sqlite://tansu.db").current_dir(dir),
            None => cmd.arg(format!("s3://{}/", env_or("LABLAKE_KAFKA_BUCKET", "lablake-kafka"))),
        };
        let child = cmd
            .env_remove("SCHEMA_REGISTRY")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env("AWS_ENDPOINT", s3_endpoint())
            .env("AWS_ALLOW_HTTP", "true")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(c) = self.child.as_mut()
                && let Some(status) = c.try_wait()?
            {
                bail!("the private broker exited during start-up ({status}); log: {}", self.log.display());
            }
            if Instant::now() > deadline {
                bail!("the private broker did not listen within 30 s; log: {}", self.log.display());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// SIGKILL: no shutdown work, like a lost machine.
    pub fn crash(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port, cluster id and storage.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.crash();
        // The port stays ours: nothing else binds a port a test just used.
        self.spawn()
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        self.crash();
        if let Some(dir) = &self.data {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

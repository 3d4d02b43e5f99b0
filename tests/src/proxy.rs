//! A TCP fault proxy between `lablake` and one service, for fault tests:
//! forwards connections to the target until [`FaultProxy::cut`] resets every
//! open one and refuses new ones; [`FaultProxy::heal`] lets them through
//! again. [`FaultProxy::blackhole`] keeps connections open but delivers no
//! byte either way (a link gone silent: no reset, no error, until a timeout
//! notices); [`FaultProxy::set_latency`] delays every forwarded chunk.
//! Listens on 127.0.0.1 only, on a free port.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// See the module documentation.
pub struct FaultProxy {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    silent: Arc<AtomicBool>,
    latency_ms: Arc<AtomicU64>,
    /// Bumped on every cut: open connections end when it changes.
    epoch: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Starts forwarding 127.0.0.1:<free port> to `target` (`host:port`).
    pub async fn start(target: &str) -> anyhow::Result<FaultProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let cut = Arc::new(AtomicBool::new(false));
        let silent = Arc::new(AtomicBool::new(false));
        let latency_ms = Arc::new(AtomicU64::new(0));
        let (epoch, _) = watch::channel(0u64);
        let (target, refuse, epochs) = (target.to_owned(), cut.clone(), epoch.clone());
        let (quiet, delay) = (silent.clone(), latency_ms.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if refuse.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let (target, mut ended) = (target.clone(), epochs.subscribe());
                let (quiet, delay) = (quiet.clone(), delay.clone());
                tokio::spawn(async move {
                    let Ok(upstream) = TcpStream::connect(&target).await else { return };
                    // Forward each chunk at once (Nagle's delay would add ~200 ms per request).
                    let _ = (client.set_nodelay(true), upstream.set_nodelay(true));
                    let (cr, cw) = client.into_split();
                    let (ur, uw) = upstream.into_split();
                    tokio::select! {
                        _ = pump(cr, uw, quiet.clone(), delay.clone()) => {}
                        _ = pump(ur, cw, quiet, delay) => {}
                        _ = ended.changed() => {}
                    }
                    // Dropping both sockets resets the connection for both peers.
                });
            }
        });
        Ok(FaultProxy { addr, cut, silent, latency_ms, epoch, task })
    }

    /// The proxy's `127.0.0.1:port`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Ends every open connection and refuses new ones until [`Self::heal`].
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.epoch.send_modify(|e| *e += 1);
    }

    /// Lets connections through again (and ends a blackhole).
    pub fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
        self.silent.store(false, Ordering::SeqCst);
    }

    /// From now on no byte is delivered either way, on open and new
    /// connections alike, and nothing is reset: the link is silent. What was
    /// sent meanwhile arrives after [`Self::heal`], as TCP would deliver it.
    pub fn blackhole(&self) {
        self.silent.store(true, Ordering::SeqCst);
    }

    /// Delays every forwarded chunk by `latency`.
    pub fn set_latency(&self, latency: Duration) {
        self.latency_ms.store(u64::try_from(latency.as_millis()).unwrap_or(u64::MAX), Ordering::SeqCst);
    }
}

/// Copies `from` to `to`, holding back what arrives while `silent` and
/// delaying each chunk by `latency_ms`; ends when either side does.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    silent: Arc<AtomicBool>,
    latency_ms: Arc<AtomicU64>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let delay = latency_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        // Like packets a dead link drops: TCP would send them again once it
        // heals, so they are held back, not lost.
        while silent.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.epoch.send_modify(|e| *e += 1);
    }
}

/// `url` with its `host:port` (after `@`, or after `://`) replaced by `addr`.
pub fn via(url: &str, addr: SocketAddr) -> String {
    let start = url.find('@').map(|i| i + 1).or_else(|| url.find("://").map(|i| i + 3)).unwrap_or(0);
    let end = url[start..].find(['/', '?']).map_or(url.len(), |i| start + i);
    format!("{}{addr}{}", &url[..start], &url[end..])
}

/// The `host:port` of a URL (as [`via`] finds it).
pub fn host_port(url: &str) -> String {
    let start = url.find('@').map(|i| i + 1).or_else(|| url.find("://").map(|i| i + 3)).unwrap_or(0);
    let end = url[start..].find(['/', '?']).map_or(url.len(), |i| start + i);
    url[start..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_pointed_at_the_proxy() {
        let addr: SocketAddr = "127.0.0.1:4000".parse().unwrap_or_else(|_| unreachable!());
        assert_eq!(via("mysql://u:p@127.0.0.1:23306", addr), "mysql://u:p@127.0.0.1:4000");
        assert_eq!(
            via("postgres://postgres@127.0.0.1:25432/postgres", addr),
            "postgres://postgres@127.0.0.1:4000/postgres"
        );
        assert_eq!(host_port("postgres://postgres@127.0.0.1:25432/postgres"), "127.0.0.1:25432");
    }
}

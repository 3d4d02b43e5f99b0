//! A TCP fault proxy between `lablake` and one service, for fault tests:
//! forwards connections to the target until [`FaultProxy::cut`] resets every
//! open one and refuses new ones; [`FaultProxy::heal`] lets them through
//! again. Listens on 127.0.0.1 only, on a free port.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// See the module documentation.
pub struct FaultProxy {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
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
        let (epoch, _) = watch::channel(0u64);
        let (target, refuse, epochs) = (target.to_owned(), cut.clone(), epoch.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if refuse.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let (target, mut ended) = (target.clone(), epochs.subscribe());
                tokio::spawn(async move {
                    let Ok(mut upstream) = TcpStream::connect(&target).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
                        _ = ended.changed() => {}
                    }
                    // Dropping both sockets resets the connection for both peers.
                });
            }
        });
        Ok(FaultProxy { addr, cut, epoch, task })
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

    /// Lets connections through again.
    pub fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
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

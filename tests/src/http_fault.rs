//! An HTTP fault proxy between `lablake` and an HTTP service (moto's S3 and
//! DynamoDB, the Snowflake emulator), for fault tests. Each request is, at
//! random with a seeded generator:
//! - forwarded (most of them);
//! - answered by the proxy with a retryable failure the service's clients
//!   know — S3 `503 SlowDown`, DynamoDB `400 ThrottlingException`, a plain
//!   `500` or `503` — and not forwarded;
//! - forwarded and *applied*, its response read, then the connection reset
//!   before the client sees the response (the ambiguous "did it happen?").
//!
//! One request per connection (`Connection: close` is set both ways), so
//! the proxy needs only to find where a request ends: after its head and
//! `Content-Length` bytes. A chunked request is forwarded untouched.
//! Listens on 127.0.0.1 only, on a free port.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How often each fault is injected, per request, in `[0, 1]`.
#[derive(Debug, Clone, Copy)]
pub struct Rates {
    /// An error response from the proxy (5xx, or throttling).
    pub error: f64,
    /// Applied upstream, then the connection reset.
    pub reset_after: f64,
}

/// What was injected so far.
#[derive(Debug, Default)]
pub struct Counts {
    pub requests: AtomicU64,
    pub errors: AtomicU64,
    pub resets_after: AtomicU64,
}

/// See the module documentation.
pub struct HttpFaultProxy {
    addr: SocketAddr,
    enabled: Arc<AtomicBool>,
    /// Writes (`PUT`) whose path contains this always fail.
    failing: Arc<std::sync::Mutex<Option<String>>>,
    counts: Arc<Counts>,
    task: tokio::task::JoinHandle<()>,
}

impl HttpFaultProxy {
    /// Proxies 127.0.0.1:<free port> to `target` (`host:port`), injecting at
    /// `rates` with a generator seeded by `seed` (print it to replay a run).
    pub async fn start(target: &str, rates: Rates, seed: u64) -> anyhow::Result<HttpFaultProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let enabled = Arc::new(AtomicBool::new(true));
        let counts = Arc::new(Counts::default());
        let rng = Arc::new(std::sync::Mutex::new(rand::rngs::StdRng::seed_from_u64(seed)));
        let failing: Arc<std::sync::Mutex<Option<String>>> = Arc::default();
        let (target, on, n, writes) = (target.to_owned(), enabled.clone(), counts.clone(), failing.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let roll: f64 = rng.lock().map(|mut r| r.random()).unwrap_or(1.0);
                let fault = if !on.load(Ordering::SeqCst) {
                    Fault::None
                } else if roll < rates.error {
                    Fault::Error
                } else if roll < rates.error + rates.reset_after {
                    Fault::ResetAfter
                } else {
                    Fault::None
                };
                let (target, n) = (target.clone(), n.clone());
                let failing = writes.lock().ok().and_then(|f| f.clone());
                tokio::spawn(async move {
                    let _ = serve(client, &target, fault, failing.as_deref(), &n).await;
                });
            }
        });
        Ok(HttpFaultProxy { addr, enabled, failing, counts, task })
    }

    /// `http://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops (or resumes) injecting; requests are forwarded meanwhile.
    pub fn set_enabled(&self, on: bool) {
        self.enabled.store(on, Ordering::SeqCst);
    }

    /// From now on every `PUT` whose path contains `path` is answered with
    /// an error (`None`: none), whatever the rates — e.g. one tenant's
    /// prefix in the lake, to fail that tenant's writes only.
    pub fn fail_writes_to(&self, path: Option<&str>) {
        if let Ok(mut f) = self.failing.lock() {
            *f = path.map(str::to_owned);
        }
    }

    /// `(requests, error responses, resets after applying)` so far.
    pub fn counts(&self) -> (u64, u64, u64) {
        let c = &self.counts;
        (c.requests.load(Ordering::SeqCst), c.errors.load(Ordering::SeqCst), c.resets_after.load(Ordering::SeqCst))
    }
}

impl Drop for HttpFaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    None,
    Error,
    ResetAfter,
}

async fn serve(
    mut client: TcpStream,
    target: &str,
    fault: Fault,
    failing: Option<&str>,
    n: &Counts,
) -> std::io::Result<()> {
    let Some((head, body_start)) = read_head(&mut client).await? else { return Ok(()) };
    n.requests.fetch_add(1, Ordering::SeqCst);
    let text = String::from_utf8_lossy(&head).into_owned();
    let request_line = text.lines().next().unwrap_or_default();
    let fault = match failing {
        Some(path) if request_line.starts_with("PUT ") && request_line.contains(path) => Fault::Error,
        _ => fault,
    };
    let lower = text.to_ascii_lowercase();
    let length = header(&lower, "content-length").and_then(|v| v.parse::<usize>().ok());
    let chunked = header(&lower, "transfer-encoding").is_some_and(|v| v.contains("chunked"));
    let mut body = body_start;
    if header(&lower, "expect").is_some_and(|v| v.contains("100-continue")) && fault != Fault::Error {
        client.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
    }
    if let Some(len) = length {
        while body.len() < len {
            let mut buf = vec![0u8; (len - body.len()).min(64 * 1024)];
            let k = client.read(&mut buf).await?;
            if k == 0 {
                return Ok(());
            }
            body.extend_from_slice(&buf[..k]);
        }
    }
    let fault = if chunked { Fault::None } else { fault };
    if fault == Fault::Error {
        n.errors.fetch_add(1, Ordering::SeqCst);
        let response = error_response(&lower);
        client.write_all(response.as_bytes()).await?;
        return client.shutdown().await;
    }
    let mut upstream = TcpStream::connect(target).await?;
    upstream.write_all(&with_connection_close(&text)).await?;
    upstream.write_all(&body).await?;
    if chunked {
        // Not parsed: both directions copied until either side ends.
        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
        return Ok(());
    }
    if fault == Fault::ResetAfter {
        // Let the service apply it and answer, then reset the client.
        let mut sink = Vec::new();
        let _ = upstream.read_to_end(&mut sink).await;
        n.resets_after.fetch_add(1, Ordering::SeqCst);
        // A zero linger makes the close a reset; with zero it never blocks.
        #[allow(deprecated)]
        let _ = client.set_linger(Some(std::time::Duration::ZERO));
        drop(client);
        return Ok(());
    }
    let _ = tokio::io::copy(&mut upstream, &mut client).await;
    client.shutdown().await
}

/// Reads up to the end of the request head: `(head, body bytes already read)`.
async fn read_head(client: &mut TcpStream) -> std::io::Result<Option<(Vec<u8>, Vec<u8>)>> {
    let mut data = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let k = client.read(&mut buf).await?;
        if k == 0 {
            return Ok(None);
        }
        data.extend_from_slice(&buf[..k]);
        if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            let body = data.split_off(i + 4);
            return Ok(Some((data, body)));
        }
        if data.len() > 1 << 20 {
            return Ok(None);
        }
    }
}

fn header<'a>(lower_head: &'a str, name: &str) -> Option<&'a str> {
    lower_head.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(':').map(str::trim))
}

/// The head with `Connection: close` instead of any connection header (and
/// no `Expect`: the proxy answered `100 Continue` itself).
fn with_connection_close(head: &str) -> Vec<u8> {
    let mut out = String::with_capacity(head.len() + 24);
    for line in head.split("\r\n").filter(|l| !l.is_empty()) {
        let lower = line.to_ascii_lowercase();
        if lower.starts_with("connection:") || lower.starts_with("expect:") {
            continue;
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    out.into_bytes()
}

/// A retryable failure in the form the service's clients expect.
fn error_response(lower_head: &str) -> String {
    let (status, content_type, body) = if header(lower_head, "x-amz-target").is_some_and(|t| t.starts_with("dynamodb"))
    {
        (
            "400 Bad Request",
            "application/x-amz-json-1.0",
            r#"{"__type":"com.amazonaws.dynamodb.v20120810#ThrottlingException","message":"Rate exceeded (injected)"}"#
                .to_owned(),
        )
    } else if lower_head.contains("x-amz-") || lower_head.contains("aws4-hmac-sha256") {
        (
            "503 Slow Down",
            "application/xml",
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>SlowDown</Code><Message>Please reduce your \
             request rate (injected).</Message></Error>"
                .to_owned(),
        )
    } else {
        ("503 Service Unavailable", "text/plain", "injected".to_owned())
    };
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_are_rewritten_and_errors_fit_the_service() {
        let head = "PUT /b/k HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\nContent-Length: 3\r\n\r\n";
        let out = String::from_utf8(with_connection_close(head)).unwrap_or_default();
        assert_eq!(out, "PUT /b/k HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\n");
        let lower = head.to_ascii_lowercase();
        assert_eq!(header(&lower, "content-length"), Some("3"));
        assert!(
            error_response("post / http/1.1\r\nx-amz-target: dynamodb_20120810.putitem\r\n").contains("Throttling")
        );
        assert!(error_response("put /b/k http/1.1\r\nauthorization: aws4-hmac-sha256 x\r\n").contains("SlowDown"));
        assert!(error_response("post /session http/1.1\r\n").starts_with("HTTP/1.1 503"));
    }
}

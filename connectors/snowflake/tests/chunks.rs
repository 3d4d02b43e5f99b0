//! Chunked results over real HTTP. The emulator never splits a result into
//! chunks, so a local endpoint answers the way Snowflake does for large
//! results: the first rows inline, the rest as chunk URLs (object storage in
//! production) fetched with the headers the answer names — here one plain
//! JSON chunk, one gzip-compressed JSON chunk that fails once with HTTP 503,
//! and one Arrow chunk.

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::array::{ArrayRef, Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::ipc::writer::StreamWriter;
use arrow::record_batch::RecordBatch;
use lablake_snowflake::{Client, SnowflakeConfig, SnowflakeError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Requests per path (without the query string), and their headers.
#[derive(Default)]
struct Seen {
    count: HashMap<String, usize>,
    chunk_headers_ok: bool,
    /// How many times `/chunk/2` answers HTTP 503 before it answers.
    chunk2_failures: usize,
}

struct Response {
    status: u16,
    body: Vec<u8>,
}

fn arrow_chunk() -> anyhow::Result<Vec<u8>> {
    let schema =
        Arc::new(Schema::new(vec![Field::new("ID", DataType::Int64, false), Field::new("NAME", DataType::Utf8, true)]));
    let ids: ArrayRef = Arc::new(Int64Array::from(vec![6, 7]));
    let names: ArrayRef = Arc::new(StringArray::from(vec![Some("f"), None]));
    let batch = RecordBatch::try_new(schema.clone(), vec![ids, names])?;
    let mut out = Vec::new();
    let mut w = StreamWriter::try_new(&mut out, &schema)?;
    w.write(&batch)?;
    w.finish()?;
    drop(w);
    Ok(out)
}

fn gzip(b: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(b)?;
    Ok(e.finish()?)
}

fn route(base: &str, path: &str, headers: &str, seen: &Mutex<Seen>, arrow: &[u8]) -> anyhow::Result<Response> {
    let mut s = seen.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    let n = {
        let c = s.count.entry(path.to_owned()).or_insert(0);
        *c += 1;
        *c
    };
    let json = |v: serde_json::Value| Response { status: 200, body: v.to_string().into_bytes() };
    let has_chunk_header = headers.lines().any(|l| l.eq_ignore_ascii_case("x-lablake-chunk-key: secret"));
    Ok(match path {
        "/session/v1/login-request" => {
            json(serde_json::json!({"success": true, "data": {"token": "t1", "masterToken": "m1"}}))
        }
        "/queries/v1/query-request" => json(serde_json::json!({
            "success": true,
            "data": {
                "queryId": "q1",
                "rowtype": [
                    {"name": "ID", "type": "fixed", "scale": 0, "precision": 38, "nullable": false},
                    {"name": "NAME", "type": "text", "nullable": true}
                ],
                "rowset": [["1", "a"], ["2", "b"]],
                "chunkHeaders": {"x-lablake-chunk-key": "secret"},
                "chunks": [
                    {"url": format!("{base}/chunk/1"), "rowCount": 2},
                    {"url": format!("{base}/chunk/2"), "rowCount": 1},
                    {"url": format!("{base}/chunk/3"), "rowCount": 2}
                ]
            }
        })),
        _ if path.starts_with("/chunk/") && !has_chunk_header => Response { status: 403, body: Vec::new() },
        "/chunk/1" => {
            s.chunk_headers_ok = true;
            Response { status: 200, body: br#"["3","c"],["4",null]"#.to_vec() }
        }
        // A transient failure the first time.
        "/chunk/2" if n <= s.chunk2_failures => Response { status: 503, body: Vec::new() },
        "/chunk/2" => Response { status: 200, body: gzip(br#"["5","e"]"#)? },
        "/chunk/3" => Response { status: 200, body: arrow.to_vec() },
        _ => Response { status: 404, body: Vec::new() },
    })
}

/// A local endpoint answering like Snowflake with a chunked result.
async fn chunking_endpoint(seen: Arc<Mutex<Seen>>) -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let arrow = Arc::new(arrow_chunk()?);
    let b = base.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let (seen, arrow, base) = (seen.clone(), arrow.clone(), b.clone());
            tokio::spawn(async move {
                // One request per connection: headers, then the body by content-length.
                let mut buf = Vec::new();
                let mut tmp = [0u8; 8192];
                let head_end = loop {
                    let Ok(n) = sock.read(&mut tmp).await else { return };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&tmp[..n]);
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned()))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                while buf.len() < head_end + len {
                    match sock.read(&mut tmp).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&tmp[..n]),
                    }
                }
                let target = head.split_whitespace().nth(1).unwrap_or("/");
                let path = target.split('?').next().unwrap_or(target);
                let resp =
                    route(&base, path, &head, &seen, &arrow).unwrap_or(Response { status: 500, body: Vec::new() });
                let mut out = format!(
                    "HTTP/1.1 {} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    resp.status,
                    resp.body.len()
                )
                .into_bytes();
                out.extend_from_slice(&resp.body);
                let _ = sock.write_all(&out).await;
            });
        }
    });
    Ok(base)
}

#[tokio::test]
async fn chunked_results_are_fetched_in_order_with_their_headers_and_retried() -> anyhow::Result<()> {
    let seen = Arc::new(Mutex::new(Seen { chunk2_failures: 1, ..Seen::default() }));
    let base = chunking_endpoint(seen.clone()).await?;
    let mut cfg = SnowflakeConfig::new("lablaketest", "lablake");
    cfg.base_url = Some(base);
    cfg.allow_http = true;
    cfg.password = Some("test".to_owned().into());
    cfg.retry_backoff = Duration::from_millis(50);
    let mut c = Client::new(cfg)?;
    let r = c.query("SELECT ID, NAME FROM BIG", &[]).await?;
    let rows: Vec<(Option<&str>, Option<&str>)> =
        (0..r.rows.len()).map(|i| (r.get(i, "id"), r.get(i, "name"))).collect();
    assert_eq!(
        rows,
        vec![
            (Some("1"), Some("a")),
            (Some("2"), Some("b")),
            (Some("3"), Some("c")),
            (Some("4"), None),
            (Some("5"), Some("e")),
            (Some("6"), Some("f")),
            (Some("7"), None),
        ]
    );
    let s = seen.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    assert!(s.chunk_headers_ok, "chunks are fetched with the answer's chunk headers");
    // The failed chunk made the whole statement run again (once).
    assert_eq!(s.count.get("/chunk/2"), Some(&2));
    assert_eq!(s.count.get("/queries/v1/query-request"), Some(&2));
    Ok(())
}

#[tokio::test]
async fn a_chunk_that_keeps_failing_is_an_unavailable_error_naming_the_endpoint() -> anyhow::Result<()> {
    let seen = Arc::new(Mutex::new(Seen { chunk2_failures: usize::MAX, ..Seen::default() }));
    let base = chunking_endpoint(seen.clone()).await?;
    let mut cfg = SnowflakeConfig::new("lablaketest", "lablake");
    cfg.base_url = Some(base.clone());
    cfg.allow_http = true;
    cfg.password = Some("test".to_owned().into());
    cfg.max_retries = 2;
    cfg.retry_backoff = Duration::from_millis(20);
    let mut c = Client::new(cfg)?;
    match c.query("SELECT ID, NAME FROM BIG", &[]).await {
        Err(SnowflakeError::Unavailable { endpoint, reason }) => {
            assert!(base.contains(endpoint.trim_end_matches('/')), "{endpoint} vs {base}");
            assert!(reason.contains("result chunk: HTTP 503"), "{reason}");
        }
        other => anyhow::bail!("expected an unavailable error, got {other:?}"),
    }
    let s = seen.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    // The first try and two retries.
    assert_eq!(s.count.get("/chunk/2"), Some(&3));
    Ok(())
}

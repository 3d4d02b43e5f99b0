//! The client: Snowflake's driver protocol (what the official connectors
//! and the local emulator speak) — `login-request`, `query-request`, session
//! renewal (`token-request`), result polling and result chunks.
//!
//! Delivery contract: [`Client::query`] runs one statement and returns its
//! complete result. Transient failures (connection errors, timeouts, HTTP
//! 429/5xx) are retried with exponential backoff up to `max_retries`; an
//! expired session is renewed (or logged in again) and the statement
//! re-sent. A retried statement may therefore run twice: callers send only
//! idempotent statements or statements whose repeat is harmless (the loader's
//! COPY is de-duplicated by load history, its MERGE guarded by positions).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use secrecy::ExposeSecret;
use serde_json::{Value as Json, json};

use crate::jwt::{KeyPair, account_locator};
use crate::rowset::{self, ColumnMeta, Row};
use crate::{SnowflakeConfig, SnowflakeError};

/// Session expired; renew with the master token.
const SESSION_EXPIRED: &str = "390112";
/// Statement still running; poll `getResultUrl`.
const IN_PROGRESS: [&str; 2] = ["333333", "333334"];
/// Longest a statement is polled for.
const MAX_POLL: Duration = Duration::from_secs(3600);

/// A bind value (`?` placeholders, in order).
#[derive(Debug, Clone, PartialEq)]
pub enum Binding {
    Text(String),
    Fixed(i64),
    Null,
}

impl Binding {
    fn json(&self) -> Json {
        match self {
            Binding::Text(s) => json!({"type": "TEXT", "value": s}),
            Binding::Fixed(n) => json!({"type": "FIXED", "value": n.to_string()}),
            Binding::Null => json!({"type": "TEXT", "value": null}),
        }
    }
}

/// A statement's result.
#[derive(Debug, Clone, Default)]
pub struct QueryResult {
    pub query_id: String,
    pub columns: Vec<ColumnMeta>,
    pub rows: Vec<Row>,
}

impl QueryResult {
    /// The value of column `name` (case-insensitive) in row `row`.
    pub fn get(&self, row: usize, name: &str) -> Option<&str> {
        let c = self.columns.iter().position(|c| c.name.eq_ignore_ascii_case(name))?;
        self.rows.get(row)?.get(c)?.as_deref()
    }
}

struct Session {
    token: String,
    /// Absent when the server does not issue one (the emulator): renewal
    /// is then a new login.
    master: Option<String>,
}

/// One Snowflake session. Not shared between tasks (`&mut self`).
pub struct Client {
    cfg: SnowflakeConfig,
    base: url::Url,
    http: reqwest::Client,
    key: Option<KeyPair>,
    session: Option<Session>,
    database: Option<String>,
    schema: Option<String>,
    sequence: u64,
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn request_id() -> String {
    let b: [u8; 16] = rand::random();
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
        u16::from_be_bytes([b[4], b[5]]),
        u16::from_be_bytes([b[6], b[7]]) & 0x0fff,
        (u16::from_be_bytes([b[8], b[9]]) & 0x3fff) | 0x8000,
        u64::from_be_bytes([0, 0, b[10], b[11], b[12], b[13], b[14], b[15]])
    )
}

impl Client {
    /// Checks the configuration and reads the private key; does not connect.
    pub fn new(cfg: SnowflakeConfig) -> Result<Self, SnowflakeError> {
        cfg.validate()?;
        let base = cfg.base()?;
        let key = match &cfg.private_key_path {
            Some(p) => {
                let pem = std::fs::read_to_string(p).map_err(|e| {
                    SnowflakeError::config("private_key_path", format!("cannot read {}: {e}", p.display()))
                })?;
                Some(KeyPair::from_pem(&pem)?)
            }
            None => None,
        };
        let http = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout.min(Duration::from_secs(10)))
            .build()
            .map_err(|e| SnowflakeError::config("base_url", format!("HTTP client: {e}")))?;
        Ok(Client { cfg, base, http, key, session: None, database: None, schema: None, sequence: 0 })
    }

    /// The base URL, for messages.
    pub fn endpoint(&self) -> &str {
        self.base.as_str().trim_end_matches('/')
    }

    /// Logs in with the configured credentials, optionally using `database`
    /// and `schema` (they must exist). Retries transient failures.
    pub async fn login(&mut self, database: Option<&str>, schema: Option<&str>) -> Result<(), SnowflakeError> {
        self.database = database.map(str::to_owned);
        self.schema = schema.map(str::to_owned);
        self.retrying(|c| Box::pin(c.login_once())).await
    }

    async fn login_once(&mut self) -> Result<(), SnowflakeError> {
        let mut url = self.url("/session/v1/login-request")?;
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("requestId", &request_id());
            if let Some(d) = &self.database {
                q.append_pair("databaseName", d);
            }
            if let Some(s) = &self.schema {
                q.append_pair("schemaName", s);
            }
            if let Some(w) = &self.cfg.warehouse {
                q.append_pair("warehouse", w);
            }
            if let Some(r) = &self.cfg.role {
                q.append_pair("roleName", r);
            }
        }
        let mut data = json!({
            "CLIENT_APP_ID": "lablake",
            "CLIENT_APP_VERSION": env!("CARGO_PKG_VERSION"),
            "ACCOUNT_NAME": account_locator(&self.cfg.account),
            "LOGIN_NAME": self.cfg.user,
            "CLIENT_ENVIRONMENT": {"APPLICATION": "lablake"},
            "SESSION_PARAMETERS": self.cfg.session_parameters,
        });
        match (&self.key, &self.cfg.password) {
            (Some(k), _) => {
                data["AUTHENTICATOR"] = json!("SNOWFLAKE_JWT");
                data["TOKEN"] = json!(k.token(&self.cfg.account, &self.cfg.user, now_secs(), 3600)?);
            }
            (None, Some(p)) => data["PASSWORD"] = json!(p.expose_secret()),
            (None, None) => return Err(SnowflakeError::config("password", "missing credentials")),
        }
        let answer = self.post(url, None, &json!({ "data": data })).await?;
        if !answer["success"].as_bool().unwrap_or(false) {
            return Err(SnowflakeError::Auth { endpoint: self.endpoint().to_owned(), reason: message(&answer) });
        }
        let Some(token) = answer["data"]["token"].as_str() else {
            return Err(self.protocol("login answer without a session token"));
        };
        let master = answer["data"]["masterToken"].as_str().map(str::to_owned);
        self.session = Some(Session { token: token.to_owned(), master });
        tracing::debug!(endpoint = %self.endpoint(), user = %self.cfg.user, "snowflake session opened");
        Ok(())
    }

    /// Runs one statement with `?` bindings and returns its whole result.
    pub async fn query(&mut self, sql: &str, bindings: &[Binding]) -> Result<QueryResult, SnowflakeError> {
        let started = std::time::Instant::now();
        let owned = sql.to_owned();
        let bindings = bindings.to_vec();
        let r = self
            .retrying(move |c| {
                let (sql, bindings) = (owned.clone(), bindings.clone());
                Box::pin(async move { c.query_once(&sql, &bindings).await })
            })
            .await;
        // The statement's verb only: SQL text can hold literals.
        let verb = sql.split_whitespace().next().unwrap_or_default();
        tracing::debug!(endpoint = %self.endpoint(), statement = verb, elapsed_ms = started.elapsed().as_millis() as u64,
            ok = r.is_ok(), "snowflake statement");
        r
    }

    async fn query_once(&mut self, sql: &str, bindings: &[Binding]) -> Result<QueryResult, SnowflakeError> {
        if self.session.is_none() {
            self.login_once().await?;
        }
        for attempt in 0..3 {
            self.sequence += 1;
            let mut url = self.url("/queries/v1/query-request")?;
            url.query_pairs_mut().append_pair("requestId", &request_id());
            let mut body = json!({
                "sqlText": sql,
                "asyncExec": false,
                "sequenceId": self.sequence,
                "querySubmissionTime": SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
            });
            if !bindings.is_empty() {
                let b: serde_json::Map<String, Json> =
                    bindings.iter().enumerate().map(|(i, b)| ((i + 1).to_string(), b.json())).collect();
                body["bindings"] = Json::Object(b);
            }
            let token = self.session.as_ref().map(|s| s.token.clone()).unwrap_or_default();
            let mut answer = self.post(url, Some(&token), &body).await?;
            let started = std::time::Instant::now();
            while IN_PROGRESS.contains(&code(&answer).as_str()) {
                let Some(path) = answer["data"]["getResultUrl"].as_str().map(str::to_owned) else {
                    return Err(self.protocol("statement in progress without a result URL"));
                };
                if started.elapsed() > MAX_POLL {
                    return Err(self.protocol("statement still running after an hour"));
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                answer = self.get_json(self.url(&path)?, &token).await?;
            }
            if answer["success"].as_bool().unwrap_or(false) {
                return self.result(&answer["data"]).await;
            }
            if code(&answer) == SESSION_EXPIRED && attempt < 2 {
                self.renew().await?;
                continue;
            }
            return Err(SnowflakeError::Query {
                code: code(&answer),
                sql_state: answer["data"]["sqlState"].as_str().map(str::to_owned),
                message: redact_message(&code(&answer), &message(&answer)),
            });
        }
        Err(self.protocol("session expired repeatedly"))
    }

    /// Renews the session with the master token, or logs in again.
    async fn renew(&mut self) -> Result<(), SnowflakeError> {
        let Some((token, Some(master))) = self.session.as_ref().map(|s| (s.token.clone(), s.master.clone())) else {
            return self.login_once().await;
        };
        let mut url = self.url("/session/token-request")?;
        url.query_pairs_mut().append_pair("requestId", &request_id());
        let body = json!({"oldSessionToken": token, "requestType": "RENEW"});
        let answer = self.post(url, Some(&master), &body).await?;
        match (answer["success"].as_bool(), answer["data"]["sessionToken"].as_str()) {
            (Some(true), Some(token)) => {
                let master = answer["data"]["masterToken"].as_str().map_or(master, str::to_owned);
                self.session = Some(Session { token: token.to_owned(), master: Some(master) });
                tracing::debug!(endpoint = %self.endpoint(), "snowflake session renewed");
                Ok(())
            }
            _ => self.login_once().await,
        }
    }

    /// Closes the session (best effort).
    pub async fn close(&mut self) {
        if let Some(s) = self.session.take()
            && let Ok(mut url) = self.url("/session")
        {
            url.query_pairs_mut().append_pair("delete", "true");
            let _ = self.post(url, Some(&s.token), &json!({})).await;
        }
    }

    async fn result(&self, data: &Json) -> Result<QueryResult, SnowflakeError> {
        let columns: Vec<ColumnMeta> = serde_json::from_value(data["rowtype"].clone()).unwrap_or_default();
        let query_id = data["queryId"].as_str().unwrap_or_default().to_owned();
        let bad = |e: String| self.protocol(&e);
        let mut rows = match data["rowsetBase64"].as_str().filter(|s| !s.is_empty()) {
            Some(b64) => {
                let bytes = base64::engine::general_purpose::STANDARD.decode(b64).map_err(|e| bad(e.to_string()))?;
                rowset::arrow_rows(&bytes, &columns).map_err(bad)?
            }
            None if data["rowset"].is_array() => rowset::json_rows(&data["rowset"]).map_err(bad)?,
            None => Vec::new(),
        };
        if let Some(chunks) = data["chunks"].as_array() {
            let headers = chunk_headers(data);
            for chunk in chunks {
                let Some(url) = chunk["url"].as_str() else { return Err(bad("chunk without a URL".into())) };
                let body = self.get_chunk(url, &headers).await?;
                let mut more = if body.first() == Some(&b'[') || body.is_empty() {
                    rowset::json_chunk_rows(&body).map_err(bad)?
                } else {
                    rowset::arrow_rows(&body, &columns).map_err(bad)?
                };
                rows.append(&mut more);
            }
        }
        Ok(QueryResult { query_id, columns, rows })
    }

    fn url(&self, path: &str) -> Result<url::Url, SnowflakeError> {
        self.base.join(path).map_err(|e| self.protocol(&format!("bad path {path}: {e}")))
    }

    fn protocol(&self, reason: &str) -> SnowflakeError {
        SnowflakeError::Protocol { endpoint: self.endpoint().to_owned(), reason: reason.to_owned() }
    }

    fn unavailable(&self, reason: String) -> SnowflakeError {
        SnowflakeError::Unavailable { endpoint: self.endpoint().to_owned(), reason }
    }

    async fn post(&self, url: url::Url, token: Option<&str>, body: &Json) -> Result<Json, SnowflakeError> {
        let mut req = self
            .http
            .post(url)
            .header("Content-Type", "application/json")
            .header("Accept", "application/snowflake")
            .body(body.to_string());
        if let Some(t) = token {
            req = req.header("Authorization", format!("Snowflake Token=\"{t}\""));
        }
        self.answer(req.send().await).await
    }

    async fn get_json(&self, url: url::Url, token: &str) -> Result<Json, SnowflakeError> {
        let req = self
            .http
            .get(url)
            .header("Accept", "application/snowflake")
            .header("Authorization", format!("Snowflake Token=\"{token}\""));
        self.answer(req.send().await).await
    }

    async fn answer(&self, sent: Result<reqwest::Response, reqwest::Error>) -> Result<Json, SnowflakeError> {
        let resp = sent.map_err(|e| self.unavailable(transport_reason(&e)))?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| self.unavailable(transport_reason(&e)))?;
        if status.as_u16() == 429 || status.is_server_error() {
            return Err(self.unavailable(format!("HTTP {status}")));
        }
        if status.as_u16() == 401 || status.as_u16() == 403 {
            return Err(SnowflakeError::Auth {
                endpoint: self.endpoint().to_owned(),
                reason: format!("HTTP {status}"),
            });
        }
        let body = gunzip(&bytes).map_err(|e| self.protocol(&e))?;
        serde_json::from_slice(&body).map_err(|e| self.protocol(&format!("HTTP {status}, not JSON: {e}")))
    }

    async fn get_chunk(&self, url: &str, headers: &[(String, String)]) -> Result<Vec<u8>, SnowflakeError> {
        let mut req = self.http.get(url);
        for (k, v) in headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let resp = req.send().await.map_err(|e| self.unavailable(transport_reason(&e)))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(self.unavailable(format!("result chunk: HTTP {status}")));
        }
        let bytes = resp.bytes().await.map_err(|e| self.unavailable(transport_reason(&e)))?;
        gunzip(&bytes).map_err(|e| self.protocol(&e))
    }

    /// Runs `op` again after transient failures, with exponential backoff and
    /// jitter, logging each retry with the endpoint.
    async fn retrying<T>(
        &mut self,
        mut op: impl for<'a> FnMut(
            &'a mut Client,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<T, SnowflakeError>> + Send + 'a>,
        >,
    ) -> Result<T, SnowflakeError> {
        let mut attempt = 0u32;
        loop {
            match op(self).await {
                Err(e) if e.is_retryable() && attempt < self.cfg.max_retries => {
                    let delay = backoff(self.cfg.retry_backoff, attempt);
                    tracing::warn!(endpoint = %self.endpoint(), error = %e, attempt = attempt + 1,
                        retry_in_ms = delay.as_millis() as u64, "snowflake request failed; retrying");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }
}

/// `base · 2^attempt`, capped at 30 s, with up to 25 % jitter.
pub fn backoff(base: Duration, attempt: u32) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.min(16)).min(Duration::from_secs(30));
    let jitter = exp.mul_f64(rand::random::<f64>() * 0.25);
    exp + jitter
}

fn code(answer: &Json) -> String {
    match &answer["code"] {
        Json::String(s) => s.clone(),
        Json::Number(n) => n.to_string(),
        _ => String::new(),
    }
}

fn message(answer: &Json) -> String {
    answer["message"].as_str().unwrap_or("no message").to_owned()
}

/// A Snowflake error message fit for logs: quoted parts redacted, and for
/// data errors (codes 100xxx, e.g. 100046 `Number out of representable
/// range: type FIXED…, value 12345…`, which quotes nothing) only the part
/// before the first colon.
fn redact_message(code: &str, msg: &str) -> String {
    let msg = redact_literals(msg);
    match msg.split_once(':') {
        Some((head, _)) if code.starts_with("100") => format!("{head}: …"),
        _ => msg,
    }
}

/// Snowflake quotes the offending value in some messages (`Numeric value
/// 'abc' is not recognized`); errors end up in logs, and values are health
/// data: every single-quoted part is replaced by `'…'`.
fn redact_literals(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut quoted = false;
    for c in msg.chars() {
        match (c, quoted) {
            ('\'', false) => {
                out.push_str("'…'");
                quoted = true;
            }
            ('\'', true) => quoted = false,
            (_, true) => {}
            (c, false) => out.push(c),
        }
    }
    out
}

fn chunk_headers(data: &Json) -> Vec<(String, String)> {
    if let Some(h) = data["chunkHeaders"].as_object() {
        return h.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned()))).collect();
    }
    match data["qrmk"].as_str() {
        Some(k) => vec![
            ("x-amz-server-side-encryption-customer-algorithm".into(), "AES256".into()),
            ("x-amz-server-side-encryption-customer-key".into(), k.to_owned()),
        ],
        None => Vec::new(),
    }
}

fn transport_reason(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "connection refused or unreachable".into()
    } else {
        // The URL may carry a request id but never credentials.
        e.to_string()
    }
}

fn gunzip(bytes: &[u8]) -> Result<Vec<u8>, String> {
    if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(bytes), &mut out)
            .map_err(|e| format!("gzip: {e}"))?;
        Ok(out)
    } else {
        Ok(bytes.to_vec())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let b = Duration::from_millis(100);
        assert!(backoff(b, 0) >= b && backoff(b, 0) <= b.mul_f64(1.25));
        assert!(backoff(b, 3) >= Duration::from_millis(800));
        assert!(backoff(b, 40) <= Duration::from_millis(37_500));
    }

    #[test]
    fn bindings_and_answers() {
        assert_eq!(Binding::Fixed(-3).json(), json!({"type": "FIXED", "value": "-3"}));
        assert_eq!(Binding::Null.json()["value"], Json::Null);
        assert_eq!(code(&json!({"code": "390112"})), "390112");
        assert_eq!(code(&json!({"code": 390112})), "390112");
        assert_eq!(message(&json!({})), "no message");
        assert_eq!(
            redact_literals("Numeric value 'P-1234 Smith' is not recognized in 'x'"),
            "Numeric value '…' is not recognized in '…'"
        );
        assert_eq!(
            redact_message(
                "100046",
                "Number out of representable range: type FIXED[SB16](12,2){nullable=true}, value 98765"
            ),
            "Number out of representable range: …"
        );
        assert_eq!(
            redact_message("002003", "SQL compilation error: Object 'X' does not exist"),
            "SQL compilation error: Object '…' does not exist"
        );
        let h = chunk_headers(&json!({"qrmk": "k"}));
        assert_eq!(h[1].1, "k");
        let id = request_id();
        assert_eq!((id.len(), &id[14..15]), (36, "4"));
    }

    #[test]
    fn gzip_bodies_are_inflated() {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(br#"["1"]"#).unwrap();
        assert_eq!(gunzip(&enc.finish().unwrap()).unwrap(), br#"["1"]"#);
        assert_eq!(gunzip(b"plain").unwrap(), b"plain");
    }

    #[test]
    fn results_are_looked_up_by_column_name() {
        let r = QueryResult {
            query_id: "q".into(),
            columns: vec![ColumnMeta {
                name: "N".into(),
                type_name: "fixed".into(),
                scale: None,
                precision: None,
                nullable: false,
            }],
            rows: vec![vec![Some("7".into())]],
        };
        assert_eq!(r.get(0, "n"), Some("7"));
        assert_eq!(r.get(1, "n"), None);
    }
}

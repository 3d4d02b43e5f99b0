//! Connection settings.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;

use crate::SnowflakeError;

/// `[snowflake]`: where and how to log in.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnowflakeConfig {
    /// Account identifier, e.g. `xy12345.eu-central-1` or `myorg-myaccount`.
    pub account: String,
    pub user: String,
    /// Password authentication (one of `password` / `private_key_path`).
    #[serde(default)]
    pub password: Option<SecretString>,
    /// Key-pair authentication: an unencrypted PKCS#8 or PKCS#1 PEM file.
    #[serde(default)]
    pub private_key_path: Option<PathBuf>,
    /// Base URL; default `https://<account>.snowflakecomputing.com`.
    #[serde(default)]
    pub base_url: Option<String>,
    /// Allow a plain `http://` base URL (tests against the local emulator only).
    #[serde(default)]
    pub allow_http: bool,
    #[serde(default)]
    pub role: Option<String>,
    #[serde(default)]
    pub warehouse: Option<String>,
    /// Per-request timeout.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Attempts after the first for a transient failure (unreachable,
    /// HTTP 429/5xx), with exponential backoff from `retry_backoff`.
    #[serde(default = "default_retries")]
    pub max_retries: u32,
    #[serde(default = "default_backoff", with = "humantime_serde")]
    pub retry_backoff: Duration,
    /// Extra session parameters sent at login.
    #[serde(default)]
    pub session_parameters: BTreeMap<String, serde_json::Value>,
}

fn default_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_retries() -> u32 {
    5
}
fn default_backoff() -> Duration {
    Duration::from_millis(500)
}

impl SnowflakeConfig {
    /// A config with defaults for everything but the names (tests, tools).
    pub fn new(account: &str, user: &str) -> Self {
        SnowflakeConfig {
            account: account.to_owned(),
            user: user.to_owned(),
            password: None,
            private_key_path: None,
            base_url: None,
            allow_http: false,
            role: None,
            warehouse: None,
            timeout: default_timeout(),
            max_retries: default_retries(),
            retry_backoff: default_backoff(),
            session_parameters: BTreeMap::new(),
        }
    }

    /// The base URL, checked: https unless `allow_http`, no path or query.
    pub fn base(&self) -> Result<url::Url, SnowflakeError> {
        if self.account.trim().is_empty() {
            return Err(SnowflakeError::config("account", "must not be empty"));
        }
        if self.user.trim().is_empty() {
            return Err(SnowflakeError::config("user", "must not be empty"));
        }
        let text = match &self.base_url {
            Some(u) => u.clone(),
            None => format!("https://{}.snowflakecomputing.com", self.account.to_ascii_lowercase()),
        };
        let url = url::Url::parse(&text).map_err(|e| SnowflakeError::config("base_url", format!("not a URL: {e}")))?;
        match url.scheme() {
            "https" => {}
            "http" if self.allow_http => {}
            "http" => {
                return Err(SnowflakeError::config(
                    "base_url",
                    "plain http is refused; set allow_http = true only for a local emulator",
                ));
            }
            other => return Err(SnowflakeError::config("base_url", format!("scheme `{other}` is not http(s)"))),
        }
        if url.host_str().is_none() {
            return Err(SnowflakeError::config("base_url", "has no host"));
        }
        Ok(url)
    }

    /// Checks the whole config (base URL, exactly one credential).
    pub fn validate(&self) -> Result<(), SnowflakeError> {
        self.base()?;
        match (&self.password, &self.private_key_path) {
            (Some(_), Some(_)) => Err(SnowflakeError::config("password", "set either password or private_key_path")),
            (None, None) => {
                Err(SnowflakeError::config("password", "missing credentials: set password or private_key_path"))
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn cfg(extra: &str) -> Result<SnowflakeConfig, serde_json::Error> {
        serde_json::from_str(&format!(r#"{{"account":"xy12345.eu-central-1","user":"lablake"{extra}}}"#))
    }

    #[test]
    fn base_urls_and_credentials_are_checked_with_named_keys() {
        let c = cfg(r#","password":"p""#).unwrap();
        assert_eq!(c.base().unwrap().as_str(), "https://xy12345.eu-central-1.snowflakecomputing.com/");
        c.validate().unwrap();
        let key = |c: SnowflakeConfig| match c.validate() {
            Err(SnowflakeError::Config { key, .. }) => key,
            other => panic!("{other:?}"),
        };
        assert_eq!(key(cfg(r#","password":"p","base_url":"http://127.0.0.1:28080""#).unwrap()), "base_url");
        cfg(r#","password":"p","base_url":"http://127.0.0.1:28080","allow_http":true"#).unwrap().validate().unwrap();
        assert_eq!(key(cfg("").unwrap()), "password");
        assert_eq!(key(cfg(r#","password":"p","private_key_path":"/k.pem""#).unwrap()), "password");
        assert_eq!(key(cfg(r#","password":"p","base_url":"ftp://x""#).unwrap()), "base_url");
        assert!(cfg(r#","passwd":"p""#).is_err(), "unknown keys are refused");
        assert!(!format!("{:?}", cfg(r#","password":"hunter2""#).unwrap()).contains("hunter2"));
    }
}

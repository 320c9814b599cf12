//! `call_webhook` deliveries and `http` master rules over HTTP, with an HMAC-SHA256 signature
//! when the action names a secret (read from Secrets Manager, cached, never logged).

use std::time::Duration;

use hmac::{Hmac, Mac};
use rulestream_core::ports::{Deliveries, Delivery, EffectError};
use serde_json::Value;
use sha2::Sha256;

use crate::cache::TtlCache;

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
const KEY_TTL: Duration = Duration::from_secs(300);

/// Header carrying the idempotency key.
pub const IDEMPOTENCY_HEADER: &str = "Idempotency-Key";
/// Header carrying `sha256=<hex HMAC-SHA256 of the body>`.
pub const SIGNATURE_HEADER: &str = "X-Rulestream-Signature";

/// Which hosts the orchestrator may call (webhooks, `http` master rules): an egress allowlist,
/// so a flow cannot make it POST to an internal address. `RULESTREAM_EGRESS_ALLOW`: comma-separated
/// host names, `*` for any; unset or empty allows none.
#[derive(Debug, Clone, Default)]
pub struct Egress(Vec<String>);

impl Egress {
    /// Parses `RULESTREAM_EGRESS_ALLOW`.
    pub fn parse(spec: Option<&str>) -> Egress {
        Egress(
            spec.unwrap_or_default()
                .split(',')
                .map(|h| h.trim().to_ascii_lowercase())
                .filter(|h| !h.is_empty())
                .collect(),
        )
    }

    /// Checks `url` before any connection (or name lookup) is made.
    pub fn check(&self, url: &str) -> Result<(), EffectError> {
        let parsed = reqwest::Url::parse(url)
            .map_err(|_| EffectError::Failed(format!("`{url}` is not a URL")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(EffectError::Failed(format!(
                "`{url}` is not an http(s) URL"
            )));
        }
        let host = parsed.host_str().unwrap_or_default().to_ascii_lowercase();
        if self.0.iter().any(|h| h == "*" || *h == host) {
            Ok(())
        } else {
            Err(EffectError::Failed(format!(
                "blocked: host `{host}` is not in RULESTREAM_EGRESS_ALLOW"
            )))
        }
    }
}

/// An HTTP client for webhooks and `http` master rules.
pub struct Http {
    egress: Egress,
    client: reqwest::Client,
    secrets: aws_sdk_secretsmanager::Client,
    keys: TtlCache<String, String>,
}

/// `sha256=<hex>` of `body` under `key`.
pub fn signature(key: &[u8], body: &[u8]) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(key) {
        Ok(m) => m,
        // HMAC accepts keys of any length; this arm cannot be reached.
        Err(_) => return String::new(),
    };
    mac.update(body);
    let bytes = mac.finalize().into_bytes();
    let mut hex = String::with_capacity(7 + bytes.len() * 2);
    hex.push_str("sha256=");
    for b in bytes {
        hex.push_str(&format!("{b:02x}"));
    }
    hex
}

impl Http {
    /// A client allowed to call `egress`, using the SDK configuration for Secrets Manager.
    pub fn new(sdk: &aws_config::SdkConfig, egress: Egress) -> Result<Http, EffectError> {
        let client = reqwest::Client::builder()
            .user_agent("rulestream/0.1")
            .build()
            .map_err(|e| EffectError::Failed(format!("http client: {e}")))?;
        Ok(Http {
            egress,
            client,
            secrets: aws_sdk_secretsmanager::Client::new(sdk),
            keys: TtlCache::new(KEY_TTL),
        })
    }

    async fn key(&self, secret_id: &str) -> Result<String, EffectError> {
        if let Some(k) = self.keys.get(secret_id).await {
            return Ok(k);
        }
        let key = crate::secrets::secret_string(&self.secrets, secret_id)
            .await
            .map_err(|e| match e {
                crate::secrets::SecretError::Missing(m) => EffectError::Failed(m),
                crate::secrets::SecretError::Unavailable(m) => EffectError::Unavailable(m),
            })?;
        self.keys.put(secret_id.to_string(), key.clone()).await;
        Ok(key)
    }

    /// POSTs a JSON body and returns the JSON answer of a 2xx response (`null` when empty).
    pub async fn post(
        &self,
        url: &str,
        bytes: Vec<u8>,
        headers: &[(&str, String)],
        timeout_ms: Option<u64>,
    ) -> Result<Value, EffectError> {
        self.egress.check(url)?;
        let mut req = self
            .client
            .post(url)
            .timeout(timeout_ms.map_or(DEFAULT_TIMEOUT, Duration::from_millis))
            .header("content-type", "application/json");
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let resp =
            req.body(bytes).send().await.map_err(|e| {
                EffectError::Unavailable(format!("POST {url}: {}", without_url(&e)))
            })?;
        let status = resp.status();
        if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            return Err(EffectError::Unavailable(format!(
                "POST {url}: HTTP {status}"
            )));
        }
        if !status.is_success() {
            return Err(EffectError::Failed(format!("POST {url}: HTTP {status}")));
        }
        let text = resp
            .text()
            .await
            .map_err(|e| EffectError::Unavailable(format!("POST {url}: {}", without_url(&e))))?;
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text)
            .map_err(|_| EffectError::Failed(format!("POST {url}: the answer is not JSON")))
    }
}

fn without_url(e: &reqwest::Error) -> String {
    let mut e2 = e.to_string();
    if let Some(u) = e.url() {
        e2 = e2.replace(u.as_str(), "");
    }
    e2
}

impl Deliveries for Http {
    async fn deliver(&self, d: &Delivery) -> Result<(), EffectError> {
        self.egress.check(&d.url)?;
        let bytes = serde_json::to_vec(&d.body).map_err(|e| EffectError::Failed(e.to_string()))?;
        let mut headers = vec![(IDEMPOTENCY_HEADER, d.idempotency_key.clone())];
        if let Some(id) = &d.secret_id {
            let key = self.key(id).await?;
            headers.push((SIGNATURE_HEADER, signature(key.as_bytes(), &bytes)));
        }
        self.post(&d.url, bytes, &headers, d.timeout_ms)
            .await
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn egress_allows_only_listed_hosts() {
        let e = Egress::parse(Some("127.0.0.1, Hooks.Example.com"));
        assert!(e.check("http://127.0.0.1:8080/x").is_ok());
        assert!(e.check("https://hooks.example.com/a").is_ok());
        assert!(e.check("https://169.254.169.254/latest").is_err());
        assert!(e.check("ftp://127.0.0.1/x").is_err());
        assert!(Egress::parse(None).check("http://127.0.0.1/").is_err());
        assert!(
            Egress::parse(Some("*"))
                .check("https://anything.example/")
                .is_ok()
        );
    }

    #[test]
    fn signature_matches_the_rfc_4231_vector() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}

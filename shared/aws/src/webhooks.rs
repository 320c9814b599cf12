//! `call_webhook` deliveries and `http` master rules over HTTP, with an HMAC-SHA256 signature
//! of `<timestamp>.<body>` when the action names a secret (read from Secrets Manager, cached,
//! never logged), behind a deny-by-default egress policy ([`Egress`]).

use std::net::{IpAddr, SocketAddr};
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
/// Header carrying `sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">`, one per key while a
/// signing key is rotated (comma-separated).
pub const SIGNATURE_HEADER: &str = "X-Rulestream-Signature";
/// Header carrying the Unix time (seconds) the signature covers (replay protection).
pub const TIMESTAMP_HEADER: &str = "X-Rulestream-Timestamp";
/// The most a receiver's answer may weigh.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// The longest a call may take (SPEC section 1, Limits).
pub const MAX_TIMEOUT: Duration = Duration::from_millis(10_000);

/// One allowlist entry: a host name or IP literal, and the ports it may be called on.
#[derive(Debug, Clone, PartialEq)]
struct Allowed {
    host: String,
    /// `None`: any port; else these.
    ports: Option<Vec<u16>>,
}

/// Which hosts and ports the orchestrator may call (webhooks, `http` master rules), and which
/// addresses: deny by default. `RULESTREAM_EGRESS_ALLOW` is a comma-separated list of
/// `host` (ports 80 and 443), `host:port`, `host:*` (any port) or `*` (any host, ports 80 and
/// 443). A name is resolved here and every address it resolves to must be public, unless the
/// entry is an IP literal or `localhost` (so the local stack can allow loopback on purpose):
/// private, loopback, link-local, unique-local, multicast and unspecified addresses (and their
/// IPv4-mapped IPv6 forms) are refused. Redirects are never followed.
#[derive(Debug, Clone, Default)]
pub struct Egress(Vec<Allowed>);

/// Whether an address is one a flow may never reach through a name: private, loopback,
/// link-local (cloud metadata), unique-local, multicast, unspecified, documentation, or the
/// IPv4-mapped form of any of these.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_multicast()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64) // 100.64.0.0/10, carrier-grade NAT
                || (o[0] == 198 && (o[1] & 0xfe) == 18) // 198.18.0.0/15, benchmarking
                || o[0] >= 240
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_internal(IpAddr::V4(v4));
            }
            let seg = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (seg[0] & 0xfe00) == 0xfc00 // fc00::/7 unique local
                || (seg[0] & 0xffc0) == 0xfe80 // fe80::/10 link-local
                || (seg[0] == 0x2001 && seg[1] == 0x0db8) // documentation
                || (seg[0] == 0x64 && seg[1] == 0xff9b) // NAT64 of anything
        }
    }
}

impl Egress {
    /// Parses `RULESTREAM_EGRESS_ALLOW`.
    pub fn parse(spec: Option<&str>) -> Egress {
        let entries = spec
            .unwrap_or_default()
            .split(',')
            .map(|h| h.trim().to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .map(|h| {
                // `[::1]:8080`, `host:8080`, `host:*`, `host`, `::1`.
                let (host, port) = if let Some(rest) = h.strip_prefix('[') {
                    match rest.split_once(']') {
                        Some((host, tail)) => {
                            (host.to_string(), tail.strip_prefix(':').map(str::to_string))
                        }
                        None => (h.clone(), None),
                    }
                } else if h.matches(':').count() == 1 {
                    let (host, port) = h.split_once(':').unwrap_or((h.as_str(), ""));
                    (host.to_string(), Some(port.to_string()))
                } else {
                    (h.clone(), None)
                };
                let ports = match port.as_deref() {
                    Some("*") => None,
                    // An unparsable port allows nothing.
                    Some(p) => Some(p.parse::<u16>().map(|p| vec![p]).unwrap_or_default()),
                    None => Some(vec![80, 443]),
                };
                Allowed { host, ports }
            })
            .collect();
        Egress(entries)
    }

    fn entry_for(&self, host: &str, port: u16) -> Option<&Allowed> {
        self.0.iter().find(|a| {
            (a.host == "*" || a.host == host) && a.ports.as_ref().is_none_or(|p| p.contains(&port))
        })
    }

    /// Checks `url` before any connection (or name lookup) is made: scheme, host and port
    /// against the allowlist; an IP literal must be listed itself unless it is public.
    pub fn check(&self, url: &str) -> Result<(), EffectError> {
        let shown = rulestream_core::chain::redact_url(url);
        let parsed = reqwest::Url::parse(url)
            .map_err(|_| EffectError::Failed(format!("`{shown}` is not a URL")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(EffectError::Failed(format!(
                "`{shown}` is not an http(s) URL"
            )));
        }
        let host = parsed
            .host_str()
            .unwrap_or_default()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        let port = parsed.port_or_known_default().unwrap_or(0);
        let Some(entry) = self.entry_for(&host, port) else {
            return Err(EffectError::Failed(format!(
                "blocked: {host}:{port} is not in RULESTREAM_EGRESS_ALLOW"
            )));
        };
        if let Ok(ip) = host.parse::<IpAddr>()
            && is_internal(ip)
            && entry.host != host
        {
            return Err(EffectError::Failed(format!(
                "blocked: {host} is an internal address"
            )));
        }
        Ok(())
    }

    /// Whether `ip`, which `name` resolved to, may be called.
    fn address_allowed(&self, name: &str, ip: IpAddr) -> bool {
        if !is_internal(ip) {
            return true;
        }
        // Internal addresses only through an entry naming that address, or `localhost`
        // resolving to loopback; never through a public-looking name or `*`.
        let listed = |h: &str| self.0.iter().any(|a| a.host == h);
        listed(&ip.to_string()) || (name == "localhost" && ip.is_loopback() && listed("localhost"))
    }
}

/// Resolves names for the HTTP client and drops addresses [`Egress`] refuses; a name left with
/// none fails to resolve, so no connection is ever made to it.
struct CheckedResolver(Egress);

impl reqwest::dns::Resolve for CheckedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let egress = self.0.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| egress.address_allowed(&host, a.ip()))
                .collect();
            if addrs.is_empty() {
                return Err(format!("blocked: {host} resolves only to internal addresses").into());
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// An HTTP client for webhooks and `http` master rules.
pub struct Http {
    egress: Egress,
    client: reqwest::Client,
    secrets: aws_sdk_secretsmanager::Client,
    keys: TtlCache<String, Vec<String>>,
}

/// `sha256=<hex>` of `message` under `key`.
pub fn signature(key: &[u8], message: &[u8]) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(key) {
        Ok(m) => m,
        // HMAC accepts keys of any length; this arm cannot be reached.
        Err(_) => return String::new(),
    };
    mac.update(message);
    let bytes = mac.finalize().into_bytes();
    let mut hex = String::with_capacity(7 + bytes.len() * 2);
    hex.push_str("sha256=");
    for b in bytes {
        hex.push_str(&format!("{b:02x}"));
    }
    hex
}

/// The signature header of `body` sent at `timestamp`: one `sha256=` per key, comma-separated.
pub fn signatures(keys: &[String], timestamp: i64, body: &[u8]) -> String {
    let mut message = format!("{timestamp}.").into_bytes();
    message.extend_from_slice(body);
    keys.iter()
        .map(|k| signature(k.as_bytes(), &message))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The signing keys a secret holds: its string, or `{"current", "previous"}` during rotation
/// (non-empty strings). A secret that holds none (an empty string, another JSON shape, a
/// `current` that is not a string) is an error: nothing is sent unsigned or signed with "".
fn signing_keys(text: &str) -> Result<Vec<String>, String> {
    let t = text.trim();
    let keys: Vec<String> = match serde_json::from_str::<Value>(t) {
        Ok(Value::Object(v)) => ["current", "previous"]
            .iter()
            .filter_map(|k| v.get(*k).and_then(Value::as_str))
            .filter(|k| !k.is_empty())
            .map(str::to_string)
            .collect(),
        // JSON that is not an object (`[1, 2]`, `123`, `"x"`) is not a key either.
        Ok(_) => vec![],
        Err(_) => [text]
            .iter()
            .filter(|k| !k.trim().is_empty())
            .map(|k| (*k).to_string())
            .collect(),
    };
    if keys.is_empty() {
        return Err(
            "the signing secret holds no key: a non-empty string, or {\"current\", \"previous\"}"
                .into(),
        );
    }
    Ok(keys)
}

impl Http {
    /// A client allowed to call `egress`, using the SDK configuration for Secrets Manager.
    pub fn new(sdk: &aws_config::SdkConfig, egress: Egress) -> Result<Http, EffectError> {
        let client = reqwest::Client::builder()
            .user_agent("rulestream/0.1")
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(std::sync::Arc::new(CheckedResolver(egress.clone())))
            .connect_timeout(Duration::from_secs(3))
            .build()
            .map_err(|e| EffectError::Failed(format!("http client: {e}")))?;
        Ok(Http {
            egress,
            client,
            secrets: aws_sdk_secretsmanager::Client::new(sdk),
            keys: TtlCache::new(KEY_TTL),
        })
    }

    async fn keys(&self, secret_id: &str) -> Result<Vec<String>, EffectError> {
        if let Some(k) = self.keys.get(secret_id).await {
            return Ok(k);
        }
        let text = crate::secrets::secret_string(&self.secrets, secret_id)
            .await
            .map_err(|e| match e {
                crate::secrets::SecretError::Missing(m) => EffectError::Failed(m),
                crate::secrets::SecretError::Unavailable(m) => EffectError::Unavailable(m),
            })?;
        let keys =
            signing_keys(&text).map_err(|e| EffectError::Failed(format!("{secret_id}: {e}")))?;
        self.keys.put(secret_id.to_string(), keys.clone()).await;
        Ok(keys)
    }

    /// POSTs a JSON body and returns the JSON answer of a 2xx response (`null` when empty).
    /// Errors name the URL as `scheme://host[:port]` only.
    pub async fn post(
        &self,
        url: &str,
        bytes: Vec<u8>,
        headers: &[(&str, String)],
        timeout_ms: Option<u64>,
    ) -> Result<Value, EffectError> {
        self.egress.check(url)?;
        self.send(url, bytes, headers, timeout_ms).await
    }

    /// [`Http::post`] for a URL already checked against the egress policy.
    async fn send(
        &self,
        url: &str,
        bytes: Vec<u8>,
        headers: &[(&str, String)],
        timeout_ms: Option<u64>,
    ) -> Result<Value, EffectError> {
        let shown = rulestream_core::chain::redact_url(url);
        let timeout = timeout_ms
            .map_or(DEFAULT_TIMEOUT, Duration::from_millis)
            .min(MAX_TIMEOUT);
        let mut req = self
            .client
            .post(url)
            .timeout(timeout)
            .header("content-type", "application/json");
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let mut resp = req.body(bytes).send().await.map_err(|e| {
            let why = without_url(&e);
            if why.contains("blocked:") {
                EffectError::Failed(format!("POST {shown}: {why}"))
            } else {
                EffectError::Unavailable(format!("POST {shown}: {why}"))
            }
        })?;
        let status = resp.status();
        if status.is_redirection() {
            return Err(EffectError::Failed(format!(
                "POST {shown}: HTTP {status}: redirects are not followed"
            )));
        }
        if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            return Err(EffectError::Unavailable(format!(
                "POST {shown}: HTTP {status}"
            )));
        }
        if !status.is_success() {
            return Err(EffectError::Failed(format!("POST {shown}: HTTP {status}")));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| EffectError::Unavailable(format!("POST {shown}: {}", without_url(&e))))?
        {
            if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err(EffectError::Failed(format!(
                    "POST {shown}: the answer is over {MAX_ANSWER_BYTES} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&body)
            .map_err(|_| EffectError::Failed(format!("POST {shown}: the answer is not JSON")))
    }
}

/// An HTTP error with its whole cause chain, the URL shown as `scheme://host[:port]` only.
fn without_url(e: &reqwest::Error) -> String {
    use std::error::Error as _;
    let mut text = e.to_string();
    if let Some(u) = e.url() {
        text = text.replace(u.as_str(), &rulestream_core::chain::redact_url(u.as_str()));
    }
    let mut src = e.source();
    while let Some(s) = src {
        text.push_str(": ");
        text.push_str(&s.to_string());
        src = s.source();
    }
    text
}

impl Deliveries for Http {
    async fn deliver(&self, d: &Delivery) -> Result<(), EffectError> {
        self.egress.check(&d.url)?;
        let bytes = d.body.clone().into_bytes();
        let mut headers = vec![(IDEMPOTENCY_HEADER, d.idempotency_key.clone())];
        if let Some(id) = &d.secret_id {
            let keys = self.keys(id).await?;
            let ts = chrono::Utc::now().timestamp();
            headers.push((TIMESTAMP_HEADER, ts.to_string()));
            headers.push((SIGNATURE_HEADER, signatures(&keys, ts, &bytes)));
        }
        // Checked above, before a signing key is read for a URL that may not be called.
        self.send(&d.url, bytes, &headers, d.timeout_ms)
            .await
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn egress_allows_only_listed_hosts_and_ports() {
        let e = Egress::parse(Some("127.0.0.1:8080, Hooks.Example.com, api.example.org:*"));
        assert!(e.check("http://127.0.0.1:8080/x").is_ok());
        assert!(e.check("http://127.0.0.1:8081/x").is_err(), "another port");
        assert!(e.check("https://hooks.example.com/a").is_ok());
        assert!(
            e.check("https://hooks.example.com:8443/a").is_err(),
            "not 80/443"
        );
        assert!(e.check("https://api.example.org:9999/a").is_ok());
        assert!(e.check("https://169.254.169.254/latest").is_err());
        assert!(e.check("ftp://127.0.0.1/x").is_err());
        assert!(Egress::parse(None).check("http://127.0.0.1/").is_err());
        let any = Egress::parse(Some("*"));
        assert!(any.check("https://anything.example/").is_ok());
        // `*` never reaches an internal address written as a literal.
        assert!(any.check("http://10.0.0.1/").is_err());
        assert!(any.check("http://[::1]/").is_err());
        assert!(any.check("http://169.254.169.254/").is_err());
    }

    #[test]
    fn names_resolving_to_internal_addresses_are_refused() {
        let e = Egress::parse(Some("hooks.example.com, localhost:*, 127.0.0.2:*"));
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        assert!(e.address_allowed("hooks.example.com", ip("93.184.216.34")));
        assert!(!e.address_allowed("hooks.example.com", ip("10.1.2.3")));
        assert!(!e.address_allowed("hooks.example.com", ip("127.0.0.1")));
        assert!(e.address_allowed("localhost", ip("127.0.0.1")));
        assert!(
            e.address_allowed("anything", ip("127.0.0.2")),
            "listed literal"
        );
    }

    #[test]
    fn the_address_classifier() {
        for internal in [
            "10.0.0.1",
            "172.16.0.1",
            "192.168.1.1",
            "127.0.0.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "224.0.0.1",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a00:1",
        ] {
            assert!(is_internal(internal.parse().expect("ip")), "{internal}");
        }
        for public in [
            "93.184.216.34",
            "1.1.1.1",
            "2606:4700::1111",
            "::ffff:1.1.1.1",
        ] {
            assert!(!is_internal(public.parse().expect("ip")), "{public}");
        }
    }

    #[test]
    fn signature_matches_the_rfc_4231_vector() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn signatures_cover_the_timestamp_and_every_key_in_rotation() {
        let keys = signing_keys(r#"{"current": "new", "previous": "old"}"#).expect("two keys");
        assert_eq!(keys, vec!["new".to_string(), "old".to_string()]);
        let h = signatures(&keys, 1700000000, b"{}");
        assert_eq!(
            h,
            format!(
                "{}, {}",
                signature(b"new", b"1700000000.{}"),
                signature(b"old", b"1700000000.{}")
            )
        );
        assert_eq!(signing_keys("plain"), Ok(vec!["plain".to_string()]));
        assert_eq!(
            signing_keys(r#"{"previous": "old"}"#),
            Ok(vec!["old".to_string()])
        );
        // No usable key: refused, never sent with an empty signature.
        for none in [
            r#"{"foo": "bar"}"#,
            r#"{"current": 123}"#,
            r#"{"current": ""}"#,
            "[1,2]",
            "  ",
            "",
        ] {
            assert!(signing_keys(none).is_err(), "{none}");
        }
    }
}

//! API keys: `x-api-key` is checked against the `api_key_sha256` lists of the clients table
//! (SPEC section 3; a list, so a key can be rotated without downtime). The table is small
//! configuration: it is read whole (projection of two attributes) and kept for 30 s; an unknown
//! key re-reads it at most once a second, so a new key works at once.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::AttributeValue;
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;

const FRESH: Duration = Duration::from_secs(30);
const RETRY_UNKNOWN: Duration = Duration::from_secs(1);

/// Key hashes (SHA-256) with the client each opens.
type Keys = Vec<([u8; 32], String)>;

/// Key hashes → the clients they open.
pub struct ApiKeys {
    ddb: Client,
    table: String,
    state: Mutex<Option<(Instant, Keys)>>,
}

fn unhex(h: &str) -> Option<[u8; 32]> {
    let h = h.trim().to_ascii_lowercase();
    if h.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&h[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// Compares in time independent of where the bytes differ.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl ApiKeys {
    /// Keys of `table` (the clients table).
    pub fn new(ddb: Client, table: &str) -> ApiKeys {
        ApiKeys {
            ddb,
            table: table.to_string(),
            state: Mutex::new(None),
        }
    }

    /// The clients `key` opens (empty: an unknown key).
    pub async fn clients_of(&self, key: &str) -> Result<Vec<String>, String> {
        let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        let mut state = self.state.lock().await;
        let stale = state.as_ref().is_none_or(|(at, _)| at.elapsed() > FRESH);
        if stale {
            *state = Some((Instant::now(), self.load().await?));
        }
        let mut found = lookup(state.as_ref().map(|s| &s.1), &digest);
        if found.is_empty()
            && state
                .as_ref()
                .is_some_and(|(at, _)| at.elapsed() > RETRY_UNKNOWN)
        {
            *state = Some((Instant::now(), self.load().await?));
            found = lookup(state.as_ref().map(|s| &s.1), &digest);
        }
        Ok(found)
    }

    async fn load(&self) -> Result<Keys, String> {
        let mut out = Vec::new();
        let mut start: Option<HashMap<String, AttributeValue>> = None;
        loop {
            let page = self
                .ddb
                .scan()
                .table_name(&self.table)
                .projection_expression("client_id, api_key_sha256")
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| {
                    format!(
                        "cannot read the clients table: {}",
                        rulestream_aws::errors::sdk_error_text(&e)
                    )
                })?;
            for item in page.items() {
                let Some(AttributeValue::S(client)) = item.get("client_id") else {
                    continue;
                };
                let hashes = rulestream_aws::flows::api_key_hashes(item);
                for h in hashes.iter().filter_map(|h| unhex(h)) {
                    out.push((h, client.clone()));
                }
            }
            match page.last_evaluated_key() {
                Some(k) if !k.is_empty() => start = Some(k.clone()),
                _ => break,
            }
        }
        Ok(out)
    }
}

fn lookup(keys: Option<&Keys>, digest: &[u8; 32]) -> Vec<String> {
    let mut found: Vec<String> = Vec::new();
    for (h, client) in keys.into_iter().flatten() {
        // Every entry is compared, matching or not.
        if same(h, digest) && !found.contains(client) {
            found.push(client.clone());
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The SHA-256 of `key`, in lower-case hex (what `api_key_sha256` holds).
    fn sha256_hex(key: &str) -> String {
        let d = Sha256::digest(key.as_bytes());
        d.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn hashes_and_lookup() {
        let h = sha256_hex("abc");
        assert_eq!(
            h,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let keys = vec![
            (unhex(&h).expect("hex"), "acme".to_string()),
            (unhex(&h.to_uppercase()).expect("hex"), "acme".to_string()),
            (
                unhex(&sha256_hex("other")).expect("hex"),
                "shop".to_string(),
            ),
        ];
        let d: [u8; 32] = Sha256::digest(b"abc").into();
        assert_eq!(lookup(Some(&keys), &d), vec!["acme".to_string()]);
        let d: [u8; 32] = Sha256::digest(b"nope").into();
        assert!(lookup(Some(&keys), &d).is_empty());
        assert!(unhex("zz").is_none());
    }
}

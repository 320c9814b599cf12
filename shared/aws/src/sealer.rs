//! Sealing the state a hop carries to the next: AES-256-GCM under the orchestrator's own key,
//! kept in Secrets Manager and loaded lazily once per container.
//!
//! The key secret holds either one string, or `{"current": "...", "previous": "..."}` while the
//! key is rotated (rows sealed with the previous key still open; new rows use the current one).
//! A key is SHA-256 of its string, so any generated password works. Sealed text is
//! `base64(0x01 ‖ nonce[12] ‖ ciphertext+tag)`, the associated data binding the row's clear
//! fields (execution, seq, client, flow, version).

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rulestream_core::ports::{Sealer, StoreError};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;

const VERSION: u8 = 1;

/// The keys in force: the one that seals, and the ones that open.
struct Keys {
    current: Aes256Gcm,
    previous: Option<Aes256Gcm>,
}

fn cipher(material: &str) -> Aes256Gcm {
    let mut h = Sha256::new();
    h.update(b"rulestream-state-key-v1\x1f");
    h.update(material.as_bytes());
    let key = h.finalize();
    Aes256Gcm::new(&key)
}

impl Keys {
    fn parse(text: &str) -> Result<Keys, StoreError> {
        let trimmed = text.trim();
        if trimmed.starts_with('{') {
            let v: Value = serde_json::from_str(trimmed).map_err(|_| {
                StoreError::Invalid("the state key secret is not valid JSON".into())
            })?;
            let current = v
                .get("current")
                .and_then(Value::as_str)
                .filter(|s| s.len() >= 16)
                .ok_or_else(|| {
                    StoreError::Invalid(
                        "the state key secret needs `current` (at least 16 characters)".into(),
                    )
                })?;
            let previous = v.get("previous").and_then(Value::as_str).map(cipher);
            return Ok(Keys {
                current: cipher(current),
                previous,
            });
        }
        if trimmed.len() < 16 {
            return Err(StoreError::Invalid(
                "the state key secret is shorter than 16 characters".into(),
            ));
        }
        Ok(Keys {
            current: cipher(trimmed),
            previous: None,
        })
    }
}

/// Where the key comes from.
enum Source {
    Secrets {
        client: aws_sdk_secretsmanager::Client,
        secret_id: String,
    },
    Fixed(String),
}

/// [`Sealer`] with AES-256-GCM.
pub struct StateSealer {
    source: Source,
    keys: OnceCell<Keys>,
}

impl StateSealer {
    /// A sealer whose key is the Secrets Manager secret `secret_id`, read on first use.
    pub fn from_secret(sdk: &aws_config::SdkConfig, secret_id: &str) -> StateSealer {
        StateSealer {
            source: Source::Secrets {
                client: aws_sdk_secretsmanager::Client::new(sdk),
                secret_id: secret_id.to_string(),
            },
            keys: OnceCell::new(),
        }
    }

    /// A sealer with a fixed key text (tests, tools).
    pub fn fixed(key_text: &str) -> StateSealer {
        StateSealer {
            source: Source::Fixed(key_text.to_string()),
            keys: OnceCell::new(),
        }
    }

    async fn keys(&self) -> Result<&Keys, StoreError> {
        self.keys
            .get_or_try_init(|| async {
                let text = match &self.source {
                    Source::Fixed(t) => t.clone(),
                    Source::Secrets { client, secret_id } => {
                        crate::secrets::secret_string(client, secret_id)
                            .await
                            .map_err(|e| match e {
                                // Without its key the orchestrator can run nothing: retry, and
                                // the alarm on errors pages someone.
                                crate::secrets::SecretError::Missing(m)
                                | crate::secrets::SecretError::Unavailable(m) => {
                                    StoreError::Transient(format!("state key: {m}"))
                                }
                            })?
                    }
                };
                Keys::parse(&text).map_err(|e| StoreError::Transient(e.to_string()))
            })
            .await
    }
}

impl Sealer for StateSealer {
    async fn seal(&self, aad: &[u8], plain: &[u8]) -> Result<String, StoreError> {
        let keys = self.keys().await?;
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let ct = keys
            .current
            .encrypt(&nonce, Payload { msg: plain, aad })
            .map_err(|_| StoreError::Invalid("sealing failed".into()))?;
        let mut out = Vec::with_capacity(1 + nonce.len() + ct.len());
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok(STANDARD.encode(out))
    }

    async fn open(&self, aad: &[u8], sealed: &str) -> Result<Vec<u8>, StoreError> {
        let bytes = STANDARD
            .decode(sealed)
            .map_err(|_| StoreError::Invalid("not base64".into()))?;
        if bytes.len() < 1 + 12 + 16 || bytes[0] != VERSION {
            return Err(StoreError::Invalid("not a sealed state".into()));
        }
        let keys = self.keys().await?;
        let nonce = Nonce::from_slice(&bytes[1..13]);
        let payload = || Payload {
            msg: &bytes[13..],
            aad,
        };
        keys.current
            .decrypt(nonce, payload())
            .or_else(|_| match &keys.previous {
                Some(p) => p.decrypt(nonce, payload()),
                None => Err(aes_gcm::Error),
            })
            .map_err(|_| StoreError::Invalid("the seal does not open".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_state_opens_only_with_its_key_and_its_row() {
        let s = StateSealer::fixed("0123456789abcdef-key");
        let sealed = pollster_block(s.seal(b"row-1", b"{\"x\":1}")).expect("seal");
        assert_eq!(
            pollster_block(s.open(b"row-1", &sealed)).expect("open"),
            b"{\"x\":1}"
        );
        // Another row's associated data, another key, a flipped byte: all refused.
        assert!(pollster_block(s.open(b"row-2", &sealed)).is_err());
        let other = StateSealer::fixed("another-key-0123456789");
        assert!(pollster_block(other.open(b"row-1", &sealed)).is_err());
        let mut raw = STANDARD.decode(&sealed).expect("b64");
        let last = raw.len() - 1;
        raw[last] ^= 1;
        assert!(pollster_block(s.open(b"row-1", &STANDARD.encode(raw))).is_err());
        assert!(pollster_block(s.open(b"row-1", "not base64 at all!")).is_err());
        // The plaintext is not in the sealed text.
        assert!(!sealed.contains("eyJ4"));
    }

    #[test]
    fn a_rotated_key_still_opens_rows_sealed_before() {
        let old = StateSealer::fixed("old-key-0123456789abc");
        let sealed = pollster_block(old.seal(b"a", b"state")).expect("seal");
        let rotated = StateSealer::fixed(
            r#"{"current": "new-key-0123456789abc", "previous": "old-key-0123456789abc"}"#,
        );
        assert_eq!(
            pollster_block(rotated.open(b"a", &sealed)).expect("open"),
            b"state"
        );
        assert!(StateSealer::fixed("short").keys.get().is_none());
        assert!(pollster_block(StateSealer::fixed("short").seal(b"a", b"b")).is_err());
    }

    fn pollster_block<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(f)
    }
}

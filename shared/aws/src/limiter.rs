//! Redis: the token bucket as one atomic Lua script (one round trip per limited rule), and the
//! config epoch that tells a warm container to reload.
//!
//! The script is [`rulestream_core::token_bucket::take`] in Lua, on Redis's own clock so every
//! container agrees on time.

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, Script};
use tokio::sync::Mutex;

const TAKE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local s = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(s[1])
local ts = tonumber(s[2])
if tokens == nil or ts == nil then
  tokens = burst
else
  local elapsed = now - ts
  if elapsed < 0 then elapsed = 0 end
  tokens = math.min(burst, tokens + elapsed * rate / 1000)
end
local allowed = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 60000)
return allowed
";

/// Why Redis could not answer.
#[derive(Debug, thiserror::Error)]
#[error("redis: {0}")]
pub struct RedisError(String);

/// A lazily connected, reconnecting Redis client with short timeouts (a rule must not wait
/// long on a limiter: `fail_open` decides instead).
pub struct RedisLimiter {
    client: Option<Client>,
    prefix: String,
    conn: Mutex<Option<MultiplexedConnection>>,
    script: Script,
}

impl RedisLimiter {
    /// A limiter for `url` (`None`: no Redis, every call fails as unavailable).
    pub fn new(url: Option<&str>, prefix: &str) -> Result<RedisLimiter, RedisError> {
        let client = url
            .map(Client::open)
            .transpose()
            .map_err(|e| RedisError(format!("invalid REDIS_URL: {e}")))?;
        Ok(RedisLimiter {
            client,
            prefix: prefix.to_string(),
            conn: Mutex::new(None),
            script: Script::new(TAKE),
        })
    }

    async fn connection(&self) -> Result<MultiplexedConnection, RedisError> {
        let mut guard = self.conn.lock().await;
        if let Some(c) = guard.as_ref() {
            return Ok(c.clone());
        }
        let client = self
            .client
            .as_ref()
            .ok_or_else(|| RedisError("REDIS_URL is not set".into()))?;
        let cfg = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(300)))
            .set_response_timeout(Some(Duration::from_millis(300)));
        let c = client
            .get_multiplexed_async_connection_with_config(&cfg)
            .await
            .map_err(|e| RedisError(e.to_string()))?;
        *guard = Some(c.clone());
        Ok(c)
    }

    async fn forget(&self) {
        *self.conn.lock().await = None;
    }

    /// Takes one token from bucket `key`: `Ok(true)` when taken, `Ok(false)` when empty.
    pub async fn take(&self, key: &str, per_second: f64, burst: f64) -> Result<bool, RedisError> {
        let mut c = self.connection().await?;
        let full = format!("{}:tb:{key}", self.prefix);
        let r: Result<i64, _> = self
            .script
            .key(full)
            .arg(per_second)
            .arg(burst)
            .invoke_async(&mut c)
            .await;
        match r {
            Ok(n) => Ok(n == 1),
            Err(e) => {
                self.forget().await;
                Err(RedisError(e.to_string()))
            }
        }
    }

    fn done_key(&self, execution_id: &str, seq: u64) -> String {
        format!("{}:done:{execution_id}:{seq}", self.prefix)
    }

    /// The config epoch (bumped by the release bridge on every applied release).
    pub async fn epoch(&self) -> Result<u64, RedisError> {
        let mut c = self.connection().await?;
        let r: Result<Option<u64>, _> = redis::cmd("GET")
            .arg(format!("{}:epoch", self.prefix))
            .query_async(&mut c)
            .await;
        match r {
            Ok(v) => Ok(v.unwrap_or(0)),
            Err(e) => {
                self.forget().await;
                Err(RedisError(e.to_string()))
            }
        }
    }
}

/// How long a recorded step is remembered: well past the stream's retry window.
const DONE_TTL_SECS: u64 = 3 * 3600;

impl rulestream_core::ports::StepLedger for RedisLimiter {
    async fn recorded(&self, execution_id: &str, seq: u64) -> bool {
        let Ok(mut c) = self.connection().await else {
            return false;
        };
        let r: Result<Option<String>, _> = redis::cmd("GET")
            .arg(self.done_key(execution_id, seq))
            .query_async(&mut c)
            .await;
        match r {
            Ok(v) => v.is_some(),
            Err(_) => {
                self.forget().await;
                false
            }
        }
    }

    async fn remember(&self, execution_id: &str, seq: u64) {
        let Ok(mut c) = self.connection().await else {
            return;
        };
        let r: Result<(), _> = redis::cmd("SET")
            .arg(self.done_key(execution_id, seq))
            .arg("1")
            .arg("EX")
            .arg(DONE_TTL_SECS)
            .query_async(&mut c)
            .await;
        if r.is_err() {
            self.forget().await;
        }
    }
}

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

/// After [`FAILURES_BEFORE_COOL_DOWN`] failed connects or commands in a row, Redis is not asked
/// again for this long: a blackholed Redis (accepts, never answers) costs a couple of timeouts
/// per container per interval, not one per record.
const COOL_DOWN: Duration = Duration::from_secs(5);
/// One slow answer (a busy moment) fails only its own call; a second failure in a row starts the
/// cool-down.
const FAILURES_BEFORE_COOL_DOWN: u32 = 2;
/// Connect and command timeouts by default: a rule must not wait long on a limiter
/// (`fail_open` decides). `RULESTREAM_REDIS_TIMEOUT_MS` sets the command timeout; connecting
/// may take 1.6 times as long, and at least 80 ms.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(80);
const RESPONSE_TIMEOUT: Duration = Duration::from_millis(50);

/// A lazily connected, reconnecting Redis client (TLS with `rediss://`, AUTH) with short
/// timeouts. Commands run on a shared multiplexed connection without any lock; only connecting
/// is single-flight (one dial at a time, bounded by the 80 ms connect timeout, the others wait
/// for it instead of each dialling).
pub struct RedisLimiter {
    client: Option<Client>,
    prefix: String,
    conn: std::sync::Mutex<Option<MultiplexedConnection>>,
    connecting: Mutex<()>,
    down_until: std::sync::Mutex<Option<std::time::Instant>>,
    /// Failed connects or commands since the last success.
    failures: std::sync::atomic::AtomicU32,
    connect_timeout: Duration,
    response_timeout: Duration,
    script: Script,
}

impl RedisLimiter {
    /// A limiter for `url` (`None`: no Redis, every call fails as unavailable). `rediss://` URLs
    /// use TLS, trusting `ca_pem` when given (else the system roots); `password`, when given,
    /// is the AUTH token (ElastiCache's, read from Secrets Manager at cold start).
    pub fn new(
        url: Option<&str>,
        ca_pem: Option<Vec<u8>>,
        password: Option<&str>,
        prefix: &str,
    ) -> Result<RedisLimiter, RedisError> {
        let client = match url {
            None => None,
            Some(u) => {
                let mut info = redis::IntoConnectionInfo::into_connection_info(u)
                    .map_err(|e| RedisError(format!("invalid REDIS_URL: {}", e)))?;
                if let Some(p) = password {
                    let settings = info.redis_settings().clone().set_password(p);
                    info = info.set_redis_settings(settings);
                }
                let built = if u.starts_with("rediss://") {
                    Client::build_with_tls(
                        info,
                        redis::TlsCertificates {
                            client_tls: None,
                            root_cert: ca_pem,
                        },
                    )
                } else {
                    Client::open(info)
                };
                Some(built.map_err(|e| RedisError(format!("invalid REDIS_URL: {}", e)))?)
            }
        };
        Ok(RedisLimiter {
            client,
            prefix: prefix.to_string(),
            conn: std::sync::Mutex::new(None),
            connecting: Mutex::new(()),
            down_until: std::sync::Mutex::new(None),
            failures: std::sync::atomic::AtomicU32::new(0),
            connect_timeout: CONNECT_TIMEOUT,
            response_timeout: RESPONSE_TIMEOUT,
            script: Script::new(TAKE),
        })
    }

    /// The same limiter with another command timeout (connecting may take 1.6 times as long,
    /// and at least the default 80 ms).
    pub fn with_timeout(mut self, response: Duration) -> RedisLimiter {
        self.response_timeout = response;
        self.connect_timeout = CONNECT_TIMEOUT.max(response.mul_f64(1.6));
        self
    }

    fn succeeded(&self) {
        self.failures.store(0, std::sync::atomic::Ordering::Relaxed);
    }

    fn cached(&self) -> Option<MultiplexedConnection> {
        self.conn.lock().ok().and_then(|g| g.clone())
    }

    fn cooling_down(&self) -> bool {
        self.down_until
            .lock()
            .ok()
            .and_then(|g| *g)
            .is_some_and(|t| std::time::Instant::now() < t)
    }

    async fn connection(&self) -> Result<MultiplexedConnection, RedisError> {
        if let Some(c) = self.cached() {
            return Ok(c);
        }
        if self.cooling_down() {
            return Err(RedisError(
                "unavailable (cooling down after a failure)".into(),
            ));
        }
        let client = self
            .client
            .as_ref()
            .ok_or_else(|| RedisError("REDIS_URL is not set".into()))?;
        // One connect at a time; the others wait for it rather than each dialling.
        let _one = self.connecting.lock().await;
        if let Some(c) = self.cached() {
            return Ok(c);
        }
        if self.cooling_down() {
            return Err(RedisError(
                "unavailable (cooling down after a failure)".into(),
            ));
        }
        let cfg = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.response_timeout));
        match client
            .get_multiplexed_async_connection_with_config(&cfg)
            .await
        {
            Ok(c) => {
                if let Ok(mut g) = self.conn.lock() {
                    *g = Some(c.clone());
                }
                Ok(c)
            }
            Err(e) => {
                self.forget(&e);
                Err(RedisError(e.to_string()))
            }
        }
    }

    /// Drops the connection after `cause`; after [`FAILURES_BEFORE_COOL_DOWN`] in a row, stops
    /// asking Redis for [`COOL_DOWN`]. Says so each time (the calls refused meanwhile only say
    /// "cooling down").
    fn forget(&self, cause: &redis::RedisError) {
        let failures = self
            .failures
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        if let Ok(mut g) = self.conn.lock() {
            *g = None;
        }
        if failures < FAILURES_BEFORE_COOL_DOWN {
            tracing::warn!(error = %cause, "redis call failed");
            return;
        }
        tracing::warn!(error = %cause, failures, cool_down_secs = COOL_DOWN.as_secs(), "redis call failed: not asked again until the cool-down ends");
        if let Ok(mut g) = self.down_until.lock() {
            *g = Some(std::time::Instant::now() + COOL_DOWN);
        }
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
            Ok(n) => {
                self.succeeded();
                Ok(n == 1)
            }
            Err(e) => {
                self.forget(&e);
                Err(RedisError(e.to_string()))
            }
        }
    }

    /// The config epoch (bumped by the release bridge on every applied release).
    pub async fn epoch(&self) -> Result<u64, RedisError> {
        let mut c = self.connection().await?;
        let r: Result<Option<u64>, _> = redis::cmd("GET")
            .arg(format!("{}:epoch", self.prefix))
            .query_async(&mut c)
            .await;
        match r {
            Ok(v) => {
                self.succeeded();
                Ok(v.unwrap_or(0))
            }
            Err(e) => {
                self.forget(&e);
                Err(RedisError(e.to_string()))
            }
        }
    }

    /// Moves the config epoch on: every warm container reloads clients rows and the catalog on
    /// its next read.
    pub async fn bump_epoch(&self) -> Result<u64, RedisError> {
        let mut c = self.connection().await?;
        let r: Result<u64, _> = redis::cmd("INCR")
            .arg(format!("{}:epoch", self.prefix))
            .query_async(&mut c)
            .await;
        r.inspect(|_| self.succeeded()).map_err(|e| {
            self.forget(&e);
            RedisError(e.to_string())
        })
    }
}

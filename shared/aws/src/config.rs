//! Configuration read once at cold start from the environment.

use std::time::Duration;

/// Why the configuration could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A variable holds something unusable.
    #[error("{name}: {message}")]
    Invalid {
        /// The variable.
        name: &'static str,
        /// Why.
        message: String,
    },
}

/// Names and endpoints of everything rulestream uses.
#[derive(Debug, Clone)]
pub struct Config {
    /// Resource name prefix (`RULESTREAM_PREFIX`, default `rulestream`).
    pub prefix: String,
    /// `<prefix>-trigger`.
    pub trigger_table: String,
    /// `<prefix>-executions`.
    pub executions_table: String,
    /// `<prefix>-steps`.
    pub steps_table: String,
    /// `<prefix>-clients`.
    pub clients_table: String,
    /// `<prefix>-catalog`.
    pub catalog_table: String,
    /// `<prefix>-audit`.
    pub audit_table: String,
    /// `<prefix>-configs`.
    pub bucket: String,
    /// `KAFKA_BROKERS`: comma-separated `host:port` list of the releases topic's brokers.
    pub kafka_brokers: Option<String>,
    /// `<prefix>.releases`.
    pub releases_topic: String,
    /// `REDIS_URL` (`rediss://` for TLS); without it, rate-limited rules behave as if Redis
    /// were down.
    pub redis_url: Option<String>,
    /// `REDIS_CA_FILE`: PEM of the CA that signed Redis's certificate (else the system roots).
    pub redis_ca_file: Option<String>,
    /// `REDIS_AUTH_SECRET`: Secrets Manager id of Redis's AUTH token.
    pub redis_auth_secret: Option<String>,
    /// How long a Redis command may take before it counts as failed
    /// (`RULESTREAM_REDIS_TIMEOUT_MS`, default 50; connecting may take 80 or 1.6 times this).
    pub redis_timeout: Duration,
    /// `RULESTREAM_STATE_KEY_SECRET` (default `<prefix>-system/state-key`): the key that seals
    /// the state carried between hops.
    pub state_key_secret: String,
    /// How long summaries and steps are kept (`RULESTREAM_RETENTION_DAYS`, default 90).
    pub retention: Duration,
    /// No progress for this long ends an execution `FAILED` (`RULESTREAM_STALL_SECS`, 900).
    pub stall: Duration,
    /// Waits before delivery attempts 2..8, ms (`RULESTREAM_DELIVERY_BACKOFF_MS`, comma list).
    pub delivery_backoff_ms: Vec<i64>,
    /// How long trigger rows live (`RULESTREAM_TRIGGER_TTL_DAYS`, default 7).
    pub trigger_ttl: Duration,
    /// Hosts webhooks and `http` master rules may call (`RULESTREAM_EGRESS_ALLOW`).
    pub egress_allow: Option<String>,
    /// How long clients rows and the catalog are cached without an epoch check
    /// (`RULESTREAM_CONFIG_TTL_SECS`, default 30).
    pub config_ttl: Duration,
}

impl Config {
    /// The step loop's knobs.
    pub fn chain_settings(&self) -> rulestream_core::chain::Settings {
        let secs = |d: Duration| i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
        rulestream_core::chain::Settings {
            trigger_table: self.trigger_table.clone(),
            trigger_ttl_secs: secs(self.trigger_ttl),
            retention_secs: secs(self.retention),
            delivery_backoff_ms: self.delivery_backoff_ms.clone(),
            delivery_lease_ms: 30_000,
            stall_secs: secs(self.stall),
        }
    }

    /// Reads the configuration from the environment.
    pub fn from_env() -> Result<Config, ConfigError> {
        Config::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads the configuration through `get` (testable without touching the environment).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let prefix = get("RULESTREAM_PREFIX").unwrap_or_else(|| "rulestream".to_string());
        if prefix.is_empty()
            || !prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        {
            return Err(ConfigError::Invalid {
                name: "RULESTREAM_PREFIX",
                message: format!("`{prefix}` is not a valid resource name prefix"),
            });
        }
        let num = |name: &'static str, default: u64| -> Result<u64, ConfigError> {
            match get(name) {
                None => Ok(default),
                Some(v) => v.parse().map_err(|_| ConfigError::Invalid {
                    name,
                    message: format!("`{v}` is not a whole number"),
                }),
            }
        };
        Ok(Config {
            trigger_table: format!("{prefix}-trigger"),
            executions_table: format!("{prefix}-executions"),
            steps_table: format!("{prefix}-steps"),
            clients_table: format!("{prefix}-clients"),
            catalog_table: format!("{prefix}-catalog"),
            audit_table: format!("{prefix}-audit"),
            bucket: format!("{prefix}-configs"),
            kafka_brokers: get("KAFKA_BROKERS").filter(|u| !u.trim().is_empty()),
            releases_topic: format!("{prefix}.releases"),
            redis_url: get("REDIS_URL").filter(|u| !u.is_empty()),
            redis_ca_file: get("REDIS_CA_FILE").filter(|u| !u.is_empty()),
            redis_auth_secret: get("REDIS_AUTH_SECRET").filter(|u| !u.is_empty()),
            redis_timeout: Duration::from_millis(num("RULESTREAM_REDIS_TIMEOUT_MS", 50)?.max(1)),
            state_key_secret: get("RULESTREAM_STATE_KEY_SECRET")
                .filter(|u| !u.is_empty())
                .unwrap_or_else(|| format!("{prefix}-system/state-key")),
            retention: Duration::from_secs(num("RULESTREAM_RETENTION_DAYS", 90)? * 86_400),
            stall: Duration::from_secs(num("RULESTREAM_STALL_SECS", 900)?),
            delivery_backoff_ms: match get("RULESTREAM_DELIVERY_BACKOFF_MS")
                .filter(|v| !v.trim().is_empty())
            {
                None => rulestream_core::chain::Settings::default().delivery_backoff_ms,
                Some(v) => v
                    .split(',')
                    .map(|x| x.trim().parse::<i64>().ok().filter(|n| *n >= 0))
                    .collect::<Option<Vec<i64>>>()
                    .filter(|l| !l.is_empty())
                    .ok_or_else(|| ConfigError::Invalid {
                        name: "RULESTREAM_DELIVERY_BACKOFF_MS",
                        message: format!("`{v}` is not a comma-separated list of milliseconds"),
                    })?,
            },
            egress_allow: get("RULESTREAM_EGRESS_ALLOW"),
            trigger_ttl: Duration::from_secs(num("RULESTREAM_TRIGGER_TTL_DAYS", 7)? * 86_400),
            config_ttl: Duration::from_secs(num("RULESTREAM_CONFIG_TTL_SECS", 30)?),
            prefix,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        let c = Config::from_lookup(|_| None).expect("defaults");
        assert_eq!(c.trigger_table, "rulestream-trigger");
        assert_eq!(c.bucket, "rulestream-configs");
        assert!(c.redis_url.is_none());
        assert_eq!(c.steps_table, "rulestream-steps");
        assert_eq!(c.state_key_secret, "rulestream-system/state-key");
        assert_eq!(c.chain_settings().delivery_backoff_ms.len(), 7);
        let c =
            Config::from_lookup(|k| (k == "RULESTREAM_DELIVERY_BACKOFF_MS").then(|| "1, 2".into()))
                .expect("backoff");
        assert_eq!(c.delivery_backoff_ms, vec![1, 2]);
        assert!(
            Config::from_lookup(|k| (k == "RULESTREAM_DELIVERY_BACKOFF_MS").then(|| "1,x".into()))
                .is_err()
        );
        let c = Config::from_lookup(|k| match k {
            "RULESTREAM_PREFIX" => Some("acme".into()),
            "REDIS_URL" => Some("redis://127.0.0.1:6390".into()),
            _ => None,
        })
        .expect("overrides");
        assert_eq!(c.executions_table, "acme-executions");
        assert_eq!(c.redis_url.as_deref(), Some("redis://127.0.0.1:6390"));
        assert!(Config::from_lookup(|k| (k == "RULESTREAM_PREFIX").then(|| "a b".into())).is_err());
        assert!(
            Config::from_lookup(|k| (k == "RULESTREAM_CONFIG_TTL_SECS").then(|| "x".into()))
                .is_err()
        );
    }
}

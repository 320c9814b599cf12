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
    /// `<prefix>-clients`.
    pub clients_table: String,
    /// `<prefix>-catalog`.
    pub catalog_table: String,
    /// `<prefix>-configs`.
    pub bucket: String,
    /// `REDIS_URL`; without it, rate-limited rules behave as if Redis were down.
    pub redis_url: Option<String>,
    /// How long trigger rows live (`RULESTREAM_TRIGGER_TTL_DAYS`, default 7).
    pub trigger_ttl: Duration,
    /// Hosts webhooks and `http` master rules may call (`RULESTREAM_EGRESS_ALLOW`).
    pub egress_allow: Option<String>,
    /// How long clients rows and the catalog are cached without an epoch check
    /// (`RULESTREAM_CONFIG_TTL_SECS`, default 30).
    pub config_ttl: Duration,
}

impl Config {
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
            clients_table: format!("{prefix}-clients"),
            catalog_table: format!("{prefix}-catalog"),
            bucket: format!("{prefix}-configs"),
            redis_url: get("REDIS_URL").filter(|u| !u.is_empty()),
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

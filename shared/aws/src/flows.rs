//! Flows, releases and client data: the clients table, immutable flow versions in S3, the
//! catalog table, and client data read through STS + Secrets Manager.
//!
//! Caching per warm container: a compiled flow version forever (versions are immutable);
//! clients rows and the catalog until the Redis config epoch moves (the release bridge bumps
//! it), or `config_ttl` when Redis cannot be asked; client data for five minutes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::AttributeValue;
use rulestream_core::execution::{ClientFlow, DataSource, Release};
use rulestream_core::ports::{FlowSource, StoreError};
use rulestream_core::{Catalog, CompiledFlow, validate_str};
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::{Mutex, OnceCell};

use crate::cache::TtlCache;
use crate::config::Config;
use crate::limiter::RedisLimiter;

/// The API key digests of a clients row (`api_key_sha256`: a list, a string set, or one
/// string), as the sync API checks them and the CLI manages them.
pub fn api_key_hashes(item: &HashMap<String, AttributeValue>) -> Vec<String> {
    match item.get("api_key_sha256") {
        Some(AttributeValue::L(l)) => l.iter().filter_map(|v| v.as_s().ok().cloned()).collect(),
        Some(AttributeValue::Ss(l)) => l.clone(),
        Some(AttributeValue::S(s)) => vec![s.clone()],
        _ => Vec::new(),
    }
}

const CLIENT_DATA_TTL: Duration = Duration::from_secs(300);
/// How long a clients row is trusted when the config epoch cannot be read.
const CLIENTS_WITHOUT_EPOCH: Duration = Duration::from_secs(1);
/// How long a config epoch just read is reused (within one record's lookups).
const EPOCH_REUSE: Duration = Duration::from_millis(5);

/// The clients-table row as stored.
#[derive(Debug, Deserialize)]
struct ClientRow {
    client_id: String,
    flow_id: String,
    #[serde(default = "yes")]
    enabled: bool,
    release: Option<Release>,
    #[serde(default)]
    config_key: Option<String>,
    #[serde(default)]
    role_arn: Option<String>,
    #[serde(default)]
    secret_id: Option<String>,
    #[serde(default)]
    quota: Option<rulestream_core::execution::Quota>,
}

fn yes() -> bool {
    true
}

/// One compiled flow version, loaded at most once at a time.
type FlowCell = Arc<OnceCell<Arc<CompiledFlow>>>;

#[derive(Clone)]
struct Cached<T> {
    value: T,
    epoch: Option<u64>,
    at: Instant,
}

/// [`FlowSource`] on DynamoDB, S3, STS and Secrets Manager.
pub struct AwsFlowSource {
    cfg: Config,
    sdk: aws_config::SdkConfig,
    ddb: aws_sdk_dynamodb::Client,
    s3: aws_sdk_s3::Client,
    sts: aws_sdk_sts::Client,
    redis: Arc<RedisLimiter>,
    clients: Mutex<HashMap<(String, String), Cached<ClientFlow>>>,
    catalog: Mutex<Option<Cached<Arc<Catalog>>>>,
    /// Compiled flow versions (immutable, so never stale). One cell per version: concurrent cold
    /// loads of the same version wait for one S3 GET and one compile (single-flight).
    flows: Mutex<HashMap<(String, String, u64), FlowCell>>,
    /// The catalog the cached flows were compiled against.
    compiled_with: Mutex<Option<Arc<Catalog>>>,
    /// The last config epoch read, and when ([`AwsFlowSource::epoch`]).
    epoch_seen: Mutex<Option<(Instant, u64)>>,
    /// Flow versions compiled with an execution's pinned master-rule versions.
    pinned: Mutex<HashMap<String, Arc<CompiledFlow>>>,
    data: TtlCache<(String, DataSource), Value>,
}

impl AwsFlowSource {
    /// Builds the adapter from one SDK configuration (clients are created once, at cold start).
    pub fn new(
        cfg: Config,
        sdk: &aws_config::SdkConfig,
        redis: Arc<RedisLimiter>,
    ) -> AwsFlowSource {
        AwsFlowSource {
            ddb: aws_sdk_dynamodb::Client::new(sdk),
            s3: aws_sdk_s3::Client::from_conf(
                aws_sdk_s3::config::Builder::from(sdk)
                    .force_path_style(true)
                    .build(),
            ),
            sts: aws_sdk_sts::Client::new(sdk),
            sdk: sdk.clone(),
            cfg,
            redis,
            clients: Mutex::new(HashMap::new()),
            catalog: Mutex::new(None),
            flows: Mutex::new(HashMap::new()),
            compiled_with: Mutex::new(None),
            pinned: Mutex::new(HashMap::new()),
            epoch_seen: Mutex::new(None),
            data: TtlCache::new(CLIENT_DATA_TTL),
        }
    }

    /// Whether a cached config entry may still be used.
    /// The config epoch. One record looks it up for its clients row and again for the catalog
    /// its flow was compiled against: a value read in the last few milliseconds is reused, so
    /// that is one Redis round trip per record, not two.
    async fn epoch(&self) -> Result<u64, crate::limiter::RedisError> {
        if let Some((at, e)) = *self.epoch_seen.lock().await
            && at.elapsed() < EPOCH_REUSE
        {
            return Ok(e);
        }
        let e = self.redis.epoch().await?;
        *self.epoch_seen.lock().await = Some((Instant::now(), e));
        Ok(e)
    }

    /// Whether an entry cached at `epoch` (read at `at`) may serve: the epoch has not moved, or,
    /// when it cannot be read (Redis slow or down), the entry is younger than `without_epoch`.
    async fn fresh(
        &self,
        epoch: Option<u64>,
        at: Instant,
        without_epoch: Duration,
    ) -> (bool, Option<u64>) {
        match self.epoch().await {
            Ok(now) => (epoch == Some(now), Some(now)),
            Err(_) => (at.elapsed() < without_epoch, None),
        }
    }

    async fn catalog(&self, force: bool) -> Result<Arc<Catalog>, StoreError> {
        let cached = self.catalog.lock().await.clone();
        if !force
            && let Some(c) = cached
            && self.fresh(c.epoch, c.at, self.cfg.config_ttl).await.0
        {
            return Ok(c.value);
        }
        let epoch = self.epoch().await.ok();
        let (catalog, _skipped) =
            crate::releases::load_catalog(&self.ddb, &self.cfg.catalog_table).await?;
        let catalog = Arc::new(catalog);
        *self.catalog.lock().await = Some(Cached {
            value: Arc::clone(&catalog),
            epoch,
            at: Instant::now(),
        });
        Ok(catalog)
    }
}

impl FlowSource for AwsFlowSource {
    async fn client_flow(&self, client_id: &str, flow_id: &str) -> Result<ClientFlow, StoreError> {
        let key = (client_id.to_string(), flow_id.to_string());
        // Copied out first: no lock is held across the epoch read.
        let cached = self.clients.lock().await.get(&key).cloned();
        // A clients row carries the release: when the epoch cannot be read, it is trusted for a
        // second at most, so an execution started after a release was applied runs it even while
        // Redis is slow (one GetItem per client flow per second per container meanwhile).
        if let Some(c) = cached
            && self
                .fresh(
                    c.epoch,
                    c.at,
                    self.cfg.config_ttl.min(CLIENTS_WITHOUT_EPOCH),
                )
                .await
                .0
        {
            return Ok(c.value);
        }
        let epoch = self.epoch().await.ok();
        let out = self
            .ddb
            .get_item()
            .table_name(&self.cfg.clients_table)
            .key("client_id", AttributeValue::S(client_id.to_string()))
            .key("flow_id", AttributeValue::S(flow_id.to_string()))
            // The row a release just changed, not an older copy.
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| crate::dynamo::store_error("clients table", &e))?;
        let Some(item) = out.item else {
            return Err(StoreError::NotFound(format!(
                "no client `{client_id}` with flow `{flow_id}` is registered"
            )));
        };
        let row: ClientRow = serde_dynamo::from_item(item.clone()).map_err(|e| {
            StoreError::Invalid(format!(
                "clients row {client_id}/{flow_id} is malformed: {e}"
            ))
        })?;
        let release = match (row.release, &row.config_key) {
            (Some(r), _) => r,
            // A row without a release serves the version its config key names.
            (None, Some(k)) => {
                Release::stable_only(crate::releases::version_of_key(k).ok_or_else(|| {
                    StoreError::Invalid(format!(
                        "clients row {client_id}/{flow_id}: config_key `{k}` names no version"
                    ))
                })?)
            }
            (None, None) => {
                return Err(StoreError::Invalid(format!(
                    "flow {client_id}/{flow_id} has no version yet (upload one: rulestream upload FILE)"
                )));
            }
        };
        let cf = ClientFlow {
            client_id: row.client_id,
            flow_id: row.flow_id,
            enabled: row.enabled,
            release,
            data_source: match (row.role_arn, row.secret_id) {
                (Some(role_arn), Some(secret_id)) => Some(DataSource {
                    role_arn,
                    secret_id,
                }),
                _ => None,
            },
            quota: row.quota.filter(|q| q.starts_per_second > 0.0),
        };
        self.clients.lock().await.insert(
            key,
            Cached {
                value: cf.clone(),
                epoch,
                at: Instant::now(),
            },
        );
        Ok(cf)
    }

    async fn flow_version(
        &self,
        client_id: &str,
        flow_id: &str,
        version: u64,
    ) -> Result<Arc<CompiledFlow>, StoreError> {
        // Compiled against the catalog that serves now: when it changes (the config epoch moved),
        // every compiled version is dropped, so a changed master rule is seen at once.
        let catalog = self.catalog(false).await?;
        let key = (client_id.to_string(), flow_id.to_string(), version);
        let cell = {
            let mut flows = self.flows.lock().await;
            let mut compiled_with = self.compiled_with.lock().await;
            if !compiled_with
                .as_ref()
                .is_some_and(|c| Arc::ptr_eq(c, &catalog))
            {
                flows.clear();
                *compiled_with = Some(Arc::clone(&catalog));
            }
            Arc::clone(flows.entry(key).or_default())
        };
        // A failed load leaves the cell empty: the next record tries again.
        cell.get_or_try_init(|| self.load_flow(client_id, flow_id, version, catalog))
            .await
            .map(Arc::clone)
    }

    async fn flow_pinned(
        &self,
        client_id: &str,
        flow_id: &str,
        version: u64,
        pins: &std::collections::BTreeMap<String, u64>,
    ) -> Result<Arc<CompiledFlow>, StoreError> {
        // A flow version and the master-rule versions of its seq 0 decide the compiled flow for
        // good (both are immutable): a later step needs neither the config epoch nor the
        // catalog, so a hop makes no Redis round trip for them.
        let key = format!(
            "{client_id}/{flow_id}/v{version}/{}",
            pins.iter()
                .map(|(k, v)| format!("{k}@{v}"))
                .collect::<Vec<_>>()
                .join(",")
        );
        if let Some(f) = self.pinned.lock().await.get(&key) {
            return Ok(Arc::clone(f));
        }
        let current = self.flow_version(client_id, flow_id, version).await?;
        if current.agrees_with(pins) {
            self.pinned.lock().await.insert(key, Arc::clone(&current));
            return Ok(current);
        }
        // The catalog moved on since the execution started: compile the flow again with the
        // versions of its seq 0.
        let catalog = self.catalog(false).await?;
        let flow = current.pinned_flow(pins);
        match CompiledFlow::compile(&flow, &catalog) {
            Ok(c) => {
                let c = Arc::new(c);
                self.pinned.lock().await.insert(key, Arc::clone(&c));
                Ok(c)
            }
            Err(issues) => Err(StoreError::Invalid(format!(
                "flow {client_id}/{flow_id} version {version} with the master-rule versions of its start ({}) does not compile: {}",
                key.rsplit('/').next().unwrap_or_default(),
                issues
                    .iter()
                    .take(3)
                    .map(|i| format!("{}: {}", i.path, i.message))
                    .collect::<Vec<_>>()
                    .join("; ")
            ))),
        }
    }

    async fn client_data(&self, client_id: &str, source: &DataSource) -> Result<Value, StoreError> {
        self.read_client_data(client_id, source).await
    }
}

impl AwsFlowSource {
    /// Reads a flow version from S3 and compiles it against the catalog.
    async fn load_flow(
        &self,
        client_id: &str,
        flow_id: &str,
        version: u64,
        catalog: Arc<Catalog>,
    ) -> Result<Arc<CompiledFlow>, StoreError> {
        let s3_key = crate::releases::version_key(client_id, flow_id, version);
        let out = match self
            .s3
            .get_object()
            .bucket(&self.cfg.bucket)
            .key(&s3_key)
            .send()
            .await
        {
            Ok(o) => o,
            Err(e) => {
                use aws_sdk_s3::error::ProvideErrorMetadata;
                let se = e.as_service_error();
                let missing = se.is_some_and(|se| se.is_no_such_key());
                let permanent = crate::errors::is_permanent(
                    se.and_then(|se| se.code()),
                    se.and_then(|se| se.message()),
                );
                return Err(if missing {
                    StoreError::NotFound(format!(
                        "flow {client_id}/{flow_id} has no version {version} (no {s3_key} in the configs bucket)"
                    ))
                } else {
                    let msg = format!("s3 get {s3_key}: {}", crate::errors::sdk_error_text(&e));
                    if permanent {
                        StoreError::Invalid(msg)
                    } else {
                        StoreError::Transient(msg)
                    }
                });
            }
        };
        let bytes = out
            .body
            .collect()
            .await
            .map_err(|e| StoreError::Transient(format!("s3 read {s3_key}: {e}")))?
            .into_bytes();
        let text = String::from_utf8(bytes.to_vec())
            .map_err(|_| StoreError::Invalid(format!("{s3_key} is not UTF-8")))?;
        let mut v = validate_str(&text, &catalog);
        if v.errors().any(|f| f.path.ends_with(".use")) {
            // An error on a rule's `use` is about the catalog (the master rule is not in it, or
            // does not compile): it may be a rule published a moment ago, read past a stale
            // cache, so read the catalog again.
            v = validate_str(&text, &*self.catalog(true).await?);
        }
        let Some(flow) = v.flow.filter(|_| {
            v.findings
                .iter()
                .all(|f| f.severity != rulestream_core::Severity::Error)
        }) else {
            let errs: Vec<String> = v
                .findings
                .iter()
                .filter(|f| f.severity == rulestream_core::Severity::Error)
                .take(5)
                .map(ToString::to_string)
                .collect();
            return Err(StoreError::Invalid(format!(
                "flow {client_id}/{flow_id} version {version} is invalid: {}",
                errs.join("; ")
            )));
        };
        let f = flow.flow();
        if f.client_id != client_id || f.flow_id != flow_id || f.version != version {
            return Err(StoreError::Invalid(format!(
                "{s3_key} holds {}/{} v{}, not {client_id}/{flow_id} v{version}",
                f.client_id, f.flow_id, f.version
            )));
        }
        Ok(Arc::new(flow))
    }

    async fn read_client_data(
        &self,
        client_id: &str,
        source: &DataSource,
    ) -> Result<Value, StoreError> {
        // Keyed by client too: two clients naming the same role each assume it with their own
        // ExternalId.
        let cache_key = (client_id.to_string(), source.clone());
        if let Some(v) = self.data.get(&cache_key).await {
            return Ok(v);
        }
        let assumed = self
            .sts
            .assume_role()
            .role_arn(&source.role_arn)
            .role_session_name("rulestream-orchestrator")
            .external_id(client_id)
            .duration_seconds(900)
            .send()
            .await
            .map_err(|e| {
                let denied = format!("{e:?}").contains("AccessDenied");
                let msg = format!(
                    "cannot assume role {}: {}",
                    source.role_arn,
                    crate::errors::sdk_error_text(&e)
                );
                if denied {
                    StoreError::Invalid(msg)
                } else {
                    StoreError::Transient(msg)
                }
            })?;
        let creds = assumed.credentials().ok_or_else(|| {
            StoreError::Invalid(format!("role {} gave no credentials", source.role_arn))
        })?;
        let provider = aws_sdk_secretsmanager::config::Credentials::new(
            creds.access_key_id(),
            creds.secret_access_key(),
            Some(creds.session_token().to_string()),
            None,
            "rulestream-client-role",
        );
        let sm_conf = aws_sdk_secretsmanager::config::Builder::from(&self.sdk)
            .credentials_provider(provider)
            .build();
        let sm = aws_sdk_secretsmanager::Client::from_conf(sm_conf);
        let text = crate::secrets::secret_string(&sm, &source.secret_id)
            .await
            .map_err(|e| match e {
                crate::secrets::SecretError::Missing(m) => StoreError::NotFound(m),
                crate::secrets::SecretError::Unavailable(m) => StoreError::Transient(m),
            })?;
        let value: Value = serde_json::from_str(&text).map_err(|_| {
            StoreError::Invalid(format!(
                "secret {} is not a JSON document",
                source.secret_id
            ))
        })?;
        self.data.put(cache_key, value.clone()).await;
        Ok(value)
    }
}

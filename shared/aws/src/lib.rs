//! rulestream's adapters: the core's ports implemented on AWS (DynamoDB, S3, STS, Secrets
//! Manager) and Redis. Endpoints come from the SDK's own `AWS_ENDPOINT_URL*` settings, so the
//! same code runs on AWS and on the local stack.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod cache;
pub mod config;
pub mod dynamo;
pub mod effects;
pub mod errors;
pub mod flows;
pub mod kafka;
pub mod limiter;
pub mod metrics;
pub mod releases;
pub mod sealer;
pub mod secrets;
pub mod webhooks;

pub use config::Config;
pub use dynamo::DynamoJournal;
pub use effects::AwsEffects;
pub use flows::AwsFlowSource;
pub use limiter::RedisLimiter;
pub use sealer::StateSealer;
pub use webhooks::{Egress, Http};

/// Structured JSON logs (tracing), level from `RUST_LOG` (default `info`): one object per line,
/// the event's fields (`execution_id`, `rule`, …) at its top level beside `level` and `target`.
pub fn init_logging() {
    install_crypto();
    tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_current_span(false)
        .without_time()
        .init();
}

/// Why the Redis client could not be built at cold start.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct WiringError(String);

/// The Redis client of `cfg`: TLS with `rediss://` (trusting `REDIS_CA_FILE` when set), the AUTH
/// token read from the `REDIS_AUTH_SECRET` secret when set.
pub async fn redis_from_config(
    cfg: &Config,
    sdk: &aws_config::SdkConfig,
) -> Result<RedisLimiter, WiringError> {
    let ca = match &cfg.redis_ca_file {
        None => None,
        Some(path) => Some(
            std::fs::read(path).map_err(|e| WiringError(format!("REDIS_CA_FILE {path}: {e}")))?,
        ),
    };
    let password = match &cfg.redis_auth_secret {
        None => None,
        Some(id) => {
            let sm = aws_sdk_secretsmanager::Client::new(sdk);
            match secrets::secret_string(&sm, id).await {
                Ok(p) => Some(p),
                Err(secrets::SecretError::Missing(m) | secrets::SecretError::Unavailable(m)) => {
                    return Err(WiringError(format!("REDIS_AUTH_SECRET: {m}")));
                }
            }
        }
    };
    RedisLimiter::new(
        cfg.redis_url.as_deref(),
        ca,
        password.as_deref(),
        &cfg.prefix,
    )
    .map(|l| l.with_timeout(cfg.redis_timeout))
    .map_err(|e| WiringError(e.to_string()))
}

/// Stack of the threads that run a function: larger than the CEL red zone
/// ([`rulestream_core::expr::STACK_RED_ZONE`]), so any expression within the limits evaluates in
/// place. Reserved, not committed: untouched pages cost nothing.
pub const FUNCTION_STACK: usize = 64 * 1024 * 1024;

/// Runs a function's main future on a single-threaded runtime, on a thread with
/// [`FUNCTION_STACK`]. One thread on purpose: a function's work is waiting on the network, and a
/// Lambda of 256 MB has a fraction of one vCPU; a multi-threaded runtime spent more of it waking
/// threads (futex and context switches, 45 % of the orchestrator's CPU in a profile) than on the
/// work. Blocking the runtime thread is not allowed anywhere (there is no `block_in_place`).
pub fn run_function<M, F>(main: M) -> F::Output
where
    M: FnOnce() -> F + Send + 'static,
    F: std::future::Future,
    F::Output: Send + 'static,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_stack_size(FUNCTION_STACK)
        .build();
    let driver = std::thread::Builder::new()
        .name("main-big-stack".into())
        .stack_size(FUNCTION_STACK)
        .spawn(move || match rt {
            Ok(rt) => Ok(rt.block_on(main())),
            Err(e) => Err(e),
        });
    match driver.map(std::thread::JoinHandle::join) {
        Ok(Ok(Ok(out))) => out,
        Ok(Ok(Err(e))) => panic!("cannot build the tokio runtime: {e}"),
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(e) => panic!("cannot start the main thread: {e}"),
    }
}

/// Picks rustls's process-wide crypto provider (ring) once, for every TLS client of the process
/// (the SDK's, webhooks', Redis's).
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The SDK's configuration from the environment (region, credentials, `AWS_ENDPOINT_URL*`),
/// with one HTTPS client on rustls and ring, the crypto the rest of rulestream uses. Every SDK
/// configuration of rulestream is loaded here: the SDK's default client would link a second
/// crypto library (aws-lc), and without it a client built elsewhere has no HTTP client at all.
pub async fn sdk_config() -> aws_config::SdkConfig {
    use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
    install_crypto();
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https();
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(http)
        .load()
        .await
}

/// What every function builds at cold start: logs, configuration, one SDK configuration, the
/// journal and the HTTP client (one client per service, built once).
pub struct Base {
    /// The configuration.
    pub cfg: Config,
    /// The SDK configuration (endpoints from `AWS_ENDPOINT_URL*`).
    pub sdk: aws_config::SdkConfig,
    /// Summaries, steps and trigger rows.
    pub journal: DynamoJournal,
    /// Webhooks and `http` master rules, behind the egress policy.
    pub http: std::sync::Arc<Http>,
}

impl Base {
    /// Starts logging and builds the shared clients.
    pub async fn load() -> Result<Base, Box<dyn std::error::Error + Send + Sync>> {
        init_logging();
        let cfg = Config::from_env()?;
        let sdk = sdk_config().await;
        let journal = DynamoJournal::new(
            aws_sdk_dynamodb::Client::new(&sdk),
            &cfg.executions_table,
            &cfg.steps_table,
        );
        let http =
            std::sync::Arc::new(Http::new(&sdk, Egress::parse(cfg.egress_allow.as_deref()))?);
        Ok(Base {
            cfg,
            sdk,
            journal,
            http,
        })
    }
}

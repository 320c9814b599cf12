//! Shared helpers of the e2e suite: a client of the running local stack (LocalStack + Redis +
//! the orchestrator under `cargo lambda watch`, fed by `localstack/runner.py`).
//!
//! The suite needs the stack: `make e2e` brings it up first. Without it every test fails (it
//! never skips).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::AttributeValue;
use serde_json::{Value, json};

/// The local stack, as a client process sees it.
pub struct Stack {
    /// DynamoDB.
    pub ddb: aws_sdk_dynamodb::Client,
    /// S3 (path-style, as LocalStack serves it).
    pub s3: aws_sdk_s3::Client,
    /// Resource prefix.
    pub prefix: String,
}

impl Stack {
    /// Connects using the environment `localstack/env.sh` exports.
    pub async fn from_env() -> Stack {
        assert!(
            std::env::var("AWS_ENDPOINT_URL").is_ok(),
            "AWS_ENDPOINT_URL is not set: run the e2e suite with `make e2e` (it starts the local stack)"
        );
        let sdk = rulestream_aws::sdk_config().await;
        let s3 = aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(&sdk)
                .force_path_style(true)
                .build(),
        );
        Stack {
            ddb: aws_sdk_dynamodb::Client::new(&sdk),
            s3,
            prefix: std::env::var("RULESTREAM_PREFIX").unwrap_or_else(|_| "rulestream".into()),
        }
    }

    /// `<prefix>-<name>`.
    pub fn table(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    /// Uploads a flow version to S3 and registers it as the client's stable version.
    pub async fn register_flow(&self, flow: &Value) {
        self.register_flow_row(flow, json!({})).await;
    }

    /// [`Stack::register_flow`] for a client with data: the clients row names `role_arn` and
    /// `secret_id` (SPEC section 3).
    pub async fn register_flow_with_data(&self, flow: &Value, role_arn: &str, secret_id: &str) {
        self.register_flow_row(flow, json!({"role_arn": role_arn, "secret_id": secret_id}))
            .await;
    }

    /// Puts master rules into the catalog table and bumps the config epoch, so warm containers
    /// reload the catalog on their next record.
    pub async fn publish_catalog(&self, rules: &[Value]) {
        for r in rules {
            self.put_json("catalog", r, "put catalog rule").await;
        }
        let mut conn = redis_conn().await;
        let _: i64 = redis::cmd("INCR")
            .arg(format!("{}:epoch", self.prefix))
            .query_async(&mut conn)
            .await
            .expect("bump epoch");
    }

    async fn register_flow_row(&self, flow: &Value, extra: Value) {
        let client = flow["client_id"].as_str().expect("client_id");
        let id = flow["flow_id"].as_str().expect("flow_id");
        let version = flow["version"].as_u64().expect("version");
        let key = format!("flows/{client}/{id}/v{version}.json");
        self.s3
            .put_object()
            .bucket(self.table("configs"))
            .key(&key)
            .body(flow.to_string().into_bytes().into())
            .send()
            .await
            .expect("upload flow");
        let mut row = json!({"client_id": client, "flow_id": id, "config_key": key, "enabled": true,
                         "release": {"stable": version, "percent": 0, "generation": 1}});
        if let (Some(r), Value::Object(extra)) = (row.as_object_mut(), extra) {
            r.extend(extra);
        }
        self.put_json("clients", &row, "register client").await;
    }

    /// Registers a copy of a registered flow under another flow id: every stored version (its
    /// `flow_id` rewritten, then `edit`ed) and the clients row (release, client data, quota). A
    /// copy has token buckets of its own, as they are keyed by client, flow and rule.
    pub async fn register_copy(
        &self,
        client: &str,
        flow: &str,
        copy: &str,
        edit: impl Fn(&mut Value),
    ) {
        let bucket = self.table("configs");
        let listed = self
            .s3
            .list_objects_v2()
            .bucket(&bucket)
            .prefix(format!("flows/{client}/{flow}/"))
            .send()
            .await
            .expect("list flow versions");
        for key in listed.contents().iter().filter_map(|o| o.key()) {
            let body = self
                .s3
                .get_object()
                .bucket(&bucket)
                .key(key)
                .send()
                .await
                .expect("get flow version")
                .body
                .collect()
                .await
                .expect("read flow version")
                .into_bytes();
            let mut doc: Value = serde_json::from_slice(&body).expect("flow json");
            doc["flow_id"] = json!(copy);
            edit(&mut doc);
            let name = key.rsplit('/').next().expect("file name");
            self.s3
                .put_object()
                .bucket(&bucket)
                .key(format!("flows/{client}/{copy}/{name}"))
                .body(doc.to_string().into_bytes().into())
                .send()
                .await
                .expect("upload flow copy");
        }
        let item = self
            .ddb
            .get_item()
            .table_name(self.table("clients"))
            .key("client_id", AttributeValue::S(client.to_string()))
            .key("flow_id", AttributeValue::S(flow.to_string()))
            .consistent_read(true)
            .send()
            .await
            .expect("get clients row")
            .item
            .expect("the flow is registered");
        let mut row: Value = serde_dynamo::from_item(item).expect("clients row decodes");
        row["flow_id"] = json!(copy);
        if let Some(k) = row["config_key"].as_str() {
            row["config_key"] = json!(k.replace(
                &format!("flows/{client}/{flow}/"),
                &format!("flows/{client}/{copy}/")
            ));
        }
        self.put_json("clients", &row, "register flow copy").await;
    }

    /// Puts `item` into the stack's table `name` (`<prefix>-<name>`); `what` names a failure.
    async fn put_json(&self, name: &str, item: &Value, what: &str) {
        self.ddb
            .put_item()
            .table_name(self.table(name))
            .set_item(Some(serde_dynamo::to_item(item).expect("item")))
            .send()
            .await
            .expect(what);
    }

    /// Inserts a trigger row exactly as a client process does.
    pub async fn trigger(&self, table: &str, row: &Value) {
        self.ddb
            .put_item()
            .table_name(table)
            .set_item(Some(serde_dynamo::to_item(row).expect("item")))
            .send()
            .await
            .expect("put trigger row");
    }

    /// Inserts many trigger rows concurrently.
    pub async fn trigger_all(&self, table: &str, rows: &[Value]) {
        for chunk in rows.chunks(25) {
            let mut set = tokio::task::JoinSet::new();
            for row in chunk {
                let ddb = self.ddb.clone();
                let table = table.to_string();
                let item = serde_dynamo::to_item(row).expect("item");
                set.spawn(async move {
                    ddb.put_item()
                        .table_name(table)
                        .set_item(Some(item))
                        .send()
                        .await
                });
            }
            while let Some(r) = set.join_next().await {
                r.expect("task").expect("put trigger row");
            }
        }
    }

    /// The executions item, as JSON.
    pub async fn execution(&self, id: &str) -> Option<Value> {
        let out = self
            .ddb
            .get_item()
            .table_name(self.table("executions"))
            .key("execution_id", AttributeValue::S(id.to_string()))
            .consistent_read(true)
            .send()
            .await
            .expect("get execution");
        out.item
            .map(|i| serde_dynamo::from_item(i).expect("execution item decodes"))
    }

    /// The executions items of up to 100 ids (BatchGetItem, consistent reads), as JSON.
    pub async fn executions(&self, ids: &[&String]) -> Vec<Value> {
        let table = self.table("executions");
        let keys: Vec<HashMap<String, AttributeValue>> = ids
            .iter()
            .map(|id| {
                HashMap::from([("execution_id".to_string(), AttributeValue::S((*id).clone()))])
            })
            .collect();
        let mut request = Some(
            aws_sdk_dynamodb::types::KeysAndAttributes::builder()
                .set_keys(Some(keys))
                .consistent_read(true)
                .build()
                .expect("keys"),
        );
        let mut out = Vec::new();
        while let Some(r) = request.take() {
            let got = self
                .ddb
                .batch_get_item()
                .request_items(&table, r)
                .send()
                .await
                .expect("batch get executions");
            if let Some(items) = got.responses().and_then(|m| m.get(&table)) {
                out.extend(items.iter().map(|i| {
                    serde_dynamo::from_item::<_, Value>(i.clone()).expect("execution item decodes")
                }));
            }
            request = got
                .unprocessed_keys()
                .and_then(|m| m.get(&table))
                .filter(|k| !k.keys().is_empty())
                .cloned();
        }
        out
    }

    /// Waits until every execution has left RUNNING, printing progress; panics at the deadline
    /// with the ones still running.
    pub async fn wait_all(&self, ids: &[String], deadline: Duration) -> HashMap<String, Value> {
        let start = Instant::now();
        let mut done: HashMap<String, Value> = HashMap::new();
        let mut last = usize::MAX;
        while done.len() < ids.len() {
            let pending: Vec<&String> = ids.iter().filter(|i| !done.contains_key(*i)).collect();
            for chunk in pending.chunks(100) {
                for e in self.executions(chunk).await {
                    if e["status"] != "RUNNING"
                        && let Some(id) = e["execution_id"].as_str()
                    {
                        done.insert(id.to_string(), e);
                    }
                }
            }
            if done.len() != last {
                eprintln!(
                    "{}/{} executions finished after {:?}",
                    done.len(),
                    ids.len(),
                    start.elapsed()
                );
                last = done.len();
            }
            if done.len() < ids.len() {
                assert!(
                    start.elapsed() < deadline,
                    "after {deadline:?}, still running: {:?}",
                    ids.iter()
                        .filter(|i| !done.contains_key(*i))
                        .take(10)
                        .collect::<Vec<_>>()
                );
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
        done
    }
}

impl Stack {
    /// Every item of `table` whose hash key `execution_id` is `id` (steps, trigger rows), raw
    /// as DynamoDB holds them.
    pub async fn items_of(&self, table: &str, id: &str) -> Vec<Value> {
        let out = self
            .ddb
            .query()
            .table_name(table)
            .key_condition_expression("execution_id = :id")
            .expression_attribute_values(":id", AttributeValue::S(id.to_string()))
            .consistent_read(true)
            .send()
            .await
            .expect("query");
        out.items()
            .iter()
            .map(|i| serde_dynamo::from_item(i.clone()).expect("item decodes"))
            .collect()
    }
}

/// The text of every log the stack's own processes wrote (functions, runners, scheduler), not
/// LocalStack's.
pub fn our_logs() -> String {
    let state = std::env::var("RULESTREAM_STATE").expect("RULESTREAM_STATE is set by env.sh");
    let mut text = String::new();
    for e in std::fs::read_dir(&state).expect("state dir").flatten() {
        let p = e.path();
        let name = p
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        if (name.ends_with(".log") || name.ends_with(".jsonl")) && !name.starts_with("localstack") {
            text.push_str(&std::fs::read_to_string(&p).unwrap_or_default());
        }
    }
    text
}

/// Runs the CLI with `args`.
pub fn rs(args: &[&str]) -> std::process::Output {
    cli().args(args).output().expect("the CLI runs")
}

/// The JSON a CLI run printed, which must have succeeded (exit 0).
pub fn ok_json(o: &std::process::Output) -> Value {
    assert_eq!(
        o.status.code(),
        Some(0),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}",
            String::from_utf8_lossy(&o.stdout)
        )
    })
}

/// The `rulestream` CLI binary `make build` made.
pub fn cli() -> std::process::Command {
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| repo().join("target"));
    std::process::Command::new(target.join("debug/rulestream"))
}

/// The client-data role seeding creates for acme-bank (`rulestream-client-<client_id>`).
pub const ACME_ROLE: &str = "arn:aws:iam::000000000000:role/rulestream-client-acme-bank";

/// A fresh execution id of `client` (`<client_id>:<unique>`, SPEC section 3) with a readable tag.
pub fn new_id(client: &str, tag: &str) -> String {
    format!("{client}:{tag}-{}", uuid::Uuid::new_v4())
}

/// A connection to the stack's Redis (TLS, AUTH: the URL and CA that `localstack/env.sh` exports).
pub async fn redis_conn() -> redis::aio::MultiplexedConnection {
    rulestream_aws::install_crypto();
    let url = std::env::var("REDIS_URL").expect("REDIS_URL is set by localstack/env.sh");
    let ca = std::env::var("REDIS_CA_FILE")
        .ok()
        .map(|p| std::fs::read(p).expect("REDIS_CA_FILE is readable"));
    let client = if url.starts_with("rediss://") {
        redis::Client::build_with_tls(
            url.as_str(),
            redis::TlsCertificates {
                client_tls: None,
                root_cert: ca,
            },
        )
    } else {
        redis::Client::open(url.as_str())
    }
    .expect("valid REDIS_URL");
    client
        .get_multiplexed_async_connection()
        .await
        .expect("redis answers")
}

/// `redis-cli` aimed at the stack's Redis (TLS and AUTH when the stack uses them).
pub fn redis_cli() -> std::process::Command {
    let port = std::env::var("RULESTREAM_REDIS_PORT").unwrap_or_else(|_| "6390".into());
    let mut c = std::process::Command::new("redis-cli");
    c.args(["-h", "127.0.0.1", "-p", &port]);
    if let Ok(ca) = std::env::var("REDIS_CA_FILE") {
        c.args(["--tls", "--cacert", &ca]);
    }
    if let Ok(token) = std::env::var("RULESTREAM_REDIS_TOKEN") {
        c.args(["-a", &token, "--no-auth-warning"]);
    }
    c
}

/// Rule ids of an execution's trace, in order.
pub fn path(execution: &Value) -> Vec<String> {
    execution["trace"]
        .as_array()
        .map(|t| {
            t.iter()
                .filter_map(|s| s["rule"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Shifts every RFC 3339 string inside `v` by `by` (to replay an example recorded at another
/// time against the real clock).
pub fn shift_times(v: &mut Value, by: chrono::Duration) {
    match v {
        Value::String(s) => {
            if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
                *s = (t + by).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| shift_times(x, by)),
        Value::Object(o) => o.values_mut().for_each(|x| shift_times(x, by)),
        _ => {}
    }
}

/// The repository root.
pub fn repo() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `client-configs/examples/*.json` with their flow ids, times shifted to now.
pub fn examples() -> Vec<(String, String, Value)> {
    let dir = repo().join("client-configs/examples");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("examples dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let stem = f
            .file_stem()
            .and_then(|s| s.to_str())
            .expect("name")
            .to_string();
        let (client, flow) = stem.split_once('.').expect("<client>.<flow>.json");
        let cases: Value =
            serde_json::from_str(&std::fs::read_to_string(&f).expect("read")).expect("json");
        for mut c in cases.as_array().cloned().unwrap_or_default() {
            let then = c["now"]
                .as_str()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.with_timezone(&chrono::Utc))
                .unwrap_or_else(chrono::Utc::now);
            shift_times(&mut c["input"], chrono::Utc::now() - then);
            out.push((client.to_string(), flow.to_string(), c));
        }
    }
    out
}

/// The fault-injecting proxy the functions reach AWS through (`localstack/faultproxy.py`, started
/// by `localstack/e2e.sh`).
pub mod faults {
    use serde_json::Value;

    fn url() -> String {
        std::env::var("RULESTREAM_FAULTPROXY_URL")
            .expect("RULESTREAM_FAULTPROXY_URL is set by localstack/e2e.sh")
    }

    fn curl(args: &[&str]) -> Value {
        let out = std::process::Command::new("curl")
            .args(["-sS", "--fail-with-body"])
            .args(args)
            .output()
            .expect("curl runs");
        assert!(
            out.status.success(),
            "fault proxy: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        serde_json::from_slice(&out.stdout).expect("fault proxy answers JSON")
    }

    /// Adds a fault rule (see faultproxy.py); returns its id.
    pub fn inject(rule: &Value) -> String {
        let v = curl(&[
            "-X",
            "POST",
            "-H",
            "content-type: application/json",
            "-d",
            &rule.to_string(),
            &format!("{}/__faults", url()),
        ]);
        v["id"].as_str().expect("rule id").to_string()
    }

    /// Removes a fault rule.
    pub fn remove(id: &str) {
        curl(&["-X", "DELETE", &format!("{}/__faults/{id}", url())]);
    }

    /// How many times a rule fired.
    pub fn fired(id: &str) -> u64 {
        let v = curl(&[&format!("{}/__faults", url())]);
        v["rules"]
            .as_array()
            .and_then(|r| r.iter().find(|r| r["id"] == id))
            .and_then(|r| r["fired"].as_u64())
            .unwrap_or(0)
    }

    /// Every AWS call the functions made so far, one JSON object each (service, action,
    /// resource, execution_id, status, fault).
    pub fn calls() -> Vec<Value> {
        let path = std::env::var("RULESTREAM_FAULTPROXY_LOG")
            .expect("RULESTREAM_FAULTPROXY_LOG is set by localstack/e2e.sh");
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

/// A local webhook receiver for the tests (127.0.0.1, an ephemeral port).
pub mod receiver {
    use std::sync::{Arc, Mutex};

    use serde_json::json;
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    use tokio::net::TcpListener;

    /// One request the receiver got.
    #[derive(Debug, Clone)]
    pub struct Request {
        /// The request path.
        pub path: String,
        /// Headers, in order.
        pub headers: Vec<(String, String)>,
        /// The body.
        pub body: Vec<u8>,
    }

    impl Request {
        /// A header's value (any case).
        pub fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }
    }

    /// A minimal HTTP/1.1 receiver: answers `/score` with a rule answer and everything else with
    /// 200, recording every request.
    pub async fn receiver() -> (String, Arc<Mutex<Vec<Request>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let seen = Arc::new(Mutex::new(Vec::<Request>::new()));
        let log = Arc::clone(&seen);
        tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    return;
                };
                let log = Arc::clone(&log);
                tokio::spawn(async move {
                    let (r, mut w) = sock.into_split();
                    let mut r = BufReader::new(r);
                    loop {
                        let mut line = String::new();
                        if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
                        let mut headers = Vec::new();
                        loop {
                            let mut h = String::new();
                            if r.read_line(&mut h).await.unwrap_or(0) == 0 {
                                return;
                            }
                            let h = h.trim_end();
                            if h.is_empty() {
                                break;
                            }
                            if let Some((k, v)) = h.split_once(':') {
                                headers.push((k.trim().to_string(), v.trim().to_string()));
                            }
                        }
                        let len: usize = headers
                            .iter()
                            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                            .and_then(|(_, v)| v.parse().ok())
                            .unwrap_or(0);
                        let mut body = vec![0; len];
                        if r.read_exact(&mut body).await.is_err() {
                            return;
                        }
                        let answer = if path == "/score" {
                            json!({"outcome": "approve", "set": {"score": 7}}).to_string()
                        } else {
                            "{}".to_string()
                        };
                        let redirect = path == "/redirect";
                        // `/flaky/<n>`: the first five requests to it answer 500.
                        let flaky = path.starts_with("/flaky")
                            && log
                                .lock()
                                .expect("lock")
                                .iter()
                                .filter(|r| r.path == path)
                                .count()
                                < 5;
                        log.lock().expect("lock").push(Request {
                            path,
                            headers,
                            body,
                        });
                        let resp = if flaky {
                            "HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n\r\n"
                                .to_string()
                        } else if redirect {
                            // Somewhere else on this machine: a client that follows it re-POSTs the
                            // body and its signature there.
                            "HTTP/1.1 307 Temporary Redirect\r\nlocation: /landed\r\ncontent-length: 0\r\n\r\n".to_string()
                        } else {
                            format!(
                                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{answer}",
                                answer.len()
                            )
                        };
                        if w.write_all(resp.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (base, seen)
    }
}

/// The sync API through its local function URL (`/lambda-url/sync-api/...`).
pub mod api {
    use serde_json::Value;
    use std::process::Command;

    /// The API's base URL on the local stack.
    pub fn base() -> String {
        let port = std::env::var("RULESTREAM_LAMBDA_PORT").unwrap_or_else(|_| "9000".into());
        format!("http://127.0.0.1:{port}/lambda-url/sync-api")
    }

    /// (status, body) of one request; `key` goes in `x-api-key`.
    pub fn call(method: &str, path: &str, key: Option<&str>, body: Option<&str>) -> (u16, Value) {
        let mut c = Command::new("curl");
        c.args([
            "-sS",
            "--max-time",
            "60",
            "-X",
            method,
            "-w",
            "\n%{http_code}",
        ]);
        c.args(["-H", "content-type: application/json"]);
        if let Some(k) = key {
            c.args(["-H", &format!("x-api-key: {k}")]);
        }
        if body.is_some() {
            c.args(["--data-binary", "@-"]);
            c.stdin(std::process::Stdio::piped());
        }
        c.arg(format!("{}{path}", base()));
        c.stdout(std::process::Stdio::piped());
        let mut child = c.spawn().expect("curl runs");
        if let Some(b) = body {
            use std::io::Write;
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(b.as_bytes())
                .expect("write body");
        }
        let out = child.wait_with_output().expect("curl ends");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, code) = text.rsplit_once('\n').expect("status line");
        let status: u16 = code.trim().parse().expect("status code");
        let v = serde_json::from_str(body).unwrap_or(Value::String(body.to_string()));
        conforms(method, path, status, &v);
        (status, v)
    }

    /// The OpenAPI document in the repo (docs/openapi.json, generated from the API's types).
    pub fn document() -> &'static Value {
        static DOC: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
        DOC.get_or_init(|| {
            let text = std::fs::read_to_string(crate::repo().join("docs/openapi.json"))
                .expect("docs/openapi.json");
            serde_json::from_str(&text).expect("the OpenAPI document is JSON")
        })
    }

    /// Panics unless `body` is what the document says `method path` answers with `status`:
    /// every answer any e2e test sees is checked.
    pub fn conforms(method: &str, path: &str, status: u16, body: &Value) {
        let doc = document();
        let route = path.split('?').next().unwrap_or_default();
        let parts: Vec<&str> = route.trim_matches('/').split('/').collect();
        let template = match parts.as_slice() {
            ["v1", "executions"] => "/v1/executions",
            ["v1", "executions", _] => "/v1/executions/{id}",
            ["v1", "executions", _, "cancel"] => "/v1/executions/{id}/cancel",
            ["v1", "dry-run"] => "/v1/dry-run",
            ["v1", "health"] => "/v1/health",
            _ => "",
        };
        let op = &doc["paths"][template][method.to_ascii_lowercase()];
        let schema = if op.is_null() {
            // A route the API does not have: its answer is still an error body.
            assert!(
                status >= 400,
                "{method} {path} answered {status} but is in no path of the document"
            );
            serde_json::json!({"$ref": "#/components/schemas/ErrorBody"})
        } else {
            let r = &op["responses"][status.to_string()];
            assert!(
                !r.is_null(),
                "{method} {template} answered {status}, which the OpenAPI document does not list: {body}"
            );
            r["content"]["application/json"]["schema"].clone()
        };
        let mut root = schema;
        root["components"] = doc["components"].clone();
        let validator = jsonschema::validator_for(&root).expect("the document's schema compiles");
        let errors: Vec<String> = validator.iter_errors(body).map(|e| e.to_string()).collect();
        assert!(
            errors.is_empty(),
            "{method} {path} {status}: the answer does not match the OpenAPI document: {errors:?}\n{body}"
        );
    }
}

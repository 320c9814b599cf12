//! `rulestream`: the command line for citizen developers (validate, dry-run) and support.
//!
//! Exit codes (SPEC section 6): 0 success, 1 a rule or validation failure the user must fix,
//! 2 bad usage or an unreachable backend, 3 when `--wait` times out, always with a one-line reason
//! on stderr.

mod clients;
mod dry_run;
mod ops;
mod output;
mod release;
mod validate;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Business rules that change without a deployment.
#[derive(Debug, Parser)]
#[command(name = "rulestream", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check flow files (and directories of them) against the schema, the catalog and the flow rules (docs/flows.md).
    Validate {
        /// Flow files or directories (searched for *.json; `catalog/`, `schema/` and `examples/` are skipped).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Directory of master rules.
        #[arg(long, default_value = "client-configs/catalog")]
        catalog: PathBuf,
        /// Print one JSON document instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Run a flow on an input locally, with no side effects, and show every step.
    DryRun {
        /// The flow file.
        #[arg(long)]
        flow: PathBuf,
        /// The input: a JSON file, inline JSON, or `-` for stdin.
        #[arg(long)]
        input: String,
        /// Directory of master rules.
        #[arg(long, default_value = "client-configs/catalog")]
        catalog: PathBuf,
        /// The time rules see as `now` (RFC 3339; default: the current time).
        #[arg(long)]
        now: Option<String>,
        /// Only these rule ids run (pipe-delimited, as in a trigger row); the others are skipped.
        #[arg(long)]
        rules: Option<String>,
        /// Execution id used for gray buckets and idempotency keys.
        #[arg(long, default_value = "dry-run")]
        execution_id: String,
        /// Answers of `lambda`/`http` rules, by rule id: `{"<rule id>": {"outcome", "set"}}` (a
        /// file or inline JSON). A rule without one evaluates as an error (its `on_error` decides).
        #[arg(long)]
        mock: Option<String>,
        /// Client data the rules see as `client` (a file or inline JSON).
        #[arg(long)]
        client: Option<String>,
        /// Print one JSON document instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Start an execution as a client process does (a seq 0 trigger row); with --wait, follow it
    /// to its end (exit 1 if it ends FAILED, 3 if --timeout passes first).
    Run {
        /// The client id.
        #[arg(value_parser = client_id_arg)]
        client: String,
        /// The flow id.
        flow: String,
        /// The input: a JSON file, inline JSON, or `-` for stdin.
        #[arg(long)]
        input: String,
        /// The full execution id (`<client>:<unique>`; default: a new UUID).
        #[arg(long)]
        execution_id: Option<String>,
        /// Pin a flow version (default: the release picks).
        #[arg(long)]
        flow_version: Option<u64>,
        /// Wait for the end, showing the current rule, step count and elapsed time.
        #[arg(long)]
        wait: bool,
        /// How long --wait waits, in seconds.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show an execution's summary (status, version, times, reason, steps so far).
    Status {
        /// The execution id (`<client>:<unique>`).
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show every step of an execution: rule, outcome, transition, conditions with expected and
    /// actual values, duration, actions and their deliveries (works while it runs).
    Trace {
        /// The execution id.
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run an execution again: a new one on the original's input, linked by rerun_of (the
    /// original is never changed), on the flow's current release or, with --same-version, on the
    /// version the original ran.
    Rerun {
        /// The execution to run again (not with --failed).
        #[arg(required_unless_present = "failed", conflicts_with = "failed")]
        id: Option<String>,
        /// Redrive: rerun every execution of --client that ended FAILED since --since (each at
        /// most once, however often the command runs).
        #[arg(long, requires = "client", conflicts_with_all = ["from", "wait"])]
        failed: bool,
        /// With --failed: the client whose executions are rerun.
        #[arg(long, value_parser = client_id_arg)]
        client: Option<String>,
        /// With --failed: how far back (30s, 15m, 2h, 7d).
        #[arg(long, default_value = "24h", requires = "failed")]
        since: String,
        /// Run the version the original ran instead of the current release.
        #[arg(long)]
        same_version: bool,
        /// Start from a rule (its first visit) or a seq, with the context the original had
        /// there (the orchestrator reads it from the original's steps).
        #[arg(long, value_name = "RULE|SEQ")]
        from: Option<String>,
        /// Wait for the end (exit 1 if FAILED, 3 on timeout).
        #[arg(long)]
        wait: bool,
        /// How long --wait waits, in seconds.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Cancel a running execution: it ends CANCELLED before its next step.
    Cancel {
        /// The execution id.
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List a client's executions, newest first (an index query by client and start time).
    Logs {
        /// The client whose executions to list (default: every client's, merged).
        #[arg(long, value_parser = client_id_arg)]
        client: Option<String>,
        /// Only this flow.
        #[arg(long)]
        flow: Option<String>,
        /// Only this status (RUNNING, FAILED, a terminal status...).
        #[arg(long)]
        status: Option<String>,
        /// Only executions started within this long (30s, 15m, 2h, 7d).
        #[arg(long)]
        since: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Store a flow file as its next immutable version and publish it (the version is the file's).
    Upload {
        /// The flow file (its `client_id`, `flow_id` and `version` say where it goes).
        file: PathBuf,
        /// Share (0–100) of executions, by the flow's gray key, that run it; the rest stay on
        /// stable (default 0: staged, nobody runs it until set-percent or promote). A flow's
        /// first version serves everyone.
        #[arg(long)]
        percent: Option<f64>,
        /// Roll back automatically when the new version fails more, e.g.
        /// '{"max_failed_delta": 0.05, "min_executions": 200}'.
        #[arg(long)]
        guard: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Change the share of executions that run the candidate version.
    SetPercent {
        /// Client id.
        #[arg(value_parser = client_id_arg)]
        client: String,
        /// Flow id.
        flow: String,
        /// 0–100.
        percent: f64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Make the candidate version stable: every new execution runs it.
    Promote {
        /// Client id.
        #[arg(value_parser = client_id_arg)]
        client: String,
        /// Flow id.
        flow: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Drop the candidate (or, with none, go back to the stable version before the last promote).
    Rollback {
        /// Client id.
        #[arg(value_parser = client_id_arg)]
        client: String,
        /// Flow id.
        flow: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The release history of a flow: who changed what, when, and automatic rollbacks.
    Releases {
        /// Client id.
        #[arg(value_parser = client_id_arg)]
        client: String,
        /// Flow id.
        flow: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// What changed between two stored versions, rule by rule (default: stable -> candidate).
    Diff {
        /// Client id.
        #[arg(value_parser = client_id_arg)]
        client: String,
        /// Flow id.
        flow: String,
        /// Two versions, e.g. `1 2`.
        #[arg(num_args = 0..=2)]
        versions: Vec<u64>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Publish or roll back master rules of the deployed catalog.
    Catalog {
        #[command(subcommand)]
        action: CatalogAction,
    },
    /// Onboard, switch off or rotate the API key of a client (no redeploy).
    Client {
        #[command(subcommand)]
        action: ClientAction,
    },
    /// A live view of executions per second, statuses and latencies, from the executions index.
    Top {
        /// Only this client.
        #[arg(long, value_parser = client_id_arg)]
        client: Option<String>,
        /// Seconds between refreshes.
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..))]
        interval: u64,
        /// The window the figures cover, in seconds.
        #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
        window: u64,
        /// Print one frame and exit.
        #[arg(long)]
        once: bool,
        /// One JSON document per frame.
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
        /// Accepted like every command's; the output is the script either way.
        #[arg(long)]
        json: bool,
    },
    /// Print the JSON Schema of flow files (what client-configs/schema/flow.schema.json holds).
    Schema {
        /// Print the schema of catalog rules instead.
        #[arg(long)]
        catalog: bool,
        /// Accepted for symmetry with the other commands: the output is always JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum ClientAction {
    /// Register a client's flow (enabled, no version yet: `upload` its first). A new client gets
    /// an API key, printed once; another flow of a known client shares its keys.
    Add {
        /// Client id: 1-63 of a-z, 0-9, `-`.
        client: String,
        /// Flow id.
        flow: String,
        /// Client data: the role to assume in the client's account (with --secret-id).
        #[arg(long, requires = "secret_id")]
        role_arn: Option<String>,
        /// Client data: the secret in the client's account (with --role-arn).
        #[arg(long, requires = "role_arn")]
        secret_id: Option<String>,
        /// Start quota: executions the client may start per second.
        #[arg(long)]
        quota: Option<f64>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Stop a client's flow (or all its flows): new executions end FAILED, "disabled".
    Disable {
        /// Client id.
        client: String,
        /// Only this flow.
        flow: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Switch a disabled client's flow (or all its flows) on again.
    Enable {
        /// Client id.
        client: String,
        /// Only this flow.
        flow: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Add a new API key (printed once; the old keys stay valid), or with --finish keep only the
    /// newest.
    RotateKey {
        /// Client id.
        client: String,
        /// Remove every key but the newest.
        #[arg(long)]
        finish: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum CatalogAction {
    /// Write every rule of FILE (an object or an array) as a new version (never overwriting one).
    Publish {
        /// A catalog file.
        file: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Retire a rule's serving version: flows use the version before it.
    Rollback {
        /// The rule id.
        rule: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// How a command ended, mapped to the exit code.
pub enum Outcome {
    /// Exit 0.
    Ok,
    /// Exit 1: the user must fix a rule or a flow.
    UserFix,
}

/// A client id argument: one that SPEC section 3 does not allow is bad usage (exit 2).
fn client_id_arg(s: &str) -> Result<String, String> {
    if clients::valid_client_id(s) {
        Ok(s.to_string())
    } else {
        Err("a client id is 1-63 of a-z, 0-9 and `-`, starting with a letter or digit".into())
    }
}

/// A reader that stops early (`rulestream schema | head`) closes the pipe, and printing then
/// fails. That is not an error of the command: it ends quietly with exit 0, as other
/// command-line tools do, instead of a panic and exit 101.
fn quiet_on_closed_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let p = info.payload();
        let msg = p
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| p.downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if msg.contains("Broken pipe") {
            std::process::exit(0);
        }
        default(info);
    }));
}

fn main() -> ExitCode {
    quiet_on_closed_pipe();
    output::set_json(std::env::args_os().skip(1).any(|a| a == "--json"));
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) if !e.use_stderr() => {
            // --help, --version: the full text, exit 0.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // Bad usage: one line naming what is wrong, exit 2.
            output::fail(
                "usage",
                &format!("{} (see rulestream --help)", usage_line(&e)),
            );
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Command::Run {
            client,
            flow,
            input,
            execution_id,
            flow_version,
            wait,
            timeout,
            json,
        } => {
            match ops::run(&ops::RunArgs {
                client,
                flow,
                input,
                execution_id,
                flow_version,
                wait,
                timeout_secs: timeout,
                json,
            }) {
                Ok(ops::Waited::TimedOut) => return ExitCode::from(3),
                Ok(ops::Waited::Done(o)) => Ok(o),
                Err(e) => Err(e),
            }
        }
        Command::Completions { shell, json: _ } => {
            clap_complete::generate(
                shell,
                &mut <Cli as clap::CommandFactory>::command(),
                "rulestream",
                &mut std::io::stdout(),
            );
            Ok(Outcome::Ok)
        }
        Command::Rerun {
            id,
            failed,
            client,
            since,
            same_version,
            from,
            wait,
            timeout,
            json,
        } => match (failed, id, client) {
            (true, _, Some(client)) => ops::rerun_failed(&client, &since, same_version, json),
            (_, Some(id), _) => {
                match ops::rerun(&id, same_version, from.as_deref(), wait, timeout, json) {
                    Ok(ops::Waited::TimedOut) => return ExitCode::from(3),
                    Ok(ops::Waited::Done(o)) => Ok(o),
                    Err(e) => Err(e),
                }
            }
            _ => {
                output::fail(
                    "usage",
                    "rerun needs an execution id, or --failed --client C (see rulestream --help)",
                );
                return ExitCode::from(2);
            }
        },
        Command::Upload {
            file,
            percent,
            guard,
            json,
        } => release::upload(&file, percent, guard.as_deref(), json),
        Command::SetPercent {
            client,
            flow,
            percent,
            json,
        } => release::change(
            rulestream_core::release::ReleaseOp::SetPercent,
            &client,
            &flow,
            Some(percent),
            json,
        ),
        Command::Promote { client, flow, json } => release::change(
            rulestream_core::release::ReleaseOp::Promote,
            &client,
            &flow,
            None,
            json,
        ),
        Command::Rollback { client, flow, json } => release::change(
            rulestream_core::release::ReleaseOp::Rollback,
            &client,
            &flow,
            None,
            json,
        ),
        Command::Releases { client, flow, json } => release::releases(&client, &flow, json),
        Command::Diff {
            client,
            flow,
            versions,
            json,
        } => release::diff(&client, &flow, &versions, json),
        Command::Client { action } => match action {
            ClientAction::Add {
                client,
                flow,
                role_arn,
                secret_id,
                quota,
                json,
            } => clients::add(&clients::AddArgs {
                client,
                flow,
                role_arn,
                secret_id,
                quota,
                json,
            }),
            ClientAction::Disable { client, flow, json } => {
                clients::set_enabled(&client, flow.as_deref(), false, json)
            }
            ClientAction::Enable { client, flow, json } => {
                clients::set_enabled(&client, flow.as_deref(), true, json)
            }
            ClientAction::RotateKey {
                client,
                finish,
                json,
            } => clients::rotate_key(&client, finish, json),
        },
        Command::Catalog { action } => match action {
            CatalogAction::Publish { file, json } => release::catalog_publish(&file, json),
            CatalogAction::Rollback { rule, json } => release::catalog_rollback(&rule, json),
        },
        Command::Top {
            client,
            interval,
            window,
            once,
            json,
        } => ops::top(&ops::TopArgs {
            client,
            interval,
            window,
            once,
            json,
        }),
        Command::Status { id, json } => ops::status(&id, json),
        Command::Trace { id, json } => ops::trace(&id, json),
        Command::Cancel { id, json } => ops::cancel_cmd(&id, json),
        Command::Logs {
            client,
            flow,
            status,
            since,
            limit,
            json,
        } => ops::logs(&ops::LogsArgs {
            client,
            flow,
            status,
            since,
            limit,
            json,
        }),
        Command::Validate {
            paths,
            catalog,
            json,
        } => validate::run(&paths, &catalog, json),
        Command::DryRun {
            flow,
            input,
            catalog,
            now,
            rules,
            execution_id,
            mock,
            client,
            json,
        } => dry_run::run(&dry_run::Args {
            flow,
            input,
            catalog,
            now,
            rules,
            execution_id,
            mock,
            client,
            json,
        }),
        Command::Schema { catalog, json: _ } => {
            let schema = if catalog {
                rulestream_core::model::master_rule_schema()
            } else {
                rulestream_core::model::flow_schema()
            };
            serde_json::to_string_pretty(&schema)
                .map(|s| {
                    println!("{s}");
                    Outcome::Ok
                })
                .map_err(anyhow::Error::from)
        }
    };
    match result {
        Ok(Outcome::Ok) => ExitCode::SUCCESS,
        Ok(Outcome::UserFix) => ExitCode::from(1),
        Err(e) => {
            let code = if e.chain().any(|c| c.is::<output::Usage>()) {
                "usage"
            } else {
                "error"
            };
            output::fail(code, &one_line(&e));
            ExitCode::from(2)
        }
    }
}

/// clap's error on one line: the message and what it lists (the missing `--flow <FLOW>`, a
/// suggestion), without the usage block.
fn usage_line(e: &clap::Error) -> String {
    let rendered = e.render().to_string();
    let parts: Vec<&str> = rendered
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .filter(|l| !l.is_empty())
        .collect();
    let line = parts.join(" ");
    let line = line.trim_start_matches("error: ").trim();
    if line.is_empty() {
        "invalid usage".to_string()
    } else {
        line.to_string()
    }
}

fn one_line(e: &anyhow::Error) -> String {
    e.chain()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ")
        .replace('\n', " ")
}

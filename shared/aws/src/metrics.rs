//! Metrics as CloudWatch Embedded Metric Format lines (SPEC section 7): the core's `metrics`
//! facade calls ([`rulestream_core::chain::emit`]) are collected by `metrics_cloudwatch_embedded`
//! and written to stdout as one JSON document per label set when a function [`Metrics::flush`]es
//! after an invocation. CloudWatch Logs turns them into metrics; no API call is made.

use metrics::Unit;

/// The installed recorder (or none, when another one was installed first).
pub struct Metrics(Option<&'static metrics_cloudwatch_embedded::Collector>);

/// Namespace of every metric.
pub const NAMESPACE: &str = "rulestream";

impl Metrics {
    /// Installs the EMF recorder for this process (once; later calls get a no-op handle).
    pub fn init() -> Metrics {
        let collector = metrics_cloudwatch_embedded::Builder::new()
            .cloudwatch_namespace(NAMESPACE)
            .init()
            .ok();
        metrics::describe_counter!("Steps", Unit::Count, "steps decided");
        metrics::describe_histogram!(
            "StepDuration",
            Unit::Milliseconds,
            "time to decide and commit a step"
        );
        metrics::describe_histogram!(
            "HopLatency",
            Unit::Milliseconds,
            "row written -> step committed"
        );
        metrics::describe_counter!("Executions", Unit::Count, "executions ended, by status");
        metrics::describe_histogram!(
            "ExecutionDuration",
            Unit::Milliseconds,
            "start -> end of an execution"
        );
        metrics::describe_counter!("DeliveryFailures", Unit::Count, "deliveries given up on");
        metrics::describe_counter!(
            "AutomaticRollbacks",
            Unit::Count,
            "rollbacks sent by a release guard"
        );
        if let Some(c) = collector {
            // Also in the middle of an invocation, before a histogram outgrows its line.
            rulestream_core::chain::emit::on_full(move || write_out(c));
        }
        Metrics(collector)
    }

    /// Writes what was recorded since the last flush to stdout (EMF lines) and resets it.
    pub fn flush(&self) {
        if let Some(c) = self.0 {
            write_out(c);
        }
    }
}

fn write_out(c: &metrics_cloudwatch_embedded::Collector) {
    let out = std::io::stdout();
    let mut lock = out.lock();
    if let Err(e) = c.flush(&mut lock) {
        tracing::warn!(error = %e, "metrics not written");
    }
    rulestream_core::chain::emit::flushed();
}

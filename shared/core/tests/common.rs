//! Helpers shared by the data-driven tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use rulestream_core::{Catalog, DryRun, ExecutionMeta, RunReport, validate_value};
use serde_json::Value;

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The catalog of `client-configs/catalog`.
pub fn sample_catalog() -> Catalog {
    Catalog::load_dir(&repo().join("client-configs/catalog")).expect("sample catalog loads")
}

/// A catalog from inline master rules.
pub fn catalog_of(rules: &Value) -> Catalog {
    let mut c = Catalog::new();
    c.add_source("inline", &rules.to_string())
        .expect("inline catalog is valid");
    c
}

/// Every `*.json` file below `dir`, sorted.
pub fn json_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("readable dir") {
            let p = e.expect("dir entry").path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "json") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Dry-runs a flow document.
pub fn dry_run(
    flow: &Value,
    catalog: &Catalog,
    input: &Value,
    now: &str,
    execution_id: &str,
    subset: Option<&str>,
) -> RunReport {
    let v = validate_value(flow, catalog);
    let errors: Vec<String> = v.errors().map(ToString::to_string).collect();
    let compiled = v
        .flow
        .as_ref()
        .unwrap_or_else(|| panic!("flow is invalid: {errors:#?}"));
    let now: DateTime<Utc> = DateTime::parse_from_rfc3339(now)
        .expect("now is RFC 3339")
        .with_timezone(&Utc);
    let meta = ExecutionMeta {
        execution_id: execution_id.to_string(),
        client_id: compiled.flow().client_id.clone(),
        flow_id: compiled.flow().flow_id.clone(),
        flow_version: compiled.flow().version,
    };
    let subset = subset.map(|s| s.split('|').map(str::to_string).collect());
    pollster::block_on(rulestream_core::run(
        compiled, meta, input, None, now, subset, &DryRun,
    ))
}

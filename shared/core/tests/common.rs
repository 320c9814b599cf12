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
) -> RunReport<'static> {
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
    .into_owned()
}

/// How many cases a fuzz target runs: `RULESTREAM_FUZZ_CASES` (set by `make fuzz`), else
/// `default` (the short run inside `make test`).
pub fn fuzz_cases(default: usize) -> usize {
    std::env::var("RULESTREAM_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The fuzz seed: `RULESTREAM_FUZZ_SEED` (a failure prints the one to reproduce it), else fixed.
pub fn fuzz_seed(default: u64) -> u64 {
    std::env::var("RULESTREAM_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
        .max(1)
}

/// The corpus kept in the repo for one target (`shared/core/tests/corpus/<target>/*`): inputs
/// that once found a bug or reach a corner, each a seed for mutation.
pub fn corpus(target: &str) -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.sort();
    files
        .into_iter()
        .filter(|p| p.is_file())
        .map(|p| std::fs::read_to_string(&p).expect("corpus file is UTF-8"))
        .collect()
}

/// Runs `case` and, when it panics, saves the input that did it under
/// `$CARGO_TARGET_DIR/fuzz-failures/<target>/` (to be added to the corpus once fixed) and fails
/// with the seed and case number that reproduce it.
pub fn fuzz_case(target: &str, seed: u64, n: usize, input: &str, case: impl FnOnce()) {
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(case)).is_err() {
        let dir = std::env::var("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| std::env::temp_dir())
            .join("fuzz-failures")
            .join(target);
        let _ = std::fs::create_dir_all(&dir);
        let file = dir.join(format!("{seed}-{n}.txt"));
        let _ = std::fs::write(&file, input);
        panic!(
            "{target}: case {n} panicked (RULESTREAM_FUZZ_SEED={seed}); input saved to {}",
            file.display()
        );
    }
}

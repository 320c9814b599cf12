//! Every file in `client-configs/` is checked: flows validate against the sample catalog, the
//! catalog loads, the schema matches the model, and every example dry-runs to its expected
//! status and path.

mod common;

use rulestream_core::validate_str;
use serde_json::Value;

#[test]
fn the_published_schema_matches_the_model() {
    let path = common::repo().join("client-configs/schema/flow.schema.json");
    let on_disk: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("schema file exists"))
            .expect("schema file is JSON");
    assert_eq!(
        on_disk,
        rulestream_core::model::flow_schema(),
        "client-configs/schema/flow.schema.json is stale: run `make schema`"
    );
}

#[test]
fn every_sample_flow_is_valid() {
    let catalog = common::sample_catalog();
    assert!(!catalog.is_empty(), "the sample catalog has rules");
    let root = common::repo().join("client-configs");
    let mut flows = 0;
    for f in common::json_files(&root) {
        let rel = f.strip_prefix(&root).expect("below root");
        let top = rel.components().next().and_then(|c| c.as_os_str().to_str());
        if matches!(top, Some("catalog" | "schema" | "examples")) {
            continue;
        }
        let v = validate_str(&std::fs::read_to_string(&f).expect("readable"), &catalog);
        let findings: Vec<String> = v.findings.iter().map(ToString::to_string).collect();
        assert!(v.is_valid(), "{}: {findings:#?}", rel.display());
        assert!(
            findings.is_empty(),
            "{} has warnings: {findings:#?}",
            rel.display()
        );
        flows += 1;
    }
    assert!(flows >= 4, "at least four sample flows, found {flows}");
}

#[test]
fn every_example_reaches_its_expected_status() {
    let catalog = common::sample_catalog();
    let root = common::repo().join("client-configs");
    let mut failures = Vec::new();
    let mut n = 0;
    for f in common::json_files(&root.join("examples")) {
        let stem = f.file_stem().and_then(|s| s.to_str()).expect("name");
        let (client, flow) = stem
            .split_once('.')
            .expect("examples are named <client>.<flow>.json");
        let flow_doc: Value = serde_json::from_str(
            &std::fs::read_to_string(root.join(client).join(format!("{flow}.json")))
                .expect("the example's flow exists"),
        )
        .expect("flow is JSON");
        let cases: Value =
            serde_json::from_str(&std::fs::read_to_string(&f).expect("readable")).expect("JSON");
        for c in cases.as_array().expect("array of examples") {
            n += 1;
            let r = common::dry_run(
                &flow_doc,
                &catalog,
                &c["input"],
                c["now"].as_str().unwrap_or("2026-11-22T10:00:00Z"),
                c["execution_id"].as_str().unwrap_or("example"),
                None,
            );
            let name = format!("{stem}::{}", c["name"].as_str().unwrap_or("?"));
            if r.status != c["expect_status"].as_str().unwrap_or("?") {
                failures.push(format!(
                    "{name}: status {} ({:?}), want {}",
                    r.status, r.reason, c["expect_status"]
                ));
            }
            if !c["expect_path"].is_null() && serde_json::json!(r.path) != c["expect_path"] {
                failures.push(format!(
                    "{name}: path {:?}, want {}",
                    r.path, c["expect_path"]
                ));
            }
        }
    }
    assert!(n >= 16, "examples cover the samples, found {n}");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

//! `rulestream validate PATH… [--catalog DIR]`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use rulestream_core::{Catalog, Finding, validate_str};
use serde_json::json;

use crate::Outcome;

/// Directories under a searched path that hold something other than flows.
const NOT_FLOWS: [&str; 3] = ["catalog", "schema", "examples"];

/// Loads the catalog directory; a missing default directory is an empty catalog.
pub fn load_catalog(dir: &Path) -> anyhow::Result<Result<Catalog, String>> {
    if !dir.exists() {
        if dir == Path::new("client-configs/catalog") {
            // The default, relative to where the command runs: say so, as a flow that uses a
            // master rule is then checked against no catalog at all.
            eprintln!(
                "note: no catalog at ./client-configs/catalog (the default); master rules (`use`) are checked against none (--catalog DIR names one)"
            );
            return Ok(Ok(Catalog::new()));
        }
        return Err(crate::output::usage(format!(
            "catalog directory {} does not exist",
            dir.display()
        )));
    }
    Ok(Catalog::load_dir(dir).map_err(|e| e.to_string()))
}

fn collect(path: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    if path.is_dir() {
        let mut entries: Vec<_> = std::fs::read_dir(path)
            .with_context(|| format!("cannot read {}", path.display()))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .collect();
        entries.sort();
        for p in entries {
            let skip = p.is_dir()
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| NOT_FLOWS.contains(&n) || n.starts_with('.'));
            if skip {
                continue;
            }
            if p.is_dir() || p.extension().is_some_and(|x| x == "json") {
                collect(&p, out)?;
            }
        }
        Ok(())
    } else if path.is_file() {
        out.push(path.to_path_buf());
        Ok(())
    } else {
        Err(crate::output::usage(format!(
            "{} does not exist",
            path.display()
        )))
    }
}

/// Runs the command.
pub fn run(paths: &[PathBuf], catalog_dir: &Path, json: bool) -> anyhow::Result<Outcome> {
    let mut files = Vec::new();
    for p in paths {
        collect(p, &mut files)?;
    }
    if files.is_empty() {
        return Err(crate::output::usage(format!(
            "no flow files (*.json) found in {}",
            display_list(paths)
        )));
    }
    let catalog = match load_catalog(catalog_dir)? {
        Ok(c) => c,
        Err(e) => {
            if json {
                println!(
                    "{}",
                    json!({"valid": false, "catalog_error": e, "files": []})
                );
            }
            eprintln!("catalog: error: {}", e.replace('\n', " "));
            return Ok(Outcome::UserFix);
        }
    };
    let mut all_valid = true;
    // Errors in all, and files with at least one (for the one-line reason of exit 1).
    let (mut error_count, mut bad_files) = (0usize, 0usize);
    let mut reports = Vec::new();
    for f in &files {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display()))?;
        let v = validate_str(&text, &catalog);
        let valid = v.is_valid();
        all_valid &= valid;
        let errors: Vec<&Finding> = v.errors().collect();
        let warnings: Vec<&Finding> = v.warnings().collect();
        if !valid {
            error_count += errors.len();
            bad_files += 1;
        }
        if json {
            reports.push(json!({
                "path": f.display().to_string(),
                "valid": valid,
                "flow": v.flow.as_ref().map(|c| json!({
                    "client_id": c.flow().client_id,
                    "flow_id": c.flow().flow_id,
                    "version": c.flow().version,
                })),
                "errors": errors,
                "warnings": warnings,
            }));
        } else {
            match &v.flow {
                Some(c) if valid => println!(
                    "ok    {}  ({}/{} v{}, {} rules)",
                    f.display(),
                    c.flow().client_id,
                    c.flow().flow_id,
                    c.flow().version,
                    c.flow().rules.len()
                ),
                _ => println!("FAIL  {}", f.display()),
            }
            for e in errors.iter().chain(&warnings) {
                println!("      {e}");
            }
        }
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({"valid": all_valid, "files": reports}))?
        );
    } else {
        let bad = reports_count(&files, all_valid);
        println!(
            "{} file(s) checked against {} catalog rule(s): {}",
            files.len(),
            catalog.len(),
            bad
        );
    }
    if all_valid {
        return Ok(Outcome::Ok);
    }
    eprintln!("rulestream: {error_count} error(s) in {bad_files} file(s)");
    Ok(Outcome::UserFix)
}

fn reports_count(files: &[PathBuf], all_valid: bool) -> &'static str {
    match (files.len(), all_valid) {
        (_, true) => "all valid",
        _ => "some are invalid",
    }
}

fn display_list(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

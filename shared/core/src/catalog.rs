//! The master rule catalog (SPEC section 2): reusable rules a flow names with `use`, by id and
//! optionally by version.

use std::collections::BTreeMap;
use std::path::Path;

use crate::model::MasterRule;

/// Why a catalog source could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A file is not a rule object or an array of them.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// Which rule and why.
        message: String,
    },
}

/// Master rules by id and version.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    rules: BTreeMap<String, BTreeMap<u64, MasterRule>>,
    /// Versions rolled back: never a rule's latest, still found by number (an execution that
    /// pinned one at its seq 0 keeps it).
    retired: std::collections::BTreeSet<(String, u64)>,
}

impl Catalog {
    /// An empty catalog.
    pub fn new() -> Catalog {
        Catalog::default()
    }

    /// Adds (or replaces) a rule version.
    pub fn insert(&mut self, rule: MasterRule) {
        self.rules
            .entry(rule.rule_id.clone())
            .or_default()
            .insert(rule.version, rule);
    }

    /// Adds a rule version that was rolled back (see [`Catalog::get`]).
    pub fn insert_retired(&mut self, rule: MasterRule) {
        self.retired.insert((rule.rule_id.clone(), rule.version));
        self.insert(rule);
    }

    /// The pinned version of `rule_id`, or its latest version not rolled back when `version` is
    /// `None`.
    pub fn get(&self, rule_id: &str, version: Option<u64>) -> Option<&MasterRule> {
        let versions = self.rules.get(rule_id)?;
        match version {
            Some(v) => versions.get(&v),
            None => versions
                .values()
                .rev()
                .find(|r| !self.retired.contains(&(r.rule_id.clone(), r.version))),
        }
    }

    /// Every rule version, by id then version.
    pub fn iter(&self) -> impl Iterator<Item = &MasterRule> {
        self.rules.values().flat_map(BTreeMap::values)
    }

    /// Number of rule versions.
    pub fn len(&self) -> usize {
        self.rules.values().map(BTreeMap::len).sum()
    }

    /// Whether the catalog holds no rule.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Parses one source file: a rule object or an array of them.
    pub fn add_source(&mut self, path: &str, text: &str) -> Result<(), CatalogError> {
        let invalid = |message: String| CatalogError::Invalid {
            path: path.to_string(),
            message,
        };
        let value: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| invalid(format!("line {}:{}: {e}", e.line(), e.column())))?;
        let items = match value {
            serde_json::Value::Array(items) => items,
            other => vec![other],
        };
        for (i, item) in items.into_iter().enumerate() {
            let rule: MasterRule =
                serde_json::from_value(item).map_err(|e| invalid(format!("rule #{i}: {e}")))?;
            crate::checks::check_master_rule(&rule)
                .map_err(|m| invalid(format!("rule `{}` v{}: {m}", rule.rule_id, rule.version)))?;
            // Versions are immutable (SPEC section 2): a second, different definition of one
            // version is refused rather than one of them silently dropped.
            if let Some(before) = self.get(&rule.rule_id, Some(rule.version))
                && *before != rule
            {
                return Err(invalid(format!(
                    "rule #{i}: `{}` v{} is defined twice, differently (versions are immutable: give the new definition a new version)",
                    rule.rule_id, rule.version
                )));
            }
            self.insert(rule);
        }
        Ok(())
    }

    /// Loads every `*.json` file of a directory (sorted by name). A missing directory is an
    /// empty catalog.
    pub fn load_dir(dir: &Path) -> Result<Catalog, CatalogError> {
        let mut catalog = Catalog::new();
        if !dir.is_dir() {
            return Ok(catalog);
        }
        let io = |e: std::io::Error| CatalogError::Io {
            path: dir.display().to_string(),
            source: e,
        };
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .map_err(io)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        files.sort();
        for f in files {
            let text = std::fs::read_to_string(&f).map_err(|e| CatalogError::Io {
                path: f.display().to_string(),
                source: e,
            })?;
            catalog.add_source(&f.display().to_string(), &text)?;
        }
        Ok(catalog)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(version: u64, expression: &str) -> MasterRule {
        serde_json::from_value(
            serde_json::json!({"rule_id": "r", "version": version, "kind": "cel",
            "expression": expression}),
        )
        .expect("rule")
    }

    #[test]
    fn a_pinned_use_does_not_stand_in_for_an_unpinned_use_of_the_same_rule() {
        let mut c = Catalog::new();
        c.insert(rule(1, "true"));
        c.insert(rule(2, "true"));
        let flow: crate::Flow = serde_json::from_value(serde_json::json!({
            "client_id": "c", "flow_id": "f", "version": 1, "terminal_statuses": ["OK"],
            "rules": [{"id": "a", "use": "r", "on": {"true": {"next": true}, "false": {"next": true}}},
                      {"id": "b", "use": "r", "use_version": 1,
                       "on": {"true": {"complete": "OK"}, "false": {"complete": "OK"}}}]}))
        .expect("flow");
        let v = crate::CompiledFlow::compile(&flow, &c).expect("compiles");
        let pins = v.master_versions();
        assert_eq!(
            pins.get("r"),
            Some(&2),
            "the unpinned use resolved to the latest"
        );
        c.insert(rule(3, "false"));
        let moved = crate::CompiledFlow::compile(&flow, &c).expect("compiles");
        assert!(!moved.agrees_with(&pins), "the catalog moved on for `a`");
    }

    #[test]
    fn attributes_a_catalog_file_adds_are_ignored() {
        let mut c = Catalog::new();
        c.add_source(
            "catalog/max.json",
            r#"[{"rule_id": "max_amount", "version": 1, "kind": "cel", "description": "d",
                 "params": {"limit": 1}, "expression": "true", "owner": "risk-team"}]"#,
        )
        .expect("an unknown attribute is ignored (SPEC section 2)");
        assert_eq!(c.get("max_amount", None).map(|r| r.version), Some(1));
    }

    #[test]
    fn a_retired_version_is_never_the_latest_but_is_found_by_number() {
        let mut c = Catalog::new();
        c.insert(rule(1, "true"));
        c.insert_retired(rule(2, "false"));
        assert_eq!(c.get("r", None).map(|r| r.version), Some(1));
        assert_eq!(c.get("r", Some(2)).map(|r| r.version), Some(2));
        c.insert(rule(3, "1 == 1"));
        assert_eq!(c.get("r", None).map(|r| r.version), Some(3));
    }

    #[test]
    fn a_compiled_flow_names_the_versions_it_resolved_and_can_be_pinned() {
        let mut c = Catalog::new();
        c.insert(rule(1, "true"));
        let flow: crate::Flow = serde_json::from_value(serde_json::json!({
            "client_id": "c", "flow_id": "f", "version": 1, "terminal_statuses": ["OK"],
            "rules": [{"id": "a", "use": "r", "on": {"true": {"complete": "OK"}, "false": {"complete": "OK"}}}]}))
        .expect("flow");
        let v1 = crate::CompiledFlow::compile(&flow, &c).expect("compiles");
        let pins = v1.master_versions();
        assert_eq!(pins.get("r"), Some(&1));
        c.insert(rule(2, "false"));
        let v2 = crate::CompiledFlow::compile(&flow, &c).expect("compiles");
        assert!(!v2.agrees_with(&pins), "the catalog moved on");
        let pinned = v2.pinned_flow(&pins);
        assert_eq!(
            pinned.rules[0].use_version,
            Some(1),
            "pinned back to seq 0's"
        );
        let again = crate::CompiledFlow::compile(&pinned, &c).expect("pinned");
        assert!(again.agrees_with(&pins));
    }
}

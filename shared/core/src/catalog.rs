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

    /// The pinned version of `rule_id`, or its latest when `version` is `None`.
    pub fn get(&self, rule_id: &str, version: Option<u64>) -> Option<&MasterRule> {
        let versions = self.rules.get(rule_id)?;
        match version {
            Some(v) => versions.get(&v),
            None => versions.values().next_back(),
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
            crate::validate::check_master_rule(&rule)
                .map_err(|m| invalid(format!("rule `{}` v{}: {m}", rule.rule_id, rule.version)))?;
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

//! JSON `conditions`: `{field, op, value}` tests, AND inside a group and OR between groups, each
//! test's pass/fail kept for the explain trace.
//!
//! Semantics (documented in the README): a missing field reads as `null`; numbers compare by value
//! (`1` equals `1.0`); `gt`/`gte`/`lt`/`lte` compare two numbers or two strings and are false for
//! anything else; `contains` is a substring test on strings and membership on lists; `matches` is
//! a regex search; `is_null: true` holds for a missing or null field.

use std::borrow::Cow;
use std::sync::Arc;

use regex::Regex;
use serde::Serialize;
use serde_json::Value;

use crate::model::{Condition, Op};

/// A condition ready to run: its regex compiled once per flow version.
#[derive(Debug, Clone)]
pub struct CompiledCondition {
    /// The condition as written.
    pub condition: Condition,
    path: Vec<String>,
    regex: Option<Regex>,
    /// The field and the expected value as the trace shows them, shared by every result.
    field: Arc<str>,
    expected: Option<Arc<Value>>,
}

impl CompiledCondition {
    /// Prepares `condition`; fails when `matches` carries an invalid regex.
    pub fn compile(condition: &Condition) -> Result<CompiledCondition, String> {
        let regex = match (condition.op, &condition.value) {
            (Op::Matches, Some(Value::String(p))) => {
                Some(Regex::new(p).map_err(|e| format!("invalid regex: {e}"))?)
            }
            _ => None,
        };
        Ok(CompiledCondition {
            path: split_path(&condition.field),
            field: Arc::from(condition.field.as_str()),
            expected: condition.value.clone().map(Arc::new),
            condition: condition.clone(),
            regex,
        })
    }

    /// The path of `field`, split on dots.
    pub fn path(&self) -> &[String] {
        &self.path
    }

    /// Tests the condition against the value found at its field (`None` when missing).
    pub fn test(&self, actual: Option<&Value>) -> bool {
        let actual = actual.unwrap_or(&Value::Null);
        let expected = self.condition.value.as_ref().unwrap_or(&Value::Null);
        match self.condition.op {
            Op::Eq => json_eq(actual, expected),
            Op::Neq => !json_eq(actual, expected),
            Op::Gt => compare(actual, expected).is_some_and(|o| o.is_gt()),
            Op::Gte => compare(actual, expected).is_some_and(|o| o.is_ge()),
            Op::Lt => compare(actual, expected).is_some_and(|o| o.is_lt()),
            Op::Lte => compare(actual, expected).is_some_and(|o| o.is_le()),
            Op::In => member(actual, expected),
            Op::NotIn => !member(actual, expected),
            Op::Contains => match (actual, expected) {
                (Value::String(s), Value::String(sub)) => s.contains(sub.as_str()),
                (Value::Array(items), needle) => items.iter().any(|i| json_eq(i, needle)),
                _ => false,
            },
            Op::StartsWith => match (actual, expected) {
                (Value::String(s), Value::String(p)) => s.starts_with(p.as_str()),
                _ => false,
            },
            Op::Matches => match (actual, &self.regex) {
                (Value::String(s), Some(re)) => re.is_match(s),
                _ => false,
            },
            Op::IsNull => actual.is_null() == expected.as_bool().unwrap_or(true),
        }
    }
}

/// One condition's result, for the explain trace.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConditionResult<'v> {
    /// Index of the group (OR-ed).
    pub group: usize,
    /// The field tested.
    pub field: Arc<str>,
    /// The operator.
    pub op: &'static str,
    /// The value compared with (`expected` in the trace, SPEC section 1 Trace).
    #[serde(rename = "expected", skip_serializing_if = "Option::is_none")]
    pub value: Option<Arc<Value>>,
    /// The value found (`null` when missing), lent by the input where it comes from there.
    pub actual: Cow<'v, Value>,
    /// Whether it held.
    pub passed: bool,
}

impl ConditionResult<'_> {
    /// The result with its actual value copied.
    pub fn into_owned(self) -> ConditionResult<'static> {
        ConditionResult {
            group: self.group,
            field: self.field,
            op: self.op,
            value: self.value,
            actual: Cow::Owned(self.actual.into_owned()),
            passed: self.passed,
        }
    }
}

/// Evaluates groups of conditions: true when every condition of some group holds. Every
/// condition of every group is evaluated, so the trace shows all of them.
///
/// `lookup` lends the value at a path where it can, and the results keep it lent (a trace line
/// copies no value of the input).
pub fn evaluate<'v>(
    groups: &[Vec<CompiledCondition>],
    lookup: impl Fn(&[String]) -> Option<Cow<'v, Value>>,
) -> (bool, Vec<ConditionResult<'v>>) {
    let mut any = false;
    let mut results = Vec::with_capacity(groups.iter().map(Vec::len).sum());
    for (gi, group) in groups.iter().enumerate() {
        let mut all = true;
        for c in group {
            let actual = lookup(c.path());
            let passed = c.test(actual.as_deref());
            all &= passed;
            results.push(ConditionResult {
                group: gi,
                field: Arc::clone(&c.field),
                op: c.condition.op.as_str(),
                value: c.expected.clone(),
                actual: actual.unwrap_or(Cow::Owned(Value::Null)),
                passed,
            });
        }
        any |= all && !group.is_empty();
    }
    (any, results)
}

/// Splits `a.b.0.c` into segments.
pub fn split_path(field: &str) -> Vec<String> {
    field.split('.').map(str::to_string).collect()
}

/// Follows `path` (after its root) inside `v`; a numeric segment indexes a list.
pub fn walk<'a>(mut v: &'a Value, path: &[String]) -> Option<&'a Value> {
    for seg in path {
        v = match v {
            Value::Object(o) => crate::fast::field(o, seg)?,
            Value::Array(a) => a.get(seg.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(v)
}

/// JSON equality where numbers compare by value.
pub fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(i), Some(j)) => i == j,
            _ => x.as_f64() == y.as_f64(),
        },
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| json_eq(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, p)| y.get(k).is_some_and(|q| json_eq(p, q)))
        }
        _ => a == b,
    }
}

fn compare(a: &Value, b: &Value) -> Option<std::cmp::Ordering> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(i), Some(j)) => Some(i.cmp(&j)),
            _ => x.as_f64()?.partial_cmp(&y.as_f64()?),
        },
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

fn member(a: &Value, list: &Value) -> bool {
    match list {
        Value::Array(items) => items.iter().any(|i| json_eq(a, i)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cond(op: Op, value: Value) -> CompiledCondition {
        CompiledCondition::compile(&Condition {
            field: "input.x".into(),
            op,
            value: Some(value),
        })
        .expect("compiles")
    }

    #[test]
    fn every_op_on_a_table_of_cases() {
        let cases: Vec<(Op, Value, Option<Value>, bool)> = vec![
            (Op::Eq, json!(1), Some(json!(1.0)), true),
            (Op::Eq, json!("a"), Some(json!("a")), true),
            (Op::Eq, json!(null), None, true),
            (Op::Neq, json!("a"), Some(json!("b")), true),
            (Op::Neq, json!("a"), None, true),
            (Op::Gt, json!(10), Some(json!(10.5)), true),
            (Op::Gt, json!(10), Some(json!(10)), false),
            (Op::Gt, json!(10), Some(json!("11")), false),
            (Op::Gt, json!(10), None, false),
            (Op::Gte, json!(10), Some(json!(10)), true),
            (Op::Lt, json!("2024-01-02"), Some(json!("2024-01-01")), true),
            (Op::Lte, json!(3), Some(json!(3.0)), true),
            (Op::Lte, json!(3), Some(json!(4)), false),
            (Op::In, json!(["a", "b"]), Some(json!("b")), true),
            (Op::In, json!([1, 2]), Some(json!(2.0)), true),
            (Op::In, json!(["a"]), None, false),
            (Op::NotIn, json!(["a", "b"]), Some(json!("c")), true),
            (Op::NotIn, json!(["a"]), None, true),
            (Op::Contains, json!("ell"), Some(json!("hello")), true),
            (
                Op::Contains,
                json!("vip"),
                Some(json!(["new", "vip"])),
                true,
            ),
            (Op::Contains, json!("x"), Some(json!(["new"])), false),
            (Op::Contains, json!("x"), Some(json!(5)), false),
            (Op::StartsWith, json!("AB"), Some(json!("ABC")), true),
            (Op::StartsWith, json!("B"), Some(json!("ABC")), false),
            (Op::Matches, json!("^[A-Z]{3}$"), Some(json!("ABC")), true),
            (Op::Matches, json!("\\d"), Some(json!("a1b")), true),
            (Op::Matches, json!("\\d"), Some(json!(1)), false),
            (Op::IsNull, json!(true), None, true),
            (Op::IsNull, json!(true), Some(json!(null)), true),
            (Op::IsNull, json!(true), Some(json!(0)), false),
            (Op::IsNull, json!(false), Some(json!("")), true),
            (Op::IsNull, json!(false), None, false),
        ];
        for (op, value, actual, want) in cases {
            let c = cond(op, value.clone());
            assert_eq!(
                c.test(actual.as_ref()),
                want,
                "{op:?} {value} on {actual:?}"
            );
        }
    }

    #[test]
    fn groups_are_or_of_ands_and_every_condition_is_reported() {
        let groups = vec![
            vec![cond(Op::Gt, json!(5)), cond(Op::Lt, json!(7))],
            vec![cond(Op::Eq, json!(100))],
        ];
        let input = json!({"x": 6});
        let (ok, results) = evaluate(&groups, |p| walk(&input, &p[1..]).map(Cow::Borrowed));
        assert!(ok);
        assert_eq!(
            results.iter().map(|r| r.passed).collect::<Vec<_>>(),
            vec![true, true, false]
        );
    }

    #[test]
    fn walk_indexes_lists() {
        let v = json!({"a": [{"b": 1}]});
        assert_eq!(walk(&v, &split_path("a.0.b")), Some(&json!(1)));
        assert_eq!(walk(&v, &split_path("a.1.b")), None);
    }
}

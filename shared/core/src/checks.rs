//! The checks of single pieces of a flow or catalog (a condition's value, an action, a master
//! rule, a key in a JSON path) that compiling a flow, validating it and loading the catalog all
//! apply. They depend on the model alone, so every module above can use them.

use serde_json::Value;

use crate::expr::MAX_PATTERN_CHARS;
use crate::model::{Action, ActionType, Condition, MasterKind, MasterRule, Op};

/// The longest `timeout_ms` of a webhook or an external master rule.
pub const MAX_TIMEOUT_MS: u64 = 10_000;

/// `.key` for identifier-like keys, `["key"]` otherwise.
pub fn key_path(k: &str) -> String {
    let ident = !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        && !k.starts_with(|c: char| c.is_ascii_digit());
    if ident {
        format!(".{k}")
    } else {
        format!("[{}]", Value::String(k.to_string()))
    }
}

/// How a JSON value's type reads in a message (`a string`, `an array`).
pub(crate) fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "an integer",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Checks that a condition's `value` suits its `op`.
pub fn check_op_value(c: &Condition) -> Result<(), String> {
    let op = c.op.as_str();
    match (c.op, &c.value) {
        (Op::IsNull, Some(Value::Bool(_))) => Ok(()),
        (Op::IsNull, _) => Err("`is_null` takes `value: true` or `value: false`".into()),
        (_, None) => Err(format!("`{op}` needs a `value`")),
        (Op::Eq | Op::Neq, Some(_)) => Ok(()),
        (Op::Gt | Op::Gte | Op::Lt | Op::Lte, Some(Value::Number(_) | Value::String(_))) => Ok(()),
        (Op::Gt | Op::Gte | Op::Lt | Op::Lte, Some(v)) => Err(format!(
            "`{op}` compares with a number or a string, not {}",
            json_type(v)
        )),
        (Op::In | Op::NotIn, Some(Value::Array(_))) => Ok(()),
        (Op::In | Op::NotIn, Some(v)) => {
            Err(format!("`{op}` needs a list value, not {}", json_type(v)))
        }
        (Op::Contains, Some(Value::Array(_) | Value::Object(_) | Value::Null)) => Err(
            "`contains` needs a single value (a substring, or an item to find in a list)".into(),
        ),
        (Op::Contains, Some(_)) => Ok(()),
        (Op::Matches, Some(Value::String(p))) if p.chars().count() > MAX_PATTERN_CHARS => {
            Err(format!(
                "a `matches` pattern is at most {MAX_PATTERN_CHARS} characters (this one has {})",
                p.chars().count()
            ))
        }
        (Op::StartsWith | Op::Matches, Some(Value::String(_))) => Ok(()),
        (Op::StartsWith | Op::Matches, Some(v)) => {
            Err(format!("`{op}` needs a string value, not {}", json_type(v)))
        }
    }
}

/// Checks that an action has the fields its type needs and no others; a signing secret must be
/// one of the flow's own client (`rulestream/<client_id>/…`, SPEC section 3). The error names
/// the action's field it is about, when it is about one.
pub fn check_action(a: &Action, client_id: &str) -> Result<(), (Option<&'static str>, String)> {
    if let Some(t) = a.timeout_ms
        && (t == 0 || t > MAX_TIMEOUT_MS)
    {
        return Err((
            Some("timeout_ms"),
            format!("`timeout_ms` must be 1 to {MAX_TIMEOUT_MS}, got {t}"),
        ));
    }
    if let Some(secret) = &a.secret_id {
        let own = format!("rulestream/{client_id}/");
        if !secret.starts_with(&own) || secret.len() == own.len() {
            return Err((
                Some("secret_id"),
                format!(
                    "`secret_id` `{secret}` is not a secret of client `{client_id}`: it must be named `{own}<name>`"
                ),
            ));
        }
    }
    let (required, optional) = a.kind.fields();
    let present = a.present_fields();
    let kind = a.kind.as_str();
    let missing: Vec<_> = required.iter().filter(|f| !present.contains(f)).collect();
    if !missing.is_empty() {
        let list: Vec<String> = missing.iter().map(|f| format!("`{f}`")).collect();
        return Err((None, format!("`{kind}` needs {}", list.join(" and "))));
    }
    let extra: Vec<_> = present
        .iter()
        .filter(|f| !required.contains(f) && !optional.contains(f))
        .collect();
    if !extra.is_empty() {
        let list: Vec<String> = extra.iter().map(|f| format!("`{f}`")).collect();
        return Err((
            None,
            format!("{} is not a field of `{kind}`", list.join(", ")),
        ));
    }
    if a.kind == ActionType::CallWebhook
        && let Some(url) = &a.url
        && !(url.starts_with("https://") || url.starts_with("http://"))
    {
        return Err((
            Some("url"),
            format!("`url` must be an http(s) URL, got `{url}`"),
        ));
    }
    if a.kind == ActionType::SetField
        && let Some(f) = &a.field
        && f.is_empty()
    {
        return Err((Some("field"), "`field` must not be empty".into()));
    }
    Ok(())
}

/// Checks a catalog rule: the field its kind needs, and CEL that compiles.
pub fn check_master_rule(r: &MasterRule) -> Result<(), String> {
    if r.version == 0 {
        return Err("version must be 1 or more".into());
    }
    if let Some(t) = r.timeout_ms
        && (t == 0 || t > MAX_TIMEOUT_MS)
    {
        return Err(format!(
            "`timeout_ms` must be 1 to {MAX_TIMEOUT_MS}, got {t}"
        ));
    }
    match r.kind {
        MasterKind::Cel => {
            let src = r
                .expression
                .as_deref()
                .ok_or("a `cel` rule needs `expression`")?;
            crate::expr::Expr::compile(src).map_err(|errs| {
                errs.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ")
            })?;
        }
        MasterKind::Lambda if r.function.as_deref().is_none_or(str::is_empty) => {
            return Err("a `lambda` rule needs `function`".into());
        }
        MasterKind::Http if r.url.as_deref().is_none_or(str::is_empty) => {
            return Err("an `http` rule needs `url`".into());
        }
        _ => {}
    }
    Ok(())
}

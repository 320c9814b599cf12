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
    {
        check_http_url(url).map_err(|m| (Some("url"), m))?;
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
        MasterKind::Http => {
            if let Some(url) = r.url.as_deref() {
                check_http_url(url)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Why `url` is not an absolute `http`/`https` URL with a host (and a port, if any, in
/// 1-65535). The message shows the URL as a trace does, `scheme://host[:port]`: its path, query
/// and user info may hold secrets (SPEC section 1, Trace).
pub fn check_http_url(url: &str) -> Result<(), String> {
    let shown = redact_url(url);
    let bad = |why: &str| {
        Err(format!(
            "`url` must be an http(s) URL with a host{why}, got `{shown}`"
        ))
    };
    let Some((scheme, rest)) = url.split_once("://") else {
        return bad("");
    };
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return bad("");
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return bad(" and no spaces");
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit('@').next().unwrap_or_default();
    let (host, port) = match host_port.rsplit_once(':') {
        // `[::1]:8080`, `host:8080`; a bare IPv6 literal `[::1]` has no port after its `]`.
        Some((h, p)) if !p.contains(']') => (h, Some(p)),
        _ => (host_port, None),
    };
    if host.is_empty() {
        return bad("");
    }
    if let Some(p) = port
        && !p.parse::<u16>().is_ok_and(|n| n > 0)
    {
        return bad(" (a port is 1-65535)");
    }
    Ok(())
}

/// `scheme://host[:port]` of a URL: what traces, logs and dry-run answers show of it (paths and
/// queries may hold secrets, e.g. a chat webhook's token).
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "<not a url>".into();
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = authority.rsplit('@').next().unwrap_or_default();
    format!("{scheme}://{host}")
}

#[cfg(test)]
mod url_tests {
    use super::check_http_url;

    #[test]
    fn http_urls_need_a_host_and_a_real_port_and_errors_show_no_secrets() {
        for ok in [
            "https://hooks.example.com/x?token=1",
            "HTTPS://H.EXAMPLE.COM:443/x",
            "http://127.0.0.1:8080",
            "http://[::1]:9000/a",
            "http://[::1]/a",
        ] {
            assert!(check_http_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "https://",
            "https:///path",
            "http://h.example.com:99999/",
            "http://h.example.com:0/",
            "http://h.example.com:x/",
            "hooks.example.com/x",
            "http://h.example.com/a b",
        ] {
            assert!(check_http_url(bad).is_err(), "{bad}");
        }
        let Err(e) = check_http_url("ftp://user:pw@h.example.com/secret?token=abc") else {
            panic!("an ftp URL is refused");
        };
        assert!(e.contains("ftp://h.example.com"), "{e}");
        assert!(
            !e.contains("pw") && !e.contains("token") && !e.contains("secret"),
            "{e}"
        );
    }
}

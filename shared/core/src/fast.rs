//! A direct evaluator for the common subset of CEL, straight over the execution's JSON: field
//! paths (`input.user.country`, resolved to a root and its keys when the flow compiles),
//! literals, list literals, `==` `!=` `<` `<=` `>` `>=`, `in`, `&&` `||` `!`, unary `-`,
//! `+ - * / %`, `? :`, the conversions `int(int)` and `double(number)`, and the time functions
//! master rules use: `now`, `timestamp(string)`, `int(timestamp)` (with `params.*` as a root).
//!
//! It never decides alone what CEL would decide differently: it answers only when every step of
//! the evaluation is a case it knows to be exactly what `cel` gives (the same types, the same
//! numeric comparisons across int, uint and double, the same overflow checks). Anything else (a
//! missing key, a type mismatch, an error absorbed by `&&`/`||`, a list compared whole, a
//! function call) gives `None`, and the caller evaluates with `cel`, which gives the result and,
//! for errors, the message a trace shows. A differential property test against `cel`
//! (`tests/direct.rs`) holds it to that.

use std::cmp::Ordering;

use cel::common::ast::{Expr as Ast, IdedExpr, LiteralValue, operators};
use chrono::{DateTime, FixedOffset};
use serde_json::{Map, Value};

/// Where a path starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Root {
    /// The trigger row's input.
    Input,
    /// Values set so far.
    Ctx,
    /// Client data (absent when the client has no data source).
    Client,
    /// Outcomes of the rules run so far.
    Steps,
    /// A master rule's parameters.
    Params,
}

/// What a direct evaluation reads: borrowed, nothing converted.
#[derive(Debug, Clone, Copy)]
pub struct Roots<'a> {
    /// `input`.
    pub input: &'a Value,
    /// `ctx`.
    pub ctx: &'a Map<String, Value>,
    /// `client`.
    pub client: Option<&'a Value>,
    /// `steps`.
    pub steps: &'a Map<String, Value>,
    /// `params` (only while a master rule runs).
    pub params: Option<&'a Value>,
    /// `now`.
    pub now: Option<DateTime<FixedOffset>>,
}

/// A literal of an expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Lit {
    /// `null`.
    Null,
    /// `true`, `false`.
    Bool(bool),
    /// `1`.
    Int(i64),
    /// `1u`.
    UInt(u64),
    /// `1.5`.
    Double(f64),
    /// `"a"`.
    Str(Box<str>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arith {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
}

/// A compiled expression of the subset.
#[derive(Debug, Clone, PartialEq)]
enum Node {
    Lit(Lit),
    List(Vec<Lit>),
    Path(Root, Vec<Box<str>>),
    Not(Box<Node>),
    Neg(Box<Node>),
    And(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
    Cond(Box<Node>, Box<Node>, Box<Node>),
    Cmp(Cmp, Box<Node>, Box<Node>),
    In(Box<Node>, Box<Node>),
    Arith(Arith, Box<Node>, Box<Node>),
    Now,
    Timestamp(Box<Node>),
    Int(Box<Node>),
    Double(Box<Node>),
}

/// A value met while evaluating directly. Lists and maps are the JSON they come from, or a
/// list literal of the expression.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fv<'a> {
    /// `null`.
    Null,
    /// A bool.
    Bool(bool),
    /// An int.
    Int(i64),
    /// A uint (a JSON number above `i64::MAX`, or a `u` literal).
    UInt(u64),
    /// A double.
    Double(f64),
    /// A string.
    Str(&'a str),
    /// A JSON array or object.
    Json(&'a Value),
    /// A list literal of the expression.
    Lits(&'a [Lit]),
    /// A timestamp (`now`, `timestamp(string)`).
    Time(DateTime<FixedOffset>),
}

/// An expression of the subset, compiled for direct evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct Direct(Node);

impl Direct {
    /// The direct form of `ast` (after the arithmetic rewrite of [`crate::expr`]), or `None` when
    /// some part of it is outside the subset.
    pub fn compile(ast: &IdedExpr) -> Option<Direct> {
        node(ast, 0).map(Direct)
    }

    /// Evaluates over `roots`; `None` when `cel` must say (see the module documentation).
    pub fn eval<'a>(&'a self, roots: &Roots<'a>) -> Option<Fv<'a>> {
        eval(&self.0, roots)
    }
}

/// How deep a direct form may nest. Deeper expressions are left to `cel`, whose evaluation
/// grows its stack when it must: the direct evaluator recurses on the caller's stack, and this
/// bound keeps that small on any thread.
const MAX_DEPTH: usize = 24;

fn boxed(ast: &IdedExpr, depth: usize) -> Option<Box<Node>> {
    node(ast, depth + 1).map(Box::new)
}

fn lit(l: &LiteralValue) -> Option<Lit> {
    Some(match l {
        LiteralValue::Null => Lit::Null,
        LiteralValue::Boolean(b) => Lit::Bool(*b.inner()),
        LiteralValue::Int(i) => Lit::Int(*i.inner()),
        LiteralValue::UInt(u) => Lit::UInt(*u.inner()),
        LiteralValue::Double(d) => Lit::Double(*d.inner()),
        LiteralValue::String(s) => Lit::Str(s.inner().into()),
        LiteralValue::Bytes(_) => return None,
    })
}

fn path(ast: &IdedExpr) -> Option<Node> {
    let mut keys = Vec::new();
    let mut e = ast;
    loop {
        match &e.expr {
            Ast::Select(s) if !s.test => {
                keys.push(s.field.as_str().into());
                e = &s.operand;
            }
            Ast::Ident(name) => {
                let root = match name.as_str() {
                    "input" => Root::Input,
                    "ctx" => Root::Ctx,
                    "client" => Root::Client,
                    "steps" => Root::Steps,
                    "params" => Root::Params,
                    _ => return None,
                };
                keys.reverse();
                return Some(Node::Path(root, keys));
            }
            _ => return None,
        }
    }
}

fn node(ast: &IdedExpr, depth: usize) -> Option<Node> {
    if depth > MAX_DEPTH {
        return None;
    }
    let boxed = |a: &IdedExpr| boxed(a, depth);
    match &ast.expr {
        Ast::Literal(l) => lit(l).map(Node::Lit),
        Ast::Ident(name) if name.as_str() == "now" => Some(Node::Now),
        Ast::Ident(_) | Ast::Select(_) => path(ast),
        Ast::List(l) if l.optional_indices.is_empty() => {
            let items = l
                .elements
                .iter()
                .map(|e| match &e.expr {
                    Ast::Literal(x) => lit(x),
                    _ => None,
                })
                .collect::<Option<Vec<Lit>>>()?;
            Some(Node::List(items))
        }
        Ast::Call(call) if call.target.is_none() => {
            let a = &call.args;
            let cmp = |c: Cmp| Some(Node::Cmp(c, boxed(&a[0])?, boxed(&a[1])?));
            let arith = |o: Arith| Some(Node::Arith(o, boxed(&a[0])?, boxed(&a[1])?));
            match (call.func_name.as_str(), a.len()) {
                (operators::LOGICAL_NOT, 1) => Some(Node::Not(boxed(&a[0])?)),
                (operators::NEGATE, 1) => Some(Node::Neg(boxed(&a[0])?)),
                (operators::LOGICAL_AND, 2) => Some(Node::And(boxed(&a[0])?, boxed(&a[1])?)),
                (operators::LOGICAL_OR, 2) => Some(Node::Or(boxed(&a[0])?, boxed(&a[1])?)),
                (operators::CONDITIONAL, 3) => {
                    Some(Node::Cond(boxed(&a[0])?, boxed(&a[1])?, boxed(&a[2])?))
                }
                (operators::EQUALS, 2) => cmp(Cmp::Eq),
                (operators::NOT_EQUALS, 2) => cmp(Cmp::Ne),
                (operators::LESS, 2) => cmp(Cmp::Lt),
                (operators::LESS_EQUALS, 2) => cmp(Cmp::Le),
                (operators::GREATER, 2) => cmp(Cmp::Gt),
                (operators::GREATER_EQUALS, 2) => cmp(Cmp::Ge),
                (operators::IN, 2) => Some(Node::In(boxed(&a[0])?, boxed(&a[1])?)),
                // The arithmetic operators as `crate::expr` rewrites them (int and double mix).
                ("__rs_add__", 2) => arith(Arith::Add),
                ("__rs_sub__", 2) => arith(Arith::Sub),
                ("__rs_mul__", 2) => arith(Arith::Mul),
                ("__rs_div__", 2) => arith(Arith::Div),
                (operators::MODULO, 2) => arith(Arith::Rem),
                ("timestamp", 1) => Some(Node::Timestamp(boxed(&a[0])?)),
                ("int", 1) => Some(Node::Int(boxed(&a[0])?)),
                ("double", 1) => Some(Node::Double(boxed(&a[0])?)),
                _ => None,
            }
        }
        _ => None,
    }
}

fn of_json(v: &Value) -> Fv<'_> {
    match v {
        Value::Null => Fv::Null,
        Value::Bool(b) => Fv::Bool(*b),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Fv::Int(i)
            } else if let Some(u) = n.as_u64() {
                Fv::UInt(u)
            } else {
                n.as_f64().map_or(Fv::Null, Fv::Double)
            }
        }
        Value::String(s) => Fv::Str(s),
        Value::Array(_) | Value::Object(_) => Fv::Json(v),
    }
}

fn of_lit(l: &Lit) -> Fv<'_> {
    match l {
        Lit::Null => Fv::Null,
        Lit::Bool(b) => Fv::Bool(*b),
        Lit::Int(i) => Fv::Int(*i),
        Lit::UInt(u) => Fv::UInt(*u),
        Lit::Double(d) => Fv::Double(*d),
        Lit::Str(s) => Fv::Str(s),
    }
}

/// `o[k]`: small objects (most of a rule's input) are scanned, which costs less than hashing
/// the key; larger ones are looked up.
pub fn field<'a>(o: &'a Map<String, Value>, k: &str) -> Option<&'a Value> {
    if o.len() <= 8 {
        o.iter().find(|(key, _)| key.as_str() == k).map(|(_, v)| v)
    } else {
        o.get(k)
    }
}

fn walk<'a>(mut v: &'a Value, keys: &[Box<str>]) -> Option<&'a Value> {
    for k in keys {
        v = field(v.as_object()?, k)?;
    }
    Some(v)
}

fn eval<'a>(n: &'a Node, r: &Roots<'a>) -> Option<Fv<'a>> {
    match n {
        Node::Lit(l) => Some(of_lit(l)),
        Node::List(items) => Some(Fv::Lits(items)),
        Node::Path(root, keys) => {
            let v = match root {
                Root::Input => walk(r.input, keys)?,
                Root::Client => walk(r.client?, keys)?,
                Root::Params => walk(r.params?, keys)?,
                Root::Ctx | Root::Steps => {
                    let m = if *root == Root::Ctx { r.ctx } else { r.steps };
                    let (first, rest) = keys.split_first()?;
                    walk(field(m, first)?, rest)?
                }
            };
            Some(of_json(v))
        }
        Node::Now => r.now.map(Fv::Time),
        Node::Timestamp(a) => match eval(a, r)? {
            Fv::Str(s) => timestamp(s).map(Fv::Time),
            Fv::Time(t) => Some(Fv::Time(t)),
            _ => None,
        },
        Node::Int(a) => match eval(a, r)? {
            Fv::Time(t) => Some(Fv::Int(t.timestamp())),
            Fv::Int(i) => Some(Fv::Int(i)),
            _ => None,
        },
        Node::Double(a) => match eval(a, r)? {
            Fv::Int(i) => Some(Fv::Double(i as f64)),
            Fv::UInt(u) => Some(Fv::Double(u as f64)),
            Fv::Double(d) => Some(Fv::Double(d)),
            _ => None,
        },
        Node::Not(a) => match eval(a, r)? {
            Fv::Bool(b) => Some(Fv::Bool(!b)),
            _ => None,
        },
        Node::Neg(a) => match eval(a, r)? {
            Fv::Int(i) => i.checked_neg().map(Fv::Int),
            Fv::Double(d) => Some(Fv::Double(-d)),
            _ => None,
        },
        Node::And(a, b) => match eval(a, r)? {
            Fv::Bool(false) => Some(Fv::Bool(false)),
            Fv::Bool(true) => match eval(b, r)? {
                Fv::Bool(x) => Some(Fv::Bool(x)),
                _ => None,
            },
            _ => None,
        },
        Node::Or(a, b) => match eval(a, r)? {
            Fv::Bool(true) => Some(Fv::Bool(true)),
            Fv::Bool(false) => match eval(b, r)? {
                Fv::Bool(x) => Some(Fv::Bool(x)),
                _ => None,
            },
            _ => None,
        },
        Node::Cond(c, a, b) => match eval(c, r)? {
            Fv::Bool(true) => eval(a, r),
            Fv::Bool(false) => eval(b, r),
            _ => None,
        },
        Node::Cmp(op, a, b) => {
            let (a, b) = (eval(a, r)?, eval(b, r)?);
            let v = match op {
                Cmp::Eq => equals(a, b)?,
                Cmp::Ne => !equals(a, b)?,
                Cmp::Lt => compare(a, b)? == Ordering::Less,
                Cmp::Le => compare(a, b)? != Ordering::Greater,
                Cmp::Gt => compare(a, b)? == Ordering::Greater,
                Cmp::Ge => compare(a, b)? != Ordering::Less,
            };
            Some(Fv::Bool(v))
        }
        Node::In(a, b) => {
            let (a, b) = (eval(a, r)?, eval(b, r)?);
            contains(b, a).map(Fv::Bool)
        }
        Node::Arith(op, a, b) => arith(*op, eval(a, r)?, eval(b, r)?),
    }
}

/// `timestamp(s)` as `cel` reads it: RFC 3339, from 0001-01-01T00:00:00Z to
/// 9999-12-31T23:59:59.999999999Z. `None` for anything else (which `cel` words as an error) and
/// for a leap second (`:60`, which chrono keeps as a second of more than 10^9 ns): `cel` decides
/// those.
fn timestamp(s: &str) -> Option<DateTime<FixedOffset>> {
    let t = DateTime::parse_from_rfc3339(s).ok()?;
    if t.timestamp_subsec_nanos() >= 1_000_000_000 {
        return None;
    }
    let year = chrono::Datelike::year(&t.naive_utc());
    (1..=9999).contains(&year).then_some(t)
}

/// `cel`'s ordering of two scalars: numbers across int, uint and double, strings, bools,
/// timestamps. `None` for every other pair (`cel` says they do not compare).
fn compare(a: Fv<'_>, b: Fv<'_>) -> Option<Ordering> {
    use Fv::{Bool, Double, Int, Str, Time, UInt};
    match (a, b) {
        (Time(x), Time(y)) => Some(x.cmp(&y)),
        (Int(x), Int(y)) => Some(x.cmp(&y)),
        (UInt(x), UInt(y)) => Some(x.cmp(&y)),
        (Int(x), UInt(y)) => Some(u64::try_from(x).map_or(Ordering::Less, |x| x.cmp(&y))),
        (UInt(x), Int(y)) => Some(u64::try_from(y).map_or(Ordering::Greater, |y| x.cmp(&y))),
        (Double(x), Double(y)) => x.partial_cmp(&y),
        (Int(x), Double(y)) => (x as f64).partial_cmp(&y),
        (Double(x), Int(y)) => x.partial_cmp(&(y as f64)),
        (UInt(x), Double(y)) => (x as f64).partial_cmp(&y),
        (Double(x), UInt(y)) => x.partial_cmp(&(y as f64)),
        (Str(x), Str(y)) => Some(x.cmp(y)),
        (Bool(x), Bool(y)) => Some(x.cmp(&y)),
        _ => None,
    }
}

/// `cel`'s `==` for scalars: numbers by value across types, otherwise the same type and value,
/// and `false` across types. Lists and maps: `None` (left to `cel`).
fn equals(a: Fv<'_>, b: Fv<'_>) -> Option<bool> {
    use Fv::{Bool, Double, Int, Json, Lits, Null, Str, Time, UInt};
    let number = |v: &Fv<'_>| matches!(v, Int(_) | UInt(_) | Double(_));
    match (a, b) {
        (Json(_) | Lits(_), _) | (_, Json(_) | Lits(_)) => None,
        (Time(x), Time(y)) => Some(x == y),
        (Time(_), _) | (_, Time(_)) => None,
        (Null, Null) => Some(true),
        (Str(x), Str(y)) => Some(x == y),
        (Bool(x), Bool(y)) => Some(x == y),
        (x, y) if number(&x) && number(&y) => Some(compare(x, y) == Some(Ordering::Equal)),
        _ => Some(false),
    }
}

/// `a in container`: a list by `==` on each item, a JSON object by its (string) keys.
fn contains(container: Fv<'_>, a: Fv<'_>) -> Option<bool> {
    match container {
        Fv::Lits(items) => {
            for i in items {
                if equals(a, of_lit(i))? {
                    return Some(true);
                }
            }
            Some(false)
        }
        Fv::Json(Value::Array(items)) => {
            for i in items {
                if equals(a, of_json(i))? {
                    return Some(true);
                }
            }
            Some(false)
        }
        Fv::Json(Value::Object(m)) => match a {
            Fv::Str(k) => Some(m.contains_key(k)),
            _ => None,
        },
        _ => None,
    }
}

fn arith<'a>(op: Arith, a: Fv<'a>, b: Fv<'a>) -> Option<Fv<'a>> {
    use Fv::{Double, Int, UInt};
    let double = |v: Fv<'_>| match v {
        Int(i) => Some(i as f64),
        UInt(u) => Some(u as f64),
        Double(d) => Some(d),
        _ => None,
    };
    match (op, a, b) {
        (Arith::Add, Int(x), Int(y)) => x.checked_add(y).map(Int),
        (Arith::Sub, Int(x), Int(y)) => x.checked_sub(y).map(Int),
        (Arith::Mul, Int(x), Int(y)) => x.checked_mul(y).map(Int),
        (Arith::Div, Int(x), Int(y)) => x.checked_div(y).map(Int),
        (Arith::Rem, Int(x), Int(y)) => x.checked_rem(y).map(Int),
        (Arith::Add, UInt(x), UInt(y)) => x.checked_add(y).map(UInt),
        (Arith::Sub, UInt(x), UInt(y)) => x.checked_sub(y).map(UInt),
        (Arith::Mul, UInt(x), UInt(y)) => x.checked_mul(y).map(UInt),
        (Arith::Div, UInt(x), UInt(y)) => x.checked_div(y).map(UInt),
        (Arith::Rem, UInt(x), UInt(y)) => x.checked_rem(y).map(UInt),
        // Ints and uints with a double: the double arithmetic of `crate::expr`'s rewrite.
        (Arith::Add | Arith::Sub | Arith::Mul | Arith::Div, x, y)
            if matches!(x, Double(_)) || matches!(y, Double(_)) =>
        {
            let (x, y) = (double(x)?, double(y)?);
            let v = match op {
                Arith::Add => x + y,
                Arith::Sub => x - y,
                Arith::Mul => x * y,
                _ => x / y,
            };
            v.is_finite().then_some(Double(v))
        }
        _ => None,
    }
}

/// The JSON a direct result stands for, as [`crate::expr::cel_to_json`] would write it; `None`
/// for lists and maps (left to `cel`).
pub fn to_json(v: Fv<'_>) -> Option<Value> {
    Some(match v {
        Fv::Null => Value::Null,
        Fv::Bool(b) => Value::Bool(b),
        Fv::Int(i) => Value::from(i),
        Fv::UInt(u) => Value::from(u),
        Fv::Double(d) => Value::Number(serde_json::Number::from_f64(d)?),
        Fv::Str(s) => Value::String(s.to_string()),
        Fv::Json(_) | Fv::Lits(_) | Fv::Time(_) => return None,
    })
}

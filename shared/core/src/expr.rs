//! CEL: compiling expressions once, checking what they reference, and moving values between JSON
//! and CEL.
//!
//! The CEL environment is built once per process ([`env`]); a flow version compiles each of its
//! expressions once ([`Expr::compile`]). Each compiled expression knows the member paths it reads
//! (`input.user.country`), so a run converts only those parts of its JSON input into CEL values
//! ([`PathTrie`], [`json_to_cel_pruned`]) — that conversion, not the evaluation, is what dominates
//! a small decision.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock};

use cel::common::ast::{EntryExpr, Expr as Ast, IdedExpr};
use cel::common::types::DYN_TYPE;
use cel::common::value::{CowVal, Val};
use cel::objects::{Key, Map};
use cel::{Env, ExecutionError, Value as CelValue};
use serde_json::Value;

use crate::fast::{Direct, Fv, Roots};

/// The variables a rule's CEL may read.
pub const ROOTS: [&str; 7] = [
    "input",
    "ctx",
    "client",
    "params",
    "steps",
    "execution",
    "now",
];

/// Names CEL itself defines: type names (`type(x) == int`) and function namespaces
/// (`optional.of(x)`, `strings.quote(s)`).
const BUILTIN_NAMES: [&str; 14] = [
    "int",
    "uint",
    "double",
    "bool",
    "string",
    "bytes",
    "list",
    "map",
    "null_type",
    "type",
    "google",
    "optional",
    "strings",
    "math",
];

/// Macros CEL expands when it parses (`has(x.y)`, `l.all(x, p)`): names, not functions.
const MACROS: [&str; 6] = ["has", "all", "exists", "exists_one", "map", "filter"];

/// The process-wide CEL environment (standard library plus the string extensions).
pub fn env() -> &'static Arc<Env> {
    static ENV: OnceLock<Arc<Env>> = OnceLock::new();
    ENV.get_or_init(|| {
        // Any nesting that fits in the length limit parses; `check_limits` bounds the brackets.
        let depth = u16::try_from(MAX_EXPR_CHARS).unwrap_or(u16::MAX);
        let mut env = Env::stdlib().with_max_recursion_depth(depth);
        // The string extension only adds functions; if it ever failed to load, the standard
        // library alone still serves every flow that does not call them.
        let _ = env.add_extension(cel::extensions::strings);
        for (name, f) in ARITH {
            let _ = env.add_overload(name, name, vec![DYN_TYPE, DYN_TYPE], f);
        }
        Arc::new(env)
    })
}

/// Why an expression did not compile.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CompileError {
    /// The text is not CEL.
    #[error("CEL syntax error at {line}:{column}: {message}")]
    Syntax {
        /// 1-based line within the expression.
        line: u32,
        /// 1-based column within the expression.
        column: u32,
        /// The parser's explanation.
        message: String,
    },
    /// The expression is over a size limit (SPEC section 1, Limits).
    #[error("{message}")]
    TooLarge {
        /// Which limit, and by how much.
        message: String,
    },
    /// A `matches` pattern that is not a valid regex (or compiles too large).
    #[error("invalid `matches` pattern: {message}")]
    InvalidPattern {
        /// The regex compiler's explanation.
        message: String,
    },
    /// The expression calls a function CEL does not have.
    #[error("unknown function `{name}` (CEL's standard functions and the string extension)")]
    UnknownFunction {
        /// The function.
        name: String,
    },
    /// The expression reads a variable that no rule can see.
    #[error("unknown variable `{name}` (known: input, ctx, client, params, steps, execution, now)")]
    UnknownVariable {
        /// The variable.
        name: String,
    },
}

/// The longest CEL expression, in characters (SPEC section 1, Limits).
pub const MAX_EXPR_CHARS: usize = 4096;
/// The deepest nesting of parentheses, brackets, braces and calls (SPEC section 1, Limits).
/// Conditionals (`a ? b : c ? d : e`) do not count: any chain of them that fits in
/// [`MAX_EXPR_CHARS`] compiles and evaluates (the parser's own depth limit is set to that length,
/// and both run on a stack that grows, see [`with_stack`]).
pub const MAX_NESTING: usize = 64;

/// Checks the size limits before the parser sees the text, so no expression can exhaust the
/// stack of the parser or the evaluator.
pub fn check_limits(source: &str) -> Result<(), CompileError> {
    let n = source.chars().count();
    if n > MAX_EXPR_CHARS {
        return Err(CompileError::TooLarge {
            message: format!(
                "the expression is {n} characters long; the limit is {MAX_EXPR_CHARS}"
            ),
        });
    }
    let depth = nesting(source);
    if depth > MAX_NESTING {
        return Err(CompileError::TooLarge {
            message: format!(
                "the expression nests parentheses, brackets, braces and calls {depth} deep; the limit is {MAX_NESTING}"
            ),
        });
    }
    Ok(())
}

/// Stack that must be left before the parser or evaluator runs; below it, `f` runs on a fresh
/// segment of [`STACK_SEGMENT`]. The functions run on threads with a stack larger than this red
/// zone, so this never allocates there; a small stack (a test thread, a CLI) grows instead of
/// overflowing. An expression within the limits needs far less, in any build.
pub const STACK_RED_ZONE: usize = 48 * 1024 * 1024;
/// Size of a fresh stack segment.
pub const STACK_SEGMENT: usize = 512 * 1024 * 1024;

fn with_stack<R>(f: impl FnOnce() -> R) -> R {
    stacker::maybe_grow(STACK_RED_ZONE, STACK_SEGMENT, f)
}

/// How deep `(`, `[` and `{` nest in `src`, outside string literals.
pub fn nesting(src: &str) -> usize {
    let b = src.as_bytes();
    let (mut i, mut depth, mut max) = (0usize, 0usize, 0usize);
    while i < b.len() {
        match b[i] {
            q @ (b'"' | b'\'') => {
                let triple = i + 2 < b.len() && b[i + 1] == q && b[i + 2] == q;
                let raw = i > 0 && matches!(b[i - 1], b'r' | b'R');
                i += if triple { 3 } else { 1 };
                while i < b.len() {
                    if !raw && b[i] == b'\\' {
                        i += 2;
                        continue;
                    }
                    if triple {
                        if i + 2 < b.len() && b[i] == q && b[i + 1] == q && b[i + 2] == q {
                            i += 3;
                            break;
                        }
                    } else if b[i] == q {
                        i += 1;
                        break;
                    }
                    i += 1;
                }
                continue;
            }
            b'(' | b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    max
}

/// Arithmetic operators, rewritten to functions that promote a mix of `int`/`uint` and `double`
/// to `double`. JSON has one number type, so `input.amount * 0.05` must work whether the amount
/// was written `2000000` or `2000000.0`; standard CEL would refuse `int * double`.
const ARITH: [(&str, cel::common::functions::Function); 4] = [
    ("__rs_add__", rs_add),
    ("__rs_sub__", rs_sub),
    ("__rs_mul__", rs_mul),
    ("__rs_div__", rs_div),
];

fn arith_name(op: &str) -> Option<&'static str> {
    Some(match op {
        "_+_" => "__rs_add__",
        "_-_" => "__rs_sub__",
        "_*_" => "__rs_mul__",
        "_/_" => "__rs_div__",
        _ => return None,
    })
}

fn promote(a: CelValue, b: CelValue) -> (CelValue, CelValue) {
    match (&a, &b) {
        (CelValue::Int(x), CelValue::Float(_)) => (CelValue::Float(*x as f64), b),
        (CelValue::UInt(x), CelValue::Float(_)) => (CelValue::Float(*x as f64), b),
        (CelValue::Float(_), CelValue::Int(y)) => (a, CelValue::Float(*y as f64)),
        (CelValue::Float(_), CelValue::UInt(y)) => (a, CelValue::Float(*y as f64)),
        _ => (a, b),
    }
}

fn binary<'b, 'v>(
    args: Vec<CowVal<'b, 'v>>,
    f: fn(CelValue, CelValue) -> cel::ResolveResult,
) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let n = args.len();
    let mut it = args.into_iter();
    let (Some(a), Some(b), None) = (it.next(), it.next(), it.next()) else {
        return Err(ExecutionError::invalid_argument_count(2, n));
    };
    let a = CelValue::try_from(a.as_ref())?;
    let b = CelValue::try_from(b.as_ref())?;
    let (a, b) = promote(a, b);
    let boxed: Box<dyn Val> = f(a, b)?.try_into()?;
    Ok(CowVal::Owned(boxed))
}

fn rs_add<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    binary(args, |a, b| a + b)
}
fn rs_sub<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    binary(args, |a, b| a - b)
}
fn rs_mul<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    binary(args, |a, b| a * b)
}
fn rs_div<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    binary(args, |a, b| a / b)
}

fn rewrite_arith(e: &mut IdedExpr) {
    match &mut e.expr {
        Ast::Call(call) => {
            if call.target.is_none()
                && call.args.len() == 2
                && let Some(name) = arith_name(&call.func_name)
            {
                call.func_name = name.to_string();
            }
            if let Some(t) = &mut call.target {
                rewrite_arith(t);
            }
            call.args.iter_mut().for_each(rewrite_arith);
        }
        Ast::Comprehension(c) => {
            rewrite_arith(&mut c.iter_range);
            rewrite_arith(&mut c.accu_init);
            rewrite_arith(&mut c.loop_cond);
            rewrite_arith(&mut c.loop_step);
            rewrite_arith(&mut c.result);
        }
        Ast::List(l) => l.elements.iter_mut().for_each(rewrite_arith),
        Ast::Map(m) => m.entries.iter_mut().for_each(rewrite_entry),
        Ast::Struct(s) => s.entries.iter_mut().for_each(rewrite_entry),
        Ast::Select(s) => rewrite_arith(&mut s.operand),
        Ast::Ident(_) | Ast::Literal(_) | Ast::Unspecified => {}
    }
}

fn rewrite_entry(entry: &mut cel::common::ast::IdedEntryExpr) {
    match &mut entry.expr {
        EntryExpr::StructField(f) => rewrite_arith(&mut f.value),
        EntryExpr::MapEntry(me) => {
            rewrite_arith(&mut me.key);
            rewrite_arith(&mut me.value);
        }
    }
}

/// A compiled CEL expression with the member paths it reads.
#[derive(Debug)]
pub struct Expr {
    source: Arc<str>,
    ast: IdedExpr,
    paths: Vec<Vec<String>>,
    /// The direct form, when the expression is inside the subset [`crate::fast`] evaluates.
    direct: Option<Direct>,
}

impl Expr {
    /// Parses `source`, rejecting syntax errors (with their position) and unknown variables.
    pub fn compile(source: &str) -> Result<Expr, Vec<CompileError>> {
        check_limits(source).map_err(|e| vec![e])?;
        with_stack(|| Expr::compile_within_limits(source))
    }

    fn compile_within_limits(source: &str) -> Result<Expr, Vec<CompileError>> {
        let program = env().compile(source).map_err(|errs| {
            errs.errors
                .iter()
                .map(|e| CompileError::Syntax {
                    line: u32::try_from(e.pos.0.max(1)).unwrap_or(1),
                    // The parser's positions are 1-based already.
                    column: u32::try_from(e.pos.1.max(1)).unwrap_or(1),
                    message: e.msg.clone(),
                })
                .collect::<Vec<_>>()
        })?;
        let mut paths = Vec::new();
        let mut unknown = Vec::new();
        collect_paths(
            program.expression(),
            &mut Vec::new(),
            &mut paths,
            &mut unknown,
        );
        if !unknown.is_empty() {
            unknown.sort();
            unknown.dedup();
            return Err(unknown
                .into_iter()
                .map(|name| CompileError::UnknownVariable { name })
                .collect());
        }
        // Calls of functions CEL does not have fail at compile time, not at their first call.
        // Operators (`_+_`, `!_`, `@in`) and macro internals are not functions by name.
        let mut undeclared: Vec<String> = program
            .expression()
            .references()
            .functions()
            .into_iter()
            .filter(|f| f.starts_with(|c: char| c.is_ascii_alphabetic()))
            .filter(|f| !env().declares_function(f) && !MACROS.contains(f))
            .map(str::to_string)
            .collect();
        if !undeclared.is_empty() {
            undeclared.sort();
            undeclared.dedup();
            return Err(undeclared
                .into_iter()
                .map(|name| CompileError::UnknownFunction { name })
                .collect());
        }
        let mut patterns = Vec::new();
        literal_patterns(program.expression(), &mut patterns);
        let mut bad = Vec::new();
        for p in patterns {
            let n = p.chars().count();
            if n > MAX_PATTERN_CHARS {
                bad.push(CompileError::TooLarge {
                    message: format!(
                        "a `matches` pattern is at most {MAX_PATTERN_CHARS} characters (this one has {n})"
                    ),
                });
            } else if let Err(e) = cel::budget::regex(&p) {
                bad.push(CompileError::InvalidPattern {
                    message: e.to_string(),
                });
            }
        }
        if !bad.is_empty() {
            return Err(bad);
        }
        let mut ast = program.expression().clone();
        rewrite_arith(&mut ast);
        Ok(Expr {
            source: Arc::from(source),
            direct: Direct::compile(&ast),
            ast,
            paths,
        })
    }

    /// The CEL text, shared.
    pub fn source_arc(&self) -> Arc<str> {
        Arc::clone(&self.source)
    }

    /// Member paths read, rooted at one of [`ROOTS`] (e.g. `["input", "user", "country"]`).
    pub fn paths(&self) -> &[Vec<String>] {
        &self.paths
    }

    /// Whether the value may carry client data: the expression reads `client`, or a key of
    /// `ctx` that holds client data (`client_keys`), or the whole of `ctx`.
    pub fn reads_client(&self, client_keys: &[String]) -> bool {
        self.paths
            .iter()
            .any(|p| match p.first().map(String::as_str) {
                Some("client") => true,
                Some("ctx") => {
                    p.get(1).is_none_or(|k| client_keys.contains(k)) && !client_keys.is_empty()
                }
                _ => false,
            })
    }

    /// Whether the expression has a direct form (it is inside the subset of [`crate::fast`]).
    pub fn is_direct(&self) -> bool {
        self.direct.is_some()
    }

    /// Evaluates directly over `roots`: `None` when the expression has no direct form or `cel`
    /// must give the answer for this input (see [`crate::fast`]).
    pub fn eval_direct<'a>(&'a self, roots: &Roots<'a>) -> Option<Fv<'a>> {
        self.direct.as_ref()?.eval(roots)
    }

    /// Evaluates against `ctx`, within the evaluation budget ([`EVAL_MAX_ITERATIONS`],
    /// [`EVAL_MAX_TIME`]): past it, the evaluation is an error.
    pub fn eval(&self, ctx: &cel::Context<'_, '_>) -> Result<CelValue, String> {
        with_stack(|| {
            cel::budget::run(EVAL_MAX_ITERATIONS, EVAL_MAX_TIME, || {
                CelValue::resolve(&self.ast, ctx).map_err(|e| self.error_text(e.to_string()))
            })
            .map_err(|spent| spent.to_string())
            .and_then(|r| r)
        })
    }

    /// An evaluation error as it may be shown. `cel` names the values it failed on
    /// (`Unsupported binary operator 'add': String("gold"), Int(1)`); when the expression reads
    /// client data, only the kind of error is kept, so client data never reaches an error, a
    /// trace or a log (SPEC section 1, Trace).
    fn error_text(&self, message: String) -> String {
        if !self
            .paths
            .iter()
            .any(|p| p.first().is_some_and(|r| r == "client"))
        {
            return message;
        }
        hide_values(&message)
    }
}

/// An evaluation error of an expression that read client data: only the kind of error is kept,
/// not the values `cel` names (SPEC section 1, Trace).
pub fn hide_values(message: &str) -> String {
    const HIDDEN: &str = "(the values are not shown: the expression reads client data)";
    if message.contains(HIDDEN) {
        return message.to_string();
    }
    format!("{} {HIDDEN}", error_kind(message))
}

/// The words that open an error message, up to the first that is not a plain word (a value such
/// as `Int(5)`, `'gold'`, a key after `:`): what kind of error it was, without what it was about.
fn error_kind(message: &str) -> String {
    let mut words: Vec<&str> = Vec::new();
    for w in message.split_whitespace() {
        let plain = w.trim_end_matches(':');
        if plain.is_empty() || !plain.chars().all(char::is_alphabetic) {
            break;
        }
        words.push(plain);
        if w.ends_with(':') {
            break;
        }
    }
    // "Division by zero of", "Cannot use value": drop the words that lead into the value.
    while words.last().is_some_and(|w| {
        matches!(
            *w,
            "of" | "to" | "on" | "as" | "value" | "type" | "a" | "the"
        )
    }) {
        words.pop();
    }
    if words.is_empty() {
        "evaluation error".into()
    } else {
        words.join(" ")
    }
}

/// Comprehension iterations one evaluation may run (SPEC section 1, Limits).
pub const EVAL_MAX_ITERATIONS: u64 = 100_000;
/// Wall time one evaluation may take (SPEC section 1, Limits).
pub const EVAL_MAX_TIME: std::time::Duration = std::time::Duration::from_millis(10);
/// The longest `matches` pattern, in characters (SPEC section 1, Limits).
pub const MAX_PATTERN_CHARS: usize = 1000;

/// Collects the literal patterns of `matches` calls (`s.matches('re')`, `matches(s, 're')`), so
/// they are checked and compiled when the flow is, not at their first call.
fn literal_patterns(e: &IdedExpr, out: &mut Vec<String>) {
    match &e.expr {
        Ast::Call(call) => {
            if call.func_name == "matches"
                && let Some(IdedExpr {
                    expr: Ast::Literal(cel::common::ast::LiteralValue::String(p)),
                    ..
                }) = call.args.last()
            {
                out.push(p.inner().to_string());
            }
            if let Some(t) = &call.target {
                literal_patterns(t, out);
            }
            call.args.iter().for_each(|a| literal_patterns(a, out));
        }
        Ast::Comprehension(c) => {
            for x in [
                &c.iter_range,
                &c.accu_init,
                &c.loop_cond,
                &c.loop_step,
                &c.result,
            ] {
                literal_patterns(x, out);
            }
        }
        Ast::List(l) => l.elements.iter().for_each(|x| literal_patterns(x, out)),
        Ast::Map(m) => m
            .entries
            .iter()
            .for_each(|en| entry_patterns(&en.expr, out)),
        Ast::Struct(st) => st
            .entries
            .iter()
            .for_each(|en| entry_patterns(&en.expr, out)),
        Ast::Select(sel) => literal_patterns(&sel.operand, out),
        Ast::Ident(_) | Ast::Literal(_) | Ast::Unspecified => {}
    }
}

fn entry_patterns(e: &EntryExpr, out: &mut Vec<String>) {
    match e {
        EntryExpr::StructField(f) => literal_patterns(&f.value, out),
        EntryExpr::MapEntry(me) => {
            literal_patterns(&me.key, out);
            literal_patterns(&me.value, out);
        }
    }
}

/// Walks the AST, recording the select chain rooted at each free variable.
fn collect_paths(
    e: &IdedExpr,
    bound: &mut Vec<String>,
    paths: &mut Vec<Vec<String>>,
    unknown: &mut Vec<String>,
) {
    if let Some(path) = select_chain(e) {
        let root = &path[0];
        let builtin = BUILTIN_NAMES.contains(&root.as_str());
        if !builtin && !bound.iter().any(|b| b == root) && !root.starts_with('@') {
            if ROOTS.contains(&root.as_str()) {
                paths.push(path);
            } else {
                unknown.push(root.clone());
            }
        }
        return;
    }
    match &e.expr {
        Ast::Call(call) => {
            if let Some(t) = &call.target {
                collect_paths(t, bound, paths, unknown);
            }
            for a in &call.args {
                collect_paths(a, bound, paths, unknown);
            }
        }
        Ast::Comprehension(c) => {
            collect_paths(&c.iter_range, bound, paths, unknown);
            let depth = bound.len();
            bound.push(c.iter_var.clone());
            if let Some(v2) = &c.iter_var2 {
                bound.push(v2.clone());
            }
            bound.push(c.accu_var.clone());
            collect_paths(&c.accu_init, bound, paths, unknown);
            collect_paths(&c.loop_cond, bound, paths, unknown);
            collect_paths(&c.loop_step, bound, paths, unknown);
            collect_paths(&c.result, bound, paths, unknown);
            bound.truncate(depth);
        }
        Ast::List(l) => l
            .elements
            .iter()
            .for_each(|x| collect_paths(x, bound, paths, unknown)),
        Ast::Map(m) => {
            for entry in &m.entries {
                match &entry.expr {
                    EntryExpr::StructField(f) => collect_paths(&f.value, bound, paths, unknown),
                    EntryExpr::MapEntry(me) => {
                        collect_paths(&me.key, bound, paths, unknown);
                        collect_paths(&me.value, bound, paths, unknown);
                    }
                }
            }
        }
        Ast::Struct(s) => {
            for entry in &s.entries {
                match &entry.expr {
                    EntryExpr::StructField(f) => collect_paths(&f.value, bound, paths, unknown),
                    EntryExpr::MapEntry(me) => {
                        collect_paths(&me.key, bound, paths, unknown);
                        collect_paths(&me.value, bound, paths, unknown);
                    }
                }
            }
        }
        // A `has()` test or a select on something that is not a plain chain: walk its operand.
        Ast::Select(s) => collect_paths(&s.operand, bound, paths, unknown),
        Ast::Ident(_) | Ast::Literal(_) | Ast::Unspecified => {}
    }
}

/// `a.b.c` -> `["a", "b", "c"]`; `has(a.b.c)` -> `["a", "b", "c"]` too (the test needs `a.b` as
/// a map holding `c` when present). Anything else -> `None`.
fn select_chain(e: &IdedExpr) -> Option<Vec<String>> {
    match &e.expr {
        Ast::Ident(name) => Some(vec![name.clone()]),
        Ast::Select(s) => {
            let mut p = select_chain(&s.operand)?;
            p.push(s.field.clone());
            Some(p)
        }
        _ => None,
    }
}

/// The set of member paths a flow reads below one root, as a trie. A leaf means "the whole value
/// from here down".
#[derive(Debug, Default, Clone)]
pub struct PathTrie {
    whole: bool,
    children: BTreeMap<String, PathTrie>,
}

impl PathTrie {
    /// Adds a path (without its root).
    pub fn insert(&mut self, path: &[String]) {
        if self.whole {
            return;
        }
        match path.split_first() {
            None => {
                self.whole = true;
                self.children.clear();
            }
            Some((head, rest)) => self.children.entry(head.clone()).or_default().insert(rest),
        }
    }

    /// Whether nothing below this root is read.
    pub fn is_empty(&self) -> bool {
        !self.whole && self.children.is_empty()
    }
}

/// Converts the parts of `v` that `trie` names into a CEL value.
pub fn json_to_cel_pruned(v: &Value, trie: &PathTrie) -> CelValue {
    match v {
        Value::Object(obj) if !trie.whole => {
            let mut map = HashMap::with_capacity(trie.children.len());
            for (k, sub) in &trie.children {
                if let Some(child) = obj.get(k) {
                    map.insert(
                        Key::String(Arc::new(k.clone())),
                        json_to_cel_pruned(child, sub),
                    );
                }
            }
            CelValue::Map(Map { map: Arc::new(map) })
        }
        _ => json_to_cel(v),
    }
}

/// Converts the parts of `v` that `trie` names straight into CEL runtime values that borrow
/// `v`'s strings: no string is copied, and no intermediate [`CelValue`] is built.
pub fn json_to_val<'v>(v: &'v Value, trie: Option<&'v PathTrie>) -> Box<dyn Val + 'v> {
    use cel::common::types::{
        CelBool, CelDouble, CelInt, CelList, CelMap, CelMapKey, CelNull, CelString, CelUInt,
    };
    match v {
        Value::Null => Box::new(CelNull),
        Value::Bool(b) => Box::new(CelBool::from(*b)),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Box::new(CelInt::from(i))
            } else if let Some(u) = n.as_u64() {
                Box::new(CelUInt::from(u))
            } else {
                Box::new(CelDouble::from(n.as_f64().unwrap_or(f64::NAN)))
            }
        }
        Value::String(s) => Box::new(CelString::from(s.as_str())),
        Value::Array(a) => Box::new(CelList::from(
            a.iter().map(|x| json_to_val(x, None)).collect::<Vec<_>>(),
        )),
        Value::Object(o) => match trie {
            // Only selected into (`a.b`, `has(a.b)`): resolved lazily, nothing built up front.
            Some(t) if !t.whole => Box::new(LazyObject { map: o, trie: t }),
            _ => {
                let map: HashMap<CelMapKey<'v>, Box<dyn Val + 'v>> = o
                    .iter()
                    .map(|(k, child)| (CelMapKey::from(k.as_str()), json_to_val(child, None)))
                    .collect();
                Box::new(CelMap::from(map))
            }
        },
    }
}

/// A JSON object that rules only select into (every use of it is `x.field` or `has(x.field)`, as
/// the flow's [`PathTrie`] proves): its fields are converted when read, so a run builds no map.
/// Anything that uses the object whole (equality, `size`, iteration) makes its trie node whole,
/// and such an object is converted eagerly instead.
#[derive(Debug)]
struct LazyObject<'v> {
    map: &'v serde_json::Map<String, Value>,
    trie: &'v PathTrie,
}

impl<'a> Val for LazyObject<'a> {
    fn get_type(&self) -> &cel::common::types::Type {
        &DYN_TYPE
    }

    fn cel_type() -> &'static cel::common::types::Type {
        &DYN_TYPE
    }

    fn as_indexer<'b, 'v>(&'b self) -> Option<&'b (dyn cel::common::traits::Indexer + 'v)>
    where
        Self: 'v,
    {
        Some(self)
    }

    fn clone_as_boxed<'v>(&self) -> Box<dyn Val + 'v>
    where
        Self: 'v,
    {
        Box::new(LazyObject {
            map: self.map,
            trie: self.trie,
        })
    }
}

impl<'a> LazyObject<'a> {
    fn field(&self, idx: &dyn Val) -> Result<Box<dyn Val + 'a>, ExecutionError> {
        let key: &str = <&str>::try_from(idx).map_err(|_| ExecutionError::UnexpectedType {
            got: idx.get_type().name().to_string(),
            want: "string".to_string(),
        })?;
        let child = self
            .map
            .get(key)
            .ok_or_else(|| ExecutionError::no_such_key(key))?;
        Ok(json_to_val(child, self.trie.children.get(key)))
    }
}

impl<'a> cel::common::traits::Indexer for LazyObject<'a> {
    fn get<'b, 'v>(&'b self, idx: &dyn Val) -> Result<CowVal<'b, 'v>, ExecutionError>
    where
        Self: 'v,
    {
        self.field(idx).map(CowVal::Owned)
    }

    fn steal<'v>(self: Box<Self>, idx: &dyn Val) -> Result<Box<dyn Val + 'v>, ExecutionError>
    where
        Self: 'v,
    {
        self.field(idx)
    }
}

/// Converts JSON to CEL: integers that fit become `int`, larger ones `uint`, others `double`.
pub fn json_to_cel(v: &Value) -> CelValue {
    match v {
        Value::Null => CelValue::Null,
        Value::Bool(b) => CelValue::Bool(*b),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                CelValue::Int(i)
            } else if let Some(u) = n.as_u64() {
                CelValue::UInt(u)
            } else {
                CelValue::Float(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Value::String(s) => CelValue::String(Arc::new(s.clone())),
        Value::Array(a) => CelValue::List(Arc::new(a.iter().map(json_to_cel).collect())),
        Value::Object(o) => {
            let map: HashMap<Key, CelValue> = o
                .iter()
                .map(|(k, v)| (Key::String(Arc::new(k.clone())), json_to_cel(v)))
                .collect();
            CelValue::Map(Map { map: Arc::new(map) })
        }
    }
}

/// Converts a CEL result back to JSON (`set` values, outcomes). Timestamps become RFC 3339
/// strings, durations seconds; bytes and functions cannot leave CEL.
pub fn cel_to_json(v: &CelValue) -> Result<Value, String> {
    Ok(match v {
        CelValue::Null => Value::Null,
        CelValue::Bool(b) => Value::Bool(*b),
        CelValue::Int(i) => Value::from(*i),
        CelValue::UInt(u) => Value::from(*u),
        CelValue::Float(f) => serde_json::Number::from_f64(*f)
            .map(Value::Number)
            .ok_or_else(|| format!("{f} cannot be written as JSON"))?,
        CelValue::String(s) => Value::String(s.as_str().to_string()),
        CelValue::List(l) => Value::Array(l.iter().map(cel_to_json).collect::<Result<_, _>>()?),
        CelValue::Map(m) => {
            let mut out = serde_json::Map::new();
            let mut entries: Vec<_> = m.map.iter().collect();
            entries.sort_by_key(|(k, _)| key_string(k));
            for (k, v) in entries {
                out.insert(key_string(k), cel_to_json(v)?);
            }
            Value::Object(out)
        }
        CelValue::Timestamp(t) => Value::String(t.to_rfc3339()),
        CelValue::Duration(d) => {
            let secs = d.num_milliseconds() as f64 / 1000.0;
            serde_json::Number::from_f64(secs)
                .map(Value::Number)
                .unwrap_or(Value::Null)
        }
        other => return Err(format!("a {} value cannot be stored", other.type_of())),
    })
}

fn key_string(k: &Key) -> String {
    match k {
        Key::String(s) => s.as_str().to_string(),
        Key::Int(i) => i.to_string(),
        Key::Uint(u) => u.to_string(),
        Key::Bool(b) => b.to_string(),
    }
}

/// A short description of a CEL value's type, for error messages.
pub fn type_name(v: &CelValue) -> String {
    v.type_of().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn hidden_errors_keep_only_their_kind() {
        for (msg, kind) in [
            (
                "Unsupported binary operator 'add': String(\"gold\"), Int(1)",
                "Unsupported binary operator",
            ),
            ("Division by zero of Int(50000)", "Division by zero"),
            ("Remainder by zero of Int(7)", "Remainder by zero"),
            ("Int(1) can not be compared to Int(2)", "evaluation error"),
            ("Cannot use value Int(3) to index List([])", "Cannot use"),
            ("Unable to use value 'x' as a key", "Unable to use"),
            ("Method 'size' not supported on type 'Int(5)'", "Method"),
            ("No such key: SEKRIT", "No such key"),
        ] {
            let shown = super::hide_values(msg);
            assert!(shown.starts_with(&format!("{kind} (")), "{msg} -> {shown}");
            for v in ["gold", "50000", "SEKRIT", "Int(", "'x'"] {
                assert!(!shown.contains(v), "{msg} -> {shown}");
            }
        }
    }

    #[test]
    fn paths_are_collected_and_comprehension_vars_are_bound() {
        let e = Expr::compile(
            "input.user.tags.exists(t, t == 'vip') && has(ctx.points) && size(client) > steps.a.size()",
        )
        .expect("compiles");
        let mut got: Vec<String> = e.paths().iter().map(|p| p.join(".")).collect();
        got.sort();
        assert_eq!(
            got,
            vec!["client", "ctx.points", "input.user.tags", "steps.a"]
        );
    }

    #[test]
    fn unknown_roots_are_rejected() {
        let err = Expr::compile("inputs.x > 1 && foo").expect_err("unknown");
        assert_eq!(
            err,
            vec![
                CompileError::UnknownVariable { name: "foo".into() },
                CompileError::UnknownVariable {
                    name: "inputs".into()
                }
            ]
        );
    }

    #[test]
    fn cel_builtin_names_are_not_unknown_variables() {
        for src in [
            "type(input.a) == int",
            "optional.of(input.a).hasValue()",
            "type(input.s) == string && type(input.m) == map",
        ] {
            assert!(Expr::compile(src).is_ok(), "{src}");
        }
        let ctx = cel::Context::with_env(Arc::clone(env()));
        let e = Expr::compile("type(1) == int").expect("compiles");
        assert_eq!(e.eval(&ctx), Ok(CelValue::Bool(true)));
    }

    #[test]
    fn syntax_errors_carry_a_position() {
        let err = Expr::compile("a &&").expect_err("syntax");
        assert!(
            matches!(err[0], CompileError::Syntax { line: 1, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn arithmetic_promotes_int_and_double() {
        let ctx = cel::Context::with_env(Arc::clone(env()));
        let cases = [
            ("2000000 * 0.05", CelValue::Float(100000.0)),
            ("1 + 1", CelValue::Int(2)),
            ("7 / 2", CelValue::Int(3)),
            ("7.0 / 2", CelValue::Float(3.5)),
            ("10 - 0.5", CelValue::Float(9.5)),
            ("'a' + 'b'", CelValue::String(Arc::new("ab".into()))),
            ("[1] + [2.0] == [1, 2]", CelValue::Bool(true)),
        ];
        for (src, want) in cases {
            let e = Expr::compile(src).expect("compiles");
            assert_eq!(e.eval(&ctx), Ok(want), "{src}");
        }
        let e = Expr::compile("'a' + 1").expect("compiles");
        assert!(e.eval(&ctx).is_err());
    }

    #[test]
    fn lazy_objects_answer_selects_and_has_like_maps() {
        let input = json!({"user": {"country": "HK", "tags": ["a"], "n": 1, "deep": {"x": 2}}});
        let cases = [
            ("input.user.country == 'HK'", CelValue::Bool(true)),
            ("has(input.user.country)", CelValue::Bool(true)),
            ("has(input.user.missing)", CelValue::Bool(false)),
            (
                "has(input.user.deep.x) && input.user.deep.x == 2",
                CelValue::Bool(true),
            ),
            ("'a' in input.user.tags", CelValue::Bool(true)),
            ("input.user.n + 0.5", CelValue::Float(1.5)),
            ("size(input.user) == 4", CelValue::Bool(true)),
            (
                "input.user == {'country': 'HK', 'tags': ['a'], 'n': 1, 'deep': {'x': 2}}",
                CelValue::Bool(true),
            ),
        ];
        for (src, want) in cases {
            let e = Expr::compile(src).expect("compiles");
            let mut trie = PathTrie::default();
            for p in e.paths() {
                trie.insert(&p[1..]);
            }
            let mut ctx = cel::Context::with_env(Arc::clone(env()));
            ctx.add_variable_as_val("input", json_to_val(&input, Some(&trie)));
            assert_eq!(e.eval(&ctx), Ok(want), "{src}");
        }
        let e = Expr::compile("input.user.missing == 1").expect("compiles");
        let mut trie = PathTrie::default();
        trie.insert(&["user".to_string(), "missing".to_string()]);
        let mut ctx = cel::Context::with_env(Arc::clone(env()));
        ctx.add_variable_as_val("input", json_to_val(&input, Some(&trie)));
        assert!(e.eval(&ctx).is_err_and(|m| m.contains("missing")));
    }

    #[test]
    fn pruned_conversion_keeps_only_read_paths() {
        let mut trie = PathTrie::default();
        trie.insert(&["user".to_string(), "country".to_string()]);
        trie.insert(&["order".to_string()]);
        let v = json!({"user": {"country": "HK", "secret": 1}, "order": {"amount": 5}, "x": 1});
        let c = json_to_cel_pruned(&v, &trie);
        let back = cel_to_json(&c).expect("json");
        assert_eq!(
            back,
            json!({"user": {"country": "HK"}, "order": {"amount": 5}})
        );
    }
}

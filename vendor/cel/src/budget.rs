//! rulestream patch: an evaluation budget and a compiled-regex cache.
//!
//! Upstream `cel` 0.15 has no hook to bound an evaluation and compiles a `matches` pattern on
//! every call. [`run`] sets a budget for the current thread (comprehension iterations and wall
//! time); every comprehension iteration spends one unit through [`tick`], which fails once the
//! budget is spent, and every `+` and function call checks the time through [`check_time`]. `matches` patterns are compiled once per process through [`regex`].

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::ExecutionError;

#[derive(Clone, Copy)]
struct Budget {
    iterations_left: u64,
    deadline: Instant,
    max_iterations: u64,
    max_time: Duration,
    exhausted: bool,
    /// Calls checked by [`check_time`] so far (it reads the clock at every eighth).
    calls: u32,
}

thread_local! {
    static BUDGET: Cell<Option<Budget>> = const { Cell::new(None) };
}

/// Why an evaluation ran out of budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exhausted {
    /// More comprehension iterations than allowed.
    Iterations(u64),
    /// More wall time than allowed.
    Time(Duration),
}

impl std::fmt::Display for Exhausted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exhausted::Iterations(n) => write!(
                f,
                "evaluation budget exceeded: more than {n} comprehension iterations"
            ),
            Exhausted::Time(d) => write!(
                f,
                "evaluation budget exceeded: more than {} ms of evaluation time",
                d.as_millis()
            ),
        }
    }
}

/// Runs `f` with a budget of `max_iterations` comprehension iterations and `max_time` of wall
/// time on this thread. Returns `f`'s result, or why the budget ran out (even when `f` swallowed
/// the error, as `exists` does with errors of other elements). Nested calls keep the outer budget.
pub fn run<R>(max_iterations: u64, max_time: Duration, f: impl FnOnce() -> R) -> Result<R, Exhausted> {
    let outer = BUDGET.with(|b| b.get());
    if outer.is_none() {
        BUDGET.with(|b| {
            b.set(Some(Budget {
                iterations_left: max_iterations,
                deadline: Instant::now() + max_time,
                max_iterations,
                max_time,
                exhausted: false,
                calls: 0,
            }))
        });
    }
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            if self.0 {
                BUDGET.with(|b| b.set(None));
            }
        }
    }
    let reset = Reset(outer.is_none());
    let out = f();
    let state = BUDGET.with(|b| b.get());
    drop(reset);
    match state {
        Some(b) if b.exhausted => Err(if b.iterations_left == 0 {
            Exhausted::Iterations(b.max_iterations)
        } else {
            Exhausted::Time(b.max_time)
        }),
        _ => Ok(out),
    }
}

/// Spends one comprehension iteration; fails once the budget is spent. The clock is read every
/// 64 iterations. Without a budget set (outside [`run`]), always succeeds.
#[inline]
pub(crate) fn tick() -> Result<(), ExecutionError> {
    BUDGET.with(|cell| {
        let Some(mut b) = cell.get() else {
            return Ok(());
        };
        if b.exhausted {
            return Err(spent(&b));
        }
        if b.iterations_left == 0 {
            b.exhausted = true;
        } else {
            b.iterations_left -= 1;
            if b.iterations_left % 64 == 0 && Instant::now() >= b.deadline {
                b.exhausted = true;
            }
        }
        cell.set(Some(b));
        if b.exhausted { Err(spent(&b)) } else { Ok(()) }
    })
}

/// Checks the wall-time budget; called at every `+` and function call, so an evaluation
/// without comprehensions (e.g. a long chain of concatenations of large values) is bounded by
/// the same time. The clock is read at every eighth call. Without a budget set (outside
/// [`run`]), always succeeds.
#[inline]
pub(crate) fn check_time() -> Result<(), ExecutionError> {
    BUDGET.with(|cell| {
        let Some(mut b) = cell.get() else {
            return Ok(());
        };
        if !b.exhausted {
            b.calls = b.calls.wrapping_add(1);
            if b.calls % 8 == 0 && Instant::now() >= b.deadline {
                b.exhausted = true;
            }
            cell.set(Some(b));
        }
        if b.exhausted { Err(spent(&b)) } else { Ok(()) }
    })
}

fn spent(b: &Budget) -> ExecutionError {
    let why = if b.iterations_left == 0 {
        Exhausted::Iterations(b.max_iterations)
    } else {
        Exhausted::Time(b.max_time)
    };
    ExecutionError::FunctionError {
        function: "budget".to_string(),
        message: why.to_string(),
    }
}

/// The most patterns kept compiled; past it the cache is cleared (patterns come from flows, so
/// a process sees few of them).
const MAX_CACHED: usize = 4096;
/// Compiled size limit of one pattern.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// `pattern` compiled, from the process-wide cache.
#[cfg(feature = "regex")]
pub fn regex(pattern: &str) -> Result<Arc<regex::Regex>, regex::Error> {
    static CACHE: OnceLock<Mutex<HashMap<String, Arc<regex::Regex>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    if let Some(re) = cache.lock().ok().and_then(|c| c.get(pattern).cloned()) {
        return Ok(re);
    }
    let re = Arc::new(
        regex::RegexBuilder::new(pattern)
            .size_limit(REGEX_SIZE_LIMIT)
            .build()?,
    );
    if let Ok(mut c) = cache.lock() {
        if c.len() >= MAX_CACHED {
            c.clear();
        }
        c.insert(pattern.to_owned(), re.clone());
    }
    Ok(re)
}

//! Mutators shared by the fuzz targets (`no_panic.rs`, the row target in `chain.rs`).
#![allow(dead_code)]

use serde_json::{Value, json};

/// Deterministic xorshift, so a failure reproduces.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

const TOKENS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "\"",
    "\\",
    "null",
    "true",
    "false",
    "0",
    "-1",
    "1e999",
    "\"id\"",
    "\"when\"",
    "\"on\"",
    "\"goto\"",
    "\"complete\"",
    "\"rules\"",
    "&&",
    "||",
    "(",
    ")",
    "?",
    "'",
    "input.",
    "ctx.",
    "steps.",
    "💥",
    "\u{0}",
    " ",
];

pub fn mutate_text(rng: &mut Rng, text: &str) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    for _ in 0..=rng.below(4) {
        let at = rng.below(chars.len() + 1).min(chars.len());
        match rng.below(4) {
            0 if !chars.is_empty() => {
                let end = (at + rng.below(8)).min(chars.len());
                chars.drain(at..end);
            }
            1 => {
                let tok: Vec<char> = rng.pick(TOKENS).chars().collect();
                chars.splice(at..at, tok);
            }
            2 if at < chars.len() => {
                chars[at] = *rng.pick(&['"', '{', '}', ',', 'x', '1', '.', ']']);
            }
            _ => {
                let end = (at + rng.below(16)).min(chars.len());
                let dup: Vec<char> = chars[at..end].to_vec();
                chars.splice(at..at, dup);
            }
        }
    }
    chars.into_iter().collect()
}

pub fn random_value(rng: &mut Rng) -> Value {
    match rng.below(8) {
        0 => Value::Null,
        1 => json!(rng.below(2) == 0),
        2 => json!(rng.below(1000) as i64 - 500),
        3 => json!(-1.5e300),
        4 => json!(*rng.pick(&["", "a", "next", "input.x", "'", "a &&", "DENIED", "é"])),
        5 => json!([]),
        6 => json!({}),
        _ => json!({"next": true}),
    }
}

pub fn mutate_value(rng: &mut Rng, v: &mut Value) {
    match v {
        Value::Object(map) if !map.is_empty() => {
            let keys: Vec<String> = map.keys().cloned().collect();
            let k = rng.pick(&keys).clone();
            match rng.below(5) {
                0 => {
                    map.remove(&k);
                }
                1 => {
                    map.insert(k, random_value(rng));
                }
                2 => {
                    let val = map.remove(&k).unwrap_or(Value::Null);
                    map.insert(format!("{k}x"), val);
                }
                _ => {
                    if let Some(child) = map.get_mut(&k) {
                        mutate_value(rng, child);
                    }
                }
            }
        }
        Value::Array(items) if !items.is_empty() => {
            let i = rng.below(items.len());
            match rng.below(4) {
                0 => {
                    items.remove(i);
                }
                1 => {
                    let dup = items[i].clone();
                    items.push(dup);
                }
                _ => mutate_value(rng, &mut items[i]),
            }
        }
        other => *other = random_value(rng),
    }
}

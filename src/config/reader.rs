//! Reading a parsed YAML tree the way the official server's viper + mapstructure do, while
//! remembering which keys were read so that every other key can be reported.
//!
//! Official behaviours kept here, because configs in the wild depend on them:
//! - keys match case-insensitively (viper lowercases every key);
//! - a `null` value (`key:` with nothing after it) is the same as an absent key;
//! - scalars convert "weakly": `password: 12345678` is the string "12345678",
//!   `disableUDP: "true"` is a bool, `maxIncomingStreams: "2048"` is a number.

use std::time::Duration;

use serde_norway::Value;

use super::error::{fault, Fault, Warning};
use super::units;

/// One mapping of the config, with the dotted path that leads to it.
pub(crate) struct Section<'a> {
    path: String,
    entries: Vec<Entry<'a>>,
}

struct Entry<'a> {
    /// The key as the user spelt it.
    key: String,
    value: &'a Value,
    /// Set once the key has been read or deliberately skipped.
    used: bool,
}

impl<'a> Section<'a> {
    /// The mapping at `path` (empty for the top level); `null` reads as an empty mapping.
    pub fn new(path: String, value: &'a Value) -> Result<Self, Fault> {
        let mut entries: Vec<Entry<'a>> = Vec::new();
        match value {
            Value::Null => {}
            Value::Mapping(map) => {
                for (k, v) in map {
                    let Some(key) = scalar_text(k) else {
                        return Err(fault(
                            path.clone(),
                            format!("keys must be plain text, not {}", describe(k)),
                        ));
                    };
                    if let Some(prev) = entries.iter().find(|e| e.key.eq_ignore_ascii_case(&key)) {
                        return Err(fault(
                            join(&path, &key),
                            format!(
                                "given twice (as {:?} and {key:?}; keys are case-insensitive)",
                                prev.key
                            ),
                        ));
                    }
                    entries.push(Entry {
                        key,
                        value: v,
                        used: false,
                    });
                }
            }
            other => {
                let what = if path.is_empty() {
                    "the file must hold a mapping of keys".to_owned()
                } else {
                    format!("expected a mapping of keys, got {}", describe(other))
                };
                return Err(fault(path, what));
            }
        }
        Ok(Self { path, entries })
    }

    /// The dotted path of this section.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The dotted path of `name` in this section.
    pub fn key(&self, name: &str) -> String {
        join(&self.path, name)
    }

    /// Take `name`'s value, marking it as read. Absent and `null` both give `None`.
    pub fn take(&mut self, name: &str) -> Option<&'a Value> {
        let entry = self
            .entries
            .iter_mut()
            .find(|e| e.key.eq_ignore_ascii_case(name))?;
        entry.used = true;
        match entry.value {
            Value::Null => None,
            v => Some(v),
        }
    }

    /// Whether `name` is present with a non-null value. Does not mark it as read.
    pub fn has(&self, name: &str) -> bool {
        self.entries
            .iter()
            .any(|e| e.key.eq_ignore_ascii_case(name) && !e.value.is_null())
    }

    /// Mark keys as known without reading them: options of an unselected type, or official
    /// options quelay has no use for.
    pub fn skip(&mut self, names: &[&str]) {
        for name in names {
            self.take(name);
        }
    }

    /// The sub-mapping `name`; empty when absent.
    pub fn section(&mut self, name: &str) -> Result<Section<'a>, Fault> {
        let key = self.key(name);
        match self.take(name) {
            Some(v) => Section::new(key, v),
            None => Ok(Section {
                path: key,
                entries: Vec::new(),
            }),
        }
    }

    /// A sub-mapping whose keys are checked against `known` and otherwise ignored.
    pub fn skip_section(
        &mut self,
        name: &str,
        known: &[&str],
        w: &mut Vec<Warning>,
    ) -> Result<(), Fault> {
        let mut s = self.section(name)?;
        s.skip(known);
        s.finish(w);
        Ok(())
    }

    /// A string; numbers and booleans convert as in the official server.
    pub fn string(&mut self, name: &str, w: &mut Vec<Warning>) -> Result<Option<String>, Fault> {
        let key = self.key(name);
        self.take(name).map(|v| weak_string(&key, v, w)).transpose()
    }

    /// A string that must not be empty when present.
    pub fn nonempty_string(
        &mut self,
        name: &str,
        w: &mut Vec<Warning>,
    ) -> Result<Option<String>, Fault> {
        Ok(self.string(name, w)?.filter(|s| !s.is_empty()))
    }

    /// A boolean; absent means false.
    pub fn bool(&mut self, name: &str) -> Result<bool, Fault> {
        let key = self.key(name);
        let Some(v) = self.take(name) else {
            return Ok(false);
        };
        match v {
            Value::Bool(b) => Ok(*b),
            Value::String(s) if s.is_empty() => Ok(false),
            Value::String(s) => units::parse_go_bool(s)
                .ok_or_else(|| fault(key, format!("expected true or false, got {}", describe(v)))),
            Value::Number(n) => match n.as_f64() {
                Some(f) => Ok(f != 0.0),
                None => Err(fault(key, format!("expected true or false, got {n}"))),
            },
            other => Err(fault(
                key,
                format!("expected true or false, got {}", describe(other)),
            )),
        }
    }

    /// A non-negative integer; `"2048"` and `"0x800"` are accepted as in Go.
    pub fn u64(&mut self, name: &str) -> Result<Option<u64>, Fault> {
        let key = self.key(name);
        let Some(v) = self.take(name) else {
            return Ok(None);
        };
        let expected = || {
            let what = match v {
                Value::Number(n) if n.as_i64().is_some_and(|i| i < 0) => "a non-negative integer",
                _ => "an integer",
            };
            fault(key.clone(), format!("expected {what}, got {}", describe(v)))
        };
        match v {
            Value::Number(n) => {
                if let Some(u) = n.as_u64() {
                    Ok(Some(u))
                } else if let Some(f) = n
                    .as_f64()
                    .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f < 1.8e19)
                {
                    // Integral and in range, so the conversion is exact.
                    Ok(Some(f as u64))
                } else {
                    Err(expected())
                }
            }
            Value::String(s) => parse_go_uint(s.trim()).map(Some).ok_or_else(expected),
            _ => Err(expected()),
        }
    }

    /// A size in bytes: an integer, or a string with a unit (`"512MiB"`, see
    /// [`units::parse_size`]).
    pub fn size(&mut self, name: &str) -> Result<Option<u64>, Fault> {
        let key = self.key(name);
        match self.take(name) {
            Some(Value::String(text)) => {
                units::parse_size(text).map(Some).map_err(|e| fault(key, e))
            }
            Some(Value::Number(n)) => n
                .as_u64()
                .map(Some)
                .ok_or_else(|| fault(key, format!("expected a size in bytes, got {n}"))),
            Some(v) => Err(fault(key, format!("expected a size, got {}", describe(v)))),
            None => Ok(None),
        }
    }

    /// A Go duration string; `0` means unset, as in the official server.
    pub fn duration(&mut self, name: &str) -> Result<Option<(Duration, String)>, Fault> {
        let key = self.key(name);
        let Some(v) = self.take(name) else {
            return Ok(None);
        };
        match v {
            Value::String(s) if s.trim().is_empty() => Ok(None),
            Value::String(s) => {
                let d = units::parse_duration(s).map_err(|e| fault(key, e))?;
                Ok((!d.is_zero()).then(|| (d, s.trim().to_owned())))
            }
            Value::Number(n) if n.as_u64() == Some(0) => Ok(None),
            other => Err(fault(
                key,
                format!(
                    "expected a duration with a unit, such as \"30s\" or \"1m30s\", got {}",
                    describe(other)
                ),
            )),
        }
    }

    /// A list of strings.
    pub fn string_list(&mut self, name: &str, w: &mut Vec<Warning>) -> Result<Vec<String>, Fault> {
        let key = self.key(name);
        match self.take(name) {
            None => Ok(Vec::new()),
            Some(Value::Sequence(items)) => items
                .iter()
                .enumerate()
                .map(|(i, v)| weak_string(&format!("{key}[{i}]"), v, w))
                .collect(),
            Some(other) => Err(fault(
                key,
                format!("expected a list, got {}", describe(other)),
            )),
        }
    }

    /// A mapping of user-chosen keys (user names, header names) to strings, in file order.
    pub fn string_map(
        &mut self,
        name: &str,
        w: &mut Vec<Warning>,
    ) -> Result<Vec<(String, String)>, Fault> {
        let mut s = self.section(name)?;
        let mut out = Vec::with_capacity(s.entries.len());
        for e in &mut s.entries {
            e.used = true;
            let value = match e.value {
                Value::Null => String::new(),
                v => weak_string(&join(&s.path, &e.key), v, w)?,
            };
            out.push((e.key.clone(), value));
        }
        Ok(out)
    }

    /// A list of mappings, each with its indexed path (`outbounds[0]`).
    pub fn list_of_sections(&mut self, name: &str) -> Result<Vec<Section<'a>>, Fault> {
        let key = self.key(name);
        match self.take(name) {
            None => Ok(Vec::new()),
            Some(Value::Sequence(items)) => items
                .iter()
                .enumerate()
                .map(|(i, v)| Section::new(format!("{key}[{i}]"), v))
                .collect(),
            Some(other) => Err(fault(
                key,
                format!("expected a list, got {}", describe(other)),
            )),
        }
    }

    /// Report every key that was neither read nor skipped.
    pub fn finish(self, w: &mut Vec<Warning>) {
        for e in self.entries.into_iter().filter(|e| !e.used) {
            w.push(Warning::new(
                join(&self.path, &e.key),
                "unknown key (ignored)",
            ));
        }
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// The text of a scalar key or value, as the official server would see it.
fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        // mapstructure turns a bool into "1" or "0" when a string is wanted.
        Value::Bool(b) => Some(if *b { "1" } else { "0" }.to_owned()),
        _ => None,
    }
}

fn weak_string(key: &str, v: &Value, w: &mut Vec<Warning>) -> Result<String, Fault> {
    if let Value::Bool(b) = v {
        let text = if *b { "1" } else { "0" };
        w.push(Warning::new(
            key,
            format!("boolean {b} is read as the string {text:?}, as the official server does; quote the value if you meant \"{b}\""),
        ));
    }
    scalar_text(v).ok_or_else(|| fault(key, format!("expected text, got {}", describe(v))))
}

/// Go `strconv.ParseUint(s, 0, 64)`: decimal, `0x`, `0o`, `0b`, or a leading-zero octal,
/// with `_` separators allowed after a prefix.
fn parse_go_uint(s: &str) -> Option<u64> {
    let s = s.strip_prefix('+').unwrap_or(s);
    let lower = s.to_ascii_lowercase();
    let (radix, digits) = if let Some(d) = lower.strip_prefix("0x") {
        (16, d)
    } else if let Some(d) = lower.strip_prefix("0o") {
        (8, d)
    } else if let Some(d) = lower.strip_prefix("0b") {
        (2, d)
    } else if lower.len() > 1 && lower.starts_with('0') {
        (8, &lower[1..])
    } else {
        (10, lower.as_str())
    };
    let digits: String = if radix == 10 {
        digits.to_owned()
    } else {
        digits.replace('_', "")
    };
    if digits.is_empty() || digits.starts_with('+') || digits.starts_with('-') {
        return None;
    }
    u64::from_str_radix(&digits, radix).ok()
}

/// How a value appears in messages: `"many"`, `30`, `true`, `a list`.
pub(crate) fn describe(v: &Value) -> String {
    match v {
        Value::Null => "nothing".to_owned(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => {
            const MAX: usize = 60;
            match s.char_indices().nth(MAX) {
                Some((cut, _)) => format!("{:?}...", &s[..cut]),
                None => format!("{s:?}"),
            }
        }
        Value::Sequence(_) => "a list".to_owned(),
        Value::Mapping(_) => "a mapping".to_owned(),
        Value::Tagged(t) => format!("a value tagged {}", t.tag),
    }
}

/// Replace every `!tag value` with its value: the official server's YAML decoder does not
/// keep custom tags either.
pub(crate) fn strip_tags(v: &mut Value) {
    loop {
        match v {
            Value::Tagged(t) => {
                let inner = std::mem::replace(&mut t.value, Value::Null);
                *v = inner;
            }
            Value::Sequence(items) => {
                items.iter_mut().for_each(strip_tags);
                return;
            }
            Value::Mapping(map) => {
                map.values_mut().for_each(strip_tags);
                return;
            }
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_uints() {
        assert_eq!(parse_go_uint("2048"), Some(2048));
        assert_eq!(parse_go_uint("0x800"), Some(2048));
        assert_eq!(parse_go_uint("0o10"), Some(8));
        assert_eq!(parse_go_uint("010"), Some(8));
        assert_eq!(parse_go_uint("0b101"), Some(5));
        assert_eq!(parse_go_uint("0"), Some(0));
        assert_eq!(parse_go_uint("0x_ff"), Some(255));
        for bad in [
            "",
            "many",
            "-1",
            "1_000",
            "0x",
            "0x+1",
            "1.5",
            "18446744073709551616",
        ] {
            assert_eq!(parse_go_uint(bad), None, "{bad:?}");
        }
    }
}

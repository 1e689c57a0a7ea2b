//! The module's `monitor_status` file, parsed. A module built with
//! `stap --monitor` formats it with `sprintf` when the file is opened:
//!
//! ```text
//! {
//! "uptime": "00:01:05",
//! "uid": "1001",
//! "memory": "...",
//! "module_name": "stap_1234",
//! "globals": {
//! "count":42,
//! "name":"text",
//! "arr":{"(1, foo)" : 3, },
//! "stat":{"@count": 2, "@min": 1, "@max": 5, "@sum": 6, "@avg": 3}
//! },
//! "probe_list": [
//! {"index": 0, "state": "on", "hits": 12, "min": 310, "avg": 455, "max": 9820, "name": "timer.ms(100)"},
//! ...
//! ],
//! }
//! ```
//!
//! It is not strict JSON: the probe list and every array global end with a
//! comma, a global or probe the translator skips can leave a comma before
//! the first member, and string values are not escaped. So the parser here
//! is lenient: commas between members are optional and repeated ones are
//! ignored, numbers are kept as they are written. A pure function.
#![forbid(unsafe_code)]

use thiserror::Error;

/// The status file is read up to this many bytes (monitor.c reads 256 KiB).
pub const MAX_STATUS: usize = 1 << 20;
/// Nesting deeper than this is refused (the format nests three levels).
const MAX_DEPTH: usize = 32;

/// Why the status could not be parsed; the screen then says
/// "(data not available)", as monitor.c does.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum StatusError {
    #[error("monitor_status is empty")]
    Empty,
    #[error("monitor_status does not hold an object")]
    NotAnObject,
    #[error("monitor_status: unexpected {found:?} at byte {at}")]
    Unexpected { found: char, at: usize },
    #[error("monitor_status ends in the middle of a value")]
    Truncated,
    #[error("monitor_status nests deeper than {MAX_DEPTH} levels")]
    TooDeep,
}

/// One value of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Str(String),
    /// A number (or `true`/`false`/`null`), as written.
    Num(String),
    Obj(Vec<(String, Value)>),
    Arr(Vec<Value>),
}

impl Value {
    /// What monitor.c shows for a value (json-c's `json_object_get_string`):
    /// a string as it is, a number as written, an object or array in json-c's
    /// spaced form, `{ "key": value, ... }`.
    pub fn text(&self) -> String {
        match self {
            Value::Str(s) | Value::Num(s) => s.clone(),
            _ => self.json(),
        }
    }

    fn json(&self) -> String {
        match self {
            Value::Str(s) => quote(s),
            Value::Num(n) => n.clone(),
            Value::Obj(m) if m.is_empty() => "{ }".into(),
            Value::Arr(a) if a.is_empty() => "[ ]".into(),
            Value::Obj(m) => {
                let members: Vec<String> = m
                    .iter()
                    .map(|(k, v)| format!("{}: {}", quote(k), v.json()))
                    .collect();
                format!("{{ {} }}", members.join(", "))
            }
            Value::Arr(a) => {
                let items: Vec<String> = a.iter().map(Value::json).collect();
                format!("[ {} ]", items.join(", "))
            }
        }
    }

    /// The member `key` of an object.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Obj(m) => m.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The value as a number, 0 if it is none (json-c's `json_object_get_int`).
    pub fn number(&self) -> i64 {
        match self {
            Value::Num(n) | Value::Str(n) => leading_integer(n),
            _ => 0,
        }
    }
}

/// The integer a text starts with (`"12abc"` -> 12), 0 if none.
fn leading_integer(s: &str) -> i64 {
    let s = s.trim_start();
    let (neg, digits) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let mut n: i64 = 0;
    for c in digits.chars().take_while(char::is_ascii_digit) {
        n = n
            .saturating_mul(10)
            .saturating_add(i64::from(c as u8 - b'0'));
    }
    if neg { -n } else { n }
}

fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// One row of the probe table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub index: Value,
    pub state: Value,
    pub hits: Value,
    pub min: Value,
    pub avg: Value,
    pub max: Value,
    pub name: Value,
}

impl Probe {
    fn from_value(v: &Value) -> Probe {
        let field = |k: &str| v.get(k).cloned().unwrap_or(Value::Str(String::new()));
        Probe {
            index: field("index"),
            state: field("state"),
            hits: field("hits"),
            min: field("min"),
            avg: field("avg"),
            max: field("max"),
            name: field("name"),
        }
    }

    /// The row's fields, in column order.
    pub fn fields(&self) -> [&Value; 7] {
        [
            &self.index,
            &self.state,
            &self.hits,
            &self.min,
            &self.avg,
            &self.max,
            &self.name,
        ]
    }
}

/// What the status window shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub uptime: String,
    pub uid: String,
    pub memory: String,
    pub module_name: String,
    /// Each global variable and its value, in the module's order.
    pub globals: Vec<(String, Value)>,
    pub probes: Vec<Probe>,
}

/// Parse the bytes of `monitor_status`.
pub fn parse(bytes: &[u8]) -> Result<Status, StatusError> {
    let text = String::from_utf8_lossy(bytes);
    let mut p = Parser {
        s: text.trim_end_matches('\0').as_bytes(),
        text: &text,
        i: 0,
    };
    p.ws();
    if p.i >= p.s.len() {
        return Err(StatusError::Empty);
    }
    if p.s[p.i] != b'{' {
        return Err(StatusError::NotAnObject);
    }
    let root = p.value(0)?;
    let text_of = |k: &str| root.get(k).map(Value::text).unwrap_or_default();
    let globals = match root.get("globals") {
        Some(Value::Obj(m)) => m.clone(),
        _ => Vec::new(),
    };
    let probes = match root.get("probe_list") {
        Some(Value::Arr(a)) => a.iter().map(Probe::from_value).collect(),
        _ => Vec::new(),
    };
    Ok(Status {
        uptime: text_of("uptime"),
        uid: text_of("uid"),
        memory: text_of("memory"),
        module_name: text_of("module_name"),
        globals,
        probes,
    })
}

struct Parser<'a> {
    s: &'a [u8],
    text: &'a str,
    i: usize,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }

    /// White space and any commas.
    fn separators(&mut self) {
        loop {
            self.ws();
            if self.peek() == Some(b',') {
                self.i += 1;
            } else {
                return;
            }
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn unexpected(&self) -> StatusError {
        match self.text.get(self.i..).and_then(|r| r.chars().next()) {
            Some(found) => StatusError::Unexpected { found, at: self.i },
            None => StatusError::Truncated,
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value, StatusError> {
        if depth > MAX_DEPTH {
            return Err(StatusError::TooDeep);
        }
        self.ws();
        match self.peek() {
            None => Err(StatusError::Truncated),
            Some(b'{') => {
                self.i += 1;
                let mut members = Vec::new();
                loop {
                    self.separators();
                    match self.peek() {
                        Some(b'}') => {
                            self.i += 1;
                            return Ok(Value::Obj(members));
                        }
                        Some(b'"') => {
                            let key = self.string()?;
                            self.ws();
                            if self.peek() != Some(b':') {
                                return Err(self.unexpected());
                            }
                            self.i += 1;
                            let v = self.value(depth + 1)?;
                            members.push((key, v));
                        }
                        _ => return Err(self.unexpected()),
                    }
                }
            }
            Some(b'[') => {
                self.i += 1;
                let mut items = Vec::new();
                loop {
                    self.separators();
                    if self.peek() == Some(b']') {
                        self.i += 1;
                        return Ok(Value::Arr(items));
                    }
                    items.push(self.value(depth + 1)?);
                }
            }
            Some(b'"') => self.string().map(Value::Str),
            Some(c) if c == b'-' || c == b'+' || c.is_ascii_alphanumeric() => {
                let start = self.i;
                while self
                    .peek()
                    .is_some_and(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'+' | b'.'))
                {
                    self.i += 1;
                }
                Ok(Value::Num(self.text[start..self.i].to_string()))
            }
            Some(_) => Err(self.unexpected()),
        }
    }

    /// A quoted string, its escapes decoded (an unknown escape is kept).
    fn string(&mut self) -> Result<String, StatusError> {
        self.i += 1;
        let mut out = String::new();
        let mut run = self.i;
        loop {
            match self.peek() {
                None => return Err(StatusError::Truncated),
                Some(b'"') => {
                    out.push_str(&self.text[run..self.i]);
                    self.i += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    out.push_str(&self.text[run..self.i]);
                    let esc = self.s.get(self.i + 1).copied();
                    self.i += 2;
                    match esc {
                        None => return Err(StatusError::Truncated),
                        Some(b'n') => out.push('\n'),
                        Some(b't') => out.push('\t'),
                        Some(b'r') => out.push('\r'),
                        Some(b'b') => out.push('\u{8}'),
                        Some(b'f') => out.push('\u{c}'),
                        Some(b'u') => {
                            let hex = self.text.get(self.i..self.i + 4);
                            match hex.and_then(|h| u32::from_str_radix(h, 16).ok()) {
                                Some(n) => {
                                    out.push(char::from_u32(n).unwrap_or('\u{fffd}'));
                                    self.i += 4;
                                }
                                None => out.push_str("\\u"),
                            }
                        }
                        Some(c @ (b'"' | b'\\' | b'/')) => out.push(c as char),
                        Some(_) => {
                            // Not an escape: keep both characters.
                            self.i -= 1;
                            out.push('\\');
                        }
                    }
                    run = self.i;
                }
                Some(_) => {
                    // Advance by a whole character.
                    let len = self.text[self.i..].chars().next().map_or(1, char::len_utf8);
                    self.i += len;
                }
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// What a `stap --monitor` module writes (the translator's format,
    /// trailing commas included).
    pub(crate) const SAMPLE: &str = r#"{
"uptime": "00:01:05",
"uid": "1001",
"memory": "123456 data/98765 text/0 ctx/2048 net/4096 alloc kb",
"module_name": "monitor",
"globals": {
"ticks":42,
"last":"tick 40",
"per_cpu":{"(0)" : 21, "(1)" : 21, },
"lat":{"@count": 2, "@min": 1, "@max": 5, "@sum": 6, "@avg": 3}
},
"probe_list": [
{"index": 0, "state": "on", "hits": 1, "min": 2080, "avg": 2080, "max": 2080, "name": "begin"},
{"index": 1, "state": "on", "hits": 650, "min": 310, "avg": 455, "max": 9820, "name": "timer.ms(100)"},
{"index": 2, "state": "off", "hits": 0, "min": 0, "avg": 0, "max": 0, "name": "kernel.function(\"vfs_read\")"}
],
}
"#;

    #[test]
    fn the_translators_format_parses() {
        let s = parse(SAMPLE.as_bytes()).unwrap();
        assert_eq!(s.uptime, "00:01:05");
        assert_eq!(s.uid, "1001");
        assert_eq!(s.module_name, "monitor");
        assert!(s.memory.starts_with("123456 data"));
        let g: Vec<(String, String)> = s
            .globals
            .iter()
            .map(|(k, v)| (k.clone(), v.text()))
            .collect();
        assert_eq!(
            g,
            [
                ("ticks".into(), "42".into()),
                ("last".into(), "tick 40".into()),
                ("per_cpu".into(), r#"{ "(0)": 21, "(1)": 21 }"#.into()),
                (
                    "lat".into(),
                    r#"{ "@count": 2, "@min": 1, "@max": 5, "@sum": 6, "@avg": 3 }"#.into()
                ),
            ]
        );
        assert_eq!(s.probes.len(), 3);
        let p = &s.probes[1];
        assert_eq!(p.name.text(), "timer.ms(100)");
        assert_eq!(
            (p.hits.number(), p.min.number(), p.max.number()),
            (650, 310, 9820)
        );
        assert_eq!(p.state.text(), "on");
        assert_eq!(s.probes[2].name.text(), "kernel.function(\"vfs_read\")");
        assert_eq!(s.probes[2].state.text(), "off");
    }

    #[test]
    fn stray_commas_and_missing_members_are_tolerated() {
        let s =
            parse(b"{ , \"globals\": { , \"a\":1,, }, \"probe_list\": [ , {\"name\": \"x\"}, ], }")
                .unwrap();
        assert_eq!(s.globals, [("a".to_string(), Value::Num("1".into()))]);
        assert_eq!(s.probes.len(), 1);
        assert_eq!(s.probes[0].hits.text(), "");
        assert_eq!(s.probes[0].hits.number(), 0);
        assert_eq!(s.uptime, "");
        // Nothing but the braces.
        assert_eq!(parse(b"{}\n\0").unwrap().probes, []);
    }

    #[test]
    fn what_is_not_a_status_is_an_error() {
        assert_eq!(parse(b""), Err(StatusError::Empty));
        assert_eq!(parse(b"  \n"), Err(StatusError::Empty));
        assert_eq!(parse(b"[1]"), Err(StatusError::NotAnObject));
        assert_eq!(parse(b"{\"uptime\": \"00:0"), Err(StatusError::Truncated));
        assert_eq!(
            parse(b"{\"a\" 1}"),
            Err(StatusError::Unexpected { found: '1', at: 5 })
        );
        // An unescaped quote inside a string value breaks the object.
        assert!(parse(br#"{"globals": {"s":"say "hi""}}"#).is_err());
        let deep = format!("{}{}", "{\"a\":".repeat(40), "1");
        assert_eq!(parse(deep.as_bytes()), Err(StatusError::TooDeep));
    }

    #[test]
    fn escapes_and_numbers() {
        let s = parse(br#"{"module_name": "a\"b\\c\u0041\q", "uid": -12}"#).unwrap();
        assert_eq!(s.module_name, "a\"b\\cA\\q");
        assert_eq!(s.uid, "-12");
        assert_eq!(Value::Num("-12".into()).number(), -12);
        assert_eq!(Value::Str("on".into()).number(), 0);
        assert_eq!(Value::Obj(vec![]).text(), "{ }");
        assert_eq!(
            Value::Arr(vec![Value::Str("x\n".into()), Value::Num("1".into())]).text(),
            r#"[ "x\n", 1 ]"#
        );
    }
}

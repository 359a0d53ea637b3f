//! dom0: a small strict JSON reader for borg's `--json` output, which reaches dom0 from the
//! disposable and is therefore hostile: bounded size, depth, string and array lengths; RFC 8259
//! grammar only (no trailing commas, no comments, no duplicate object keys, no raw control
//! characters in strings); numbers are kept as their text and read by the caller.

use std::fmt;

/// Largest document accepted.
pub const MAX_INPUT: usize = 8 << 20;
/// Deepest nesting accepted (borg's output nests 4 levels).
pub const MAX_DEPTH: usize = 8;
/// Longest string accepted (bytes after unescaping).
pub const MAX_STRING: usize = 64 * 1024;
/// Most elements of one array.
pub const MAX_ITEMS: usize = 100_000;
/// Most members of one object (borg's objects have a few dozen; duplicate keys are looked up
/// member by member, so this also bounds that work).
pub const MAX_MEMBERS: usize = 1024;

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    /// The number as written (grammar checked).
    Number(String),
    String(String),
    Array(Vec<Value>),
    Object(Vec<(String, Value)>),
}

impl Value {
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Object(m) => m.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
    /// A non-negative integer up to `max` (no fraction, no exponent).
    pub fn as_u64(&self, max: u64) -> Option<u64> {
        match self {
            Value::Number(n) if n.len() <= 20 && n.bytes().all(|b| b.is_ascii_digit()) => {
                n.parse().ok().filter(|v| *v <= max)
            }
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonError {
    pub offset: usize,
    pub why: &'static str,
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed JSON at byte {}: {}", self.offset, self.why)
    }
}

struct Parser<'a> {
    b: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn err<T>(&self, why: &'static str) -> Result<T, JsonError> {
        Err(JsonError {
            offset: self.i,
            why,
        })
    }
    fn ws(&mut self) {
        while self.i < self.b.len() && b" \t\n\r".contains(&self.b[self.i]) {
            self.i += 1;
        }
    }
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }
    fn lit(&mut self, word: &[u8], v: Value) -> Result<Value, JsonError> {
        if self.b[self.i..].starts_with(word) {
            self.i += word.len();
            Ok(v)
        } else {
            self.err("unexpected word")
        }
    }
    fn value(&mut self, depth: usize) -> Result<Value, JsonError> {
        if depth > MAX_DEPTH {
            return self.err("nested too deeply");
        }
        self.ws();
        match self.peek() {
            None => self.err("unexpected end"),
            Some(b'n') => self.lit(b"null", Value::Null),
            Some(b't') => self.lit(b"true", Value::Bool(true)),
            Some(b'f') => self.lit(b"false", Value::Bool(false)),
            Some(b'"') => self.string().map(Value::String),
            Some(b'[') => {
                self.i += 1;
                let mut v = Vec::new();
                self.ws();
                if self.peek() == Some(b']') {
                    self.i += 1;
                    return Ok(Value::Array(v));
                }
                loop {
                    if v.len() >= MAX_ITEMS {
                        return self.err("too many items");
                    }
                    v.push(self.value(depth + 1)?);
                    self.ws();
                    match self.peek() {
                        Some(b',') => self.i += 1,
                        Some(b']') => {
                            self.i += 1;
                            return Ok(Value::Array(v));
                        }
                        _ => return self.err("expected , or ]"),
                    }
                }
            }
            Some(b'{') => {
                self.i += 1;
                let mut m: Vec<(String, Value)> = Vec::new();
                self.ws();
                if self.peek() == Some(b'}') {
                    self.i += 1;
                    return Ok(Value::Object(m));
                }
                loop {
                    if m.len() >= MAX_MEMBERS {
                        return self.err("too many members");
                    }
                    self.ws();
                    if self.peek() != Some(b'"') {
                        return self.err("expected a key");
                    }
                    let k = self.string()?;
                    if m.iter().any(|(x, _)| *x == k) {
                        return self.err("duplicate key");
                    }
                    self.ws();
                    if self.peek() != Some(b':') {
                        return self.err("expected :");
                    }
                    self.i += 1;
                    let v = self.value(depth + 1)?;
                    m.push((k, v));
                    self.ws();
                    match self.peek() {
                        Some(b',') => self.i += 1,
                        Some(b'}') => {
                            self.i += 1;
                            return Ok(Value::Object(m));
                        }
                        _ => return self.err("expected , or }"),
                    }
                }
            }
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(_) => self.err("unexpected character"),
        }
    }
    fn digits(&mut self) -> usize {
        let s = self.i;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.i += 1;
        }
        self.i - s
    }
    fn number(&mut self) -> Result<Value, JsonError> {
        let start = self.i;
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.peek() {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return self.err("bad number"),
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            if self.digits() == 0 {
                return self.err("bad fraction");
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.i += 1;
            }
            if self.digits() == 0 {
                return self.err("bad exponent");
            }
        }
        if self.i - start > 64 {
            return self.err("number too long");
        }
        // Only ASCII was consumed.
        Ok(Value::Number(
            String::from_utf8_lossy(&self.b[start..self.i]).into_owned(),
        ))
    }
    fn hex4(&mut self) -> Result<u32, JsonError> {
        let h = self.b.get(self.i..self.i + 4).ok_or(JsonError {
            offset: self.i,
            why: "short \\u escape",
        })?;
        let s = std::str::from_utf8(h)
            .ok()
            .filter(|s| s.bytes().all(|b| b.is_ascii_hexdigit()));
        let v = s.and_then(|s| u32::from_str_radix(s, 16).ok());
        match v {
            Some(v) => {
                self.i += 4;
                Ok(v)
            }
            None => self.err("bad \\u escape"),
        }
    }
    fn string(&mut self) -> Result<String, JsonError> {
        self.i += 1; // the opening quote
        let mut out: Vec<u8> = Vec::new();
        loop {
            if out.len() > MAX_STRING {
                return self.err("string too long");
            }
            let Some(c) = self.peek() else {
                return self.err("unterminated string");
            };
            self.i += 1;
            match c {
                b'"' => {
                    return String::from_utf8(out).map_err(|_| JsonError {
                        offset: self.i,
                        why: "string is not UTF-8",
                    })
                }
                0..=0x1f => return self.err("control character in string"),
                b'\\' => {
                    let Some(e) = self.peek() else {
                        return self.err("unterminated escape");
                    };
                    self.i += 1;
                    let ch = match e {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let hi = self.hex4()?;
                            let cp = if (0xd800..0xdc00).contains(&hi) {
                                if !self.b[self.i..].starts_with(b"\\u") {
                                    return self.err("lone surrogate");
                                }
                                self.i += 2;
                                let lo = self.hex4()?;
                                if !(0xdc00..0xe000).contains(&lo) {
                                    return self.err("lone surrogate");
                                }
                                0x10000 + ((hi - 0xd800) << 10) + (lo - 0xdc00)
                            } else {
                                hi
                            };
                            match char::from_u32(cp) {
                                Some(c) => c,
                                None => return self.err("lone surrogate"),
                            }
                        }
                        _ => return self.err("unknown escape"),
                    };
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                }
                _ => out.push(c),
            }
        }
    }
}

/// Parses one JSON document (surrounding white space allowed, nothing else).
pub fn parse(untrusted: &[u8]) -> Result<Value, JsonError> {
    if untrusted.len() > MAX_INPUT {
        return Err(JsonError {
            offset: MAX_INPUT,
            why: "document too large",
        });
    }
    let mut p = Parser { b: untrusted, i: 0 };
    let v = p.value(0)?;
    p.ws();
    if p.i != untrusted.len() {
        return p.err("trailing data");
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_borgs_shapes() {
        let v = parse(br#" {"a": [1, -2.5e-3, "x\n\u00e9\ud83d\ude00", true, null], "b": {}} "#)
            .unwrap();
        let a = v.get("a").unwrap().as_array().unwrap();
        assert_eq!(a[0].as_u64(10), Some(1));
        assert_eq!(a[1], Value::Number("-2.5e-3".into()));
        assert_eq!(a[1].as_u64(10), None);
        assert_eq!(a[2].as_str(), Some("x\n\u{e9}\u{1f600}"));
        assert_eq!(a[3], Value::Bool(true));
        assert_eq!(v.get("b"), Some(&Value::Object(vec![])));
    }

    #[test]
    fn refuses_what_rfc_8259_refuses() {
        for bad in [
            &b""[..],
            b"{",
            b"[1,]",
            b"{\"a\":1,}",
            b"{\"a\":1}x",
            b"[01]",
            b"[1.]",
            b"[.5]",
            b"[1e]",
            b"['a']",
            b"[\"a\x01\"]",
            b"[\"\\x41\"]",
            b"[\"\\ud800\"]",
            b"[\"\\udc00\"]",
            b"[\"\xff\"]",
            b"{\"a\":1,\"a\":2}",
            b"[nul]",
            b"/* c */ 1",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn bounds_depth_and_size() {
        let deep = "[".repeat(MAX_DEPTH + 2) + &"]".repeat(MAX_DEPTH + 2);
        assert_eq!(parse(deep.as_bytes()).unwrap_err().why, "nested too deeply");
        let ok = "[".repeat(MAX_DEPTH) + &"]".repeat(MAX_DEPTH);
        assert!(parse(ok.as_bytes()).is_ok());
        let long = format!("[\"{}\"]", "a".repeat(MAX_STRING + 10));
        assert_eq!(parse(long.as_bytes()).unwrap_err().why, "string too long");
        let huge = vec![b' '; MAX_INPUT + 1];
        assert_eq!(parse(&huge).unwrap_err().why, "document too large");
    }

    /// A scalar nested in `depth` arrays.
    fn nested(depth: usize) -> String {
        "[".repeat(depth) + "1" + &"]".repeat(depth)
    }

    #[test]
    fn a_value_at_depth_8_is_read_and_at_depth_9_refused() {
        assert!(parse(nested(MAX_DEPTH).as_bytes()).is_ok());
        assert_eq!(
            parse(nested(MAX_DEPTH + 1).as_bytes()).unwrap_err().why,
            "nested too deeply"
        );
        let obj = |depth: usize| "{\"a\":".repeat(depth) + "1" + &"}".repeat(depth);
        assert!(parse(obj(MAX_DEPTH).as_bytes()).is_ok());
        assert_eq!(
            parse(obj(MAX_DEPTH + 1).as_bytes()).unwrap_err().why,
            "nested too deeply"
        );
    }

    #[test]
    fn arrays_hold_at_most_max_items() {
        let arr = |n: usize| format!("[{}]", vec!["0"; n].join(","));
        let v = parse(arr(MAX_ITEMS).as_bytes()).unwrap();
        assert_eq!(v.as_array().map(<[Value]>::len), Some(MAX_ITEMS));
        assert_eq!(
            parse(arr(MAX_ITEMS + 1).as_bytes()).unwrap_err().why,
            "too many items"
        );
    }

    #[test]
    fn objects_hold_at_most_max_members() {
        let obj = |n: usize| {
            let m: Vec<String> = (0..n).map(|i| format!("\"k{i}\":{i}")).collect();
            format!("{{{}}}", m.join(","))
        };
        let v = parse(obj(MAX_MEMBERS).as_bytes()).unwrap();
        assert_eq!(v.get("k1023"), Some(&Value::Number("1023".into())));
        assert_eq!(
            parse(obj(MAX_MEMBERS + 1).as_bytes()).unwrap_err().why,
            "too many members"
        );
    }

    #[test]
    fn a_string_of_max_string_bytes_is_read_and_one_more_refused() {
        let s = |n: usize| format!("\"{}\"", "\u{e9}".repeat(n / 2));
        let v = parse(s(MAX_STRING).as_bytes()).unwrap();
        assert_eq!(v.as_str().map(str::len), Some(MAX_STRING));
        let one_more = format!("\"{}\\n\"", "a".repeat(MAX_STRING));
        assert_eq!(
            parse(one_more.as_bytes()).unwrap_err().why,
            "string too long"
        );
        let exact = format!("\"{}\\n\"", "a".repeat(MAX_STRING - 1));
        assert_eq!(
            parse(exact.as_bytes()).unwrap().as_str().map(str::len),
            Some(MAX_STRING)
        );
    }

    #[test]
    fn a_document_of_max_input_bytes_is_read() {
        let mut doc = vec![b' '; MAX_INPUT - 1];
        doc.push(b'7');
        assert_eq!(parse(&doc), Ok(Value::Number("7".into())));
    }

    #[test]
    fn a_number_of_64_characters_is_read_and_65_refused() {
        let n = |len: usize| format!("1{}", "0".repeat(len - 1));
        assert_eq!(parse(n(64).as_bytes()), Ok(Value::Number(n(64))));
        assert_eq!(parse(n(65).as_bytes()).unwrap_err().why, "number too long");
        // The length is counted from where the number starts, not from the document start.
        let inner = format!("[{}]", n(64));
        assert_eq!(
            parse(inner.as_bytes()),
            Ok(Value::Array(vec![Value::Number(n(64))]))
        );
    }

    #[test]
    fn every_number_form_of_rfc_8259_is_read() {
        for ok in [
            "0", "-0", "-12", "0.5", "1e5", "1E5", "1e+5", "1e-5", "-1.25E-3",
        ] {
            assert_eq!(parse(ok.as_bytes()), Ok(Value::Number(ok.into())), "{ok}");
        }
        for (bad, why) in [
            ("-", "bad number"),
            ("-a", "bad number"),
            ("+1", "unexpected character"),
            ("1e+", "bad exponent"),
            ("1.e5", "bad fraction"),
        ] {
            assert_eq!(parse(bad.as_bytes()).unwrap_err().why, why, "{bad}");
        }
    }

    #[test]
    fn every_escape_of_rfc_8259_is_read() {
        let v = parse(br#""\"\\\/\b\f\n\r\t\u0041\u00E9 ~""#).unwrap();
        assert_eq!(v.as_str(), Some("\"\\/\u{8}\u{c}\n\r\tA\u{e9} ~"));
        for (bad, why) in [
            (&br#""\u00g0""#[..], "bad \\u escape"),
            (br#""\u00""#, "short \\u escape"),
            (br#""\u0"#, "short \\u escape"),
            (br#""\ud83dx""#, "lone surrogate"),
            (br#""\ud83d\u0041""#, "lone surrogate"),
            (br#""\"#, "unterminated escape"),
            (br#""abc"#, "unterminated string"),
            (b"\"\x1f\"", "control character in string"),
            (br#""\a""#, "unknown escape"),
        ] {
            assert_eq!(
                parse(bad).unwrap_err().why,
                why,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn literals_and_structure_errors_are_named() {
        assert_eq!(
            parse(b" [true, false, null] ").unwrap(),
            Value::Array(vec![Value::Bool(true), Value::Bool(false), Value::Null])
        );
        for (bad, why, at) in [
            (&b"[tru]"[..], "unexpected word", 1),
            (b"[1 2]", "expected , or ]", 3),
            (b"{\"a\" 1}", "expected :", 5),
            (b"{\"a\":1 \"b\":2}", "expected , or }", 7),
            (b"{1:2}", "expected a key", 1),
            (b"{\"a\":1,\"a\":2}", "duplicate key", 10),
            (b"1 2", "trailing data", 2),
            (b"  ", "unexpected end", 2),
        ] {
            assert_eq!(
                parse(bad),
                Err(JsonError { offset: at, why }),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            JsonError {
                offset: 3,
                why: "bad number"
            }
            .to_string(),
            "malformed JSON at byte 3: bad number"
        );
    }

    #[test]
    fn values_are_read_only_as_their_own_type() {
        let v = parse(br#"{"s": "x", "a": [], "n": 5}"#).unwrap();
        assert_eq!(v.get("s").and_then(Value::as_str), Some("x"));
        assert_eq!(v.get("n").and_then(Value::as_str), None);
        assert_eq!(v.get("a").and_then(Value::as_array), Some(&[][..]));
        assert_eq!(v.get("s").and_then(Value::as_array), None);
        assert_eq!(v.get("x"), None);
        assert_eq!(v.get("a").unwrap().get("s"), None);
        assert_eq!(v.get("n").unwrap().as_u64(5), Some(5));
        assert_eq!(
            Value::Number("00000000000000000005".into()).as_u64(9),
            Some(5)
        );
        assert_eq!(
            Value::Number("000000000000000000005".into()).as_u64(9),
            None
        );
        assert_eq!(Value::String("5".into()).as_u64(9), None);
    }

    #[test]
    fn integers_are_bounded() {
        assert_eq!(
            parse(b"99999999999999999999999").unwrap().as_u64(u64::MAX),
            None
        );
        assert_eq!(parse(b"5").unwrap().as_u64(4), None);
        assert_eq!(parse(b"-5").unwrap().as_u64(10), None);
    }
}

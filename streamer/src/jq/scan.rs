//! A validating scan of a JSON text into an index of its objects' keys and values, for
//! the native evaluator ([`super::native`]): no value tree, byte spans into the text.
//!
//! The scan accepts strict JSON only (RFC 8259, without lone UTF-16 surrogates, which jaq
//! refuses too) and refuses anything else, so that a text it accepts is one jaq parses;
//! a text it refuses goes to jaq, whose verdict (a value or its error) stands. It also
//! finds out whether the text is *plain*: no whitespace between tokens, no `-0` and every
//! string written the way jaq writes it. The span of an array or object of a plain text
//! without a key twice in any object in it ([`Doc::copyable`]) is exactly what jaq prints
//! for it, so it can be copied as it is.
//!
//! The index's buffers are kept for the thread's next scan: no allocation per event.

use std::borrow::Cow;
use std::cell::Cell;

/// What a value is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Null,
    True,
    False,
    Number,
    String,
    Array,
    Object,
}

/// A string holds a backslash escape (decode it to read its contents).
pub(super) const ESCAPED: u32 = 1;
/// A string is not written as jaq writes it (`\/`, `\u0041`, a raw DEL …): to copy it,
/// decode it and write it again.
pub(super) const REWRITE: u32 = 2;
/// A number is `-0`, which jaq reads as the integer 0 and writes as `0`.
pub(super) const NEG_ZERO: u32 = 4;

/// One value of the text: its span (a string's with its quotes) and kind; `aux` is the
/// object's index for an object, flags for a string or number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Node {
    pub start: u32,
    pub end: u32,
    pub kind: Kind,
    pub aux: u32,
}

impl Node {
    const NONE: Node = Node {
        start: 0,
        end: 0,
        kind: Kind::Null,
        aux: 0,
    };
}

/// A key (a string node) and its value.
#[derive(Clone, Copy, Debug)]
pub(super) struct Entry {
    pub key: Node,
    pub value: Node,
}

/// An object: where it starts, its range in the entries.
#[derive(Clone, Copy, Debug)]
struct Obj {
    start: u32,
    from: u32,
    to: u32,
}

/// The index's buffers.
#[derive(Debug, Default)]
struct Buffers {
    /// Every object's entries, one object after the other.
    entries: Vec<Entry>,
    /// Per object (by `Node::aux`, in the order they open).
    objects: Vec<Obj>,
    /// Entries of the objects being read.
    stack: Vec<Entry>,
}

/// [`Buffers`] that go back to the thread's spare when dropped (when it has none).
#[derive(Debug)]
struct Tape(Buffers);

thread_local! {
    static SPARE: Cell<Option<Buffers>> = const { Cell::new(None) };
}

impl Tape {
    fn take() -> Tape {
        Tape(
            SPARE
                .try_with(Cell::take)
                .ok()
                .flatten()
                .unwrap_or_default(),
        )
    }
}

impl Drop for Tape {
    fn drop(&mut self) {
        // A huge event's buffers are not kept.
        if self.0.entries.capacity() > 1 << 16 {
            return;
        }
        let mut b = std::mem::take(&mut self.0);
        b.entries.clear();
        b.objects.clear();
        b.stack.clear();
        let _ = SPARE.try_with(|spare| {
            let kept = spare.take();
            // Dropping the buffers not kept runs no `Tape::drop`.
            spare.set(Some(kept.unwrap_or(b)));
        });
    }
}

/// A scanned JSON text.
#[derive(Debug)]
pub(super) struct Doc<'a> {
    pub text: &'a str,
    pub root: Node,
    tape: Tape,
    /// See the module's comment.
    pub plain: bool,
}

/// Nesting deeper than this goes to jaq.
const MAX_DEPTH: u32 = 128;

/// Bytes that end the fast part of a string: `"`, `\`, controls and DEL.
static SPECIAL: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = true;
        i += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t[0x7f] = true;
    t
};

/// The high bit of each byte of `x` that is `"`, `\\`, a control or DEL, exact up to
/// the first one (a borrow may mark bytes after it).
fn special(x: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
    let below_space = x.wrapping_sub(ONES * 0x20) & !x & HIGH;
    zero(x ^ (ONES * b'"' as u64))
        | zero(x ^ (ONES * b'\\' as u64))
        | zero(x ^ (ONES * 0x7f))
        | below_space
}

struct Scanner<'a> {
    b: &'a [u8],
    pos: usize,
    tape: Tape,
    plain: bool,
    /// Not strict JSON (the scan then runs to the end at once).
    bad: bool,
}

impl<'a> Doc<'a> {
    /// Scans `text`; `None` when it is not strict JSON (or too deep, or over 4 GiB).
    pub fn scan(text: &'a str) -> Option<Doc<'a>> {
        u32::try_from(text.len()).ok()?;
        let mut s = Scanner {
            b: text.as_bytes(),
            pos: 0,
            tape: Tape::take(),
            plain: true,
            bad: false,
        };
        s.skip_ws();
        let root = s.value(0);
        s.skip_ws();
        if s.bad || s.pos != s.b.len() {
            return None;
        }
        // Whitespace around the root is no part of any value (`skip_ws`, not `ws`).
        Some(Doc {
            text,
            root,
            tape: s.tape,
            plain: s.plain,
        })
    }

    /// The text of `node`.
    pub fn span(&self, node: Node) -> &'a str {
        &self.text[node.start as usize..node.end as usize]
    }

    /// The entries of the object `node`, in the text's order.
    pub fn entries(&self, node: Node) -> &[Entry] {
        debug_assert_eq!(node.kind, Kind::Object);
        let o = self.tape.0.objects[node.aux as usize];
        &self.tape.0.entries[o.from as usize..o.to as usize]
    }

    /// Whether the span of the array or object `node` is what jaq writes for it: the
    /// text is plain and no object in it has a key twice.
    pub fn copyable(&self, node: Node) -> bool {
        if !self.plain {
            return false;
        }
        let objects = &self.tape.0.objects;
        let first = objects.partition_point(|o| o.start < node.start);
        let b = self.text.as_bytes();
        objects[first..]
            .iter()
            .take_while(|o| o.start < node.end)
            .all(|o| !repeats_a_key(b, &self.tape.0.entries[o.from as usize..o.to as usize]))
    }

    /// Whether the string node `key` holds `want`.
    pub fn key_is(&self, key: Node, want: &str) -> bool {
        if key.aux & ESCAPED == 0 {
            let raw = &self.text.as_bytes()[key.start as usize + 1..key.end as usize - 1];
            raw == want.as_bytes()
        } else {
            self.string(key) == want
        }
    }

    /// The value of `key` in the object `node` (the last one, as jq reads duplicates).
    pub fn get(&self, node: Node, key: &str) -> Option<Node> {
        self.entries(node)
            .iter()
            .rev()
            .find(|e| self.key_is(e.key, key))
            .map(|e| e.value)
    }

    /// The contents of the string node `node`.
    pub fn string(&self, node: Node) -> Cow<'a, str> {
        let raw = &self.text[node.start as usize + 1..node.end as usize - 1];
        if node.aux & ESCAPED == 0 {
            Cow::Borrowed(raw)
        } else {
            Cow::Owned(unescape(raw))
        }
    }
}

/// The contents of a string's text between its quotes, escapes validated by the scan.
fn unescape(raw: &str) -> String {
    let b = raw.as_bytes();
    let mut out = String::with_capacity(raw.len());
    let mut i = 0;
    while let Some(at) = raw[i..].find('\\') {
        out.push_str(&raw[i..i + at]);
        i += at;
        let (c, next) = match b[i + 1] {
            b'"' => ('"', i + 2),
            b'\\' => ('\\', i + 2),
            b'/' => ('/', i + 2),
            b'b' => ('\u{8}', i + 2),
            b'f' => ('\u{c}', i + 2),
            b'n' => ('\n', i + 2),
            b'r' => ('\r', i + 2),
            b't' => ('\t', i + 2),
            _ => {
                let high = hex4(&b[i + 2..]).unwrap_or(0xfffd);
                if (0xd800..0xdc00).contains(&high) {
                    let low = hex4(&b[i + 8..]).unwrap_or(0xdc00);
                    let cp = 0x10000 + ((high - 0xd800) << 10) + (low - 0xdc00);
                    (char::from_u32(cp).unwrap_or('\u{fffd}'), i + 12)
                } else {
                    (char::from_u32(high).unwrap_or('\u{fffd}'), i + 6)
                }
            }
        };
        out.push(c);
        i = next;
    }
    out.push_str(&raw[i..]);
    out
}

/// Four hex digits at the start of `b`.
fn hex4(b: &[u8]) -> Option<u32> {
    let digits = b.get(..4)?;
    digits.iter().try_fold(0u32, |acc, c| {
        let d = (*c as char).to_digit(16)?;
        Some(acc << 4 | d)
    })
}

/// Writes `s` as a JSON string the way jaq writes it: `\"`, `\\`, `\b`, `\f`, `\n`, `\r`,
/// `\t`, other controls and DEL as `\u00xx`, everything else as it is.
pub(super) fn write_string(out: &mut String, s: &str) {
    out.push('"');
    let mut from = 0;
    for (i, c) in s.bytes().enumerate() {
        let escape = match c {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            0x08 => "\\b",
            0x0c => "\\f",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x00..=0x1f | 0x7f => "",
            _ => continue,
        };
        out.push_str(&s[from..i]);
        if escape.is_empty() {
            out.push_str(&format!("\\u{c:04x}"));
        } else {
            out.push_str(escape);
        }
        from = i + 1;
    }
    out.push_str(&s[from..]);
    out.push('"');
}

impl Scanner<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.pos).copied()
    }

    /// Not strict JSON: stop.
    fn fail(&mut self) -> Node {
        self.bad = true;
        self.pos = self.b.len();
        Node::NONE
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    /// Whitespace inside a value: the text is not plain.
    fn ws(&mut self) {
        if let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.plain = false;
            self.skip_ws();
        }
    }

    fn node(&self, start: usize, kind: Kind, aux: u32) -> Node {
        // The text is under 4 GiB (checked in `Doc::scan`).
        Node {
            start: start as u32,
            end: self.pos as u32,
            kind,
            aux,
        }
    }

    fn literal(&mut self, word: &[u8], kind: Kind) -> Node {
        let start = self.pos;
        if self.b[start..].starts_with(word) {
            self.pos += word.len();
            self.node(start, kind, 0)
        } else {
            self.fail()
        }
    }

    fn value(&mut self, depth: u32) -> Node {
        match self.peek() {
            Some(b'"') => self.string(),
            Some(b'{') => self.object(depth),
            Some(b'[') => self.array(depth),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(b't') => self.literal(b"true", Kind::True),
            Some(b'f') => self.literal(b"false", Kind::False),
            Some(b'n') => self.literal(b"null", Kind::Null),
            _ => self.fail(),
        }
    }

    fn digits(&mut self) -> usize {
        let from = self.pos;
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
        self.pos - from
    }

    fn number(&mut self) -> Node {
        let start = self.pos;
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return self.fail(),
        }
        let mut int = true;
        if self.peek() == Some(b'.') {
            self.pos += 1;
            if self.digits() == 0 {
                return self.fail();
            }
            int = false;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            if self.digits() == 0 {
                return self.fail();
            }
            int = false;
        }
        let mut aux = 0;
        if int && &self.b[start..self.pos] == b"-0" {
            aux = NEG_ZERO;
            self.plain = false;
        }
        self.node(start, Kind::Number, aux)
    }

    /// A string, from its opening quote.
    fn string(&mut self) -> Node {
        let b = self.b;
        let start = self.pos;
        let mut i = start + 1;
        let mut flags = 0;
        loop {
            // Eight bytes at a time, then one at a time.
            while let Some(chunk) = b.get(i..i + 8) {
                let m = special(u64::from_le_bytes(chunk.try_into().unwrap_or_default()));
                if m != 0 {
                    i += (m.trailing_zeros() / 8) as usize;
                    break;
                }
                i += 8;
            }
            while i < b.len() && !SPECIAL[b[i] as usize] {
                i += 1;
            }
            match b.get(i) {
                Some(b'"') => break,
                Some(b'\\') => {
                    flags |= ESCAPED;
                    match escape(b, i) {
                        Some((next, canonical)) => {
                            if !canonical {
                                flags |= REWRITE;
                            }
                            i = next;
                        }
                        None => return self.fail(),
                    }
                }
                Some(0x7f) => {
                    flags |= REWRITE;
                    i += 1;
                }
                _ => return self.fail(),
            }
        }
        self.pos = i + 1;
        if flags & REWRITE != 0 {
            self.plain = false;
        }
        self.node(start, Kind::String, flags)
    }

    fn array(&mut self, depth: u32) -> Node {
        if depth >= MAX_DEPTH {
            return self.fail();
        }
        let start = self.pos;
        self.pos += 1;
        self.ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return self.node(start, Kind::Array, 0);
        }
        loop {
            self.value(depth + 1);
            self.ws();
            match self.peek() {
                Some(b',') => {
                    self.pos += 1;
                    self.ws();
                }
                Some(b']') => {
                    self.pos += 1;
                    return self.node(start, Kind::Array, 0);
                }
                _ => return self.fail(),
            }
        }
    }

    fn object(&mut self, depth: u32) -> Node {
        if depth >= MAX_DEPTH {
            return self.fail();
        }
        let start = self.pos;
        self.pos += 1;
        let index = self.tape.0.objects.len();
        self.tape.0.objects.push(Obj {
            start: start as u32,
            from: 0,
            to: 0,
        });
        let mark = self.tape.0.stack.len();
        self.ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
        } else {
            loop {
                if self.peek() != Some(b'"') {
                    return self.fail();
                }
                let key = self.string();
                self.ws();
                if self.peek() != Some(b':') {
                    return self.fail();
                }
                self.pos += 1;
                self.ws();
                let value = self.value(depth + 1);
                self.tape.0.stack.push(Entry { key, value });
                self.ws();
                match self.peek() {
                    Some(b',') => {
                        self.pos += 1;
                        self.ws();
                    }
                    Some(b'}') => {
                        self.pos += 1;
                        break;
                    }
                    _ => return self.fail(),
                }
            }
        }
        let tape = &mut self.tape.0;
        let from = tape.entries.len() as u32;
        tape.entries.extend_from_slice(&tape.stack[mark..]);
        tape.stack.truncate(mark);
        let o = &mut tape.objects[index];
        o.from = from;
        o.to = tape.entries.len() as u32;
        self.node(start, Kind::Object, index as u32)
    }
}

/// The escape at `b[i]` (a backslash): where it ends and whether jaq writes that
/// character so.
fn escape(b: &[u8], i: usize) -> Option<(usize, bool)> {
    match b.get(i + 1) {
        Some(b'"' | b'\\' | b'b' | b'f' | b'n' | b'r' | b't') => Some((i + 2, true)),
        Some(b'/') => Some((i + 2, false)),
        Some(b'u') => {
            let cp = hex4(&b[i + 2..])?;
            match cp {
                0xd800..=0xdbff => {
                    let low = match b.get(i + 6..i + 8) {
                        Some(b"\\u") => hex4(&b[i + 8..])?,
                        _ => return None,
                    };
                    if !(0xdc00..=0xdfff).contains(&low) {
                        return None;
                    }
                    Some((i + 12, false))
                }
                0xdc00..=0xdfff => None,
                _ => {
                    // jaq writes controls other than \b \f \n \r \t as \u00xx, lower case.
                    let canonical = cp < 0x20
                        && !matches!(cp, 0x08 | 0x09 | 0x0a | 0x0c | 0x0d)
                        && b[i + 2..i + 6] == *format!("{cp:04x}").as_bytes();
                    Some((i + 6, canonical))
                }
            }
        }
        _ => None,
    }
}

/// Whether two of `entries` have the same key, in a text plain so far: there a key is
/// written as jaq writes it, one way for each string, so the same key is the same bytes.
fn repeats_a_key(b: &[u8], entries: &[Entry]) -> bool {
    let key = |e: &Entry| &b[e.key.start as usize + 1..e.key.end as usize - 1];
    if entries.len() <= 16 {
        for (i, a) in entries.iter().enumerate() {
            let ka = key(a);
            if entries[i + 1..].iter().any(|e| key(e) == ka) {
                return true;
            }
        }
        false
    } else {
        let mut keys: Vec<&[u8]> = entries.iter().map(key).collect();
        keys.sort_unstable();
        keys.windows(2).any(|w| w[0] == w[1])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(text: &str) -> Doc<'_> {
        Doc::scan(text).unwrap_or_else(|| panic!("scans: {text}"))
    }

    /// The value at `path` as text, `None` when a key is missing.
    fn at<'a>(d: &Doc<'a>, path: &[&str]) -> Option<&'a str> {
        let mut node = d.root;
        for k in path {
            assert_eq!(node.kind, Kind::Object, "{k}");
            node = d.get(node, k)?;
        }
        Some(d.span(node))
    }

    #[test]
    fn finds_values_at_the_top_and_nested() {
        let text = r#"{"a":1,"b":{"c":"x","d":[1,{"c":2},[]],"e":{}},"f":null,"g":true,"h":false}"#;
        let d = doc(text);
        assert_eq!(at(&d, &["a"]), Some("1"));
        assert_eq!(at(&d, &["b", "c"]), Some(r#""x""#));
        assert_eq!(at(&d, &["b", "d"]), Some(r#"[1,{"c":2},[]]"#));
        assert_eq!(at(&d, &["b", "e"]), Some("{}"));
        assert_eq!(at(&d, &["f"]), Some("null"));
        assert_eq!(at(&d, &["g"]), Some("true"));
        assert_eq!(at(&d, &["h"]), Some("false"));
        assert_eq!(at(&d, &["c"]), None, "not at the top");
        assert_eq!(at(&d, &["b", "x"]), None);
        assert_eq!(d.entries(d.get(d.root, "b").expect("b")).len(), 3);
        assert!(d.plain);
    }

    #[test]
    fn skips_strings_with_escapes_and_unicode() {
        let text = r#"{"s":"a\"b\\c}{][,:\n\u00e9\ud83d\ude00","é":"ü","k\"q":1,"t\u0041":2,"":3}"#;
        let d = doc(text);
        let s = d.get(d.root, "s").expect("s");
        assert_eq!(d.string(s), "a\"b\\c}{][,:\né\u{1F600}");
        assert_ne!(s.aux & ESCAPED, 0);
        assert_ne!(s.aux & REWRITE, 0, "\\u00e9 is not how jaq writes é");
        assert_eq!(at(&d, &["é"]), Some(r#""ü""#));
        assert_eq!(at(&d, &["k\"q"]), Some("1"));
        assert_eq!(at(&d, &["tA"]), Some("2"), "an escaped key is decoded");
        assert_eq!(at(&d, &[""]), Some("3"));
        assert!(!d.plain);
    }

    #[test]
    fn strings_end_where_they_end_at_any_length() {
        // Eight bytes at a time, then one at a time: every length, every place.
        for len in 0..40 {
            for place in 0..len {
                let mut s: Vec<String> = vec!["é".into(); len];
                for (c, text, escaped, rewrite) in [
                    ('"', "\\\"", true, false),
                    ('\\', "\\\\", true, false),
                    ('\n', "\\n", true, false),
                    ('/', "\\/", true, true),
                    ('\u{7f}', "\u{7f}", false, true),
                ] {
                    s[place] = text.into();
                    let json = format!("{{\"k\":\"{}\",\"n\":1}}", s.concat());
                    let d = doc(&json);
                    let v = d.get(d.root, "k").expect("k");
                    let mut want = "é".repeat(len);
                    want.replace_range(place * 2..place * 2 + 2, &c.to_string());
                    assert_eq!(d.string(v), want, "{json}");
                    assert_eq!(v.aux & ESCAPED != 0, escaped, "{json}");
                    assert_eq!(v.aux & REWRITE != 0, rewrite, "{json}");
                    assert_eq!(at(&d, &["n"]), Some("1"), "{json}");
                }
                for bad in ["\u{1}", "\u{1f}", "\t", "\\x"] {
                    s[place] = bad.into();
                    let json = format!("{{\"k\":\"{}\"}}", s.concat());
                    assert!(Doc::scan(&json).is_none(), "{json:?}");
                }
            }
        }
    }

    #[test]
    fn whitespace_anywhere_is_skipped() {
        let text = " \n{ \"a\" :\t[ 1 , { \"b\" : null } ] ,\r\"c\": { } } \n";
        let d = doc(text);
        assert_eq!(at(&d, &["a"]), Some(r#"[ 1 , { "b" : null } ]"#));
        assert_eq!(at(&d, &["c"]), Some("{ }"));
        assert!(!d.plain, "whitespace inside");
        let d = doc(" {\"a\":[1,2],\"b\":\"x y\"} \n");
        assert!(d.plain, "whitespace around the root and in a string only");
        assert_eq!(d.span(d.root), r#"{"a":[1,2],"b":"x y"}"#);
    }

    #[test]
    fn duplicate_keys_read_the_last_and_are_not_copied() {
        let copyable = |text: &str| {
            let d = doc(text);
            d.copyable(d.root)
        };
        let d = doc(r#"{"a":1,"b":{"c":2,"c":3},"d":[{"e":4,"e":5}],"f":{"g":6}}"#);
        assert_eq!(at(&d, &["b", "c"]), Some("3"));
        assert!(d.plain && !d.copyable(d.root));
        let b = d.get(d.root, "b").expect("b");
        let f = d.get(d.root, "f").expect("f");
        let list = d.get(d.root, "d").expect("d");
        assert!(!d.copyable(b) && !d.copyable(list) && d.copyable(f));
        assert!(!copyable(r#"{"a":1,"b":2,"a":3}"#));
        let many: Vec<String> = (0..40).map(|i| format!("\"k{i}\":{i}")).collect();
        assert!(
            copyable(&format!("{{{}}}", many.join(","))),
            "40 keys, none twice"
        );
        let text = format!("{{{},\"k7\":0}}", many.join(","));
        assert!(!copyable(&text), "40 keys, one twice");
        assert!(!copyable(r#"{"a":1,"\u0061":2}"#), "\\u0061 is not plain");
        assert!(!copyable(r#"{"a\n":1,"a\n":2}"#), "escaped, the same twice");
        assert!(copyable(r#"{"a\n":1,"a\t":2}"#));
    }

    #[test]
    fn numbers_are_strict_and_minus_zero_is_not_plain() {
        for n in [
            "0",
            "-1",
            "12345678901234567890.123456789012345",
            "1e5",
            "1E+5",
            "-0.5e-3",
        ] {
            let text = format!("{{\"n\":{n}}}");
            let d = doc(&text);
            assert_eq!(at(&d, &["n"]), Some(n));
            assert!(d.plain, "{n}");
        }
        assert!(!doc(r#"{"n":-0}"#).plain);
        assert!(doc(r#"{"n":-0.0}"#).plain, "jaq keeps a decimal's text");
        for bad in [
            "01", "1.", ".5", "-", "1e", "+1", "0x1", "1.e3", "NaN", "Infinity",
        ] {
            assert!(Doc::scan(&format!("{{\"n\":{bad}}}")).is_none(), "{bad}");
        }
    }

    #[test]
    fn refuses_what_is_not_strict_json() {
        for bad in [
            "",
            "{",
            "{\"a\":1,}",
            "[1,]",
            "{\"a\" 1}",
            "{a:1}",
            "{\"a\":1}x",
            "{\"a\":1} {}",
            "{\"a\":tru}",
            "{\"a\":nul}",
            "\"unterminated",
            "\"a\u{1}b\"",
            "\"\\x\"",
            "\"\\u12\"",
            "\"\\ud800\"",
            "\"\\udc00\"",
            "\"\\ud800\\u0041\"",
            "{\"a\":1 # comment\n}",
            "{'a':1}",
        ] {
            assert!(Doc::scan(bad).is_none(), "{bad:?}");
        }
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert!(Doc::scan(&deep).is_none(), "too deep for the scan");
        let fine = format!("{}{}", "[".repeat(100), "]".repeat(100));
        assert!(Doc::scan(&fine).is_some());
    }

    #[test]
    fn plain_strings_are_those_jaq_writes_alike() {
        for (s, plain) in [
            (r#""a\"b\\c\n\t\r\b\f""#, true),
            (r#""\u001f\u0000""#, true),
            (r#""\u001F""#, false),
            (r#""\u000a""#, false),
            (r#""\/""#, false),
            (r#""\u0041""#, false),
            ("\"del\u{7f}\"", false),
            ("\"é😀\"", true),
        ] {
            let d = doc(s);
            assert_eq!(d.plain, plain, "{s}");
            let mut out = String::new();
            write_string(&mut out, &d.string(d.root));
            if plain {
                assert_eq!(out, s, "written as it was");
            }
            let back: serde_json::Value = serde_json::from_str(&out).expect("JSON");
            let want: serde_json::Value = serde_json::from_str(s).expect("JSON");
            assert_eq!(back, want);
        }
    }

    #[test]
    fn any_text_serde_writes_scans_back() {
        // Every character up to U+00FF and a few beyond, in keys and values.
        let s: String = (0u32..0x100)
            .chain([0x2028, 0xfeff, 0x1f600])
            .filter_map(char::from_u32)
            .collect();
        let v = serde_json::json!({ s.clone(): s.clone(), "o": {"in": s.clone()}, "n": 1 });
        let text = v.to_string();
        let d = doc(&text);
        let value = d.get(d.root, &s).expect("the key");
        assert_eq!(d.string(value), s);
        let inner = d.get(d.root, "o").expect("o");
        assert_eq!(d.string(d.get(inner, "in").expect("in")), s);
        assert!(!d.plain, "serde writes DEL as it is, jaq as \\u007f");
        let mut out = String::new();
        write_string(&mut out, &s);
        assert_eq!(
            out.replace("\\u007f", "\u{7f}"),
            serde_json::Value::String(s.clone()).to_string(),
            "jaq's escapes are serde's but for DEL"
        );
    }
}

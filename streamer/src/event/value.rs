//! Column values: Postgres text output → JSON, exactly as the spec's table says.
//!
//! pgoutput sends every value in its type's text output format. The
//! replication connection pins `DateStyle=ISO`, `IntervalStyle=iso_8601`,
//! `TimeZone=UTC`, `bytea_output=hex` and `extra_float_digits=1`, so each
//! type has exactly one text form to parse here. Values are written straight
//! into the event's JSON buffer: no intermediate `serde_json::Value`.

use std::fmt::Write as _;

/// How a column's text is written as JSON. Resolved once per column
/// (domains to their base type, arrays to their element type) by the catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TypeKind {
    /// `bool`: `t`/`f` → `true`/`false`.
    Bool,
    /// Integers and `oid`: the digits as a JSON number.
    Integer,
    /// `float4`, `float8`, `numeric`: the digits as a JSON number;
    /// `NaN`, `Infinity`, `-Infinity` as strings.
    Decimal,
    /// `json`, `jsonb`: embedded as JSON.
    Json,
    /// `date`: ISO 8601, astronomical year numbering for BC dates.
    Date,
    /// `timestamp`: ISO 8601 with `T`, six fractional digits, no offset.
    Timestamp,
    /// `timestamptz`: ISO 8601 UTC with `T`, six fractional digits, `Z`.
    TimestampTz,
    /// `interval`: `{"months": m, "days": d, "microseconds": us}`.
    Interval,
    /// An array of any dimension, with its element kind and delimiter.
    Array(Box<TypeKind>, u8),
    /// Everything else: a JSON string of the text output.
    Text,
}

impl TypeKind {
    /// The kind of a built-in type, or `None` when the catalog must be asked
    /// (arrays, domains, enums, extension types).
    pub fn builtin(oid: u32) -> Option<TypeKind> {
        Some(match oid {
            16 => TypeKind::Bool,
            20 | 21 | 23 | 26 => TypeKind::Integer,
            700 | 701 | 1700 => TypeKind::Decimal,
            114 | 3802 => TypeKind::Json,
            1082 => TypeKind::Date,
            1114 => TypeKind::Timestamp,
            1184 => TypeKind::TimestampTz,
            1186 => TypeKind::Interval,
            // bytea, char, name, text, bpchar, varchar, time, timetz, uuid, inet, cidr,
            // macaddr, money, bit, varbit, xml, point, tsvector: their text output as a string.
            17 | 18 | 19 | 25 | 1042 | 1043 | 1083 | 1266 | 2950 | 869 | 650 | 829 | 790 | 1560
            | 1562 | 142 | 600 | 3614 => TypeKind::Text,
            _ => return None,
        })
    }
}

/// A value whose text did not have the form its type promises.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unexpected text output for a {kind} value")]
pub struct ValueError {
    kind: &'static str,
}

impl ValueError {
    pub(crate) fn not_utf8() -> Self {
        ValueError { kind: "UTF-8 text" }
    }
}

/// Appends `s` as a JSON string (quoted and escaped).
pub fn write_str(out: &mut String, s: &str) {
    out.reserve(s.len() + 2);
    out.push('"');
    let bytes = s.as_bytes();
    let mut start = 0;
    // Most text needs no escaping: 16 bytes at a time (the compiler vectorises the
    // check); a chunk that needs some is done a byte at a time.
    for (n, chunk) in bytes.chunks(16).enumerate() {
        if chunk.len() == 16
            && !chunk.iter().fold(false, |any, &b| {
                any | (b < 0x20) | (b == b'"') | (b == b'\\')
            })
        {
            continue;
        }
        for (k, &b) in chunk.iter().enumerate() {
            if !NEEDS_ESCAPE[b as usize] {
                continue;
            }
            let i = n * 16 + k;
            let esc: &str = match b {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\n' => "\\n",
                b'\r' => "\\r",
                b'\t' => "\\t",
                _ => "",
            };
            out.push_str(&s[start..i]);
            if esc.is_empty() {
                let _ = write!(out, "\\u{b:04x}");
            } else {
                out.push_str(esc);
            }
            start = i + 1;
        }
    }
    out.push_str(&s[start..]);
    out.push('"');
}

/// Bytes a JSON string escapes: `"`, `\\` and control characters.
const NEEDS_ESCAPE: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        t[b] = true;
        b += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t
};

fn is_json_number(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    if b.first() == Some(&b'-') {
        i += 1;
    }
    let int_start = i;
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    let int = &b[int_start..i];
    if int.is_empty() || (int.len() > 1 && int[0] == b'0') {
        return false;
    }
    if i < b.len() && b[i] == b'.' {
        i += 1;
        let f = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == f {
            return false;
        }
    }
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        i += 1;
        if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
            i += 1;
        }
        let e = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == e {
            return false;
        }
    }
    i == b.len()
}

/// Appends the JSON form of one non-null value.
pub fn write_value(out: &mut String, kind: &TypeKind, text: &str) -> Result<(), ValueError> {
    match kind {
        TypeKind::Bool => match text {
            "t" => out.push_str("true"),
            "f" => out.push_str("false"),
            _ => return Err(ValueError { kind: "bool" }),
        },
        TypeKind::Integer => {
            let digits = text.strip_prefix('-').unwrap_or(text).as_bytes();
            let leading_zero = digits.len() > 1 && digits[0] == b'0';
            if digits.is_empty() || leading_zero || !digits.iter().all(u8::is_ascii_digit) {
                return Err(ValueError { kind: "integer" });
            }
            out.push_str(text);
        }
        TypeKind::Decimal => match text {
            "NaN" | "Infinity" | "-Infinity" => write_str(out, text),
            _ if is_json_number(text) => out.push_str(text),
            _ => return Err(ValueError { kind: "numeric" }),
        },
        // Postgres only outputs valid JSON for these types.
        TypeKind::Json => out.push_str(text),
        TypeKind::Date => write_date(out, text)?,
        TypeKind::Timestamp => write_timestamp(out, text, false)?,
        TypeKind::TimestampTz => write_timestamp(out, text, true)?,
        TypeKind::Interval => write_interval(out, text)?,
        TypeKind::Array(elem, delim) => {
            let mut p = ArrayParser {
                s: text.as_bytes(),
                i: 0,
                delim: *delim,
                scratch: String::new(),
            };
            p.skip_dimensions();
            p.array(out, elem)?;
            if p.i != p.s.len() {
                return Err(ValueError { kind: "array" });
            }
        }
        TypeKind::Text => write_str(out, text),
    }
    Ok(())
}

/// Writes the date part `YYYY-MM-DD` (four or more year digits) in ISO 8601
/// with astronomical year numbering: 1 BC is year `0000`, 44 BC is `-0043`.
fn push_iso_date(out: &mut String, date: &str, bc: bool) -> Result<(), ValueError> {
    let err = || ValueError { kind: "date" };
    let (year, month_day) = date.split_once('-').ok_or_else(err)?;
    if year.len() < 4
        || !year.bytes().all(|b| b.is_ascii_digit())
        || month_day.len() != 5
        || !month_day.bytes().enumerate().all(|(i, b)| {
            if i == 2 {
                b == b'-'
            } else {
                b.is_ascii_digit()
            }
        })
    {
        return Err(err());
    }
    if bc {
        // Postgres has no year 0: n BC is astronomical year 1 - n.
        let n: u64 = year.parse().map_err(|_| err())?;
        let astronomical = n.checked_sub(1).ok_or_else(err)?;
        if astronomical == 0 {
            out.push_str("0000");
        } else {
            let _ = write!(out, "-{astronomical:04}");
        }
    } else {
        out.push_str(year);
    }
    out.push('-');
    out.push_str(month_day);
    Ok(())
}

/// `2024-03-21` → `"2024-03-21"`, `0044-03-15 BC` → `"-0043-03-15"`.
fn write_date(out: &mut String, text: &str) -> Result<(), ValueError> {
    if text == "infinity" || text == "-infinity" {
        write_str(out, text);
        return Ok(());
    }
    let (date, bc) = match text.strip_suffix(" BC") {
        Some(d) => (d, true),
        None => (text, false),
    };
    out.push('"');
    push_iso_date(out, date, bc)?;
    out.push('"');
    Ok(())
}

/// `2024-03-21 15:30:00.12747[+00][ BC]` → `"2024-03-21T15:30:00.127470[Z]"`
/// (BC years in astronomical numbering, as [`write_date`]).
fn write_timestamp(out: &mut String, text: &str, tz: bool) -> Result<(), ValueError> {
    let err = ValueError { kind: "timestamp" };
    if text == "infinity" || text == "-infinity" {
        write_str(out, text);
        return Ok(());
    }
    let (text, bc) = match text.strip_suffix(" BC") {
        Some(t) => (t, true),
        None => (text, false),
    };
    let (date, time) = text.split_once(' ').ok_or(err)?;
    if time.len() < 8 || !time.is_char_boundary(8) {
        return Err(ValueError { kind: "timestamp" });
    }
    let (hms, rest) = time.split_at(8);
    let (frac, offset) = match rest.strip_prefix('.') {
        Some(r) => {
            let n = r.bytes().take_while(u8::is_ascii_digit).count();
            r.split_at(n)
        }
        None => ("", rest),
    };
    if frac.len() > 6 {
        return Err(ValueError { kind: "timestamp" });
    }
    out.push('"');
    push_iso_date(out, date, bc)?;
    out.push('T');
    out.push_str(hms);
    out.push('.');
    out.push_str(frac);
    for _ in frac.len()..6 {
        out.push('0');
    }
    if tz {
        match offset {
            "+00" | "+00:00" => out.push('Z'),
            // The connection pins TimeZone=UTC, so this is not expected; keep the offset.
            other => out.push_str(other),
        }
    } else if !offset.is_empty() {
        return Err(ValueError { kind: "timestamp" });
    }
    out.push('"');
    Ok(())
}

/// ISO 8601 interval (`IntervalStyle=iso_8601`), e.g. `P1Y2M3DT4H5M6.5S`,
/// `P-1Y-2M`, `PT0S` → `{"months":14,"days":3,"microseconds":14706500000}`.
fn write_interval(out: &mut String, text: &str) -> Result<(), ValueError> {
    let err = || ValueError { kind: "interval" };
    // Postgres 17 and later have infinite intervals.
    if text == "infinity" || text == "-infinity" {
        write_str(out, text);
        return Ok(());
    }
    let body = text.strip_prefix('P').ok_or_else(err)?;
    let (mut months, mut days, mut micros) = (0i64, 0i64, 0i64);
    let mut in_time = false;
    let mut rest = body;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('T') {
            in_time = true;
            rest = r;
            continue;
        }
        let n = rest
            .bytes()
            .take_while(|b| b.is_ascii_digit() || *b == b'-' || *b == b'.' || *b == b'+')
            .count();
        let (num, r) = rest.split_at(n);
        let unit = r.bytes().next().ok_or_else(err)?;
        rest = &r[1..];
        let (neg, digits) = match num.strip_prefix('-') {
            Some(d) => (true, d),
            None => (false, num.strip_prefix('+').unwrap_or(num)),
        };
        let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
        let int: i64 = int.parse().map_err(|_| err())?;
        let sign = if neg { -1 } else { 1 };
        match (in_time, unit, frac.is_empty()) {
            (false, b'Y', true) => months += sign * int * 12,
            (false, b'M', true) => months += sign * int,
            (false, b'W', true) => days += sign * int * 7,
            (false, b'D', true) => days += sign * int,
            (true, b'H', true) => micros += sign * int * 3_600_000_000,
            (true, b'M', true) => micros += sign * int * 60_000_000,
            (true, b'S', _) => {
                if frac.len() > 6 || !frac.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(err());
                }
                let mut f: i64 = if frac.is_empty() {
                    0
                } else {
                    frac.parse().map_err(|_| err())?
                };
                for _ in frac.len()..6 {
                    f *= 10;
                }
                micros += sign * (int * 1_000_000 + f);
            }
            _ => return Err(err()),
        }
    }
    let _ = write!(
        out,
        "{{\"months\":{months},\"days\":{days},\"microseconds\":{micros}}}"
    );
    Ok(())
}

/// Parses Postgres's array text output (`{1,2}`, `{{"a b",NULL}}`, `[0:1]={…}`).
struct ArrayParser<'a> {
    s: &'a [u8],
    i: usize,
    delim: u8,
    scratch: String,
}

impl ArrayParser<'_> {
    fn err() -> ValueError {
        ValueError { kind: "array" }
    }

    /// Arrays with lower bounds other than 1 start with `[l:u]…=`.
    fn skip_dimensions(&mut self) {
        if self.s.first() == Some(&b'[') {
            if let Some(eq) = self.s.iter().position(|&b| b == b'=') {
                self.i = eq + 1;
            }
        }
    }

    fn array(&mut self, out: &mut String, elem: &TypeKind) -> Result<(), ValueError> {
        if self.s.get(self.i) != Some(&b'{') {
            return Err(Self::err());
        }
        self.i += 1;
        out.push('[');
        if self.s.get(self.i) == Some(&b'}') {
            self.i += 1;
            out.push(']');
            return Ok(());
        }
        let mut first = true;
        loop {
            if !first {
                out.push(',');
            }
            first = false;
            match self.s.get(self.i) {
                Some(b'{') => self.array(out, elem)?,
                Some(b'"') => {
                    self.i += 1;
                    self.scratch.clear();
                    let mut raw = Vec::new();
                    loop {
                        match self.s.get(self.i) {
                            Some(b'\\') => {
                                raw.push(*self.s.get(self.i + 1).ok_or_else(Self::err)?);
                                self.i += 2;
                            }
                            Some(b'"') => {
                                self.i += 1;
                                break;
                            }
                            Some(&b) => {
                                raw.push(b);
                                self.i += 1;
                            }
                            None => return Err(Self::err()),
                        }
                    }
                    let text = String::from_utf8(raw).map_err(|_| Self::err())?;
                    write_value(out, elem, &text)?;
                }
                Some(_) => {
                    let start = self.i;
                    while let Some(&b) = self.s.get(self.i) {
                        if b == self.delim || b == b'}' {
                            break;
                        }
                        self.i += 1;
                    }
                    let text = std::str::from_utf8(&self.s[start..self.i])
                        .map_err(|_| Self::err())?
                        .trim();
                    if text == "NULL" {
                        out.push_str("null");
                    } else {
                        write_value(out, elem, text)?;
                    }
                }
                None => return Err(Self::err()),
            }
            match self.s.get(self.i) {
                Some(&b) if b == self.delim => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    out.push(']');
                    return Ok(());
                }
                _ => return Err(Self::err()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_escaped_wherever_the_character_falls() {
        for len in [0, 1, 15, 16, 17, 31, 32, 33, 70] {
            for at in 0..len {
                for special in ['"', '\\', '\n', '\u{1}', '\u{1f}', 'é'] {
                    let mut text: String = "abcdefghijklmnopqrstuvwxyz"
                        .chars()
                        .cycle()
                        .take(len)
                        .collect();
                    text.replace_range(at..at + 1, &special.to_string());
                    let mut out = String::new();
                    write_str(&mut out, &text);
                    let back: String = serde_json::from_str(&out).expect(&out);
                    assert_eq!(back, text, "{out}");
                    assert!(!out[1..out.len() - 1].contains(|c: char| c < ' '), "{out}");
                }
            }
        }
    }

    fn json(kind: &TypeKind, text: &str) -> String {
        let mut out = String::new();
        write_value(&mut out, kind, text).expect(text);
        out
    }

    #[test]
    fn scalars() {
        assert_eq!(json(&TypeKind::Bool, "t"), "true");
        assert_eq!(json(&TypeKind::Integer, "-42"), "-42");
        assert_eq!(json(&TypeKind::Decimal, "1e+20"), "1e+20");
        assert_eq!(
            json(&TypeKind::Decimal, "12345678901234567890.000000000001"),
            "12345678901234567890.000000000001"
        );
        assert_eq!(json(&TypeKind::Decimal, "NaN"), "\"NaN\"");
        assert_eq!(json(&TypeKind::Decimal, "-Infinity"), "\"-Infinity\"");
        assert_eq!(
            json(&TypeKind::Json, r#"{"a": [1, 2]}"#),
            r#"{"a": [1, 2]}"#
        );
        assert_eq!(
            json(&TypeKind::Text, "a\"b\\c\n\u{1}"),
            r#""a\"b\\c\n\u0001""#
        );
        assert_eq!(json(&TypeKind::Text, "ünï"), "\"ünï\"");
        assert!(write_value(&mut String::new(), &TypeKind::Integer, "1.5").is_err());
        assert!(write_value(&mut String::new(), &TypeKind::Decimal, "01").is_err());
    }

    #[test]
    fn timestamps() {
        let ts = TypeKind::Timestamp;
        let tz = TypeKind::TimestampTz;
        assert_eq!(
            json(&ts, "2024-03-21 15:30:00.12747"),
            "\"2024-03-21T15:30:00.127470\""
        );
        assert_eq!(
            json(&ts, "2024-03-21 15:30:00"),
            "\"2024-03-21T15:30:00.000000\""
        );
        assert_eq!(
            json(&tz, "2024-03-21 15:30:00.127470+00"),
            "\"2024-03-21T15:30:00.127470Z\""
        );
        assert_eq!(json(&tz, "infinity"), "\"infinity\"");
        assert_eq!(json(&ts, "-infinity"), "\"-infinity\"");
        // BC: astronomical year numbering (1 BC is year 0); long years keep their digits.
        assert_eq!(
            json(&ts, "0044-03-15 12:00:00 BC"),
            "\"-0043-03-15T12:00:00.000000\""
        );
        assert_eq!(
            json(&tz, "0044-03-15 12:00:00.5+00 BC"),
            "\"-0043-03-15T12:00:00.500000Z\""
        );
        assert_eq!(
            json(&ts, "0001-01-01 00:00:00 BC"),
            "\"0000-01-01T00:00:00.000000\""
        );
        assert_eq!(
            json(&ts, "10000-01-01 00:00:00"),
            "\"10000-01-01T00:00:00.000000\""
        );
        assert!(write_value(&mut String::new(), &ts, "0000-01-01 00:00:00 BC").is_err());
    }

    #[test]
    fn dates() {
        let d = TypeKind::Date;
        assert_eq!(json(&d, "2024-03-21"), "\"2024-03-21\"");
        assert_eq!(json(&d, "0044-03-15 BC"), "\"-0043-03-15\"");
        assert_eq!(json(&d, "0001-12-31 BC"), "\"0000-12-31\"");
        assert_eq!(json(&d, "4714-11-24 BC"), "\"-4713-11-24\"");
        assert_eq!(json(&d, "10000-01-01"), "\"10000-01-01\"");
        assert_eq!(json(&d, "infinity"), "\"infinity\"");
        assert_eq!(json(&d, "-infinity"), "\"-infinity\"");
        let dates = TypeKind::Array(Box::new(TypeKind::Date), b',');
        assert_eq!(
            json(&dates, "{2024-03-21,\"0044-03-15 BC\",NULL}"),
            r#"["2024-03-21","-0043-03-15",null]"#
        );
        assert!(write_value(&mut String::new(), &d, "21/03/2024").is_err());
    }

    #[test]
    fn intervals() {
        assert_eq!(
            json(&TypeKind::Interval, "P1Y2M3DT4H5M6.5S"),
            r#"{"months":14,"days":3,"microseconds":14706500000}"#
        );
        assert_eq!(json(&TypeKind::Interval, "-infinity"), "\"-infinity\"");
        assert_eq!(
            json(&TypeKind::Interval, "PT0S"),
            r#"{"months":0,"days":0,"microseconds":0}"#
        );
        assert_eq!(
            json(&TypeKind::Interval, "P-1Y-2M3DT-0.000001S"),
            r#"{"months":-14,"days":3,"microseconds":-1}"#
        );
    }

    #[test]
    fn arrays() {
        let ints = TypeKind::Array(Box::new(TypeKind::Integer), b',');
        assert_eq!(json(&ints, "{1,2,NULL}"), "[1,2,null]");
        assert_eq!(json(&ints, "{{1,2},{3,4}}"), "[[1,2],[3,4]]");
        assert_eq!(json(&ints, "[0:1]={7,8}"), "[7,8]");
        assert_eq!(json(&ints, "{}"), "[]");
        let texts = TypeKind::Array(Box::new(TypeKind::Text), b',');
        assert_eq!(
            json(&texts, r#"{"a,b","c\"d\\e",NULL,"NULL",plain}"#),
            r#"["a,b","c\"d\\e",null,"NULL","plain"]"#
        );
        let jsons = TypeKind::Array(Box::new(TypeKind::Json), b',');
        assert_eq!(json(&jsons, r#"{"{\"a\": 1}"}"#), r#"[{"a": 1}]"#);
        let boxes = TypeKind::Array(Box::new(TypeKind::Text), b';');
        assert_eq!(
            json(&boxes, "{(1,1),(0,0);(2,2),(1,1)}"),
            r#"["(1,1),(0,0)","(2,2),(1,1)"]"#
        );
        assert!(write_value(&mut String::new(), &ints, "{1,2").is_err());
    }
}

//! A native evaluator for the jq programs sinks use most, with jaq as the exact fallback.
//!
//! [`Plan::compile`] reads a program with jaq's own parser and turns it into a plan when
//! every part of it is in this subset:
//!
//! - `.`, paths of keys (`.a.b`, `."a b"`, `.["a"]`), parenthesised;
//! - `null`, `true`, `false`, strings (interpolation `"\(.a).\(.b)"` too), integers
//!   written as jq writes them (`0`, `42`, not `042` nor `1.0`);
//! - `==` and `!=`, `and`, `or`, `not`, and `|` after a path (or before `not`);
//! - object construction with literal keys, none twice (`{id: .record.id, "b": 1, c}`);
//! - `del(paths)` and `path |= program` on objects.
//!
//! Anything else (`.a?`, `.[0]`, arithmetic, `<`, `if`, functions, variables …) is not
//! compiled and jaq runs the program. A plan runs on the event's text as scanned by
//! [`super::scan`], copying the spans of the values it outputs; whenever the result could
//! differ from jaq's (indexing a string or a number, comparing two numbers that are not
//! integers, or two arrays or objects, copying an object or array out of a text that is
//! written otherwise than jaq writes it, editing an object that is missing …) it gives
//! up on that event and jaq
//! runs the program on it, so that outputs and errors are jaq's, byte for byte.

use std::borrow::Cow;

use jaq_core::load::lex::StrPart;
use jaq_core::load::parse::{BinaryOp, Term};
use jaq_core::ops::Cmp;
use jaq_core::path::{Opt, Part};

use super::scan::{write_string, Doc, Kind, Node, NEG_ZERO, REWRITE};

/// A program compiled for the native evaluator.
#[derive(Debug)]
pub(super) struct Plan(Expr);

#[derive(Debug)]
enum Expr {
    Id,
    /// `head.k1.k2…`
    Path(Box<Expr>, Vec<String>),
    Lit(Lit),
    /// `l == r` (true) or `l != r` (false)
    Eq(Box<Expr>, bool, Box<Expr>),
    /// `l or r` (true) or `l and r` (false)
    Logic(Box<Expr>, bool, Box<Expr>),
    /// `not`, of the input
    Not,
    Pipe(Box<Expr>, Box<Expr>),
    /// Keys written as JSON strings, values.
    Obj(Vec<(String, Expr)>),
    Interp(Vec<Piece>),
    /// `del(p1, p2, …)`: the key paths, deleted in turn.
    Del(Vec<Vec<String>>),
    /// `path |= f`
    Update(Vec<String>, Box<Expr>),
}

#[derive(Debug)]
enum Lit {
    Null,
    Bool(bool),
    /// Digits, as jaq writes them.
    Int(String),
    Str(String),
}

#[derive(Debug)]
enum Piece {
    Text(String),
    Expr(Expr),
}

/// The result could differ from jaq's: let jaq run the program on this input.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Fallback;

type R<T> = Result<T, Fallback>;

/// A value during evaluation.
#[derive(Clone, Debug)]
enum V<'a> {
    Null,
    Bool(bool),
    Int(&'a str),
    Str(Cow<'a, str>),
    /// A value of the input.
    Node(Node),
    /// Keys written as JSON strings, values.
    Obj(Vec<(&'a str, V<'a>)>),
    /// An object of the input, edited.
    Edit(Box<Edit<'a>>),
}

/// An object of the input that can be copied ([`Doc::copyable`]) with entries deleted or replaced: the order of its
/// entries (indices into the object's entries) as jaq keeps it, and the replacements.
#[derive(Clone, Debug)]
struct Edit<'a> {
    obj: Node,
    order: Vec<u32>,
    set: Vec<(u32, V<'a>)>,
}

impl Plan {
    /// The plan of `code`, `None` when it is not in the subset (or not jq).
    pub fn compile(code: &str) -> Option<Plan> {
        let term = jaq_core::load::parse(code, |p| p.term())?;
        compile(&term).map(Plan)
    }

    /// The program's output on `doc`, as jaq writes it.
    pub fn output(&self, doc: &Doc<'_>) -> R<String> {
        let mut out = String::with_capacity(256);
        self.0.emit(doc, &V::Node(doc.root), &mut out)?;
        Ok(out)
    }

    /// Whether the program's output on `doc` is `true`.
    pub fn is_true(&self, doc: &Doc<'_>) -> R<bool> {
        Ok(match self.0.eval(doc, &V::Node(doc.root))? {
            V::Bool(b) => b,
            V::Node(n) => n.kind == Kind::True,
            _ => false,
        })
    }
}

/// The key a string term spells, when it is a constant.
fn key_of(term: &Term<&str>) -> Option<String> {
    let Term::Str(None, parts) = term else {
        return None;
    };
    let mut key = String::new();
    for part in parts {
        match part {
            StrPart::Str(s) => key.push_str(s),
            StrPart::Char(c) => key.push(*c),
            StrPart::Term(_) => return None,
        }
    }
    Some(key)
}

/// The keys of a path of keys from `.` (`.a.b`, `(.a).b`); `None` for anything else.
fn key_path(term: &Term<&str>) -> Option<Vec<String>> {
    let Term::Path(head, path) = term else {
        return None;
    };
    let mut keys = match &**head {
        Term::Id => Vec::new(),
        head => key_path(head)?,
    };
    for (part, opt) in &path.0 {
        match (part, opt) {
            (Part::Index(k), Opt::Essential) => keys.push(key_of(k)?),
            _ => return None,
        }
    }
    Some(keys)
}

/// The key paths of `del`'s argument: `p1, p2, …`.
fn del_paths(term: &Term<&str>, paths: &mut Vec<Vec<String>>) -> Option<()> {
    match term {
        Term::BinOp(l, BinaryOp::Comma, r) => {
            del_paths(l, paths)?;
            del_paths(r, paths)
        }
        t => {
            let p = key_path(t)?;
            (!p.is_empty()).then(|| paths.push(p))
        }
    }
}

/// Digits as jaq writes them: no sign, no leading zero, no fraction or exponent.
fn is_plain_int(n: &str) -> bool {
    n == "0"
        || (n.starts_with(|c: char| matches!(c, '1'..='9'))
            && n.bytes().all(|c| c.is_ascii_digit()))
}

fn compile(term: &Term<&str>) -> Option<Expr> {
    let boxed = |t: &Term<&str>| compile(t).map(Box::new);
    Some(match term {
        Term::Id => Expr::Id,
        Term::Path(head, path) => {
            let head = compile(head)?;
            if !head.is_path() {
                return None;
            }
            let mut keys = Vec::new();
            for (part, opt) in &path.0 {
                match (part, opt) {
                    (Part::Index(k), Opt::Essential) => keys.push(key_of(k)?),
                    _ => return None,
                }
            }
            Expr::Path(Box::new(head), keys)
        }
        Term::Str(None, parts) => match key_of(term) {
            Some(s) => Expr::Lit(Lit::Str(s)),
            None => {
                let mut pieces = Vec::new();
                for part in parts {
                    pieces.push(match part {
                        StrPart::Str(s) => Piece::Text((*s).to_owned()),
                        StrPart::Char(c) => Piece::Text(c.to_string()),
                        StrPart::Term(t) => Piece::Expr(compile(t)?),
                    });
                }
                Expr::Interp(pieces)
            }
        },
        Term::Num(n) if is_plain_int(n) => Expr::Lit(Lit::Int((*n).to_owned())),
        Term::Call(name, args) => match (*name, &args[..]) {
            ("null", []) => Expr::Lit(Lit::Null),
            ("true", []) => Expr::Lit(Lit::Bool(true)),
            ("false", []) => Expr::Lit(Lit::Bool(false)),
            ("not", []) => Expr::Not,
            ("del", [f]) => {
                let mut paths = Vec::new();
                del_paths(f, &mut paths)?;
                Expr::Del(paths)
            }
            _ => return None,
        },
        Term::BinOp(l, op, r) => match op {
            BinaryOp::Pipe(None) => {
                let (l, r) = (compile(l)?, compile(r)?);
                if !(l.is_path() || matches!(r, Expr::Not)) {
                    return None;
                }
                Expr::Pipe(Box::new(l), Box::new(r))
            }
            BinaryOp::Cmp(Cmp::Eq) => Expr::Eq(boxed(l)?, true, boxed(r)?),
            BinaryOp::Cmp(Cmp::Ne) => Expr::Eq(boxed(l)?, false, boxed(r)?),
            BinaryOp::Or => Expr::Logic(boxed(l)?, true, boxed(r)?),
            BinaryOp::And => Expr::Logic(boxed(l)?, false, boxed(r)?),
            BinaryOp::Update => {
                let keys = key_path(l)?;
                if keys.is_empty() {
                    return None;
                }
                Expr::Update(keys, boxed(r)?)
            }
            _ => return None,
        },
        Term::Obj(entries) => {
            let mut out: Vec<(String, Expr)> = Vec::with_capacity(entries.len());
            let mut seen: Vec<String> = Vec::with_capacity(entries.len());
            for (k, v) in entries {
                let key = key_of(k)?;
                if seen.contains(&key) {
                    return None;
                }
                let value = match v {
                    Some(v) => compile(v)?,
                    None => Expr::Path(Box::new(Expr::Id), vec![key.clone()]),
                };
                let mut json = String::new();
                write_string(&mut json, &key);
                seen.push(key);
                out.push((json, value));
            }
            Expr::Obj(out)
        }
        _ => return None,
    })
}

impl Expr {
    /// A path: its output is a value of the input (or null).
    fn is_path(&self) -> bool {
        match self {
            Expr::Id => true,
            Expr::Path(head, _) => head.is_path(),
            Expr::Pipe(l, r) => l.is_path() && r.is_path(),
            _ => false,
        }
    }

    /// Writes the output on `input` to `out` (an object without building it first).
    fn emit<'a>(&'a self, doc: &Doc<'a>, input: &V<'a>, out: &mut String) -> R<()> {
        match self {
            Expr::Obj(entries) => {
                out.push('{');
                for (i, (k, e)) in entries.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(k);
                    out.push(':');
                    e.emit(doc, input, out)?;
                }
                out.push('}');
                Ok(())
            }
            // A path from the input's value: no value built.
            Expr::Path(head, keys) if matches!(**head, Expr::Id) => match input {
                V::Node(n) => match walk(doc, Some(*n), keys)? {
                    Some(n) => write_node(doc, n, out),
                    None => {
                        out.push_str("null");
                        Ok(())
                    }
                },
                v => write(doc, &self.eval(doc, v)?, out),
            },
            e => write(doc, &e.eval(doc, input)?, out),
        }
    }

    fn eval<'a>(&'a self, doc: &Doc<'a>, input: &V<'a>) -> R<V<'a>> {
        Ok(match self {
            Expr::Id => input.clone(),
            Expr::Path(head, keys) => {
                let mut keys = keys.iter();
                let mut v = match &**head {
                    Expr::Id => match keys.next() {
                        Some(k) => index(doc, input, k)?,
                        None => input.clone(),
                    },
                    head => head.eval(doc, input)?,
                };
                for k in keys {
                    v = index(doc, &v, k)?;
                }
                v
            }
            Expr::Lit(Lit::Null) => V::Null,
            Expr::Lit(Lit::Bool(b)) => V::Bool(*b),
            Expr::Lit(Lit::Int(n)) => V::Int(n),
            Expr::Lit(Lit::Str(s)) => V::Str(Cow::Borrowed(s)),
            Expr::Eq(l, eq, r) => {
                let (l, r) = (l.eval(doc, input)?, r.eval(doc, input)?);
                V::Bool(equal(doc, &l, &r)? == *eq)
            }
            Expr::Logic(l, or, r) => {
                if truthy(&l.eval(doc, input)?) == *or {
                    V::Bool(*or)
                } else {
                    V::Bool(truthy(&r.eval(doc, input)?))
                }
            }
            Expr::Not => V::Bool(!truthy(input)),
            Expr::Pipe(l, r) => r.eval(doc, &l.eval(doc, input)?)?,
            Expr::Obj(entries) => V::Obj(
                entries
                    .iter()
                    .map(|(k, e)| Ok((k.as_str(), e.eval(doc, input)?)))
                    .collect::<R<_>>()?,
            ),
            Expr::Interp(pieces) => {
                let mut s = String::new();
                for piece in pieces {
                    match piece {
                        Piece::Text(t) => s.push_str(t),
                        Piece::Expr(e) => match e.eval(doc, input)? {
                            V::Str(t) => s.push_str(&t),
                            V::Node(n) if n.kind == Kind::String => s.push_str(&doc.string(n)),
                            v => write(doc, &v, &mut s)?,
                        },
                    }
                }
                V::Str(Cow::Owned(s))
            }
            Expr::Del(paths) => {
                let mut v = input.clone();
                for p in paths {
                    v = delete(doc, v, p)?;
                }
                v
            }
            Expr::Update(keys, f) => update(doc, input.clone(), keys, f)?,
        })
    }
}

/// The value at `keys` from `node` (`None`: null), as [`index`] goes.
fn walk(doc: &Doc<'_>, mut node: Option<Node>, keys: &[String]) -> R<Option<Node>> {
    for k in keys {
        node = match node {
            None => None,
            Some(n) => match n.kind {
                Kind::Null => None,
                Kind::Object => doc.get(n, k),
                _ => return Err(Fallback),
            },
        };
    }
    Ok(node)
}

/// `v | .[key]`: null for null or a missing key; anything but an object of the
/// input (an error in jaq) falls back.
fn index<'a>(doc: &Doc<'a>, v: &V<'a>, key: &str) -> R<V<'a>> {
    match v {
        V::Null => Ok(V::Null),
        V::Node(n) => match n.kind {
            Kind::Null => Ok(V::Null),
            Kind::Object => Ok(doc.get(*n, key).map_or(V::Null, V::Node)),
            _ => Err(Fallback),
        },
        _ => Err(Fallback),
    }
}

/// jq's truth: all but `null` and `false`.
fn truthy(v: &V<'_>) -> bool {
    match v {
        V::Null | V::Bool(false) => false,
        V::Node(n) => !matches!(n.kind, Kind::Null | Kind::False),
        _ => true,
    }
}

/// A value's type and, for what is compared natively, its contents.
enum Typed<'a> {
    Null,
    Bool(bool),
    /// An integer's digits as jaq writes them; `None` for other numbers.
    Num(Option<&'a str>),
    Str(Cow<'a, str>),
    Arr,
    Obj,
}

fn typed<'a>(doc: &Doc<'a>, v: &'a V<'a>) -> Typed<'a> {
    match v {
        V::Null => Typed::Null,
        V::Bool(b) => Typed::Bool(*b),
        V::Int(n) => Typed::Num(Some(n)),
        V::Str(s) => Typed::Str(Cow::Borrowed(s)),
        V::Obj(_) | V::Edit(_) => Typed::Obj,
        V::Node(n) => match n.kind {
            Kind::Null => Typed::Null,
            Kind::True => Typed::Bool(true),
            Kind::False => Typed::Bool(false),
            Kind::Number if n.aux & NEG_ZERO != 0 => Typed::Num(Some("0")),
            Kind::Number => {
                let text = doc.span(*n);
                Typed::Num((!text.contains(['.', 'e', 'E'])).then_some(text))
            }
            Kind::String => Typed::Str(doc.string(*n)),
            Kind::Array => Typed::Arr,
            Kind::Object => Typed::Obj,
        },
    }
}

/// jq's `==`: values of different types differ; numbers that are not both integers,
/// arrays and objects fall back.
fn equal(doc: &Doc<'_>, l: &V<'_>, r: &V<'_>) -> R<bool> {
    Ok(match (typed(doc, l), typed(doc, r)) {
        (Typed::Null, Typed::Null) => true,
        (Typed::Bool(a), Typed::Bool(b)) => a == b,
        (Typed::Str(a), Typed::Str(b)) => a == b,
        (Typed::Num(Some(a)), Typed::Num(Some(b))) => a == b,
        (Typed::Num(_), Typed::Num(_)) | (Typed::Arr, Typed::Arr) | (Typed::Obj, Typed::Obj) => {
            return Err(Fallback)
        }
        _ => false,
    })
}

impl<'a> Edit<'a> {
    /// `v` to edit: an object of the input that can be copied, or one being edited.
    fn of(doc: &Doc<'a>, v: V<'a>) -> R<Edit<'a>> {
        match v {
            V::Node(n) if n.kind == Kind::Object && doc.copyable(n) => Ok(Edit {
                obj: n,
                order: (0..doc.entries(n).len() as u32).collect(),
                set: Vec::new(),
            }),
            V::Edit(e) => Ok(*e),
            _ => Err(Fallback),
        }
    }

    /// Where `key` is in the order.
    fn find(&self, doc: &Doc<'a>, key: &str) -> Option<usize> {
        let entries = doc.entries(self.obj);
        self.order
            .iter()
            .position(|&i| doc.key_is(entries[i as usize].key, key))
    }

    /// The value of entry `i` now.
    fn value(&self, doc: &Doc<'a>, i: u32) -> V<'a> {
        match self.set.iter().find(|(j, _)| *j == i) {
            Some((_, v)) => v.clone(),
            None => V::Node(doc.entries(self.obj)[i as usize].value),
        }
    }

    fn put(&mut self, i: u32, v: V<'a>) {
        match self.set.iter_mut().find(|(j, _)| *j == i) {
            Some(slot) => slot.1 = v,
            None => self.set.push((i, v)),
        }
    }
}

/// `v | del(path)`, which jaq runs as `path |= empty`: a missing key is left alone, a
/// present one removed as jaq's map removes it (the last entry takes its place).
fn delete<'a>(doc: &Doc<'a>, v: V<'a>, path: &[String]) -> R<V<'a>> {
    let mut e = Edit::of(doc, v)?;
    match (e.find(doc, &path[0]), path.len()) {
        (None, 1) => {}
        // jaq would run `null | (.rest |= empty)`.
        (None, _) => return Err(Fallback),
        (Some(at), 1) => {
            let i = e.order.swap_remove(at);
            e.set.retain(|(j, _)| *j != i);
        }
        (Some(at), _) => {
            let i = e.order[at];
            let inner = delete(doc, e.value(doc, i), &path[1..])?;
            e.put(i, inner);
        }
    }
    Ok(V::Edit(Box::new(e)))
}

/// `v | path |= f` for a path that is there.
fn update<'a>(doc: &Doc<'a>, v: V<'a>, path: &[String], f: &'a Expr) -> R<V<'a>> {
    let mut e = Edit::of(doc, v)?;
    let at = e.find(doc, &path[0]).ok_or(Fallback)?;
    let i = e.order[at];
    let old = e.value(doc, i);
    let new = if path.len() == 1 {
        f.eval(doc, &old)?
    } else {
        update(doc, old, &path[1..], f)?
    };
    e.put(i, new);
    Ok(V::Edit(Box::new(e)))
}

/// Writes `v` as jaq writes it (compact JSON).
fn write(doc: &Doc<'_>, v: &V<'_>, out: &mut String) -> R<()> {
    match v {
        V::Null => out.push_str("null"),
        V::Bool(true) => out.push_str("true"),
        V::Bool(false) => out.push_str("false"),
        V::Int(n) => out.push_str(n),
        V::Str(s) => write_string(out, s),
        V::Node(n) => write_node(doc, *n, out)?,
        V::Obj(entries) => {
            out.push('{');
            for (i, (k, v)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(k);
                out.push(':');
                write(doc, v, out)?;
            }
            out.push('}');
        }
        V::Edit(e) => {
            let entries = doc.entries(e.obj);
            out.push('{');
            for (n, &i) in e.order.iter().enumerate() {
                if n > 0 {
                    out.push(',');
                }
                let entry = entries[i as usize];
                out.push_str(doc.span(entry.key));
                out.push(':');
                match e.set.iter().find(|(j, _)| *j == i) {
                    Some((_, v)) => write(doc, v, out)?,
                    None => out.push_str(doc.span(entry.value)),
                }
            }
            out.push('}');
        }
    }
    Ok(())
}

/// Writes a value of the input: its span, but for what jaq writes otherwise.
fn write_node(doc: &Doc<'_>, n: Node, out: &mut String) -> R<()> {
    match n.kind {
        Kind::String if n.aux & REWRITE != 0 => write_string(out, &doc.string(n)),
        Kind::Number if n.aux & NEG_ZERO != 0 => out.push('0'),
        Kind::Array | Kind::Object if !doc.copyable(n) => return Err(Fallback),
        _ => out.push_str(doc.span(n)),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::{Input, Program};
    use super::*;

    /// The sinks.sh transform, and an event of its table.
    const BENCH: &str = "{id: .record.id, user: .record.name, mail: .record.email, count: .record.n, total: .record.amount, op: .action, at: .metadata.commit_timestamp, lsn: .metadata.commit_lsn}";

    /// A number with these digits.
    fn num(n: &str) -> serde_json::Value {
        serde_json::from_str(n).expect("a number")
    }

    fn event() -> serde_json::Value {
        serde_json::json!({
            "record": {"id": 7, "name": "name-7", "email": "user7@example.com", "n": 7,
                       "amount": num("0.07"),
                       "secret": "8f14e45fceea167a5a36dedd4bea2543", "payload": "x".repeat(60)},
            "changes": null,
            "action": "insert",
            "metadata": {"table_schema": "public", "table_name": "bench_t",
                         "commit_timestamp": "2026-12-01T14:27:00.123456Z", "commit_lsn": 123456789,
                         "commit_idx": 1, "idempotency_key": "MTIzNDU2Nzg5OjE=", "record_pks": ["7"],
                         "transaction_annotations": null, "database_name": "postgres",
                         "consumer": {"id": "c", "name": "c", "annotations": {}}}
        })
    }

    /// Inputs for the differential test: JSON texts of many shapes.
    fn inputs() -> Vec<String> {
        let e = event();
        let with = |path: &[&str], v: serde_json::Value| {
            let mut e = event();
            let mut at = &mut e;
            for k in &path[..path.len() - 1] {
                at = &mut at[*k];
            }
            at[path[path.len() - 1]] = v;
            e.to_string()
        };
        let without = |path: &[&str]| {
            let mut e = event();
            let mut at = &mut e;
            for k in &path[..path.len() - 1] {
                at = &mut at[*k];
            }
            at.as_object_mut()
                .expect("object")
                .remove(path[path.len() - 1]);
            e.to_string()
        };
        let mut out = vec![
            e.to_string(),
            serde_json::to_string_pretty(&e).expect("JSON"),
            with(&["action"], "delete".into()),
            with(&["action"], "update".into()),
            with(&["changes"], serde_json::json!({"n": 6, "name": "old"})),
            with(
                &["record", "name"],
                "Zoë \"Z\" \\ \n\ttab é 😀 \u{7f} \u{1}".into(),
            ),
            with(&["record", "name"], serde_json::Value::Null),
            with(&["record", "active"], true.into()),
            with(&["record", "active"], false.into()),
            with(&["record", "n"], num("-0")),
            with(&["record", "n"], num("0")),
            with(&["record", "n"], num("5")),
            with(&["record", "n"], num("5.0")),
            with(&["record", "n"], num("1e5")),
            with(
                &["record", "id"],
                num("12345678901234567890.123456789012345"),
            ),
            with(&["record", "id"], num("-12345678901234567890")),
            with(&["record", "amount"], num("-0.0")),
            with(&["record"], serde_json::json!({})),
            with(&["record"], serde_json::json!("a string")),
            with(&["record"], serde_json::json!([1, {"id": 2}])),
            with(&["record"], serde_json::json!(42)),
            with(&["record"], serde_json::Value::Null),
            with(
                &["record"],
                serde_json::json!({"id": {"deep": {"deeper": [{}, []]}}}),
            ),
            with(&["metadata"], true.into()),
            with(&["record", "e-mail"], "dash@example.com".into()),
            without(&["record", "email"]),
            without(&["record", "secret"]),
            without(&["metadata"]),
            without(&["action"]),
            "{}".into(),
            "[1,2]".into(),
            "\"text\"".into(),
            "null".into(),
            "5".into(),
            "true".into(),
        ];
        // Texts serde does not write: escapes jaq writes otherwise, escaped keys,
        // duplicate keys (the last one counts), whitespace, minus zero inside objects.
        out.extend(
            [
                r#"{"action":"in\u0073ert","record":{"id":1,"name":"a\/b","email":"\u00e9\ud83d\ude00"},"metadata":{"commit_lsn":1}}"#,
                r#"{"act\u0069on":"delete","rec\u006frd":{"id":3,"secret":"s"}}"#,
                r#"{"action":"insert","action":"delete","record":{"id":1,"id":2,"secret":"a","secret":"b"}}"#,
                r#"{"record":{"id":1,"n":-0,"tags":[-0,{"a":-0}]},"action":"insert","changes":{"x":[1,2,{"y":null}]}}"#,
                "{ \"action\" : \"insert\" , \"record\" : { \"id\" : 1 , \"secret\" : \"s\" , \"name\" : \"n\" } }",
                r#"{"record":{"secret":1,"a":2,"b":3,"c":4,"payload":5},"action":"x","metadata":{}}"#,
                r#"{"record":{"id":1,"name":"\u001f\n\"","email":"x"},"action":"insert","metadata":{"commit_lsn":5,"commit_timestamp":"t"}}"#,
            ]
            .map(String::from),
        );
        out
    }

    /// Programs in the subset.
    const NATIVE: &[&str] = &[
        ".",
        ".action",
        ".record.id",
        ".record.name",
        ".record.n",
        ".record.amount",
        ".record.tags",
        ".metadata.commit_lsn",
        ".metadata.consumer",
        ".missing.deeper.still",
        ".\"action\"",
        ".[\"record\"][\"id\"]",
        ".record.\"e-mail\"",
        "(.record).id",
        ".record | .id",
        ".record | .name | .x",
        r#".action == "delete""#,
        r#".action != "delete""#,
        r#""delete" == .action"#,
        r#".record.name == "Zoë \"Z\" \\ \n\ttab é 😀 \u007f \u0001""#,
        ".changes == null",
        "null != .changes",
        ".record.active == true",
        ".record.active != false",
        ".record.id == 7",
        ".record.n == 0",
        ".record.n == 5",
        ".record == null",
        ".record.name == .record.name",
        ".record.name == .record.email",
        ".record == .record",
        ".record.tags == .record.tags",
        r#".action == "insert" and .record.id != null"#,
        r#".action == "delete" or .record.n == 5"#,
        ".record.active and .record.id",
        ".record.missing or .changes",
        ".record.id | not",
        "not",
        ".record.active | not",
        r#"(.action == "insert") | not"#,
        "true",
        "false",
        "null",
        r#""literal \"text\" é""#,
        "42",
        "0",
        BENCH,
        "{id: .record.id, op: .action}",
        "{action}",
        "{\"a b\": .record.name, c: null, d: true, e: 1, f: \"lit\", record}",
        "{r: .record, c: .changes}",
        "{x: {y: .record.id, z: {}}, w: {}}",
        "{}",
        r#"{deleted: .action == "delete", n: .record.n}"#,
        r#""\(.metadata.table_schema).\(.metadata.table_name)""#,
        r#""id=\(.record.id) n=\(.record.n) rec=\(.record) ok=\(.action == "insert") \(.missing)""#,
        r#""\(.record.name)""#,
        "del(.metadata)",
        "del(.record.secret)",
        "del(.record.secret, .record.payload)",
        "del(.action, .record)",
        "del(.record, .action)",
        "del(.record.payload, .record.secret, .record.id)",
        "del(.missing)",
        "del(.missing.x)",
        "del(.record.id, .record)",
        "del(.record, .record.id)",
        "del(.record.secret, .record.secret)",
        "del(.metadata.consumer.annotations, .metadata.record_pks)",
        ".record |= del(.secret)",
        ".record |= del(.email, .name)",
        ".metadata |= {lsn: .commit_lsn}",
        ".record.id |= \"hidden\"",
        ".missing |= 1",
        "{(\"a\"): 1}",
    ];

    /// Programs outside it.
    const JAQ_ONLY: &[&str] = &[
        ".a?",
        ".[0]",
        ".[]",
        ".a[]",
        ".a + 1",
        ".a < 1",
        "if . then 1 else 2 end",
        "$__loc__",
        "{(.a): 1}",
        "{a: 1, a: 2}",
        "{a: 1, \"a\": 2}",
        "{$__loc__}",
        ". as $x | $x",
        "1.5",
        "1e3",
        "-1",
        "007",
        "@base64 \"x\"",
        "\"\\(.a)\" | .b",
        "del(.[0])",
        "del(.)",
        "del(.a?)",
        ". |= 1",
        "def f: .; f",
        "empty",
        ".a // \"x\"",
        "select(.a)",
        "[.a]",
        "length",
        ".a, .b",
        "..",
        ".a = 1",
        "{a: 1} | .a",
        "del(.a) | del(.b)",
        "not(.a)",
        "{a: .b?}",
        "\"\\(.a?)\"",
        ".record |= del(.secret) | .record",
        "{\"\\(.a)\": 1}",
        "{@text \"a\": 1}",
        "try .a",
        "error",
        "std::not",
    ];

    #[test]
    fn what_takes_the_native_path() {
        for code in NATIVE {
            assert!(Plan::compile(code).is_some(), "native: {code}");
            assert!(Program::compile(code).expect("jq").is_native(), "{code}");
        }
        for code in JAQ_ONLY {
            assert!(Plan::compile(code).is_none(), "jaq only: {code}");
            if let Ok(p) = Program::compile(code) {
                assert!(!p.is_native(), "{code}");
            }
        }
    }

    /// The native result of every program on every input is jaq's, byte for byte; where
    /// the plan falls back, jaq's result is all there is. Most pairs run natively.
    #[test]
    fn native_results_are_jaqs() {
        let inputs = inputs();
        let (mut native, mut total) = (0, 0);
        for code in NATIVE {
            let program = Program::compile(code).expect("jq");
            let plan = Plan::compile(code).expect("plan");
            for text in &inputs {
                let input = Input::parse(text).expect("JSON");
                let doc = input.doc.as_ref().expect("strict JSON");
                let jaq = program.run_jaq(&input);
                total += 1;
                let Ok(out) = plan.output(doc) else {
                    continue;
                };
                native += 1;
                let jaq = jaq.unwrap_or_else(|e| {
                    panic!("{code} on {text}: jaq failed ({e}), native gave {out}")
                });
                assert_eq!(jaq, std::slice::from_ref(&out), "{code} on {text}");
                // Parsed, they are the same value too (numbers as their digits).
                let a: serde_json::Value = serde_json::from_str(&out).expect("JSON out");
                let b: serde_json::Value = serde_json::from_str(&jaq[0]).expect("JSON out");
                assert_eq!(a.to_string(), b.to_string(), "{code} on {text}");
                let truth = plan.is_true(doc).expect("the output gave no fallback");
                assert_eq!(truth, out == "true", "{code} on {text}");
                assert_eq!(program.run_on(&input), Ok(vec![out]), "{code} on {text}");
            }
        }
        assert!(native * 10 >= total * 7, "{native} of {total} ran natively");
    }

    #[test]
    fn the_common_programs_run_natively_on_the_events_serde_writes() {
        let texts: Vec<String> = [
            event(),
            serde_json::json!({"record": {"id": 1}, "action": "delete", "changes": null, "metadata": {}}),
            serde_json::json!({"record": {"id": num("12345678901234567890.123456789012345"), "name": "a \"q\" \\ \n é 😀",
                               "secret": null, "payload": ["x", {"y": -1.5e-7}]},
                               "action": "update", "changes": {"name": "b"}, "metadata": {"commit_lsn": 1}}),
        ]
        .iter()
        .map(|v| v.to_string())
        .collect();
        for code in [
            BENCH,
            r#".action != "delete""#,
            "del(.record.secret)",
            ".record |= del(.secret, .payload)",
        ] {
            let plan = Plan::compile(code).expect("plan");
            for text in &texts {
                let doc = Doc::scan(text).expect("JSON");
                assert!(doc.plain, "{text}");
                assert!(plan.output(&doc).is_ok(), "{code} on {text}");
            }
        }
    }

    #[test]
    fn falls_back_where_jaq_errs_or_decides() {
        let cases = [
            (".record.id", r#"{"record":"a string"}"#),
            (".record.id", r#"{"record":[1]}"#),
            (".record.id", r#"{"record":1}"#),
            (".record.id", r#"{"record":true}"#),
            (".record == .changes", r#"{"record":{},"changes":{}}"#),
            (".record.n == 5", r#"{"record":{"n":5.0}}"#),
            ("{r: .record}", r#"{"record":{"a":1,"a":2}}"#),
            ("{r: .record}", r#"{"record":{"a": 1}}"#),
            ("del(.record.x)", r#"{"action":"insert"}"#),
            ("del(.record)", r#"{"record":{"a":-0}}"#),
            ("del(.a)", "null"),
            (".missing |= 1", r#"{"a":1}"#),
        ];
        for (code, text) in cases {
            let plan = Plan::compile(code).expect("plan");
            let doc = Doc::scan(text).expect("JSON");
            assert_eq!(plan.output(&doc), Err(Fallback), "{code} on {text}");
            // The program still gives jaq's answer, error or not.
            let program = Program::compile(code).expect("jq");
            let input = Input::parse(text).expect("JSON");
            assert_eq!(
                program.run_on(&input),
                program.run_jaq(&input),
                "{code} on {text}"
            );
        }
        let e = Program::compile(".record.id")
            .expect("jq")
            .run(r#"{"record":"a string"}"#)
            .expect_err("jaq's error");
        assert!(e.starts_with("cannot index"), "{e}");
    }

    #[test]
    fn jaq_parses_only_for_what_runs_in_jaq() {
        let text = event().to_string();
        let input = Input::parse(&text).expect("JSON");
        assert!(input.value.get().is_none(), "not parsed yet");
        let native = Program::compile(BENCH).expect("jq");
        native.run_on(&input).expect("runs");
        let filter = Program::compile(r#".action != "delete""#).expect("jq");
        assert_eq!(filter.is_true_on(&input), Ok(true));
        assert!(
            input.value.get().is_none(),
            "native programs need no jaq value"
        );
        let jaq = Program::compile(".record.id + 1").expect("jq");
        assert_eq!(jaq.run_on(&input), Ok(vec!["8".into()]));
        assert!(input.value.get().is_some(), "parsed for jaq");
        // A text the scan refuses is jaq's to judge, at once.
        let lenient = "{\"a\": 1 # a comment jaq allows\n}";
        let input = Input::parse(lenient).expect("jaq reads it");
        assert!(input.doc.is_none() && input.value.get().is_some());
        assert_eq!(
            Program::compile(".a").expect("jq").run_on(&input),
            Ok(vec!["1".into()])
        );
        let e = Input::parse("{\"a\":").err().expect("not JSON");
        assert!(e.starts_with("the input is not JSON: "), "{e}");
    }
}

//! jq programs over events (a sink's `filter` and `transform`), compiled once, in
//! process, with the jaq crates: no external `jq`, no interpreter start per event.
//!
//! Numbers keep their digits (jaq keeps a number's text until arithmetic needs it), so
//! a `numeric(30,10)` column survives a transform that does not compute with it.
//! `halt` and `input` do not reach the process: a program that halts is a runtime
//! error of that event, and there are no further inputs.
//!
//! The common programs (paths, comparisons with literals, `and`/`or`/`not`, objects of
//! paths, `del`) also get a native plan ([`native`]) that runs on the event's text
//! without building jaq's values ([`scan`]); jaq parses the event, once, only when a
//! program has no plan or its plan cannot vouch for jaq's result on that event.

mod native;
mod scan;

use std::cell::OnceCell;

use jaq_core::load::{self, Arena, File, Loader};
use jaq_core::{data, Compiler, Ctx, Vars};
use jaq_json::Val;

type Data = data::JustLut<Val>;

/// A compiled jq program.
pub struct Program {
    filter: jaq_core::compile::Filter<jaq_core::Native<Data>>,
    /// The native plan, when the program is in its subset.
    native: Option<native::Plan>,
}

impl std::fmt::Debug for Program {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Program")
    }
}

/// Line and column (from 1) of byte `offset` in `code`.
fn position(code: &str, offset: usize) -> String {
    let before = &code[..offset.min(code.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    format!("line {line}, column {column}")
}

impl Program {
    /// Compiles `code`; the error names what was expected or undefined, and where.
    pub fn compile(code: &str) -> Result<Program, String> {
        let defs = jaq_core::defs()
            .chain(jaq_std::defs())
            .chain(jaq_json::defs());
        let funs = jaq_core::funs::<Data>()
            .chain(jaq_std::funs::<Data>())
            .chain(jaq_json::funs::<Data>());
        let arena = Arena::default();
        let at = |part: &str| position(code, load::span(code, part).start);
        let modules =
            Loader::new(defs)
                .load(&arena, File { code, path: () })
                .map_err(|errors| {
                    let mut out = Vec::new();
                    for (_, e) in errors {
                        match e {
                            load::Error::Io(v) => out.extend(v.into_iter().map(|(_, m)| m)),
                            load::Error::Lex(v) => out.extend(v.into_iter().map(|(e, part)| {
                                format!("expected {} at {}", e.as_str(), at(part))
                            })),
                            load::Error::Parse(v) => out.extend(v.into_iter().map(|(e, part)| {
                                match e.as_str() {
                                    // jaq's "expected nothing": the end of the program.
                                    "nothing" => format!(
                                        "unexpected `{}` at {}",
                                        part.split_whitespace().next().unwrap_or(part),
                                        at(part)
                                    ),
                                    expected => format!("expected {expected} at {}", at(part)),
                                }
                            })),
                        }
                    }
                    out.join("; ")
                })?;
        let filter = Compiler::default()
            .with_funs(funs)
            .compile(modules)
            .map_err(|errors| {
                errors
                    .into_iter()
                    .flat_map(|(_, v)| v)
                    .map(|(name, u)| format!("undefined {} `{name}` at {}", u.as_str(), at(name)))
                    .collect::<Vec<_>>()
                    .join("; ")
            })?;
        Ok(Program {
            filter,
            native: native::Plan::compile(code),
        })
    }

    /// Whether the program has a native plan (it may still fall back to jaq on an event).
    pub fn is_native(&self) -> bool {
        self.native.is_some()
    }

    /// Runs the program on the JSON text `input`: its outputs as JSON text.
    pub fn run(&self, input: &str) -> Result<Vec<String>, String> {
        self.run_on(&Input::parse(input)?)
    }

    /// Runs the program on a parsed input (one parse for several programs).
    pub fn run_on(&self, input: &Input<'_>) -> Result<Vec<String>, String> {
        if let (Some(plan), Some(doc)) = (&self.native, &input.doc) {
            if let Ok(out) = plan.output(doc) {
                return Ok(vec![out]);
            }
        }
        self.run_jaq(input)
    }

    /// Whether the program's first output on `input` is `true` (a filter's verdict).
    pub fn is_true_on(&self, input: &Input<'_>) -> Result<bool, String> {
        if let (Some(plan), Some(doc)) = (&self.native, &input.doc) {
            if let Ok(b) = plan.is_true(doc) {
                return Ok(b);
            }
        }
        let out = self.run_jaq(input)?;
        Ok(out.first().map(String::as_str) == Some("true"))
    }

    /// Runs the program in jaq.
    fn run_jaq(&self, input: &Input<'_>) -> Result<Vec<String>, String> {
        let value = input.value()?.clone();
        let ctx = Ctx::<Data>::new(&self.filter.lut, Vars::new([]));
        let mut out = Vec::new();
        for result in self.filter.id.run((ctx, value)) {
            match result {
                Ok(v) => out.push(v.to_string()),
                Err(e) => {
                    return Err(match e.get_err() {
                        Ok(e) => e.to_string(),
                        Err(_) => "the program halted".into(),
                    })
                }
            }
        }
        Ok(out)
    }
}

/// A JSON text read once for the programs that run on it: scanned for the native plans
/// and parsed into jaq's values when a program needs them (at most once).
pub struct Input<'a> {
    text: &'a str,
    /// `None`: not strict JSON (jaq parsed it, for its verdict).
    doc: Option<scan::Doc<'a>>,
    value: OnceCell<Val>,
}

impl<'a> Input<'a> {
    /// Reads the JSON text; the error is jaq's.
    pub fn parse(json: &'a str) -> Result<Input<'a>, String> {
        let doc = scan::Doc::scan(json);
        let value = OnceCell::new();
        if doc.is_none() {
            let _ = value.set(parse_value(json)?);
        }
        Ok(Input {
            text: json,
            doc,
            value,
        })
    }

    /// Reads the JSON text for programs without a native plan: jaq parses it at once,
    /// no scan.
    pub fn parse_for_jaq(json: &'a str) -> Result<Input<'a>, String> {
        Ok(Input {
            text: json,
            doc: None,
            value: OnceCell::from(parse_value(json)?),
        })
    }

    /// The text as jaq's value, parsed on first use.
    fn value(&self) -> Result<&Val, String> {
        if let Some(v) = self.value.get() {
            return Ok(v);
        }
        let v = parse_value(self.text)?;
        Ok(self.value.get_or_init(|| v))
    }
}

fn parse_value(json: &str) -> Result<Val, String> {
    jaq_json::read::parse_single(json.as_bytes()).map_err(|e| format!("the input is not JSON: {e}"))
}

/// What a sink's programs make of one event.
#[derive(Debug, PartialEq, Eq)]
pub enum Shaped {
    /// Send the event as it is (a filter alone let it through).
    Keep,
    /// Send this body.
    Send(String),
    /// Left out: the filter did not yield `true`.
    Filtered,
    /// Left out: the transform yielded nothing.
    Empty,
}

/// A sink's `filter` and `transform`.
#[derive(Debug, Default)]
pub struct Shape {
    /// Sent when it yields `true`.
    pub filter: Option<Program>,
    /// Its output is the message body.
    pub transform: Option<Program>,
    /// The sink's place in the file (`sink`, `sinks[1]`), for messages.
    at: String,
}

impl Shape {
    /// Compiles the `sink:` section's expressions; errors name the setting.
    pub fn compile(filter: Option<&str>, transform: Option<&str>) -> Result<Shape, String> {
        Shape::compile_at("sink", filter, transform)
    }

    /// Compiles the expressions of the sink at `at` (`sink`, `sinks[1]`); errors name
    /// the setting (`sinks[1].filter: jq: …`).
    pub fn compile_at(
        at: &str,
        filter: Option<&str>,
        transform: Option<&str>,
    ) -> Result<Shape, String> {
        let compile = |field: &str, code: Option<&str>| {
            code.map(|c| Program::compile(c).map_err(|e| format!("{at}.{field}: jq: {e}")))
                .transpose()
        };
        Ok(Shape {
            filter: compile("filter", filter)?,
            transform: compile("transform", transform)?,
            at: at.to_owned(),
        })
    }

    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        self.filter.is_none() && self.transform.is_none()
    }

    /// The body to send for the event `payload`, or why not; errors name the setting.
    pub fn apply(&self, payload: &str) -> Result<Shaped, String> {
        if self.is_empty() {
            return Ok(Shaped::Keep);
        }
        let input = Input::parse(payload).map_err(|e| {
            let which = if self.filter.is_some() {
                "filter"
            } else {
                "transform"
            };
            format!("{}.{which}: {e}", self.at)
        })?;
        self.apply_to(&input)
    }

    /// [`Shape::apply`] with the event already parsed.
    pub fn apply_to(&self, input: &Input<'_>) -> Result<Shaped, String> {
        if let Some(filter) = &self.filter {
            let pass = filter
                .is_true_on(input)
                .map_err(|e| format!("{}.filter: {e}", self.at))?;
            if !pass {
                return Ok(Shaped::Filtered);
            }
        }
        let Some(transform) = &self.transform else {
            return Ok(Shaped::Keep);
        };
        let mut out = transform
            .run_on(input)
            .map_err(|e| format!("{}.transform: {e}", self.at))?;
        match out.len() {
            0 => Ok(Shaped::Empty),
            1 => Ok(Shaped::Send(out.remove(0))),
            n => Err(format!(
                "{}.transform: yielded {n} values for one event; make it yield one (e.g. wrap it in [ … ])",
                self.at
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVENT: &str = r#"{"record":{"id":7,"email":"a@example.com","password_hash":"x","total":12345678901234567890.123456789012345},"changes":null,"action":"insert","metadata":{"table_schema":"public","table_name":"users"}}"#;

    #[test]
    fn a_transform_reshapes_and_keeps_numbers_whole() {
        let shape = Shape::compile(
            Some(r#".action == "insert""#),
            Some(r#"{user: .record.id, total: .record.total, table: "\(.metadata.table_schema).\(.metadata.table_name)"} "#),
        )
        .expect("compiles");
        assert_eq!(
            shape.apply(EVENT).expect("runs"),
            Shaped::Send(
                r#"{"user":7,"total":12345678901234567890.123456789012345,"table":"public.users"}"#
                    .into()
            )
        );
        let drop = Shape::compile(None, Some(".record |= del(.password_hash)")).expect("compiles");
        let Shaped::Send(body) = drop.apply(EVENT).expect("runs") else {
            panic!("sent")
        };
        assert!(!body.contains("password_hash") && body.contains("a@example.com"));
    }

    #[test]
    fn the_filter_sends_only_on_true_and_empty_output_skips() {
        let only_updates = Shape::compile(Some(r#".action == "update""#), None).expect("compiles");
        assert_eq!(only_updates.apply(EVENT), Ok(Shaped::Filtered));
        let truthy = Shape::compile(Some(".record.id"), None).expect("compiles");
        assert_eq!(truthy.apply(EVENT), Ok(Shaped::Filtered), "7 is not true");
        let empty = Shape::compile(None, Some("empty")).expect("compiles");
        assert_eq!(empty.apply(EVENT), Ok(Shaped::Empty));
        assert_eq!(Shape::default().apply(EVENT), Ok(Shaped::Keep));
        let pass = Shape::compile(Some(r#".action == "insert""#), None).expect("compiles");
        assert_eq!(pass.apply(EVENT), Ok(Shaped::Keep));
    }

    #[test]
    fn errors_name_the_setting_and_the_place() {
        let e = Shape::compile(Some(".record |"), None).expect_err("refused");
        assert_eq!(e, "sink.filter: jq: expected term at line 1, column 10");
        assert_eq!(
            Program::compile(".a >< 3").err().as_deref(),
            Some("unexpected `><` at line 1, column 4")
        );
        let e = Shape::compile(None, Some("{a: .x}\n| nope(1)")).expect_err("refused");
        assert_eq!(
            e,
            "sink.transform: jq: undefined filter `nope` at line 2, column 3"
        );
        let runtime = Shape::compile(None, Some(".record.email + 1")).expect("compiles");
        let e = runtime.apply(EVENT).expect_err("fails");
        assert!(e.starts_with("sink.transform: cannot calculate"), "{e}");
        let many = Shape::compile(None, Some(".record.id, .action")).expect("compiles");
        assert!(many
            .apply(EVENT)
            .expect_err("two")
            .contains("yielded 2 values"));
        // `halt` ends the event's program, never the process.
        let halts = Shape::compile(Some("halt"), None).expect("compiles");
        assert_eq!(
            halts.apply(EVENT),
            Err("sink.filter: the program halted".into())
        );
    }
}

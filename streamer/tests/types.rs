//! The spec's type table, end to end.

use serde_json::Value;

use crate::support::TestDb;
use crate::{record, Running};

const SCHEMA: &str = r#"
CREATE EXTENSION IF NOT EXISTS citext;
CREATE TYPE mood AS ENUM ('happy', 'sad');
CREATE DOMAIN posint AS integer CHECK (VALUE > 0);
CREATE DOMAIN tags AS text[];
CREATE TABLE types (
  id serial PRIMARY KEY,
  b bool, i2 int2, i4 int4, i8 int8, o oid,
  f4 float4, f8 float8, f8big float8, f8nan float8, f8inf float8, f8ninf float8,
  n numeric, nbig numeric, nnan numeric, ninf numeric,
  t text, vc varchar(10), c char(3), nm name, ci citext, e mood,
  u uuid, j json, jb jsonb, by bytea,
  d date, tm time, ttz timetz, ts timestamp, tstz timestamptz,
  dinf date, tsinf timestamp, tstzninf timestamptz,
  iv interval, ivneg interval,
  ai int4[], a2 int4[][], at text[], ajb jsonb[], anum numeric[], atstz timestamptz[], amood mood[],
  anull int4[], alb int4[],
  dom posint, dtags tags,
  ip inet, net cidr, mac macaddr, cash money, r int4range, pt point, bits bit(4), x xml, tsv tsvector,
  nul text
);
"#;

const INSERT: &str = r#"
INSERT INTO types (b, i2, i4, i8, o, f4, f8, f8big, f8nan, f8inf, f8ninf, n, nbig, nnan, ninf,
  t, vc, c, nm, ci, e, u, j, jb, by, d, tm, ttz, ts, tstz, dinf, tsinf, tstzninf, iv, ivneg,
  ai, a2, at, ajb, anum, atstz, amood, anull, alb, dom, dtags,
  ip, net, mac, cash, r, pt, bits, x, tsv, nul)
VALUES (true, -32768, 2147483647, 9223372036854775807, 4294967295,
  1.5, 0.1, 1e20, 'NaN', 'Infinity', '-Infinity',
  123.4500, 12345678901234567890.123456789012, 'NaN', 'Infinity',
  E'h\u00e9 "quoted"\n\ttab', 'abc', 'ab', 'nm', 'MiXed', 'happy',
  'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11', '{"b": 1, "a": [true, null]}', '{"b": 1, "a": 2}', '\x0102ff',
  '2024-03-21', '15:30:00.12747', '15:30:00+02', '2024-03-21 15:30:00.12747',
  '2024-03-21 17:30:00.12747+02', 'infinity', 'infinity', '-infinity',
  '1 year 2 months 3 days 04:05:06.5', '-1 day -00:00:00.000001',
  '{1,2,3}', '{{1,2},{3,4}}', '{"a b",NULL,"c,d"}', ARRAY['{"x": 1}'::jsonb], '{1.50,NaN}',
  '{"2024-01-01 00:00:00+00"}', '{happy,sad}', NULL, '[0:1]={7,8}', 5, '{x,y}',
  '192.168.0.1/24', '10.0.0.0/8', '08:00:2b:01:02:03', 1.23, '[1,10)', '(1,2)', B'1010',
  '<a>1</a>', 'a fat cat', NULL);
"#;

const EXPECTED: &str = r#"{
  "id": 1, "b": true, "i2": -32768, "i4": 2147483647, "i8": 9223372036854775807, "o": 4294967295,
  "f4": 1.5, "f8": 0.1, "f8big": 1e+20, "f8nan": "NaN", "f8inf": "Infinity", "f8ninf": "-Infinity",
  "n": 123.4500, "nbig": 12345678901234567890.123456789012, "nnan": "NaN", "ninf": "Infinity",
  "t": "hé \"quoted\"\n\ttab", "vc": "abc", "c": "ab ", "nm": "nm", "ci": "MiXed", "e": "happy",
  "u": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "j": {"b": 1, "a": [true, null]}, "jb": {"a": 2, "b": 1},
  "by": "\\x0102ff",
  "d": "2024-03-21", "tm": "15:30:00.12747", "ttz": "15:30:00+02", "ts": "2024-03-21T15:30:00.127470",
  "tstz": "2024-03-21T15:30:00.127470Z", "dinf": "infinity", "tsinf": "infinity", "tstzninf": "-infinity",
  "iv": {"months": 14, "days": 3, "microseconds": 14706500000},
  "ivneg": {"months": 0, "days": -1, "microseconds": -1},
  "ai": [1, 2, 3], "a2": [[1, 2], [3, 4]], "at": ["a b", null, "c,d"], "ajb": [{"x": 1}],
  "anum": [1.50, "NaN"], "atstz": ["2024-01-01T00:00:00.000000Z"], "amood": ["happy", "sad"],
  "anull": null, "alb": [7, 8], "dom": 5, "dtags": ["x", "y"],
  "ip": "192.168.0.1/24", "net": "10.0.0.0/8", "mac": "08:00:2b:01:02:03", "cash": "$1.23",
  "r": "[1,10)", "pt": "(1,2)", "bits": "1010", "x": "<a>1</a>", "tsv": "'a' 'cat' 'fat'",
  "nul": null
}"#;

#[tokio::test]
async fn every_type_maps_as_the_spec_says() {
    let db = TestDb::new("types").await;
    db.exec(SCHEMA).await;
    let run = Running::start(&db, "  tables: [public.types]\n").await;
    db.exec(INSERT).await;
    let events = run.events(1).await;
    let expected: Value = serde_json::from_str(EXPECTED).expect("expected JSON");
    let got = Value::Object(record(&events[0]).clone());
    for (k, v) in expected.as_object().expect("object") {
        assert_eq!(got.get(k), Some(v), "column {k}");
    }
    assert_eq!(got, expected);
    // Column order is the table's.
    let keys: Vec<&String> = record(&events[0]).keys().collect();
    assert_eq!(keys.first().map(|s| s.as_str()), Some("id"));
    assert_eq!(keys.last().map(|s| s.as_str()), Some("nul"));
    // The raw payload keeps numeric digits exactly.
    let raw = &run.sink.events()[0].payload;
    assert!(raw.contains("\"n\":123.4500,"), "{raw}");
    assert!(raw.contains("\"nbig\":12345678901234567890.123456789012,"));
    run.stop().await;
    db.drop_db().await;
}

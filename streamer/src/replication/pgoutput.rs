//! Decoder for the `pgoutput` logical replication protocol, version 1.
//!
//! Every message of the protocol is decoded here, borrowing from the
//! received buffer: tuple values are slices of it, never copies. The
//! transport already splits out Begin, Commit and logical Message (see
//! `transport.rs`); they decode here too so the decoder is complete and
//! testable on its own.
//!
//! Reference: "Logical Replication Message Formats" in the Postgres docs.

use thiserror::Error;

/// A malformed pgoutput message. Definite: the stream cannot be trusted past it.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("malformed pgoutput message: {0}")]
pub struct DecodeError(pub String);

/// One column value of a tuple.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Datum<'a> {
    /// SQL NULL.
    Null,
    /// A TOASTed value that did not change (not sent).
    UnchangedToast,
    /// The value in the type's text output format.
    Text(&'a [u8]),
    /// The same, already checked as UTF-8 (a backfill's COPY text, checked a
    /// block of rows at a time).
    Str(&'a str),
    /// The value in the type's binary format (only with `binary 'true'`).
    Binary(&'a [u8]),
}

/// A row image: one datum per column, in the relation's column order.
pub type Tuple<'a> = Vec<Datum<'a>>;

/// A column of a Relation message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationColumn {
    /// Part of the replica identity key.
    pub key: bool,
    /// Column name.
    pub name: String,
    /// Type OID.
    pub type_oid: u32,
    /// Type modifier.
    pub type_modifier: i32,
}

/// A decoded pgoutput message.
#[derive(Debug, Clone, PartialEq)]
pub enum PgOutput<'a> {
    /// Start of a transaction.
    Begin {
        /// LSN of the commit record.
        final_lsn: u64,
        /// Commit time, microseconds since 2000-01-01.
        commit_time: i64,
        /// Transaction id.
        xid: u32,
    },
    /// End of a transaction.
    Commit {
        /// LSN of the commit record.
        commit_lsn: u64,
        /// End of the commit record: where the next transaction starts.
        end_lsn: u64,
        /// Commit time, microseconds since 2000-01-01.
        commit_time: i64,
    },
    /// Replication origin of the transaction.
    Origin {
        /// Commit LSN on the origin server.
        lsn: u64,
        /// Origin name.
        name: &'a str,
    },
    /// A table's schema; sent before its first change, and again after ALTER TABLE.
    Relation {
        /// Relation OID.
        id: u32,
        /// Schema name.
        namespace: &'a str,
        /// Table name.
        name: &'a str,
        /// REPLICA IDENTITY setting: `d`efault, `n`othing, `f`ull, `i`ndex.
        replica_identity: u8,
        /// The columns.
        columns: Vec<RelationColumn>,
    },
    /// A non-builtin type used by a relation.
    Type {
        /// Type OID.
        id: u32,
        /// Schema name.
        namespace: &'a str,
        /// Type name.
        name: &'a str,
    },
    /// A new row.
    Insert {
        /// Relation OID.
        relation: u32,
        /// The new row.
        new: Tuple<'a>,
    },
    /// A changed row.
    Update {
        /// Relation OID.
        relation: u32,
        /// The old row: `Old` with REPLICA IDENTITY FULL, `Key` when the key changed.
        old: Option<OldTuple<'a>>,
        /// The new row.
        new: Tuple<'a>,
    },
    /// A removed row.
    Delete {
        /// Relation OID.
        relation: u32,
        /// The old row (key columns only unless REPLICA IDENTITY FULL).
        old: OldTuple<'a>,
    },
    /// TRUNCATE of one or more relations.
    Truncate {
        /// Relation OIDs.
        relations: Vec<u32>,
        /// Bit 1: CASCADE, bit 2: RESTART IDENTITY.
        options: u8,
    },
    /// `pg_logical_emit_message`.
    Message {
        /// Emitted inside a transaction (delivered at its position) or not.
        transactional: bool,
        /// LSN of the message.
        lsn: u64,
        /// Application-defined prefix.
        prefix: &'a str,
        /// Content bytes.
        content: &'a [u8],
    },
}

/// The old image carried by an Update or Delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OldTuple<'a> {
    /// Key columns only (others null): REPLICA IDENTITY DEFAULT or INDEX.
    Key(Tuple<'a>),
    /// The whole old row: REPLICA IDENTITY FULL.
    Full(Tuple<'a>),
}

impl<'a> OldTuple<'a> {
    /// The tuple, whichever kind.
    pub fn tuple(&self) -> &Tuple<'a> {
        match self {
            OldTuple::Key(t) | OldTuple::Full(t) => t,
        }
    }
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError(format!("truncated {what}")));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }
    fn u8(&mut self, what: &str) -> Result<u8, DecodeError> {
        Ok(self.take(1, what)?[0])
    }
    fn i16(&mut self, what: &str) -> Result<i16, DecodeError> {
        let b = self.take(2, what)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }
    fn i32(&mut self, what: &str) -> Result<i32, DecodeError> {
        let b = self.take(4, what)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u32(&mut self, what: &str) -> Result<u32, DecodeError> {
        Ok(self.i32(what)? as u32)
    }
    fn i64(&mut self, what: &str) -> Result<i64, DecodeError> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(i64::from_be_bytes(a))
    }
    fn u64(&mut self, what: &str) -> Result<u64, DecodeError> {
        Ok(self.i64(what)? as u64)
    }
    fn cstr(&mut self, what: &str) -> Result<&'a str, DecodeError> {
        let end = self
            .buf
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| DecodeError(format!("unterminated {what}")))?;
        let s = std::str::from_utf8(&self.buf[..end])
            .map_err(|_| DecodeError(format!("{what} is not UTF-8")))?;
        self.buf = &self.buf[end + 1..];
        Ok(s)
    }
    fn tuple(&mut self) -> Result<Tuple<'a>, DecodeError> {
        let n = self.i16("tuple column count")?;
        let n = usize::try_from(n).map_err(|_| DecodeError("negative column count".into()))?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(match self.u8("tuple column kind")? {
                b'n' => Datum::Null,
                b'u' => Datum::UnchangedToast,
                kind @ (b't' | b'b') => {
                    let len = self.i32("tuple value length")?;
                    let len = usize::try_from(len)
                        .map_err(|_| DecodeError("negative value length".into()))?;
                    let bytes = self.take(len, "tuple value")?;
                    if kind == b't' {
                        Datum::Text(bytes)
                    } else {
                        Datum::Binary(bytes)
                    }
                }
                other => return Err(DecodeError(format!("unknown tuple column kind {other:#x}"))),
            });
        }
        Ok(out)
    }
    fn finish<T>(&self, value: T, what: &str) -> Result<T, DecodeError> {
        if self.buf.is_empty() {
            Ok(value)
        } else {
            Err(DecodeError(format!(
                "{} trailing bytes after {what}",
                self.buf.len()
            )))
        }
    }
}

/// Decodes one pgoutput message (the payload of an XLogData).
pub fn decode(data: &[u8]) -> Result<PgOutput<'_>, DecodeError> {
    let mut r = Reader { buf: data };
    let tag = r.u8("message tag")?;
    let msg = match tag {
        b'B' => PgOutput::Begin {
            final_lsn: r.u64("Begin LSN")?,
            commit_time: r.i64("Begin timestamp")?,
            xid: r.u32("Begin xid")?,
        },
        b'C' => {
            let _flags = r.u8("Commit flags")?;
            PgOutput::Commit {
                commit_lsn: r.u64("Commit LSN")?,
                end_lsn: r.u64("Commit end LSN")?,
                commit_time: r.i64("Commit timestamp")?,
            }
        }
        b'O' => PgOutput::Origin {
            lsn: r.u64("Origin LSN")?,
            name: r.cstr("Origin name")?,
        },
        b'R' => {
            let id = r.u32("Relation id")?;
            let namespace = r.cstr("Relation namespace")?;
            let name = r.cstr("Relation name")?;
            let replica_identity = r.u8("Relation replica identity")?;
            let n = r.i16("Relation column count")?;
            let mut columns = Vec::with_capacity(n.max(0) as usize);
            for _ in 0..n {
                let flags = r.u8("column flags")?;
                columns.push(RelationColumn {
                    key: flags & 1 == 1,
                    name: r.cstr("column name")?.to_owned(),
                    type_oid: r.u32("column type")?,
                    type_modifier: r.i32("column type modifier")?,
                });
            }
            PgOutput::Relation {
                id,
                namespace,
                name,
                replica_identity,
                columns,
            }
        }
        b'Y' => PgOutput::Type {
            id: r.u32("Type id")?,
            namespace: r.cstr("Type namespace")?,
            name: r.cstr("Type name")?,
        },
        b'I' => {
            let relation = r.u32("Insert relation")?;
            match r.u8("Insert tuple tag")? {
                b'N' => PgOutput::Insert {
                    relation,
                    new: r.tuple()?,
                },
                other => return Err(DecodeError(format!("Insert: unexpected tag {other:#x}"))),
            }
        }
        b'U' => {
            let relation = r.u32("Update relation")?;
            let mut old = None;
            let mut tag = r.u8("Update tuple tag")?;
            if tag == b'K' || tag == b'O' {
                let t = r.tuple()?;
                old = Some(if tag == b'K' {
                    OldTuple::Key(t)
                } else {
                    OldTuple::Full(t)
                });
                tag = r.u8("Update new tuple tag")?;
            }
            if tag != b'N' {
                return Err(DecodeError(format!("Update: unexpected tag {tag:#x}")));
            }
            PgOutput::Update {
                relation,
                old,
                new: r.tuple()?,
            }
        }
        b'D' => {
            let relation = r.u32("Delete relation")?;
            let old = match r.u8("Delete tuple tag")? {
                b'K' => OldTuple::Key(r.tuple()?),
                b'O' => OldTuple::Full(r.tuple()?),
                other => return Err(DecodeError(format!("Delete: unexpected tag {other:#x}"))),
            };
            PgOutput::Delete { relation, old }
        }
        b'T' => {
            let n = r.i32("Truncate relation count")?;
            let options = r.u8("Truncate options")?;
            let mut relations = Vec::with_capacity(n.max(0) as usize);
            for _ in 0..n {
                relations.push(r.u32("Truncate relation")?);
            }
            PgOutput::Truncate { relations, options }
        }
        b'M' => {
            let flags = r.u8("Message flags")?;
            let lsn = r.u64("Message LSN")?;
            let prefix = r.cstr("Message prefix")?;
            let len = r.i32("Message length")?;
            let len =
                usize::try_from(len).map_err(|_| DecodeError("negative message length".into()))?;
            PgOutput::Message {
                transactional: flags & 1 == 1,
                lsn,
                prefix,
                content: r.take(len, "Message content")?,
            }
        }
        other => return Err(DecodeError(format!("unknown message tag {other:#x}"))),
    };
    r.finish(msg, "message")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds pgoutput messages for tests.
    #[derive(Default)]
    pub(crate) struct Msg(pub Vec<u8>);

    impl Msg {
        pub fn tag(t: u8) -> Self {
            Msg(vec![t])
        }
        pub fn u8(mut self, v: u8) -> Self {
            self.0.push(v);
            self
        }
        pub fn i16(mut self, v: i16) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        pub fn i32(mut self, v: i32) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        pub fn i64(mut self, v: i64) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        pub fn cstr(mut self, s: &str) -> Self {
            self.0.extend_from_slice(s.as_bytes());
            self.0.push(0);
            self
        }
        pub fn text(self, s: &str) -> Self {
            let mut m = self.u8(b't').i32(s.len() as i32);
            m.0.extend_from_slice(s.as_bytes());
            m
        }
    }

    #[test]
    fn relation_and_insert() {
        let rel = Msg::tag(b'R')
            .i32(16384)
            .cstr("public")
            .cstr("users")
            .u8(b'd')
            .i16(2)
            .u8(1)
            .cstr("id")
            .i32(23)
            .i32(-1)
            .u8(0)
            .cstr("name")
            .i32(25)
            .i32(-1);
        let PgOutput::Relation {
            id,
            namespace,
            name,
            columns,
            ..
        } = decode(&rel.0).expect("relation")
        else {
            panic!("not a relation")
        };
        assert_eq!((id, namespace, name), (16384, "public", "users"));
        assert!(columns[0].key && !columns[1].key);
        assert_eq!(columns[1].type_oid, 25);

        let ins = Msg::tag(b'I')
            .i32(16384)
            .u8(b'N')
            .i16(3)
            .text("1")
            .u8(b'n')
            .u8(b'u');
        assert_eq!(
            decode(&ins.0).expect("insert"),
            PgOutput::Insert {
                relation: 16384,
                new: vec![Datum::Text(b"1"), Datum::Null, Datum::UnchangedToast]
            }
        );
    }

    #[test]
    fn update_with_and_without_old() {
        let plain = Msg::tag(b'U').i32(7).u8(b'N').i16(1).text("x");
        assert!(matches!(
            decode(&plain.0),
            Ok(PgOutput::Update { old: None, .. })
        ));
        let full = Msg::tag(b'U')
            .i32(7)
            .u8(b'O')
            .i16(1)
            .text("a")
            .u8(b'N')
            .i16(1)
            .text("b");
        let PgOutput::Update {
            old: Some(OldTuple::Full(old)),
            new,
            ..
        } = decode(&full.0).expect("update")
        else {
            panic!("expected a full old tuple")
        };
        assert_eq!(old, vec![Datum::Text(b"a")]);
        assert_eq!(new, vec![Datum::Text(b"b")]);
        let key = Msg::tag(b'D').i32(7).u8(b'K').i16(1).text("a");
        assert!(matches!(
            decode(&key.0),
            Ok(PgOutput::Delete {
                old: OldTuple::Key(_),
                ..
            })
        ));
    }

    #[test]
    fn begin_commit_message_truncate_type_origin() {
        let b = Msg::tag(b'B').i64(100).i64(5).i32(42);
        assert_eq!(
            decode(&b.0),
            Ok(PgOutput::Begin {
                final_lsn: 100,
                commit_time: 5,
                xid: 42
            })
        );
        let c = Msg::tag(b'C').u8(0).i64(100).i64(120).i64(5);
        assert_eq!(
            decode(&c.0),
            Ok(PgOutput::Commit {
                commit_lsn: 100,
                end_lsn: 120,
                commit_time: 5
            })
        );
        let mut m = Msg::tag(b'M').u8(1).i64(99).cstr("p").i32(2);
        m.0.extend_from_slice(b"{}");
        assert_eq!(
            decode(&m.0),
            Ok(PgOutput::Message {
                transactional: true,
                lsn: 99,
                prefix: "p",
                content: b"{}"
            })
        );
        let t = Msg::tag(b'T').i32(2).u8(1).i32(10).i32(11);
        assert_eq!(
            decode(&t.0),
            Ok(PgOutput::Truncate {
                relations: vec![10, 11],
                options: 1
            })
        );
        let y = Msg::tag(b'Y').i32(5000).cstr("public").cstr("mood");
        assert!(matches!(decode(&y.0), Ok(PgOutput::Type { id: 5000, .. })));
        let o = Msg::tag(b'O').i64(1).cstr("node");
        assert!(matches!(
            decode(&o.0),
            Ok(PgOutput::Origin { name: "node", .. })
        ));
    }

    #[test]
    fn malformed_messages_are_errors() {
        assert!(decode(b"").is_err());
        assert!(decode(b"Z").is_err());
        assert!(decode(&Msg::tag(b'I').i32(1).u8(b'N').i16(1).0).is_err());
        let long = Msg::tag(b'I').i32(1).u8(b'N').i16(1).u8(b't').i32(100);
        assert!(decode(&long.0).is_err());
        let trailing = Msg::tag(b'B').i64(1).i64(2).i32(3).u8(9);
        assert!(decode(&trailing.0).is_err());
    }
}

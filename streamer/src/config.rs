//! Configuration: one YAML file, every key also settable by environment
//! variable (`WALCAST_<SECTION>_<KEY>`, e.g. `WALCAST_SOURCE_URL`), loaded and
//! validated once in `main`. Secrets live in [`Secret`], which never prints.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;

use serde::Deserialize;
use serde_json::{Map, Value};

/// A configuration error, naming the field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The path.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The YAML or a value's type is wrong.
    #[error("invalid config: {0}")]
    Parse(String),
    /// A field is missing or holds a bad value.
    #[error("invalid config: {field}: {reason}")]
    Field {
        /// The field, e.g. `source.url` or `sinks[1].queue_url`.
        field: String,
        /// What is wrong and how to fix it.
        reason: String,
    },
}

fn field(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Field {
        field: field.into(),
        reason: reason.into(),
    }
}

/// A string that never appears in `Debug` or `Display` output.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// A secret.
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    /// The secret value. Call only where it is used, never to log.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The Postgres database to stream from.
    pub source: SourceConfig,
    /// `sink:`, the one-sink form: `load` moves it into `sinks`.
    #[serde(default)]
    sink: Option<SinkConfig>,
    /// Where events go: `sinks:`, or the one `sink:` (never empty after `load`).
    #[serde(default)]
    pub sinks: Vec<SinkConfig>,
    /// Backfills.
    #[serde(default)]
    pub backfill: BackfillConfig,
    /// The operations listener.
    #[serde(default)]
    pub http: HttpConfig,
    /// Metrics beyond `/metrics`.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
}

/// `source:` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// `postgres://user:password@host:port/dbname?sslmode=…` (a secret).
    pub url: Secret,
    /// Replication slot name (created if missing).
    #[serde(default = "default_name")]
    pub slot: String,
    /// Publication name (created if missing).
    #[serde(default = "default_name")]
    pub publication: String,
    /// Tables to publish, `schema.table`; empty: every table (`FOR ALL TABLES`).
    #[serde(default)]
    pub tables: Vec<String>,
    /// Source name in event metadata (default: the database name).
    #[serde(default)]
    pub name: Option<String>,
    /// Source id in event metadata (default: the name).
    #[serde(default)]
    pub id: Option<String>,
    /// Free-form annotations in event metadata.
    #[serde(default)]
    pub annotations: Map<String, Value>,
    /// How to authenticate: the password in `url`, or an RDS IAM token.
    #[serde(default)]
    pub auth: AuthMethod,
    /// The database's AWS region, for `auth: iam` (default: from an RDS host name,
    /// else the default AWS region chain).
    #[serde(default)]
    pub region: Option<String>,
    /// Create the slot as a failover slot (Postgres 17+), which standbys with
    /// `sync_replication_slots` keep in step, so it survives a promotion.
    #[serde(default)]
    pub failover_slot: bool,
    /// Write a heartbeat through the slot every this many seconds (none: no heartbeats).
    #[serde(default)]
    pub heartbeat_secs: Option<u64>,
}

/// `source.auth`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMethod {
    /// The password in `source.url` (or none: trust, peer).
    #[default]
    Password,
    /// RDS/Aurora IAM database authentication: a fresh token per connection.
    Iam,
}

/// The kinds of sink.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkType {
    /// One JSON event per line on standard output.
    #[default]
    Stdout,
    /// An SQS queue (standard or FIFO).
    Sqs,
    /// An SNS topic (standard or FIFO).
    Sns,
}

/// `sink:` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    /// Which sink.
    #[serde(rename = "type", default)]
    pub kind: SinkType,
    /// Sink ("consumer") name in event metadata.
    #[serde(default = "default_name")]
    pub name: String,
    /// Sink id in event metadata (default: the name).
    #[serde(default)]
    pub id: Option<String>,
    /// Free-form annotations in event metadata.
    #[serde(default)]
    pub annotations: Map<String, Value>,
    /// SQS queue URL (`.fifo` means FIFO).
    #[serde(default)]
    pub queue_url: Option<String>,
    /// SNS topic ARN (`.fifo` means FIFO).
    #[serde(default)]
    pub topic_arn: Option<String>,
    /// AWS region (default: from the queue URL or topic ARN).
    #[serde(default)]
    pub region: Option<String>,
    /// Endpoint override, for local emulators.
    #[serde(default)]
    pub endpoint_url: Option<String>,
    /// Access key id (else the default AWS credential chain).
    #[serde(default)]
    pub access_key_id: Option<String>,
    /// Secret access key, with `access_key_id`.
    #[serde(default)]
    pub secret_access_key: Option<Secret>,
    /// SQS queue for events the destination refuses for good.
    #[serde(default)]
    pub dead_letter_queue_url: Option<String>,
    /// FIFO message group columns per table (`schema.table: [col, …]`); default: the primary key.
    #[serde(default)]
    pub group_columns: BTreeMap<String, Vec<String>>,
    /// On shutdown, how long to wait for the sink to deliver what it holds (seconds).
    #[serde(default = "default_drain_timeout")]
    pub drain_timeout_secs: u64,
    /// jq expression: an event is sent when it yields `true`.
    #[serde(default)]
    pub filter: Option<String>,
    /// jq expression whose output is the message body.
    #[serde(default)]
    pub transform: Option<String>,
    /// Large events through S3 (the format of AWS's extended client libraries).
    #[serde(default)]
    pub s3: Option<S3Config>,
    /// The tables this sink takes (globs over `schema.table`); default: every published one.
    #[serde(default)]
    pub tables: TableSelection,
    /// The actions this sink takes (`insert`, `update`, `delete`, `read`); default: all.
    #[serde(default)]
    pub actions: Option<Vec<change_event::Action>>,
    /// Columns per table (`schema.table: {include: […]}` or `{exclude: […]}`): the others
    /// leave `record` and `changes`.
    #[serde(default)]
    pub columns: BTreeMap<String, ColumnSelection>,
    /// Named destinations for `route` (queue URLs for sqs, topic ARNs for sns).
    #[serde(default)]
    pub destinations: BTreeMap<String, String>,
    /// jq expression yielding the name of a destination (`null`: the sink's own).
    #[serde(default)]
    pub route: Option<String>,
    /// jq expression yielding the FIFO message group id (default: from `group_columns`).
    #[serde(default)]
    pub group_id: Option<String>,
    /// Where this sink sits in the file, for messages: `sink` or `sinks[N]` (set by `load`).
    #[serde(skip)]
    pub at: String,
}

/// `tables:` of a sink: a list of globs to include, or `{include: […], exclude: […]}`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(untagged)]
pub enum TableSelection {
    /// Every table.
    #[default]
    All,
    /// Only these (globs such as `public.*`; `users` means `public.users`).
    List(Vec<String>),
    /// Included minus excluded (an empty `include`: every table).
    Rules {
        /// Globs of tables to take.
        #[serde(default)]
        include: Vec<String>,
        /// Globs of tables to leave out.
        #[serde(default)]
        exclude: Vec<String>,
    },
}

impl TableSelection {
    /// (include, exclude) globs.
    pub fn globs(&self) -> (&[String], &[String]) {
        match self {
            TableSelection::All => (&[], &[]),
            TableSelection::List(include) => (include, &[]),
            TableSelection::Rules { include, exclude } => (include, exclude),
        }
    }
}

/// `columns.<table>:` of a sink.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnSelection {
    /// Only these columns (the primary key among them).
    #[serde(default)]
    pub include: Option<Vec<String>>,
    /// Every column but these.
    #[serde(default)]
    pub exclude: Vec<String>,
}

impl SinkConfig {
    /// `<at>.<key>`: the setting's name in messages (`sink.queue_url`, `sinks[1].queue_url`).
    pub fn key(&self, key: &str) -> String {
        format!("{}.{key}", self.at)
    }

    /// This sink's queue URL or topic ARN (none for stdout).
    pub fn target(&self) -> Option<&str> {
        match self.kind {
            SinkType::Stdout => None,
            SinkType::Sqs => self.queue_url.as_deref(),
            SinkType::Sns => self.topic_arn.as_deref(),
        }
    }

    fn validate(&self, source_tables: &[String]) -> Result<(), ConfigError> {
        let key = |k: &str| self.key(k);
        for (k, code) in [
            ("filter", &self.filter),
            ("transform", &self.transform),
            ("route", &self.route),
            ("group_id", &self.group_id),
        ] {
            if let Some(code) = code {
                crate::jq::Program::compile(code).map_err(|e| field(key(k), format!("jq: {e}")))?;
            }
        }
        match self.kind {
            SinkType::Stdout => {}
            SinkType::Sqs => {
                let q = self.queue_url.as_deref().ok_or_else(|| {
                    field(
                        key("queue_url"),
                        format!("required when {} is sqs", key("type")),
                    )
                })?;
                check_queue_url(&key("queue_url"), q)?;
            }
            SinkType::Sns => {
                let arn = self.topic_arn.as_deref().ok_or_else(|| {
                    field(
                        key("topic_arn"),
                        format!("required when {} is sns", key("type")),
                    )
                })?;
                check_topic_arn(&key("topic_arn"), arn)?;
            }
        }
        if let Some(dlq) = &self.dead_letter_queue_url {
            check_queue_url(&key("dead_letter_queue_url"), dlq)?;
            if let Some(main) = self.target() {
                let problem = dead_letter_fifo_problem(self.kind, is_fifo(main), is_fifo(dlq));
                if let Some(problem) = problem {
                    return Err(field(key("dead_letter_queue_url"), problem));
                }
            }
        }
        if let Some(s3) = &self.s3 {
            if self.kind == SinkType::Stdout {
                return Err(field(
                    key("s3"),
                    format!("only for {} sqs or sns", key("type")),
                ));
            }
            let b = &s3.bucket;
            let bucket_ok = (3..=63).contains(&b.len())
                && b.bytes().all(|c| {
                    c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'-'
                })
                && b.starts_with(|c: char| c.is_ascii_alphanumeric())
                && b.ends_with(|c: char| c.is_ascii_alphanumeric());
            if !bucket_ok {
                return Err(field(
                    key("s3.bucket"),
                    format!("`{b}` is not an S3 bucket name (3-63 of a-z 0-9 . -)"),
                ));
            }
            let p = &s3.key_prefix;
            if p.len() > 900
                || !p
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || b"./_-".contains(&c))
            {
                return Err(field(
                    key("s3.key_prefix"),
                    "up to 900 of a-z A-Z 0-9 . / _ - (what AWS's extended clients accept)",
                ));
            }
            if s3.threshold_bytes == Some(0) {
                return Err(field(
                    key("s3.threshold_bytes"),
                    "at least 1 (unset: only events over the destination's limit)",
                ));
            }
        }
        if self.access_key_id.is_some() != self.secret_access_key.is_some() {
            return Err(field(
                key("secret_access_key"),
                "access_key_id and secret_access_key go together",
            ));
        }
        let published = |table: &str| -> Result<(String, String), String> {
            let (s, t) =
                parse_table(table).ok_or_else(|| format!("`{table}` is not `schema.table`"))?;
            if !source_tables.is_empty()
                && !source_tables
                    .iter()
                    .any(|x| parse_table(x) == Some((s.clone(), t.clone())))
            {
                return Err(format!("`{table}` is not in source.tables"));
            }
            Ok((s, t))
        };
        let by_name = |setting: &str, table: &str| {
            if table.contains(['*', '?', '[', '{']) {
                return Err(field(
                    key(setting),
                    format!("`{table}` is a glob: {setting} are given per table, by name (schema.table)"),
                ));
            }
            Ok(())
        };
        for (table, cols) in &self.group_columns {
            by_name("group_columns", table)?;
            published(table).map_err(|e| field(key("group_columns"), e))?;
            if cols.is_empty() {
                return Err(field(
                    key("group_columns"),
                    format!("`{table}` lists no column"),
                ));
            }
        }
        let (include, exclude) = self.tables.globs();
        for (k, globs) in [("tables.include", include), ("tables.exclude", exclude)] {
            for g in globs {
                table_glob(g).map_err(|e| field(key(k), e))?;
            }
        }
        if self.actions.as_ref().is_some_and(Vec::is_empty) {
            return Err(field(
                key("actions"),
                "lists no action: name some of insert, update, delete, read, or leave it out for all",
            ));
        }
        for (table, cols) in &self.columns {
            let at = format!("{}.{table}", key("columns"));
            by_name("columns", table)?;
            published(table).map_err(|e| field(key("columns"), e))?;
            match (&cols.include, cols.exclude.is_empty()) {
                (Some(_), false) => {
                    return Err(field(at, "give include or exclude, not both"));
                }
                (Some(list), true) if list.is_empty() => {
                    return Err(field(at, "include lists no column"));
                }
                (None, true) => return Err(field(at, "give include: […] or exclude: […]")),
                _ => {}
            }
        }
        if !self.destinations.is_empty() && self.kind == SinkType::Stdout {
            return Err(field(
                key("destinations"),
                format!("only for {} sqs or sns", key("type")),
            ));
        }
        for (name, target) in &self.destinations {
            let at = format!("{}.{name}", key("destinations"));
            match self.kind {
                SinkType::Sqs => check_queue_url(&at, target)?,
                SinkType::Sns => check_topic_arn(&at, target)?,
                SinkType::Stdout => {}
            }
        }
        match (&self.route, self.destinations.is_empty()) {
            (Some(_), true) => Err(field(
                key("route"),
                format!(
                    "names destinations: list them under {} (name: queue URL or topic ARN)",
                    key("destinations")
                ),
            )),
            (None, false) => Err(field(
                key("destinations"),
                format!(
                    "set {} to choose one per event (a jq expression yielding a name)",
                    key("route")
                ),
            )),
            _ => Ok(()),
        }
    }
}

fn check_queue_url(at: &str, url: &str) -> Result<(), ConfigError> {
    url::Url::parse(url)
        .map(|_| ())
        .map_err(|e| field(at, format!("not a URL: {e}")))
}

fn check_topic_arn(at: &str, arn: &str) -> Result<(), ConfigError> {
    if !arn.starts_with("arn:") || arn.split(':').count() != 6 {
        return Err(field(
            at,
            "not a topic ARN (arn:aws:sns:REGION:ACCOUNT:NAME)",
        ));
    }
    Ok(())
}

/// A glob over `schema.table` (`users` means `public.users`; `*` and `?` within a name).
pub fn table_glob(glob: &str) -> Result<globset::GlobMatcher, String> {
    let full = if glob.contains('.') {
        glob.to_owned()
    } else {
        format!("public.{glob}")
    };
    globset::GlobBuilder::new(&full)
        .build()
        .map(|g| g.compile_matcher())
        .map_err(|e| format!("`{glob}` is not a glob: {}", e.kind()))
}

/// `sink.s3:` events over the destination's limit (or `threshold_bytes`) are put
/// in this bucket, and the message carries the extended clients' pointer to them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// The bucket (template.yaml's PayloadBucketName output).
    pub bucket: String,
    /// Prefix of the object keys (`[a-zA-Z0-9./_-]`, as the extended clients allow).
    #[serde(default)]
    pub key_prefix: String,
    /// Also offload messages over this many bytes (body and attributes, as AWS
    /// counts them); unset: only those over the destination's limit.
    #[serde(default)]
    pub threshold_bytes: Option<usize>,
}

fn default_drain_timeout() -> u64 {
    60
}

impl Default for SinkConfig {
    fn default() -> Self {
        SinkConfig {
            kind: SinkType::Stdout,
            name: default_name(),
            id: None,
            annotations: Map::new(),
            queue_url: None,
            topic_arn: None,
            region: None,
            endpoint_url: None,
            access_key_id: None,
            secret_access_key: None,
            dead_letter_queue_url: None,
            group_columns: BTreeMap::new(),
            drain_timeout_secs: default_drain_timeout(),
            filter: None,
            transform: None,
            s3: None,
            tables: TableSelection::All,
            actions: None,
            columns: BTreeMap::new(),
            destinations: BTreeMap::new(),
            route: None,
            group_id: None,
            at: "sink".into(),
        }
    }
}

/// `backfill:` section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackfillConfig {
    /// When the slot is created (the first start), backfill every published table.
    #[serde(default)]
    pub initial: bool,
}

/// `metrics:` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Write CloudWatch Embedded Metric Format lines to the log (needs `log.format: json`).
    #[serde(default)]
    pub cloudwatch: bool,
    /// How often, in seconds.
    #[serde(default = "default_metrics_interval")]
    pub interval_secs: u64,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            cloudwatch: false,
            interval_secs: default_metrics_interval(),
        }
    }
}

fn default_metrics_interval() -> u64 {
    60
}

/// `http:` section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address for `/healthz` and `/metrics`; none: no listener.
    #[serde(default)]
    pub listen: Option<String>,
}

/// Log output format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `log:` section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// Output format.
    #[serde(default)]
    pub format: LogFormat,
    /// Filter, e.g. `info` or `walcast_streamer=debug` (`RUST_LOG` wins).
    #[serde(default)]
    pub level: Option<String>,
}

fn default_name() -> String {
    "walcast".into()
}

/// How an environment variable's text becomes a value.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    /// Comma-separated.
    List,
    Number,
    Bool,
    /// A YAML (or JSON) value, e.g. the whole `sinks:` list.
    Yaml,
}

/// Environment variables that override keys: (variable, section, key, kind); a
/// section `a.b` is the mapping `b` inside `a`, `""` the top level.
const ENV_KEYS: &[(&str, &str, &str, Kind)] = &[
    // The whole list, as JSON or YAML (a container's environment has no file).
    ("WALCAST_SINKS", "", "sinks", Kind::Yaml),
    ("WALCAST_SOURCE_URL", "source", "url", Kind::Text),
    ("WALCAST_SOURCE_SLOT", "source", "slot", Kind::Text),
    (
        "WALCAST_SOURCE_PUBLICATION",
        "source",
        "publication",
        Kind::Text,
    ),
    ("WALCAST_SOURCE_TABLES", "source", "tables", Kind::List),
    ("WALCAST_SOURCE_NAME", "source", "name", Kind::Text),
    ("WALCAST_SOURCE_ID", "source", "id", Kind::Text),
    ("WALCAST_SOURCE_AUTH", "source", "auth", Kind::Text),
    ("WALCAST_SOURCE_REGION", "source", "region", Kind::Text),
    (
        "WALCAST_SOURCE_FAILOVER_SLOT",
        "source",
        "failover_slot",
        Kind::Bool,
    ),
    (
        "WALCAST_SOURCE_HEARTBEAT_SECS",
        "source",
        "heartbeat_secs",
        Kind::Number,
    ),
    ("WALCAST_SINK_TYPE", "sink", "type", Kind::Text),
    ("WALCAST_SINK_NAME", "sink", "name", Kind::Text),
    ("WALCAST_SINK_ID", "sink", "id", Kind::Text),
    ("WALCAST_SINK_QUEUE_URL", "sink", "queue_url", Kind::Text),
    ("WALCAST_SINK_TOPIC_ARN", "sink", "topic_arn", Kind::Text),
    ("WALCAST_SINK_REGION", "sink", "region", Kind::Text),
    (
        "WALCAST_SINK_ENDPOINT_URL",
        "sink",
        "endpoint_url",
        Kind::Text,
    ),
    (
        "WALCAST_SINK_ACCESS_KEY_ID",
        "sink",
        "access_key_id",
        Kind::Text,
    ),
    (
        "WALCAST_SINK_SECRET_ACCESS_KEY",
        "sink",
        "secret_access_key",
        Kind::Text,
    ),
    (
        "WALCAST_SINK_DEAD_LETTER_QUEUE_URL",
        "sink",
        "dead_letter_queue_url",
        Kind::Text,
    ),
    (
        "WALCAST_SINK_DRAIN_TIMEOUT_SECS",
        "sink",
        "drain_timeout_secs",
        Kind::Number,
    ),
    ("WALCAST_SINK_FILTER", "sink", "filter", Kind::Text),
    ("WALCAST_SINK_TRANSFORM", "sink", "transform", Kind::Text),
    ("WALCAST_SINK_TABLES", "sink", "tables", Kind::List),
    ("WALCAST_SINK_ACTIONS", "sink", "actions", Kind::List),
    ("WALCAST_SINK_ROUTE", "sink", "route", Kind::Text),
    ("WALCAST_SINK_GROUP_ID", "sink", "group_id", Kind::Text),
    ("WALCAST_SINK_S3_BUCKET", "sink.s3", "bucket", Kind::Text),
    (
        "WALCAST_SINK_S3_KEY_PREFIX",
        "sink.s3",
        "key_prefix",
        Kind::Text,
    ),
    (
        "WALCAST_SINK_S3_THRESHOLD_BYTES",
        "sink.s3",
        "threshold_bytes",
        Kind::Number,
    ),
    (
        "WALCAST_BACKFILL_INITIAL",
        "backfill",
        "initial",
        Kind::Bool,
    ),
    (
        "WALCAST_METRICS_CLOUDWATCH",
        "metrics",
        "cloudwatch",
        Kind::Bool,
    ),
    (
        "WALCAST_METRICS_INTERVAL_SECS",
        "metrics",
        "interval_secs",
        Kind::Number,
    ),
    ("WALCAST_HTTP_LISTEN", "http", "listen", Kind::Text),
    ("WALCAST_LOG_FORMAT", "log", "format", Kind::Text),
    ("WALCAST_LOG_LEVEL", "log", "level", Kind::Text),
];

/// serde's "unknown field `slott`, expected one of `url`, `slot`, …" as "unknown
/// field `slott`: did you mean `slot`?" when one of the expected keys is within two
/// letters (else serde's message stands, with its list).
fn near_miss(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    let (unknown, expected) = rest.split_once("`, expected ")?;
    within_two(unknown, expected.split('`').skip(1).step_by(2))
        .map(|k| format!("unknown field `{unknown}`: did you mean `{k}`?"))
}

/// The name of `names` nearest to `unknown`, when it is within two letters (and
/// not merely shorter than two).
fn within_two<'a>(unknown: &str, names: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    names
        .map(|k| (strsim::levenshtein(unknown, k), k))
        .min_by_key(|(d, _)| *d)
        .filter(|(d, k)| *d <= 2 && *d < k.len())
        .map(|(_, k)| k)
}

/// The names of the variables `Config::load` reads.
pub fn env_keys() -> impl Iterator<Item = &'static str> {
    ENV_KEYS.iter().map(|k| k.0)
}

impl Config {
    /// Loads the YAML (if any), applies the environment (`env` yields
    /// variables; `main` passes `std::env::vars()`), and validates.
    pub fn load(
        yaml: Option<&str>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut root: serde_norway::Value = match yaml {
            Some(text) if !text.trim().is_empty() => {
                serde_norway::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?
            }
            _ => serde_norway::Value::Mapping(Default::default()),
        };
        let env: BTreeMap<String, String> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("WALCAST_"))
            .collect();
        for (var, section, key, kind) in ENV_KEYS {
            let Some(value) = env.get(*var) else { continue };
            let serde_norway::Value::Mapping(top) = &mut root else {
                return Err(ConfigError::Parse("the top level must be a mapping".into()));
            };
            let mut sec = top;
            for part in section.split('.').filter(|p| !p.is_empty()) {
                let entry = sec
                    .entry(serde_norway::Value::from(part))
                    .or_insert_with(|| serde_norway::Value::Mapping(Default::default()));
                let serde_norway::Value::Mapping(inner) = entry else {
                    return Err(ConfigError::Parse(format!("`{section}` must be a mapping")));
                };
                sec = inner;
            }
            let v = match kind {
                Kind::List => serde_norway::Value::Sequence(
                    value
                        .split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(serde_norway::Value::from)
                        .collect(),
                ),
                Kind::Number => match value.trim().parse::<u64>() {
                    Ok(n) => serde_norway::Value::from(n),
                    Err(_) => serde_norway::Value::from(value.as_str()),
                },
                Kind::Bool => match value.trim() {
                    "true" | "1" => serde_norway::Value::from(true),
                    "false" | "0" => serde_norway::Value::from(false),
                    other => serde_norway::Value::from(other),
                },
                Kind::Text => serde_norway::Value::from(value.as_str()),
                Kind::Yaml => serde_norway::from_str(value).map_err(|e| {
                    ConfigError::Parse(format!("{var}: not a YAML or JSON value: {e}"))
                })?,
            };
            sec.insert(serde_norway::Value::from(*key), v);
        }
        // A typo in a configuration variable must not pass silently; other WALCAST_*
        // variables (WALCAST_CONFIG, the tooling's WALCAST_TOOLS, …) are not ours to judge.
        const SECTIONS: [&str; 7] = [
            "WALCAST_SINKS_",
            "WALCAST_SOURCE_",
            "WALCAST_SINK_",
            "WALCAST_BACKFILL_",
            "WALCAST_METRICS_",
            "WALCAST_HTTP_",
            "WALCAST_LOG_",
        ];
        let known = |k: &str| k == "WALCAST_CONFIG" || ENV_KEYS.iter().any(|e| e.0 == k);
        // Beside a `sinks:` list the WALCAST_SINK_* variables are refused: a suggestion
        // says where that setting goes instead.
        let listed = root.get("sinks").is_some_and(|s| !s.is_null());
        let meant = |k: &'static str| match k.strip_prefix("WALCAST_SINK_") {
            Some(key) if listed => format!(
                "did you mean {k}? (with a `sinks:` list, set `{}` in the sink's entry instead)",
                key.to_ascii_lowercase()
            ),
            _ => format!("did you mean {k}?"),
        };
        if let Some(unknown) = env
            .keys()
            .find(|k| SECTIONS.iter().any(|p| k.starts_with(p)) && !known(k))
        {
            // A typo gets the name it most likely meant; else the list.
            let closest = env_keys()
                .map(|k| (strsim::jaro_winkler(unknown, k), k))
                .max_by(|a, b| a.0.total_cmp(&b.0))
                .filter(|(score, _)| *score >= 0.9);
            return Err(ConfigError::Parse(match closest {
                Some((_, k)) => format!("unknown environment variable {unknown}: {}", meant(k)),
                None => format!(
                    "unknown environment variable {unknown} (known: {})",
                    env_keys().collect::<Vec<_>>().join(", ")
                ),
            }));
        }
        // Outside those sections only a near miss of a known name (a misspelt section,
        // `WALCAST_SNK_QUEUE_URL`, `WALCAST_CONFG`) is ours to refuse.
        for unknown in env
            .keys()
            .filter(|k| k.starts_with("WALCAST_") && !known(k))
        {
            if let Some(k) = within_two(unknown, env_keys().chain(["WALCAST_CONFIG"])) {
                return Err(ConfigError::Parse(format!(
                    "unknown environment variable {unknown}: {}",
                    meant(k)
                )));
            }
        }
        let has_url = root
            .get("source")
            .and_then(|s| s.get("url"))
            .is_some_and(|u| !u.is_null());
        if !has_url {
            return Err(field(
                "source.url",
                "not set: pass --config FILE (YAML with source.url) or set WALCAST_SOURCE_URL",
            ));
        }
        if let Some(sinks) = root.get("sinks").and_then(|s| s.as_sequence()) {
            if sinks.is_empty() {
                return Err(field(
                    "sinks",
                    "lists no sink: give at least one, or use the one-sink form `sink:`",
                ));
            }
            if let Some(i) = sinks.iter().position(|s| s.get("name").is_none()) {
                return Err(field(
                    format!("sinks[{i}].name"),
                    "required in a sinks list: each sink's own name (its metadata.consumer.name and metrics label)",
                ));
            }
        }
        let mut config: Config = serde_path_to_error::deserialize(root).map_err(|e| {
            let path = e.path().to_string();
            let why = e.into_inner().to_string();
            ConfigError::Parse(format!("{path}: {}", near_miss(&why).unwrap_or(why)))
        })?;
        match (config.sink.take(), config.sinks.is_empty()) {
            (Some(_), false) => {
                let by_env = env.keys().find(|k| k.starts_with("WALCAST_SINK_"));
                return Err(field(
                    "sinks",
                    match by_env {
                        Some(var) => format!(
                            "{var} sets the one-sink form `sink:`, and a `sinks:` list is set \
                             (in the file or WALCAST_SINKS): set that sink's keys in its entry \
                             of the list"
                        ),
                        None => "both `sink:` and `sinks:` are set: keep one (`sink:` is the \
                                 one-sink form of `sinks:`)"
                            .into(),
                    },
                ));
            }
            (Some(mut one), true) => {
                one.at = "sink".into();
                config.sinks.push(one)
            }
            (None, true) => config.sinks.push(SinkConfig::default()),
            (None, false) => {
                for (i, s) in config.sinks.iter_mut().enumerate() {
                    s.at = format!("sinks[{i}]");
                }
            }
        }
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let pg = parse_source_url(self.source.url.expose())?;
        let url = pg.config;
        if url.get_user().is_none() {
            return Err(field("source.url", "no user name"));
        }
        if self.source.auth == AuthMethod::Iam {
            if url.get_password().is_some() {
                return Err(field(
                    "source.url",
                    "holds a password, and source.auth is iam (the password is a fresh token each time): remove it",
                ));
            }
            if matches!(pg.tls.mode, SslMode::Disable | SslMode::Allow) {
                return Err(field(
                    "source.url",
                    "source.auth is iam, which needs TLS: use sslmode=require or verify-full (not disable or allow)",
                ));
            }
            if url
                .get_hosts()
                .iter()
                .any(|h| matches!(h, tokio_postgres::config::Host::Unix(_)))
            {
                return Err(field(
                    "source.url",
                    "source.auth is iam, which needs TLS over TCP: give a host name, not a socket directory",
                ));
            }
        }
        if url.get_hosts().is_empty() {
            return Err(field("source.url", "no host"));
        }
        check_ident("source.slot", &self.source.slot, true)?;
        check_ident("source.publication", &self.source.publication, false)?;
        for t in &self.source.tables {
            parse_table(t).ok_or_else(|| {
                field(
                    "source.tables",
                    format!("`{t}` is not `schema.table` or `table`"),
                )
            })?;
        }
        let mut names = std::collections::BTreeSet::new();
        for sink in &self.sinks {
            sink.validate(&self.source.tables)?;
            if !names.insert(sink.name.as_str()) {
                return Err(field(
                    format!("{}.name", sink.at),
                    format!(
                        "`{}` names two sinks: give each its own (it is metadata.consumer.name and the metrics' sink label)",
                        sink.name
                    ),
                ));
            }
        }
        if self
            .sinks
            .iter()
            .filter(|s| s.kind == SinkType::Stdout)
            .count()
            > 1
        {
            return Err(field(
                "sinks",
                "more than one sink of type stdout: their lines would mix on one output; keep one",
            ));
        }
        if self.metrics.cloudwatch && self.log.format != LogFormat::Json {
            return Err(field(
                "metrics.cloudwatch",
                "CloudWatch reads metrics from JSON log lines: set log.format: json",
            ));
        }
        if self.source.heartbeat_secs == Some(0) {
            return Err(field(
                "source.heartbeat_secs",
                "must be at least 1 (leave it out for no heartbeats)",
            ));
        }
        if self.metrics.interval_secs == 0 {
            return Err(field("metrics.interval_secs", "must be at least 1"));
        }
        if let Some(addr) = &self.http.listen {
            addr.parse::<SocketAddr>().map_err(|_| {
                field(
                    "http.listen",
                    format!("`{addr}` is not host:port, e.g. 0.0.0.0:9187"),
                )
            })?;
        }
        Ok(())
    }

    /// The parsed connection string (validated by `load`), with `source.auth`.
    pub fn postgres(&self) -> Postgres {
        let mut pg = parse_source_url(self.source.url.expose()).unwrap_or_else(|_| Postgres {
            config: tokio_postgres::Config::new(),
            tls: Tls::default(),
            auth: Auth::Password,
        });
        if self.source.auth == AuthMethod::Iam {
            pg.auth = Auth::Iam {
                region: self.source.region.clone(),
            };
            // A token goes over TLS only: prefer (the default) becomes require.
            if pg.tls.mode == SslMode::Prefer {
                pg.tls.mode = SslMode::Require;
            }
        }
        pg
    }

    /// Publication tables as (schema, table).
    pub fn tables(&self) -> Vec<(String, String)> {
        self.source
            .tables
            .iter()
            .filter_map(|t| parse_table(t))
            .collect()
    }

    /// FIFO group columns of a table, if configured: the first sink's (the others
    /// resolve their own, see [`crate::fanout`]).
    pub fn group_columns(&self, schema: &str, table: &str) -> Option<&[String]> {
        self.sinks
            .first()?
            .group_columns
            .iter()
            .find(|(k, _)| parse_table(k).is_some_and(|(s, t)| s == schema && t == table))
            .map(|(_, v)| v.as_slice())
    }
}

/// A queue URL or topic ARN names a FIFO queue or topic (AWS requires the suffix).
fn is_fifo(url_or_arn: &str) -> bool {
    url_or_arn.ends_with(".fifo")
}

/// What is wrong with a dead-letter queue's FIFO-ness next to its sink's queue
/// or topic, if anything: an SQS queue and its dead-letter queue are both FIFO
/// or both standard (as AWS's own redrive requires); a FIFO topic's is FIFO.
pub fn dead_letter_fifo_problem(
    kind: SinkType,
    main_fifo: bool,
    dead_letter_fifo: bool,
) -> Option<&'static str> {
    match (kind, main_fifo, dead_letter_fifo) {
        (SinkType::Sqs, true, false) => {
            Some("sink.queue_url is a FIFO queue: its dead-letter queue must be FIFO too (.fifo)")
        }
        (SinkType::Sqs, false, true) => Some(
            "sink.queue_url is a standard queue: its dead-letter queue must be standard too (no .fifo)",
        ),
        (SinkType::Sns, true, false) => {
            Some("sink.topic_arn is a FIFO topic: its dead-letter queue must be FIFO too (.fifo)")
        }
        _ => None,
    }
}

/// TLS for both connections to the source, from `sslmode` and `sslrootcert` in
/// `source.url` (libpq's meanings).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tls {
    /// `sslmode`.
    pub mode: SslMode,
    /// `sslrootcert`: PEM file of the CA(s) to trust (default: the public web roots).
    pub root_cert: Option<std::path::PathBuf>,
}

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SslMode {
    /// No TLS.
    Disable,
    /// Without TLS first; with TLS (not verified) when the server refuses that.
    Allow,
    /// With TLS (not verified) first; without when the server does not offer TLS or
    /// refuses the encrypted connection (libpq's default).
    #[default]
    Prefer,
    /// TLS, not verified.
    Require,
    /// TLS, certificate chain verified, host name not.
    VerifyCa,
    /// TLS, certificate chain and host name verified.
    VerifyFull,
}

/// The source connection: tokio-postgres settings plus TLS and authentication.
#[derive(Debug, Clone)]
pub struct Postgres {
    /// Host, port, user, password, database (tokio-postgres redacts the password in `Debug`).
    pub config: tokio_postgres::Config,
    /// TLS settings.
    pub tls: Tls,
    /// Where each connection's password comes from.
    pub auth: Auth,
}

/// Where each connection's password comes from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Auth {
    /// `source.url` (or none).
    #[default]
    Password,
    /// A fresh RDS IAM token, signed for this region (else one found as `source.region` says).
    Iam {
        /// `source.region`.
        region: Option<String>,
    },
}

impl Postgres {
    /// `host:port` (or the socket directory and port), for messages.
    pub fn endpoint(&self) -> String {
        let host = match self.config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
            None => "localhost".into(),
        };
        let port = self.config.get_ports().first().copied().unwrap_or(5432);
        format!("{host}:{port}")
    }
}

/// Parses `source.url` (URL or `key=value` form). `sslmode` and `sslrootcert` are taken
/// out and handled here: tokio-postgres knows neither `verify-ca` nor `verify-full`.
pub fn parse_source_url(url: &str) -> Result<Postgres, ConfigError> {
    let mut tls = Tls::default();
    let mut take = |key: &str, value: &str| -> Result<bool, ConfigError> {
        match key {
            "sslmode" => {
                tls.mode = match value {
                    "disable" => SslMode::Disable,
                    "allow" => SslMode::Allow,
                    "prefer" => SslMode::Prefer,
                    "require" => SslMode::Require,
                    "verify-ca" => SslMode::VerifyCa,
                    "verify-full" => SslMode::VerifyFull,
                    other => {
                        return Err(field(
                            "source.url",
                            format!(
                                "sslmode={other}: use disable, allow, prefer, require, verify-ca or verify-full"
                            ),
                        ))
                    }
                };
                Ok(true)
            }
            "sslrootcert" => {
                tls.root_cert = Some(value.into());
                Ok(true)
            }
            _ => Ok(false),
        }
    };
    let rest = if url.contains("://") {
        match url.split_once('?') {
            None => url.to_owned(),
            Some((base, query)) => {
                let mut kept = Vec::new();
                for pair in query.split('&').filter(|p| !p.is_empty()) {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    let v: String = url::form_urlencoded::parse(format!("v={v}").as_bytes())
                        .next()
                        .map(|(_, v)| v.into_owned())
                        .unwrap_or_default();
                    if !take(k, &v)? {
                        kept.push(pair);
                    }
                }
                if kept.is_empty() {
                    base.to_owned()
                } else {
                    format!("{base}?{}", kept.join("&"))
                }
            }
        }
    } else {
        let mut kept = Vec::new();
        for pair in url.split_whitespace() {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            if !take(k, v.trim_matches('\''))? {
                kept.push(pair);
            }
        }
        kept.join(" ")
    };
    let mut config: tokio_postgres::Config = rest.parse().map_err(|_| {
        field(
            "source.url",
            "not a Postgres connection string (postgres://user:password@host:port/dbname)",
        )
    })?;
    // Each connection attempt sets its own (libpq's allow and prefer make two attempts:
    // see `replication::tls`); this is the first attempt's.
    config.ssl_mode(match tls.mode {
        SslMode::Disable | SslMode::Allow => tokio_postgres::config::SslMode::Disable,
        _ => tokio_postgres::config::SslMode::Require,
    });
    if tls.root_cert.is_some() && !matches!(tls.mode, SslMode::VerifyCa | SslMode::VerifyFull) {
        return Err(field(
            "source.url",
            "sslrootcert goes with sslmode=verify-ca or sslmode=verify-full",
        ));
    }
    Ok(Postgres {
        config,
        tls,
        auth: Auth::Password,
    })
}

fn check_ident(name: &'static str, v: &str, slot: bool) -> Result<(), ConfigError> {
    let ok = !v.is_empty()
        && v.len() <= 63
        && v.bytes().all(|b| {
            b.is_ascii_lowercase()
                || b.is_ascii_digit()
                || b == b'_'
                || (!slot && b.is_ascii_uppercase())
        });
    if ok {
        Ok(())
    } else {
        Err(field(
            name,
            format!("`{v}`: use 1-63 characters among a-z, 0-9 and _"),
        ))
    }
}

/// `schema.table` or `table` (→ `public.table`).
pub fn parse_table(s: &str) -> Option<(String, String)> {
    let (schema, table) = s.split_once('.').unwrap_or(("public", s));
    let ok = |p: &str| !p.is_empty() && !p.contains(['.', '"', ' ']);
    (ok(schema) && ok(table)).then(|| (schema.to_owned(), table.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn an_unknown_variable_gets_the_name_it_meant_or_the_list() {
        let yaml = Some("source: {url: 'postgres://u@h/d'}\nsink: {type: stdout}");
        let typo = Config::load(yaml, env(&[("WALCAST_SINK_QUEUEURL", "x")])).expect_err("typo");
        assert_eq!(
            typo.to_string(),
            "invalid config: unknown environment variable WALCAST_SINK_QUEUEURL: did you mean WALCAST_SINK_QUEUE_URL?"
        );
        let far =
            Config::load(yaml, env(&[("WALCAST_SINK_ZZZZZZZZZZZZZZ", "x")])).expect_err("unknown");
        let far = far.to_string();
        assert!(
            far.contains("(known: WALCAST_SINKS, WALCAST_SOURCE_URL,"),
            "{far}"
        );
        assert!(!far.contains("did you mean"), "{far}");
        // A misspelt section, or WALCAST_CONFIG, is a near miss too; other WALCAST_*
        // variables are left alone.
        let prefix = Config::load(yaml, env(&[("WALCAST_SNK_QUEUE_URL", "x")])).expect_err("typo");
        assert!(
            prefix.to_string().ends_with(
                "unknown environment variable WALCAST_SNK_QUEUE_URL: did you mean WALCAST_SINK_QUEUE_URL?"
            ),
            "{prefix}"
        );
        let config = Config::load(yaml, env(&[("WALCAST_CONFG", "x")])).expect_err("typo");
        assert!(
            config.to_string().ends_with("did you mean WALCAST_CONFIG?"),
            "{config}"
        );
        Config::load(
            yaml,
            env(&[("WALCAST_TOOLS", "/x"), ("WALCAST_CONFIG", "f")]),
        )
        .expect("not ours");
        // Beside a sinks list, the suggestion says where the setting goes.
        let listed = Config::load(
            Some("source: {url: 'postgres://u@h/d'}\nsinks: [{name: a}]"),
            env(&[("WALCAST_SINK_QUEUEURL", "x")]),
        )
        .expect_err("typo");
        assert!(
            listed.to_string().ends_with(
                "did you mean WALCAST_SINK_QUEUE_URL? (with a `sinks:` list, set `queue_url` in the sink's entry instead)"
            ),
            "{listed}"
        );
    }

    #[test]
    fn a_misspelt_key_gets_the_key_it_meant() {
        let e = Config::load(
            Some("source: {url: 'postgres://u@h/d', slott: x}"),
            Vec::new(),
        )
        .expect_err("typo");
        assert_eq!(
            e.to_string(),
            "invalid config: source.slott: unknown field `slott`: did you mean `slot`?"
        );
        let e = Config::load(
            Some("source: {url: 'postgres://u@h/d'}\nsinks: [{name: a, type: sqs, queue_ur: x}]"),
            Vec::new(),
        )
        .expect_err("typo");
        assert!(
            e.to_string().ends_with(
                "sinks[0].queue_ur: unknown field `queue_ur`: did you mean `queue_url`?"
            ),
            "{e}"
        );
        let far = Config::load(
            Some("source: {url: 'postgres://u@h/d', colour: x}"),
            Vec::new(),
        )
        .expect_err("unknown");
        assert!(
            far.to_string().contains("expected one of `url`, `slot`"),
            "{far}"
        );
    }

    #[test]
    fn s3_from_yaml_and_env_and_checked() {
        let base = "source: {url: 'postgres://u@h/d'}\nsink: {type: sqs, queue_url: 'https://sqs.eu-west-1.amazonaws.com/1/q'";
        let c = Config::load(
            Some(&format!("{base}, s3: {{bucket: my-bucket}}}}")),
            env(&[
                ("WALCAST_SINK_S3_KEY_PREFIX", "walcast/"),
                ("WALCAST_SINK_S3_THRESHOLD_BYTES", "100000"),
            ]),
        )
        .expect("valid");
        let s3 = c.sinks[0].s3.clone().expect("sink.s3");
        assert_eq!(
            (
                s3.bucket.as_str(),
                s3.key_prefix.as_str(),
                s3.threshold_bytes
            ),
            ("my-bucket", "walcast/", Some(100_000))
        );
        let from_env = Config::load(
            Some(&format!("{base}}}")),
            env(&[("WALCAST_SINK_S3_BUCKET", "env-bucket")]),
        )
        .expect("valid from the environment alone");
        assert_eq!(
            from_env.sinks[0].s3.clone().expect("sink.s3").bucket,
            "env-bucket"
        );
        let bad = |s3: &str| {
            Config::load(Some(&format!("{base}, s3: {s3}}}")), Vec::new())
                .expect_err("refused")
                .to_string()
        };
        assert!(bad("{bucket: My_Bucket}").contains("sink.s3.bucket: `My_Bucket` is not"));
        assert!(bad("{bucket: b-1, key_prefix: 'a b'}").contains("sink.s3.key_prefix"));
        assert!(bad("{bucket: b-1, threshold_bytes: 0}").contains("sink.s3.threshold_bytes"));
        assert!(bad("{bucket: b-1, size: 3}").contains("unknown field `size`"));
        let stdout = Config::load(
            Some("source: {url: 'postgres://u@h/d'}\nsink: {s3: {bucket: b-1}}"),
            Vec::new(),
        );
        assert!(stdout
            .expect_err("refused")
            .to_string()
            .contains("sink.s3: only for"));
    }

    #[test]
    fn yaml_and_env() {
        let yaml = "source:\n  url: postgres://u:pw@localhost/app\n  tables: [users]\nsink:\n  type: stdout\n";
        let c = Config::load(Some(yaml), env(&[("WALCAST_SOURCE_SLOT", "s1")])).expect("valid");
        assert_eq!(c.source.slot, "s1");
        assert_eq!(c.source.publication, "walcast");
        assert_eq!(c.tables(), vec![("public".into(), "users".into())]);
        let c = Config::load(
            None,
            env(&[
                ("WALCAST_SOURCE_URL", "postgres://u@h/db"),
                ("WALCAST_SOURCE_TABLES", "a.b, c"),
                ("WALCAST_SINK_TYPE", "sqs"),
                (
                    "WALCAST_SINK_QUEUE_URL",
                    "http://127.0.0.1:4566/000000000000/q.fifo",
                ),
            ]),
        )
        .expect("valid from env alone");
        assert_eq!(c.sinks[0].kind, SinkType::Sqs);
        assert_eq!(c.tables().len(), 2);
    }

    #[test]
    fn errors_name_the_field() {
        let err = |yaml: &str| {
            Config::load(Some(yaml), Vec::new())
                .expect_err("invalid")
                .to_string()
        };
        assert!(err("sink: {}").contains("source"));
        // Nothing at all: say how to give it.
        let none = Config::load(None, Vec::new()).expect_err("no config");
        assert_eq!(
            none.to_string(),
            "invalid config: source.url: not set: pass --config FILE (YAML with source.url) or set WALCAST_SOURCE_URL"
        );
        assert!(err("source: {url: 'nope nope'}").contains("source.url"));
        assert!(err("source: {url: 'postgres://u@h/d', slot: 'Bad-Slot'}").contains("source.slot"));
        assert!(
            err("source: {url: 'postgres://u@h/d'}\nsink: {type: sqs}").contains("sink.queue_url")
        );
        assert!(
            err("source: {url: 'postgres://u@h/d'}\nsink: {type: kafka}").contains("sink.type")
        );
        assert!(err("source: {url: 'postgres://u@h/d', colour: red}").contains("colour"));
        let dlq = |queue: &str, dlq: &str| {
            err(&format!(
                "source: {{url: 'postgres://u@h/d'}}\nsink: {{type: sqs, queue_url: '{queue}', dead_letter_queue_url: '{dlq}'}}"
            ))
        };
        let q = "https://sqs.eu-west-1.amazonaws.com/1/q";
        assert!(dlq(q, "nope").contains("sink.dead_letter_queue_url: not a URL"));
        let e = dlq(&format!("{q}.fifo"), &format!("{q}-dlq"));
        assert!(
            e.contains("sink.dead_letter_queue_url: sink.queue_url is a FIFO queue"),
            "{e}"
        );
        let e = dlq(q, &format!("{q}-dlq.fifo"));
        assert!(e.contains("must be standard too"), "{e}");
        let e = err(&format!(
            "source: {{url: 'postgres://u@h/d'}}\nsink: {{type: sns, topic_arn: 'arn:aws:sns:eu-west-1:1:t.fifo', dead_letter_queue_url: '{q}'}}"
        ));
        assert!(e.contains("sink.topic_arn is a FIFO topic"), "{e}");
        for (kind, main, dead) in [
            ("queue_url", format!("{q}.fifo"), format!("{q}-dlq.fifo")),
            ("queue_url", q.to_owned(), format!("{q}-dlq")),
            (
                "topic_arn",
                "arn:aws:sns:eu-west-1:1:t".to_owned(),
                format!("{q}-dlq.fifo"),
            ),
        ] {
            let kind_type = if kind == "queue_url" { "sqs" } else { "sns" };
            Config::load(
                Some(&format!(
                    "source: {{url: 'postgres://u@h/d'}}\nsink: {{type: {kind_type}, {kind}: '{main}', dead_letter_queue_url: '{dead}'}}"
                )),
                Vec::new(),
            )
            .expect("a matching dead-letter queue");
        }
        assert!(
            err("source: {url: 'postgres://u@h/d'}\nhttp: {listen: nope}").contains("http.listen")
        );
        let e = Config::load(
            Some("source: {url: 'postgres://u@h/d'}"),
            env(&[("WALCAST_SOURCE_SLOTT", "x")]),
        )
        .expect_err("typo");
        assert!(e.to_string().contains("WALCAST_SOURCE_SLOTT"));
        // Variables outside the configuration's sections are not the streamer's business.
        Config::load(
            Some("source: {url: 'postgres://u@h/d'}"),
            env(&[("WALCAST_TOOLS", "/opt/tools"), ("WALCAST_PG_BIN", "/x")]),
        )
        .expect("other WALCAST_* variables are ignored");
    }

    #[test]
    fn tls_settings_come_out_of_the_url() {
        let pg = parse_source_url(
            "postgres://u:pw@db:5433/app?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&application_name=x",
        )
        .expect("valid");
        assert_eq!(pg.tls.mode, SslMode::VerifyFull);
        assert_eq!(
            pg.tls.root_cert.as_deref(),
            Some(std::path::Path::new("/etc/ca.pem"))
        );
        assert_eq!(pg.config.get_dbname(), Some("app"));
        assert_eq!(pg.config.get_ports(), [5433]);
        let pg = parse_source_url("host=db user=u sslmode=require dbname=app").expect("valid");
        assert_eq!(pg.tls.mode, SslMode::Require);
        let plain = parse_source_url("postgres://u@h/d").expect("valid");
        assert_eq!(plain.tls.mode, SslMode::Prefer);
        let allow = parse_source_url("postgres://u@h/d?sslmode=allow").expect("valid");
        assert_eq!(allow.tls.mode, SslMode::Allow);
        let err = parse_source_url("postgres://u@h/d?sslmode=maybe").expect_err("bad mode");
        assert!(err.to_string().contains("sslmode=maybe"));
    }

    #[test]
    fn iam_auth_forces_tls_and_takes_no_password() {
        let c = Config::load(
            Some("source: {url: 'postgres://walcast@db.x.eu-west-1.rds.amazonaws.com/app', auth: iam}"),
            Vec::new(),
        )
        .expect("valid");
        let pg = c.postgres();
        assert_eq!(pg.auth, Auth::Iam { region: None });
        assert_eq!(pg.tls.mode, SslMode::Require, "prefer becomes require");
        let c = Config::load(
            Some("source: {url: 'postgres://walcast@db/app?sslmode=verify-full'}"),
            env(&[
                ("WALCAST_SOURCE_AUTH", "iam"),
                ("WALCAST_SOURCE_REGION", "eu-central-1"),
            ]),
        )
        .expect("valid");
        let pg = c.postgres();
        assert_eq!(
            pg.auth,
            Auth::Iam {
                region: Some("eu-central-1".into())
            }
        );
        assert_eq!(pg.tls.mode, SslMode::VerifyFull);
        for (url, needle) in [
            ("postgres://walcast:pw@db/app", "holds a password"),
            ("postgres://walcast@db/app?sslmode=disable", "needs TLS"),
            ("postgres://walcast@db/app?sslmode=allow", "needs TLS"),
        ] {
            let e = Config::load(
                Some(&format!("source: {{url: '{url}', auth: iam}}")),
                Vec::new(),
            )
            .expect_err(url);
            assert!(e.to_string().contains(needle), "{url}: {e}");
        }
        let e = Config::load(
            Some("source: {url: 'postgres://u@h/d', auth: token}"),
            Vec::new(),
        )
        .expect_err("unknown method");
        assert!(e.to_string().contains("source.auth"), "{e}");
        // Password authentication leaves the URL's sslmode alone.
        let c = Config::load(Some("source: {url: 'postgres://u@h/d'}"), Vec::new()).expect("valid");
        assert_eq!(c.postgres().tls.mode, SslMode::Prefer);
        assert_eq!(c.postgres().auth, Auth::Password);
    }

    #[test]
    fn heartbeat_secs_is_optional_and_positive() {
        let c = Config::load(Some("source: {url: 'postgres://u@h/d'}"), Vec::new()).expect("valid");
        assert_eq!(c.source.heartbeat_secs, None);
        let c = Config::load(
            Some("source: {url: 'postgres://u@h/d'}"),
            env(&[("WALCAST_SOURCE_HEARTBEAT_SECS", "30")]),
        )
        .expect("valid");
        assert_eq!(c.source.heartbeat_secs, Some(30));
        let e = Config::load(
            Some("source: {url: 'postgres://u@h/d', heartbeat_secs: 0}"),
            Vec::new(),
        )
        .expect_err("zero");
        assert!(e.to_string().contains("source.heartbeat_secs"), "{e}");
    }

    #[test]
    fn secrets_never_print() {
        let c = Config::load(
            Some("source: {url: 'postgres://u:hunter2@h/d'}\nsink: {access_key_id: AK, secret_access_key: topsecret}"),
            Vec::new(),
        )
        .expect("valid");
        let dbg = format!("{c:?}");
        assert!(
            !dbg.contains("hunter2") && !dbg.contains("topsecret"),
            "{dbg}"
        );
    }

    #[test]
    fn a_sinks_list_and_its_errors_one_line_each() {
        let q = "https://sqs.eu-west-1.amazonaws.com/1/q";
        let topic = "arn:aws:sns:eu-west-1:1:t";
        let load = |sinks: &str| {
            Config::load(
                Some(&format!(
                    "source: {{url: 'postgres://u@h/d'}}\nsinks:\n{sinks}"
                )),
                Vec::new(),
            )
        };
        let c = load(&format!(
            "  - {{name: a, type: sqs, queue_url: '{q}'}}\n  - {{name: b, type: sns, topic_arn: '{topic}', tables: ['public.*'], actions: [insert]}}\n"
        ))
        .expect("valid");
        assert_eq!(c.sinks.len(), 2);
        assert_eq!(
            (c.sinks[0].at.as_str(), c.sinks[1].at.as_str()),
            ("sinks[0]", "sinks[1]")
        );
        assert_eq!(c.sinks[1].actions, Some(vec![change_event::Action::Insert]));
        let one = Config::load(
            Some("source: {url: 'postgres://u@h/d'}\nsink: {name: x}"),
            Vec::new(),
        )
        .expect("valid");
        assert_eq!((one.sinks.len(), one.sinks[0].at.as_str()), (1, "sink"));
        let refused = |sinks: &str| {
            let e = load(sinks).expect_err("refused").to_string();
            assert!(!e.contains('\n'), "one line: {e}");
            e
        };
        for (sinks, want) in [
            (
                "  - {name: a}\n  - {name: b, type: sqs}\n".into(),
                "invalid config: sinks[1].queue_url: required when sinks[1].type is sqs",
            ),
            (
                format!("  - {{name: a, type: sqs, queue_url: '{q}'}}\n  - {{name: a, type: sqs, queue_url: '{q}'}}\n"),
                "invalid config: sinks[1].name: `a` names two sinks",
            ),
            (
                "  - {name: a}\n  - {name: b}\n".into(),
                "invalid config: sinks: more than one sink of type stdout",
            ),
            (
                "  - {name: a, tables: {include: ['public.[x']}}\n".into(),
                "invalid config: sinks[0].tables.include: `public.[x` is not a glob",
            ),
            (
                "  - {name: a, actions: []}\n".into(),
                "invalid config: sinks[0].actions: lists no action",
            ),
            (
                "  - {name: a, columns: {users: {include: [id], exclude: [x]}}}\n".into(),
                "invalid config: sinks[0].columns.users: give include or exclude, not both",
            ),
            (
                "  - {name: a, columns: {users: {}}}\n".into(),
                "invalid config: sinks[0].columns.users: give include: [",
            ),
            (
                format!("  - {{name: a, type: sqs, queue_url: '{q}', route: '.x'}}\n"),
                "invalid config: sinks[0].route: names destinations: list them under sinks[0].destinations",
            ),
            (
                format!("  - {{name: a, type: sqs, queue_url: '{q}', destinations: {{x: '{q}'}}}}\n"),
                "invalid config: sinks[0].destinations: set sinks[0].route",
            ),
            (
                format!("  - {{name: a, type: sqs, queue_url: '{q}', destinations: {{x: 'nope'}}, route: '\"x\"'}}\n"),
                "invalid config: sinks[0].destinations.x: not a URL",
            ),
            (
                format!("  - {{name: a, type: sns, topic_arn: '{topic}', destinations: {{x: '{q}'}}, route: '\"x\"'}}\n"),
                "invalid config: sinks[0].destinations.x: not a topic ARN",
            ),
            (
                "  - {name: a}\n  - {name: b, type: sqs, queue_url: 'https://q', route: '.metadata |'}\n".into(),
                "invalid config: sinks[1].route: jq: expected term at line 1, column 12",
            ),
            (
                "  - {name: a, group_id: 'nope(1)'}\n".into(),
                "invalid config: sinks[0].group_id: jq: undefined filter `nope` at line 1, column 1",
            ),
            (
                "  - {name: a, filter: '.action =='}\n".into(),
                "invalid config: sinks[0].filter: jq: expected term",
            ),
            (
                "  - {name: a}\n  - {type: stdout}\n".into(),
                "invalid config: sinks[1].name: required in a sinks list",
            ),
            (
                "  - {name: a, columns: {'public.*': {exclude: [secret]}}}\n".into(),
                "invalid config: sinks[0].columns: `public.*` is a glob",
            ),
        ] {
            let e = refused(&sinks);
            assert!(e.starts_with(want), "{sinks}\n{e}");
        }
        let none = Config::load(
            Some("source: {url: 'postgres://u@h/d'}\nsinks: []"),
            Vec::new(),
        )
        .expect_err("empty");
        assert!(
            none.to_string()
                .starts_with("invalid config: sinks: lists no sink"),
            "{none}"
        );
        let both = Config::load(
            Some("source: {url: 'postgres://u@h/d'}\nsink: {name: x}\nsinks:\n  - {name: y}\n"),
            Vec::new(),
        )
        .expect_err("both");
        assert!(
            both.to_string()
                .contains("both `sink:` and `sinks:` are set"),
            "{both}"
        );
        let by_env = Config::load(
            Some("source: {url: 'postgres://u@h/d'}\nsinks:\n  - {name: y}\n"),
            env(&[("WALCAST_SINK_QUEUE_URL", q)]),
        )
        .expect_err("env with a list");
        assert!(
            by_env
                .to_string()
                .contains("WALCAST_SINK_QUEUE_URL sets the one-sink form"),
            "{by_env}"
        );
    }
}

//! Logging as Lambda's advanced logging controls ask for it, for both templates.
//!
//! - `AWS_LAMBDA_LOG_FORMAT=JSON`: one JSON object per line, fields at the top
//!   level (as CloudWatch Logs Insights reads them); else text without a time
//!   stamp (CloudWatch stamps every line).
//! - `AWS_LAMBDA_LOG_LEVEL` (set by Lambda; `FATAL`, which tracing lacks, is
//!   `error`), else `RUST_LOG`, else `info`: a level, or levels per target
//!   (`info,lambda_runtime=trace`). tracing-subscriber's `Targets`, not
//!   `EnvFilter`, whose span and field filters link a regex engine (an eighth of
//!   the arm64 binary; README, "Cold start and size"). A filter it cannot read
//!   is `info`.

use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// How the function logs, from its environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    /// JSON lines (`AWS_LAMBDA_LOG_FORMAT=JSON`) or text.
    pub json: bool,
    /// The filter: `AWS_LAMBDA_LOG_LEVEL`, else `RUST_LOG`, else `info`.
    pub filter: String,
}

impl LogSettings {
    /// From the process's environment.
    pub fn from_env() -> Self {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// From `var` (a variable's value by name; empty counts as unset).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Self {
        let var = |name: &str| var(name).filter(|v| !v.is_empty());
        let filter = match var("AWS_LAMBDA_LOG_LEVEL") {
            // Lambda's levels are TRACE..ERROR plus FATAL, which tracing lacks.
            Some(level) if level.eq_ignore_ascii_case("fatal") => "error".to_owned(),
            Some(level) => level.to_ascii_lowercase(),
            None => var("RUST_LOG").unwrap_or_else(|| "info".to_owned()),
        };
        LogSettings {
            json: var("AWS_LAMBDA_LOG_FORMAT").is_some_and(|f| f.eq_ignore_ascii_case("json")),
            filter,
        }
    }

    /// Installs the process's logger (once, at cold start).
    pub fn init(&self) {
        let filter: Targets = self
            .filter
            .parse()
            .unwrap_or_else(|_| Targets::new().with_default(tracing::Level::INFO));
        let logs = tracing_subscriber::fmt()
            // The builder's own filter (INFO by default) would drop what `filter`
            // lets through below it: `filter` alone decides.
            .with_max_level(tracing::Level::TRACE)
            .with_target(false)
            .with_ansi(false);
        if self.json {
            logs.json().flatten_event(true).finish().with(filter).init();
        } else {
            logs.without_time().finish().with(filter).init();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(vars: &[(&str, &str)]) -> LogSettings {
        LogSettings::from_vars(|name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        })
    }

    #[test]
    fn lambdas_level_wins_then_rust_log_then_info() {
        assert_eq!(
            settings(&[]),
            LogSettings {
                json: false,
                filter: "info".into()
            }
        );
        assert_eq!(
            settings(&[("RUST_LOG", "info,lambda_runtime=trace")]).filter,
            "info,lambda_runtime=trace"
        );
        let both = [("AWS_LAMBDA_LOG_LEVEL", "WARN"), ("RUST_LOG", "debug")];
        assert_eq!(settings(&both).filter, "warn");
        assert_eq!(
            settings(&[("AWS_LAMBDA_LOG_LEVEL", "FATAL")]).filter,
            "error"
        );
        assert_eq!(
            settings(&[("AWS_LAMBDA_LOG_LEVEL", ""), ("RUST_LOG", "debug")]).filter,
            "debug"
        );
        assert!(settings(&[("AWS_LAMBDA_LOG_FORMAT", "json")]).json);
        assert!(!settings(&[("AWS_LAMBDA_LOG_FORMAT", "Text")]).json);
    }
}

//! What the configuration names: a queue or topic, how to reach it (region,
//! credentials, endpoint), and the verdict of its check
//! (`GetQueueAttributes` / `GetTopicAttributes`, by `streamer check`).
//!
//! A check fails with one line naming the setting to fix:
//! `sink.queue_url: queue https://… does not exist (AWS.SimpleQueueService.NonExistentQueue)`.

use std::time::Duration;

use super::fault::{Cause, Fault};
use super::SinkError;
use crate::config::SinkConfig;

/// A queue or topic as the configuration names it: what a service client
/// needs to say which setting to fix.
#[derive(Debug, Clone)]
pub(super) struct Target {
    /// The setting naming it: `sink.queue_url`, `sink.topic_arn`, `sink.dead_letter_queue_url`.
    pub setting: &'static str,
    /// `SQS queue` or `SNS topic`.
    pub what: &'static str,
    /// The queue URL or topic ARN.
    pub name: String,
    /// Named FIFO (`.fifo`).
    pub fifo: bool,
    /// `sink.endpoint_url` is set (an unreachable endpoint is that setting's fault).
    endpoint_set: bool,
    /// `sink.access_key_id` is set (else the default credential chain).
    static_keys: bool,
}

impl Target {
    /// The target `name` of `setting`, and the AWS configuration to reach it.
    pub async fn connect(
        sink: &SinkConfig,
        setting: &'static str,
        what: &'static str,
        name: &str,
    ) -> Result<(aws_config::SdkConfig, Target), SinkError> {
        let target = Target {
            setting,
            what,
            name: name.to_owned(),
            fifo: name.ends_with(".fifo"),
            endpoint_set: sink.endpoint_url.is_some(),
            static_keys: sink.access_key_id.is_some(),
        };
        Ok((sdk_config(sink, name).await?, target))
    }

    /// The verdict of a check that found the destination FIFO or not, or failed.
    pub fn verdict(&self, found: Result<bool, Fault>) -> Result<String, SinkError> {
        let Target { what, name, .. } = self;
        let (setting, reason) = match found {
            Ok(fifo) if fifo == self.fifo => {
                let kind = if fifo { "FIFO" } else { "standard" };
                return Ok(format!("{what} {name} reachable ({kind})"));
            }
            Ok(fifo) => (
                self.setting,
                format!(
                    "{what} {name} is {}FIFO, but its name says otherwise",
                    if fifo { "" } else { "not " }
                ),
            ),
            Err(fault) => match (fault.cause(), &fault) {
                (_, Fault::Unreachable(_)) if self.endpoint_set => {
                    ("sink.endpoint_url", format!("{what} {name}: {fault}"))
                }
                (Cause::Missing, _) => (
                    self.setting,
                    format!(
                        "{what} {name} does not exist ({})",
                        fault.code().unwrap_or("")
                    ),
                ),
                (Cause::Credentials, _) => (
                    "sink.access_key_id",
                    format!(
                        "AWS refused the credentials{} for {what} {name}: {fault}",
                        if self.static_keys {
                            ""
                        } else {
                            " of the default chain (no sink.access_key_id is set)"
                        }
                    ),
                ),
                _ => (self.setting, format!("{what} {name}: {fault}")),
            },
        };
        Err(SinkError::Setting { setting, reason })
    }
}

/// The region of a queue URL (`https://sqs.REGION.amazonaws.com/…`, the legacy
/// `https://REGION.queue.amazonaws.com/…`) or topic ARN (`arn:aws:sns:REGION:…`).
fn region_of(url_or_arn: &str) -> Option<String> {
    if let Some(rest) = url_or_arn.strip_prefix("arn:") {
        return rest
            .split(':')
            .nth(2)
            .filter(|r| !r.is_empty())
            .map(str::to_owned);
    }
    let host = url::Url::parse(url_or_arn).ok()?.host_str()?.to_owned();
    let parts: Vec<&str> = host.split('.').collect();
    match parts.as_slice() {
        ["sqs", region, ..] if region.contains('-') => Some((*region).to_owned()),
        [region, "queue", ..] if region.contains('-') => Some((*region).to_owned()),
        _ => None,
    }
}

/// The AWS configuration for one destination: region (configured, else from the
/// URL/ARN, else `us-east-1` with an endpoint override), credentials (static
/// keys from the config, else the default chain), no SDK retries (ours decide).
async fn sdk_config(
    sink: &SinkConfig,
    url_or_arn: &str,
) -> Result<aws_config::SdkConfig, SinkError> {
    let region = match (&sink.region, region_of(url_or_arn), &sink.endpoint_url) {
        (Some(r), _, _) => r.clone(),
        (None, Some(r), _) => r,
        (None, None, Some(_)) => "us-east-1".to_owned(),
        (None, None, None) => {
            return Err(SinkError::Setting {
                setting: "sink.region",
                reason: format!("cannot tell the AWS region of {url_or_arn}: set it"),
            })
        }
    };
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(region))
        .retry_config(aws_config::retry::RetryConfig::disabled())
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(5))
                .operation_attempt_timeout(Duration::from_secs(30))
                .build(),
        );
    if let Some(ep) = &sink.endpoint_url {
        loader = loader.endpoint_url(ep);
    }
    if let (Some(id), Some(secret)) = (&sink.access_key_id, &sink.secret_access_key) {
        loader = loader.credentials_provider(aws_sdk_sqs::config::Credentials::new(
            id.clone(),
            secret.expose().to_owned(),
            None,
            None,
            "walcast-config",
        ));
    }
    Ok(loader.load().await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions() {
        let r = |s: &str| region_of(s);
        assert_eq!(
            r("https://sqs.eu-west-1.amazonaws.com/123/q.fifo").as_deref(),
            Some("eu-west-1")
        );
        assert_eq!(
            r("https://us-east-2.queue.amazonaws.com/123/q").as_deref(),
            Some("us-east-2")
        );
        assert_eq!(
            r("arn:aws:sns:ap-south-1:123:t.fifo").as_deref(),
            Some("ap-south-1")
        );
        assert_eq!(r("http://127.0.0.1:4566/000000000000/q"), None);
    }

    fn target(endpoint_set: bool, static_keys: bool) -> Target {
        Target {
            setting: "sink.queue_url",
            what: "SQS queue",
            name: "https://q/1/a.fifo".into(),
            fifo: true,
            endpoint_set,
            static_keys,
        }
    }

    fn failed(t: &Target, found: Result<bool, Fault>) -> String {
        t.verdict(found).expect_err("a failure").to_string()
    }

    #[test]
    fn verdicts_name_the_setting() {
        let t = target(false, true);
        assert_eq!(
            t.verdict(Ok(true)).expect("ok"),
            "SQS queue https://q/1/a.fifo reachable (FIFO)"
        );
        assert_eq!(
            failed(&t, Ok(false)),
            "sink.queue_url: SQS queue https://q/1/a.fifo is not FIFO, but its name says otherwise"
        );
        let call = |code: &str| Fault::Call {
            code: Some(code.into()),
            status: Some(400),
            message: "m".into(),
        };
        assert_eq!(
            failed(&t, Err(call("AWS.SimpleQueueService.NonExistentQueue"))),
            "sink.queue_url: SQS queue https://q/1/a.fifo does not exist (AWS.SimpleQueueService.NonExistentQueue)"
        );
        assert!(failed(&t, Err(call("InvalidClientTokenId")))
            .starts_with("sink.access_key_id: AWS refused the credentials for"));
        assert!(
            failed(&target(false, false), Err(call("InvalidClientTokenId")))
                .contains("default chain")
        );
        assert_eq!(
            failed(&t, Err(call("AccessDenied"))),
            "sink.queue_url: SQS queue https://q/1/a.fifo: AccessDenied (HTTP 400): m"
        );
        let down = Fault::Unreachable("cannot reach the endpoint: refused".into());
        assert!(failed(&t, Err(down.clone())).starts_with("sink.queue_url: "));
        assert!(failed(&target(true, true), Err(down)).starts_with("sink.endpoint_url: "));
    }
}

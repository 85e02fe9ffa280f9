//! What the configuration names: the queue or topic and its dead-letter
//! queue, connected and checked (`GetQueueAttributes` / `GetTopicAttributes`)
//! before `streamer run` creates anything, and by `streamer check`.
//!
//! A check fails with one line naming the setting to fix:
//! `sink.queue_url: queue https://… does not exist (AWS.SimpleQueueService.NonExistentQueue)`.

use std::future::Future;
use std::time::Duration;

use super::aws::{Destination, Entry};
use super::fault::{Cause, Fault};
use super::{AwsSink, PayloadStore, SinkError, SnsTopic, SqsQueue};
use crate::config::{dead_letter_fifo_problem, SinkConfig, SinkType};
use crate::progress::Tracker;

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

/// What one AWS service adds to a [`Target`] to make a [`Destination`]: its
/// size limit and its batch call (the rest of a destination is the target's).
pub(super) trait Service: Send + Sync + 'static {
    /// Limit on one message and on one batch together, in bytes.
    const MAX_BYTES: usize;
    /// What the client sends to.
    fn target(&self) -> &Target;
    /// [`Destination::send_batch`].
    fn send(
        &self,
        entries: &[Entry<'_>],
    ) -> impl Future<Output = Result<Vec<(usize, Fault)>, Fault>> + Send;
}

impl<S: Service> Destination for S {
    fn name(&self) -> &str {
        &self.target().name
    }

    fn is_fifo(&self) -> bool {
        self.target().fifo
    }

    fn max_bytes(&self) -> usize {
        S::MAX_BYTES
    }

    fn send_batch(
        &self,
        entries: &[Entry<'_>],
    ) -> impl Future<Output = Result<Vec<(usize, Fault)>, Fault>> + Send {
        self.send(entries)
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
pub(super) async fn sdk_config(
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
        // A stalled call ends at the attempt timeout below and is retried like any
        // other; the SDK's own throughput watch cost ~6 % of the streamer's CPU per
        // call (perf at 5,000 events/s).
        .stalled_stream_protection(
            aws_config::stalled_stream_protection::StalledStreamProtectionConfig::disabled(),
        )
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

/// The queue or topic of an SQS or SNS sink.
#[derive(Debug, Clone)]
enum Main {
    Queue(SqsQueue),
    Topic(SnsTopic),
}

/// The destinations an SQS or SNS sink configuration names, connected (no
/// call made yet): check them, then start the sink.
#[derive(Debug, Clone)]
pub struct Destinations {
    main: Main,
    dead_letter: Option<SqsQueue>,
    offload: Option<PayloadStore>,
    kind: SinkType,
}

impl Destinations {
    /// Connects the queue or topic and the dead-letter queue of `sink`; `None`
    /// for the stdout sink.
    pub async fn connect(sink: &SinkConfig) -> Result<Option<Destinations>, SinkError> {
        let required = |setting: &'static str, value: &Option<String>| {
            value.clone().ok_or(SinkError::Setting {
                setting,
                reason: "required for this sink.type".into(),
            })
        };
        let (main, name) = match sink.kind {
            SinkType::Stdout => return Ok(None),
            SinkType::Sqs => {
                let url = required("sink.queue_url", &sink.queue_url)?;
                let queue = SqsQueue::connect(sink, "sink.queue_url", &url).await?;
                (Main::Queue(queue), url)
            }
            SinkType::Sns => {
                let arn = required("sink.topic_arn", &sink.topic_arn)?;
                (Main::Topic(SnsTopic::connect(sink, &arn).await?), arn)
            }
        };
        let offload = match &sink.s3 {
            Some(s3) => Some(PayloadStore::connect(sink, s3, &name).await?),
            None => None,
        };
        let dead_letter = match &sink.dead_letter_queue_url {
            Some(url) => Some(SqsQueue::connect(sink, "sink.dead_letter_queue_url", url).await?),
            None => None,
        };
        Ok(Some(Destinations {
            main,
            dead_letter,
            offload,
            kind: sink.kind,
        }))
    }

    /// Checks every destination (one AWS call each): it exists, the
    /// credentials work, it is FIFO as its name says, and the dead-letter
    /// queue's FIFO-ness matches the queue's or topic's; with `sink.s3`, the
    /// bucket takes a small probe object (`PutObject`, the publisher's one S3
    /// permission). One result each: what was found, or the failure naming the setting.
    pub async fn check(&self) -> Vec<Result<String, SinkError>> {
        let (main, main_fifo) = match &self.main {
            Main::Queue(q) => (q.check().await, q.target().fifo),
            Main::Topic(t) => (t.check().await, t.target().fifo),
        };
        let mut out = vec![main];
        if let Some(dlq) = &self.dead_letter {
            let checked = dlq.check().await.and_then(|found| {
                match dead_letter_fifo_problem(self.kind, main_fifo, dlq.target().fifo) {
                    Some(problem) => Err(SinkError::Setting {
                        setting: "sink.dead_letter_queue_url",
                        reason: problem.into(),
                    }),
                    None => Ok(found),
                }
            });
            out.push(checked);
        }
        if let Some(store) = &self.offload {
            out.push(store.check().await);
        }
        out
    }

    /// The first failure of [`check`](Destinations::check), if any.
    pub async fn verify(&self) -> Result<(), SinkError> {
        self.check()
            .await
            .into_iter()
            .find_map(Result::err)
            .map_or(Ok(()), Err)
    }

    /// Starts the sink on the current runtime.
    pub fn start(self, tracker: Tracker) -> AwsSink {
        match self.main {
            Main::Queue(q) => AwsSink::start(q, self.dead_letter, self.offload, tracker),
            Main::Topic(t) => AwsSink::start(t, self.dead_letter, self.offload, tracker),
        }
    }
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

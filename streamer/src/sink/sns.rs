//! SNS: a topic as a [`Destination`](super::Destination) (`PublishBatch`,
//! 10 entries, 256 KiB).

use aws_sdk_sns::types::{MessageAttributeValue, PublishBatchRequestEntry};

use super::aws::{send_batch, Entry};
use super::destinations::{Service, Target};
use super::fault::Fault;
use super::SinkError;
use crate::config::SinkConfig;

/// One SNS topic (standard, or FIFO when the ARN ends with `.fifo`).
#[derive(Debug, Clone)]
pub struct SnsTopic {
    client: aws_sdk_sns::Client,
    target: Target,
}

impl SnsTopic {
    /// A client for the topic `arn` (`sink.topic_arn`).
    pub async fn connect(sink: &SinkConfig, arn: &str) -> Result<SnsTopic, SinkError> {
        let (conf, target) = Target::connect(sink, "sink.topic_arn", "SNS topic", arn).await?;
        Ok(SnsTopic {
            client: aws_sdk_sns::Client::new(&conf),
            target,
        })
    }

    /// `GetTopicAttributes`: the topic exists, the credentials work, FIFO-ness matches the ARN.
    pub async fn check(&self) -> Result<String, SinkError> {
        let found = self
            .client
            .get_topic_attributes()
            .topic_arn(&self.target.name)
            .send()
            .await
            .map(|out| {
                out.attributes()
                    .and_then(|a| a.get("FifoTopic"))
                    .is_some_and(|v| v == "true")
            })
            .map_err(Fault::from_sdk);
        self.target.verdict(found)
    }
}

impl Service for SnsTopic {
    /// SNS accepts 256 KiB per message and per batch.
    const MAX_BYTES: usize = 256 * 1024;

    fn target(&self) -> &Target {
        &self.target
    }

    async fn send(&self, entries: &[Entry<'_>]) -> Result<Vec<(usize, Fault)>, Fault> {
        send_batch!(
            entries,
            PublishBatchRequestEntry,
            message,
            MessageAttributeValue,
            |request| self
                .client
                .publish_batch()
                .topic_arn(&self.target.name)
                .set_publish_batch_request_entries(Some(request))
        )
    }
}

//! SNS: a topic as a [`Destination`] (`PublishBatch`, 10 entries, 256 KiB).

use aws_sdk_sns::types::{MessageAttributeValue, PublishBatchRequestEntry};

use super::aws::{request_entries, Destination, Entry};
use super::destinations::Target;
use super::fault::Fault;
use super::SinkError;
use crate::config::SinkConfig;

/// SNS accepts 256 KiB per message and per batch.
pub const SNS_MAX_BYTES: usize = 256 * 1024;

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

    pub(super) fn target(&self) -> &Target {
        &self.target
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

impl Destination for SnsTopic {
    fn name(&self) -> &str {
        &self.target.name
    }

    fn is_fifo(&self) -> bool {
        self.target.fifo
    }

    fn max_bytes(&self) -> usize {
        SNS_MAX_BYTES
    }

    async fn send_batch(&self, entries: &[Entry<'_>]) -> Result<Vec<(usize, Fault)>, Fault> {
        let request = request_entries!(
            entries,
            PublishBatchRequestEntry,
            message,
            MessageAttributeValue
        )?;
        let out = self
            .client
            .publish_batch()
            .topic_arn(&self.target.name)
            .set_publish_batch_request_entries(Some(request))
            .send()
            .await
            .map_err(Fault::from_sdk)?;
        Ok(out
            .failed()
            .iter()
            .map(|f| Fault::failed_entry(f.id(), f.code(), f.message(), f.sender_fault()))
            .collect())
    }
}

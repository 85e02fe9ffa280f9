//! SQS: a queue as a [`Destination`](super::Destination) (`SendMessageBatch`,
//! 10 entries, 1 MiB).

use aws_sdk_sqs::types::{MessageAttributeValue, QueueAttributeName, SendMessageBatchRequestEntry};

use super::aws::{send_batch, Entry};
use super::destinations::{Service, Target};
use super::fault::Fault;
use super::SinkError;
use crate::config::SinkConfig;

/// One SQS queue (standard, or FIFO when the URL ends with `.fifo`).
#[derive(Debug, Clone)]
pub struct SqsQueue {
    client: aws_sdk_sqs::Client,
    target: Target,
}

impl SqsQueue {
    /// A client for the queue `url`, which the setting `setting` names
    /// (`sink.queue_url`, `sink.dead_letter_queue_url`; for messages).
    pub async fn connect(
        sink: &SinkConfig,
        setting: &'static str,
        url: &str,
    ) -> Result<SqsQueue, SinkError> {
        let (conf, target) = Target::connect(sink, setting, "SQS queue", url).await?;
        Ok(SqsQueue {
            client: aws_sdk_sqs::Client::new(&conf),
            target,
        })
    }

    /// `GetQueueAttributes`: the queue exists, the credentials work, FIFO-ness matches the URL.
    pub async fn check(&self) -> Result<String, SinkError> {
        let found = self
            .client
            .get_queue_attributes()
            .queue_url(&self.target.name)
            .attribute_names(QueueAttributeName::FifoQueue)
            .send()
            .await
            .map(|out| {
                out.attributes()
                    .and_then(|a| a.get(&QueueAttributeName::FifoQueue))
                    .is_some_and(|v| v == "true")
            })
            .map_err(Fault::from_sdk);
        self.target.verdict(found)
    }
}

impl Service for SqsQueue {
    /// SQS accepts 1 MiB per message and per batch.
    const MAX_BYTES: usize = 1024 * 1024;

    fn target(&self) -> &Target {
        &self.target
    }

    async fn send(&self, entries: &[Entry<'_>]) -> Result<Vec<(usize, Fault)>, Fault> {
        send_batch!(
            entries,
            SendMessageBatchRequestEntry,
            message_body,
            MessageAttributeValue,
            |request| self
                .client
                .send_message_batch()
                .queue_url(&self.target.name)
                .set_entries(Some(request))
        )
    }
}

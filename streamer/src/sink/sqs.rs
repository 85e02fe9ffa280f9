//! SQS: a queue as a [`Destination`] (`SendMessageBatch`, 10 entries, 1 MiB).

use aws_sdk_sqs::types::{MessageAttributeValue, QueueAttributeName, SendMessageBatchRequestEntry};

use super::aws::{request_entries, Destination, Entry};
use super::destinations::Target;
use super::fault::Fault;
use super::SinkError;
use crate::config::SinkConfig;

/// SQS accepts 1 MiB per message and per batch.
pub const SQS_MAX_BYTES: usize = 1024 * 1024;

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

    pub(super) fn target(&self) -> &Target {
        &self.target
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

impl Destination for SqsQueue {
    fn name(&self) -> &str {
        &self.target.name
    }

    fn is_fifo(&self) -> bool {
        self.target.fifo
    }

    fn max_bytes(&self) -> usize {
        SQS_MAX_BYTES
    }

    async fn send_batch(&self, entries: &[Entry<'_>]) -> Result<Vec<(usize, Fault)>, Fault> {
        let request = request_entries!(
            entries,
            SendMessageBatchRequestEntry,
            message_body,
            MessageAttributeValue
        )?;
        let out = self
            .client
            .send_message_batch()
            .queue_url(&self.target.name)
            .set_entries(Some(request))
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

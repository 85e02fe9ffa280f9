//! SQS: a queue as a [`Destination`] (`SendMessageBatch`, 10 entries, 1 MiB).

use aws_sdk_sqs::types::{MessageAttributeValue, QueueAttributeName, SendMessageBatchRequestEntry};

use super::aws::{call_error, sdk_config, CallError, Destination, EntryFailure, Message};
use super::SinkError;
use crate::config::SinkConfig;

/// SQS accepts 1 MiB per message and per batch.
pub const SQS_MAX_BYTES: usize = 1024 * 1024;

/// One SQS queue (standard, or FIFO when the URL ends with `.fifo`).
#[derive(Debug, Clone)]
pub struct SqsQueue {
    client: aws_sdk_sqs::Client,
    url: String,
    fifo: bool,
}

impl SqsQueue {
    /// A client for `url`, configured from the sink config.
    pub async fn connect(sink: &SinkConfig, url: &str) -> Result<SqsQueue, SinkError> {
        let conf = sdk_config(sink, url).await?;
        Ok(SqsQueue {
            client: aws_sdk_sqs::Client::new(&conf),
            url: url.to_owned(),
            fifo: url.ends_with(".fifo"),
        })
    }

    /// `GetQueueAttributes`: the queue exists, the credentials work, FIFO-ness matches the URL.
    pub async fn check(&self) -> Result<String, CallError> {
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(&self.url)
            .attribute_names(QueueAttributeName::All)
            .send()
            .await
            .map_err(call_error)?;
        let attrs = out.attributes();
        let fifo = attrs
            .and_then(|a| a.get(&QueueAttributeName::FifoQueue))
            .map(|v| v == "true")
            .unwrap_or(false);
        if fifo != self.fifo {
            return Err(CallError {
                code: None,
                status: None,
                transport: false,
                message: format!(
                    "queue {} is {}FIFO but its URL says otherwise",
                    self.url,
                    if fifo { "" } else { "not " }
                ),
            });
        }
        Ok(format!(
            "SQS queue {} reachable ({})",
            self.url,
            if fifo { "FIFO" } else { "standard" }
        ))
    }
}

impl Destination for SqsQueue {
    fn name(&self) -> &str {
        &self.url
    }

    fn is_fifo(&self) -> bool {
        self.fifo
    }

    fn max_bytes(&self) -> usize {
        SQS_MAX_BYTES
    }

    async fn send_batch(&self, batch: &[Message]) -> Result<Vec<EntryFailure>, CallError> {
        let mut entries = Vec::with_capacity(batch.len());
        for (i, m) in batch.iter().enumerate() {
            let mut e = SendMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .message_body(m.body());
            for (k, v) in m.attributes() {
                e = e.message_attributes(
                    k,
                    MessageAttributeValue::builder()
                        .data_type("String")
                        .string_value(v.into_owned())
                        .build()
                        .map_err(build_error)?,
                );
            }
            if self.fifo {
                e = e
                    .message_group_id(&m.event.group_id)
                    .message_deduplication_id(m.event.deduplication_id());
            }
            entries.push(e.build().map_err(build_error)?);
        }
        let out = self
            .client
            .send_message_batch()
            .queue_url(&self.url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(call_error)?;
        Ok(out
            .failed()
            .iter()
            .map(|f| EntryFailure {
                index: f.id().parse().unwrap_or(usize::MAX),
                code: f.code().to_owned(),
                message: f.message().unwrap_or("").to_owned(),
                sender_fault: f.sender_fault(),
            })
            .collect())
    }
}

pub(super) fn build_error(e: impl std::fmt::Display) -> CallError {
    CallError {
        code: Some("ConstructionFailure".into()),
        status: None,
        transport: false,
        message: e.to_string(),
    }
}

//! SNS: a topic as a [`Destination`] (`PublishBatch`, 10 entries, 256 KiB).

use aws_sdk_sns::types::{MessageAttributeValue, PublishBatchRequestEntry};

use super::aws::{call_error, sdk_config, CallError, Destination, EntryFailure, Message};
use super::sqs::build_error;
use super::SinkError;
use crate::config::SinkConfig;

/// SNS accepts 256 KiB per message and per batch.
pub const SNS_MAX_BYTES: usize = 256 * 1024;

/// One SNS topic (standard, or FIFO when the ARN ends with `.fifo`).
#[derive(Debug, Clone)]
pub struct SnsTopic {
    client: aws_sdk_sns::Client,
    arn: String,
    fifo: bool,
}

impl SnsTopic {
    /// A client for `arn`, configured from the sink config.
    pub async fn connect(sink: &SinkConfig, arn: &str) -> Result<SnsTopic, SinkError> {
        let conf = sdk_config(sink, arn).await?;
        Ok(SnsTopic {
            client: aws_sdk_sns::Client::new(&conf),
            arn: arn.to_owned(),
            fifo: arn.ends_with(".fifo"),
        })
    }

    /// `GetTopicAttributes`: the topic exists, the credentials work, FIFO-ness matches the ARN.
    pub async fn check(&self) -> Result<String, CallError> {
        let out = self
            .client
            .get_topic_attributes()
            .topic_arn(&self.arn)
            .send()
            .await
            .map_err(call_error)?;
        let fifo = out
            .attributes()
            .and_then(|a| a.get("FifoTopic"))
            .map(|v| v == "true")
            .unwrap_or(false);
        if fifo != self.fifo {
            return Err(CallError {
                code: None,
                status: None,
                transport: false,
                message: format!(
                    "topic {} is {}FIFO but its ARN says otherwise",
                    self.arn,
                    if fifo { "" } else { "not " }
                ),
            });
        }
        Ok(format!(
            "SNS topic {} reachable ({})",
            self.arn,
            if fifo { "FIFO" } else { "standard" }
        ))
    }
}

impl Destination for SnsTopic {
    fn name(&self) -> &str {
        &self.arn
    }

    fn is_fifo(&self) -> bool {
        self.fifo
    }

    fn max_bytes(&self) -> usize {
        SNS_MAX_BYTES
    }

    async fn send_batch(&self, batch: &[Message]) -> Result<Vec<EntryFailure>, CallError> {
        let mut entries = Vec::with_capacity(batch.len());
        for (i, m) in batch.iter().enumerate() {
            let mut e = PublishBatchRequestEntry::builder()
                .id(i.to_string())
                .message(m.body());
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
            .publish_batch()
            .topic_arn(&self.arn)
            .set_publish_batch_request_entries(Some(entries))
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

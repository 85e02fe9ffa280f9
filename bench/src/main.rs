//! `sqs-ceiling`: what an SQS endpoint takes from a plain SDK loop, the
//! reference the streamer's SQS sink is measured against.
//!
//! `create` makes a queue (FIFO when the name ends in `.fifo`) and prints its URL;
//! `send` pushes N messages of S bytes with `SendMessageBatch` (10 per call, C calls in
//! flight) shaped like the streamer's (the `action`, `table_schema` and `table_name`
//! String attributes; on FIFO one message group and dedup id per message) and prints one
//! JSON line of figures; `delete` removes a queue (the emulator keeps messages in memory);
//! `create-topic` makes an SNS topic and prints its ARN.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use aws_sdk_sqs::types::{MessageAttributeValue, QueueAttributeName, SendMessageBatchRequestEntry};
use clap::{Parser, Subcommand};

#[derive(Parser)]
struct Cli {
    /// Endpoint of the emulator, e.g. http://127.0.0.1:4566.
    #[arg(long)]
    endpoint: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a queue and print its URL.
    Create {
        /// Queue name (`.fifo` for FIFO).
        name: String,
    },
    /// Create an SNS topic (FIFO when the name ends in `.fifo`) and print its ARN.
    CreateTopic {
        /// Topic name.
        name: String,
    },
    /// Delete a queue.
    Delete {
        /// Queue URL.
        queue_url: String,
    },
    /// Send messages and print figures.
    Send {
        /// Queue URL.
        #[arg(long)]
        queue_url: String,
        /// How many messages.
        #[arg(long, default_value_t = 100_000)]
        messages: usize,
        /// Bytes per message body.
        #[arg(long, default_value_t = 400)]
        size: usize,
        /// Batches in flight.
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cli = Cli::parse();
    let conf = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(&cli.endpoint)
        .credentials_provider(aws_sdk_sqs::config::Credentials::new(
            "test", "test", None, None, "bench",
        ))
        .load()
        .await;
    let sqs = aws_sdk_sqs::Client::new(&conf);
    match cli.command {
        Command::Create { name } => {
            let mut req = sqs.create_queue().queue_name(&name);
            if name.ends_with(".fifo") {
                req = req
                    .attributes(QueueAttributeName::FifoQueue, "true")
                    .attributes(QueueAttributeName::ContentBasedDeduplication, "false");
            }
            let out = req.send().await.context("CreateQueue")?;
            println!("{}", out.queue_url().unwrap_or_default());
        }
        Command::CreateTopic { name } => {
            let sns = aws_sdk_sns::Client::new(&conf);
            let mut req = sns.create_topic().name(&name);
            if name.ends_with(".fifo") {
                req = req.attributes("FifoTopic", "true");
            }
            let out = req.send().await.context("CreateTopic")?;
            println!("{}", out.topic_arn().unwrap_or_default());
        }
        Command::Delete { queue_url } => {
            sqs.delete_queue()
                .queue_url(queue_url)
                .send()
                .await
                .context("DeleteQueue")?;
        }
        Command::Send {
            queue_url,
            messages,
            size,
            concurrency,
        } => {
            let fifo = queue_url.ends_with(".fifo");
            let body: Arc<str> = "x".repeat(size).into();
            let started = Instant::now();
            let mut tasks = tokio::task::JoinSet::new();
            let mut next = 0usize;
            let mut sent = 0usize;
            loop {
                while tasks.len() < concurrency && next < messages {
                    let n = (messages - next).min(10);
                    let entries: Vec<SendMessageBatchRequestEntry> = (next..next + n)
                        .map(|i| {
                            let mut e = SendMessageBatchRequestEntry::builder()
                                .id(format!("m{}", i - next))
                                .message_body(&*body);
                            for (k, v) in [
                                ("action", "insert"),
                                ("table_schema", "public"),
                                ("table_name", "bench_t"),
                            ] {
                                e = e.message_attributes(
                                    k,
                                    MessageAttributeValue::builder()
                                        .data_type("String")
                                        .string_value(v)
                                        .build()?,
                                );
                            }
                            if fifo {
                                e = e
                                    .message_group_id(format!("g{i}"))
                                    .message_deduplication_id(format!("d{i}"));
                            }
                            e.build()
                        })
                        .collect::<Result<_, _>>()?;
                    next += n;
                    let (sqs, url) = (sqs.clone(), queue_url.clone());
                    tasks.spawn(async move {
                        let out = sqs
                            .send_message_batch()
                            .queue_url(url)
                            .set_entries(Some(entries))
                            .send()
                            .await?;
                        anyhow::ensure!(out.failed().is_empty(), "failed entries");
                        Ok::<usize, anyhow::Error>(out.successful().len())
                    });
                }
                match tasks.join_next().await {
                    Some(done) => sent += done??,
                    None => break,
                }
            }
            let secs = started.elapsed().as_secs_f64();
            println!(
                "{{\"messages\":{sent},\"seconds\":{secs:.3},\"per_second\":{:.0}}}",
                sent as f64 / secs
            );
        }
    }
    Ok(())
}

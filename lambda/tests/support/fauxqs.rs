//! fauxqs, the SQS/SNS/S3 emulator of the streamer's tests (npm, installed by
//! `infra/install-emulator.sh`), started on 127.0.0.1 at a free port for one
//! test and stopped when that test drops it.

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Fauxqs {
    child: Child,
    pub endpoint: String,
}

impl Fauxqs {
    pub fn start() -> Self {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../infra/install-emulator.sh");
        let out = Command::new("sh")
            .arg(&script)
            .stderr(Stdio::inherit())
            .output()
            .expect("run infra/install-emulator.sh");
        assert!(out.status.success(), "infra/install-emulator.sh failed");
        let bin = String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .expect("the script prints the emulator's path")
            .trim()
            .to_owned();
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new(bin)
            .env("FAUXQS_PORT", port.to_string())
            .env("FAUXQS_HOST", "localhost")
            .env("FAUXQS_LOGGER", "false")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start fauxqs");
        let emulator = Self {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
            assert!(Instant::now() < deadline, "fauxqs did not listen on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        emulator
    }

    /// An AWS SDK client for this emulator, to set objects up (path-style: no
    /// `*.localhost` DNS needed).
    pub fn s3(&self) -> aws_sdk_s3::Client {
        s3_client(&self.endpoint)
    }

    /// The library's S3 settings for this emulator.
    pub fn settings(&self) -> walcast_lambda::S3Settings {
        settings(&self.endpoint)
    }
}

/// The library's S3 settings for `endpoint`, with test credentials.
pub fn settings(endpoint: &str) -> walcast_lambda::S3Settings {
    walcast_lambda::S3Settings::new("us-east-1", "test", "test").endpoint(endpoint)
}

/// An S3 client for `endpoint`, with test credentials.
pub fn s3_client(endpoint: &str) -> aws_sdk_s3::Client {
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_s3::config::Credentials::new(
            "test", "test", None, None, "test",
        ))
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

impl Drop for Fauxqs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

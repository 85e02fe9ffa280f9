//! Test support: the fauxqs SQS/SNS emulator (npm), installed by
//! `infra/install-emulator.sh`, one per test binary on 127.0.0.1 at a free
//! port. A watchdog stops it when the test process exits, however it exits.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

pub struct Emulator {
    pub endpoint: String,
    port: u16,
    /// Holds the current pid, for the watchdog and for restarts.
    pidfile: PathBuf,
    init: Option<PathBuf>,
}

static EMULATOR: OnceLock<Emulator> = OnceLock::new();
static NEXT: AtomicU32 = AtomicU32::new(0);

fn install() -> PathBuf {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../infra/install-emulator.sh");
    let out = Command::new("sh")
        .arg(&script)
        .stderr(Stdio::inherit())
        .output()
        .expect("run infra/install-emulator.sh");
    assert!(out.status.success(), "infra/install-emulator.sh failed");
    let bin = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    PathBuf::from(
        bin.lines()
            .last()
            .expect("the script prints the emulator path"),
    )
}

impl Emulator {
    /// The shared emulator of this test binary, started on first use.
    pub fn get() -> &'static Emulator {
        EMULATOR.get_or_init(|| Emulator::dedicated(None))
    }

    /// An emulator of its own (to stop and restart), creating the resources
    /// of the fauxqs init file `init` (JSON) whenever it starts.
    pub fn dedicated(init: Option<&str>) -> Emulator {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let base = std::env::temp_dir().join(format!("walcast-fauxqs-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&base).expect("temp dir");
        let init = init.map(|json| {
            let p = base.join("init.json");
            std::fs::write(&p, json).expect("write init");
            p
        });
        let pidfile = base.join("pid");
        let port = super::free_port();
        let emu = Emulator {
            endpoint: format!("http://127.0.0.1:{port}"),
            port,
            pidfile,
            init,
        };
        emu.spawn();
        // Watchdog: stop it when this process exits, however it exits.
        let stop = format!(
            "while kill -0 {me} 2>/dev/null; do sleep 0.5; done; kill -9 $(cat {pidfile}) 2>/dev/null; rm -rf {base}",
            me = std::process::id(),
            pidfile = emu.pidfile.display(),
            base = base.display(),
        );
        #[allow(clippy::zombie_processes)]
        let _watchdog = Command::new("sh")
            .args(["-c", &stop])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("watchdog");
        emu
    }

    fn spawn(&self) {
        static BIN: OnceLock<PathBuf> = OnceLock::new();
        let bin = BIN.get_or_init(install);
        let mut cmd = Command::new(bin);
        cmd.env("FAUXQS_PORT", self.port.to_string())
            .env("FAUXQS_HOST", "localhost")
            .env("FAUXQS_LOGGER", "false")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(init) = &self.init {
            cmd.env("FAUXQS_INIT", init);
        }
        let child = cmd.spawn().expect("start fauxqs");
        std::fs::write(&self.pidfile, child.id().to_string()).expect("pid file");
        // Deliberately not waited on: `stop` and the watchdog end it.
        std::mem::forget(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "fauxqs did not listen on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the emulator (its state is lost) and waits until the port is closed.
    pub fn stop(&self) {
        let pid = std::fs::read_to_string(&self.pidfile).expect("pid file");
        let _ = Command::new("kill").args(["-9", pid.trim()]).status();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            assert!(std::time::Instant::now() < deadline, "fauxqs did not stop");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts it again on the same port (the init file recreates the resources).
    pub fn restart(&self) {
        self.spawn();
    }

    fn sdk_config(&self) -> aws_config::SdkConfig {
        aws_config::SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .endpoint_url(&self.endpoint)
            .credentials_provider(aws_sdk_sqs::config::SharedCredentialsProvider::new(
                aws_sdk_sqs::config::Credentials::new("test", "test", None, None, "test"),
            ))
            .build()
    }

    pub fn sqs(&self) -> aws_sdk_sqs::Client {
        aws_sdk_sqs::Client::new(&self.sdk_config())
    }

    pub fn sns(&self) -> aws_sdk_sns::Client {
        aws_sdk_sns::Client::new(&self.sdk_config())
    }

    /// S3, path-style (the streamer uses path-style with `sink.endpoint_url` too).
    pub fn s3(&self) -> aws_sdk_s3::Client {
        let conf = aws_sdk_s3::config::Builder::from(&self.sdk_config())
            .force_path_style(true)
            .build();
        aws_sdk_s3::Client::from_conf(conf)
    }

    /// The `sink:` YAML section for this emulator.
    pub fn sink_yaml(&self, kind: &str, target: &str, extra: &str) -> String {
        let key = if kind == "sqs" {
            "queue_url"
        } else {
            "topic_arn"
        };
        format!(
            "sink:\n  type: {kind}\n  {key}: {target}\n  endpoint_url: {}\n  access_key_id: test\n  secret_access_key: test\n{extra}",
            self.endpoint
        )
    }
}

//! One S3 request, `GetObject`, signed with SigV4 (`aws-sigv4`, the AWS SDK's
//! own signer) and sent over HTTPS (rustls with ring) through the hyper client
//! the Lambda runtime already links.
//!
//! Why not `aws-sdk-s3`: the SDK, `aws-config` and their TLS stack made the
//! function's binary 4.5× larger (2.2 MB → 10 MB on arm64) and its cold start
//! 0.5–1 ms longer, for one request a function makes only when an event was
//! too large for its message. This module is the part of the SDK that request
//! needs, configured as the SDK would be on Lambda:
//!
//! - credentials and region from the environment Lambda sets for the function
//!   (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
//!   `AWS_REGION`), read on the first pointer;
//! - the endpoint `https://BUCKET.s3.REGION.amazonaws.com` (path style for
//!   bucket names with dots), or `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL`
//!   (path style: emulators and S3-compatible stores want it);
//! - the system's CA certificates (as the SDK's client), TLS 1.2 and 1.3;
//! - three tries for what may pass (no answer, 500, 503, `SlowDown`), a
//!   3.1 s connect timeout (the SDK's).
//!
//! What it does not do: credentials from profiles, IMDS or web identity (not
//! needed on Lambda; use [`crate::Payloads::with_s3`] with your own), FIPS or
//! dual-stack endpoints (set `AWS_ENDPOINT_URL_S3`), checksums of the object
//! (TLS protects it in transit; the SDK does not validate a GET's checksum by
//! default either).

use std::fmt;
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    sign, PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings,
    UriPathNormalizationMode,
};
use aws_sigv4::sign::v4;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Where and as whom offloaded bodies are fetched from S3.
///
/// ```
/// use walcast_lambda::S3Settings;
///
/// // An emulator on 127.0.0.1 (objects at http://127.0.0.1:4566/BUCKET/KEY):
/// let settings = S3Settings::new("us-east-1", "test", "test").endpoint("http://127.0.0.1:4566");
/// // The secret is never printed.
/// assert!(!format!("{settings:?}").contains("\"test\""));
/// ```
#[derive(Clone)]
pub struct S3Settings {
    region: String,
    endpoint: Option<String>,
    credentials: Credentials,
}

impl fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Settings")
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .field("access_key_id", &"** redacted **")
            .finish()
    }
}

impl S3Settings {
    /// S3 in `region`, signed with this access key.
    pub fn new(
        region: impl Into<String>,
        access_key_id: impl Into<String>,
        secret_access_key: impl Into<String>,
    ) -> Self {
        Self {
            region: region.into(),
            endpoint: None,
            credentials: Credentials::new(access_key_id, secret_access_key, None, None, "walcast"),
        }
    }

    /// The session token of temporary credentials (a role's).
    pub fn session_token(mut self, token: impl Into<String>) -> Self {
        let c = &self.credentials;
        self.credentials = Credentials::new(
            c.access_key_id(),
            c.secret_access_key(),
            Some(token.into()),
            None,
            "walcast",
        );
        self
    }

    /// Objects at `ENDPOINT/BUCKET/KEY` instead of AWS's S3 endpoint.
    pub fn endpoint(mut self, url: impl Into<String>) -> Self {
        self.endpoint = Some(url.into());
        self
    }

    /// The settings in Lambda's environment, looked up with `var` by name
    /// (`std::env::var` in a function): `AWS_REGION` (else
    /// `AWS_DEFAULT_REGION`), `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
    /// `AWS_SESSION_TOKEN`, and the endpoint as the AWS SDKs read it
    /// (`AWS_ENDPOINT_URL_S3`, else `AWS_ENDPOINT_URL`, neither when
    /// `AWS_IGNORE_CONFIGURED_ENDPOINT_URLS=true`).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let var = |name: &str| var(name).filter(|v| !v.is_empty());
        let region = var("AWS_REGION")
            .or_else(|| var("AWS_DEFAULT_REGION"))
            .ok_or("no AWS region: AWS_REGION is not set (Lambda sets it)")?;
        let (Some(key), Some(secret)) = (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY"))
        else {
            return Err(
                "no AWS credentials: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are \
                        not set (Lambda sets them from the function's role)"
                    .to_owned(),
            );
        };
        let mut settings = Self::new(region, key, secret);
        if let Some(token) = var("AWS_SESSION_TOKEN") {
            settings = settings.session_token(token);
        }
        let ignore = var("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS")
            .is_some_and(|v| v.eq_ignore_ascii_case("true"));
        if !ignore {
            settings.endpoint = var("AWS_ENDPOINT_URL_S3").or_else(|| var("AWS_ENDPOINT_URL"));
        }
        Ok(settings)
    }

    /// The URL of an object: virtual-hosted style on AWS, path style with an
    /// endpoint of your own or a bucket name that is not one DNS label.
    fn object_url(&self, bucket: &str, key: &str) -> Result<String, String> {
        let key = encode_key(key);
        if let Some(endpoint) = &self.endpoint {
            let endpoint = endpoint.trim_end_matches('/');
            return Ok(format!("{endpoint}/{}/{key}", encode_key(bucket)));
        }
        let region = &self.region;
        if region.is_empty()
            || !region
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(format!("{region:?} is not an AWS region"));
        }
        let suffix = if region.starts_with("cn-") {
            "amazonaws.com.cn"
        } else {
            "amazonaws.com"
        };
        Ok(if is_dns_label(bucket) {
            format!("https://{bucket}.s3.{region}.{suffix}/{key}")
        } else {
            format!("https://s3.{region}.{suffix}/{}/{key}", encode_key(bucket))
        })
    }
}

/// A bucket name usable as a host name label (no dots: a dot would not match
/// the `*.s3.REGION.amazonaws.com` certificate).
fn is_dns_label(bucket: &str) -> bool {
    (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !bucket.starts_with('-')
        && !bucket.ends_with('-')
}

/// An object key in a URL path: every byte but the unreserved ones and `/`
/// percent-encoded, as S3 signs it (encoded once).
fn encode_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Why a GetObject failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum GetError {
    /// S3 answered with an error: its code (`NoSuchKey`, …) and message.
    Service {
        code: String,
        message: Option<String>,
    },
    /// No answer, or not a whole one (the reason, on one line).
    Transport(String),
    /// The request could not be made (a bad region, endpoint or key).
    Request(String),
}

impl GetError {
    fn may_pass(&self) -> bool {
        match self {
            Self::Service { code, .. } => matches!(
                code.as_str(),
                "SlowDown" | "InternalError" | "ServiceUnavailable" | "RequestTimeout"
            ),
            Self::Transport(_) => true,
            Self::Request(_) => false,
        }
    }
}

/// An S3 client that can get objects. Cheap to share; keeps its connections.
pub(crate) struct Client {
    settings: S3Settings,
    http: hyper_util::client::legacy::Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
}

impl Client {
    /// Tries per request, for failures that may pass.
    const TRIES: u32 = 3;

    /// Loads the system's CA certificates; nothing is connected yet.
    pub(crate) fn new(settings: S3Settings) -> Result<Self, String> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(Duration::from_millis(3100)));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(rustls::crypto::ring::default_provider())
            .map_err(|e| format!("no CA certificates to check S3's with ({e})"))?
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let http = hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build(https);
        Ok(Self { settings, http })
    }

    /// The object's bytes.
    pub(crate) async fn get_object(&self, bucket: &str, key: &str) -> Result<Vec<u8>, GetError> {
        let url = self
            .settings
            .object_url(bucket, key)
            .map_err(GetError::Request)?;
        let mut tries = 0;
        loop {
            tries += 1;
            match self.get_once(&url).await {
                Err(error) if error.may_pass() && tries < Self::TRIES => {
                    // 100 ms, then 400 ms.
                    tokio::time::sleep(Duration::from_millis(100 << (2 * (tries - 1)))).await;
                }
                outcome => return outcome,
            }
        }
    }

    async fn get_once(&self, url: &str) -> Result<Vec<u8>, GetError> {
        let uri: hyper::Uri = url
            .parse()
            .map_err(|e| GetError::Request(format!("{url} is not a URL ({e})")))?;
        let host = match (uri.host(), uri.port()) {
            (Some(host), Some(port)) => format!("{host}:{port}"),
            (Some(host), None) => host.to_owned(),
            (None, _) => return Err(GetError::Request(format!("{url} has no host"))),
        };
        let headers = signed_headers(url, &host, &[], &self.settings, SystemTime::now())
            .map_err(GetError::Request)?;
        let mut request = hyper::Request::get(uri);
        for (name, value) in &headers {
            request = request.header(name.as_str(), value.as_str());
        }
        let request = request
            .body(Empty::new())
            .map_err(|e| GetError::Request(e.to_string()))?;
        let response = self
            .http
            .request(request)
            .await
            .map_err(|e| GetError::Transport(crate::payload::causes(&e)))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| GetError::Transport(format!("the download broke off ({e})")))?
            .to_bytes();
        if status.is_success() {
            return Ok(body.to_vec());
        }
        // <Error><Code>NoSuchKey</Code><Message>…</Message>…</Error>
        let text = String::from_utf8_lossy(&body);
        let code = element(&text, "Code").unwrap_or_else(|| match status.as_u16() {
            404 => "NotFound".to_owned(),
            403 => "Forbidden".to_owned(),
            503 => "ServiceUnavailable".to_owned(),
            500 => "InternalError".to_owned(),
            _ => format!("HTTP {status}"),
        });
        Err(GetError::Service {
            code,
            message: element(&text, "Message"),
        })
    }
}

/// The text of the first `<name>…</name>` in an S3 error document, unescaped.
fn element(xml: &str, name: &str) -> Option<String> {
    let start = xml.find(&format!("<{name}>"))? + name.len() + 2;
    let end = start + xml[start..].find(&format!("</{name}>"))?;
    let text = &xml[start..end];
    Some(
        text.replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&amp;", "&"),
    )
}

/// The headers that sign a GET of `url` (with `extra` headers, signed too) at
/// `time`: `x-amz-date`, `x-amz-content-sha256` (of the empty body),
/// `x-amz-security-token` with temporary credentials, `authorization`, and
/// the `host` and `extra` ones themselves.
fn signed_headers(
    url: &str,
    host: &str,
    extra: &[(&str, &str)],
    settings: &S3Settings,
    time: SystemTime,
) -> Result<Vec<(String, String)>, String> {
    let mut signing = SigningSettings::default();
    // As the SDK signs for S3: the path as sent, not normalized or encoded
    // again, and the payload's hash in a header.
    signing.percent_encoding_mode = PercentEncodingMode::Single;
    signing.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
    signing.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
    let identity = settings.credentials.clone().into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(&settings.region)
        .name("s3")
        .time(time)
        .settings(signing)
        .build()
        .map_err(|e| format!("cannot sign the request ({e})"))?
        .into();
    let mut headers: Vec<(String, String)> = std::iter::once(("host", host))
        .chain(extra.iter().copied())
        .map(|(n, v)| (n.to_owned(), v.to_owned()))
        .collect();
    let request = SignableRequest::new(
        "GET",
        url,
        headers.iter().map(|(n, v)| (n.as_str(), v.as_str())),
        SignableBody::Bytes(&[]),
    )
    .map_err(|e| format!("cannot sign the request ({e})"))?;
    let (instructions, _) = sign(request, &params)
        .map_err(|e| format!("cannot sign the request ({e})"))?
        .into_parts();
    let (signed, _) = instructions.into_parts();
    headers.extend(
        signed
            .iter()
            .map(|h| (h.name().to_owned(), h.value().to_owned())),
    );
    Ok(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aws_example() -> S3Settings {
        S3Settings::new(
            "us-east-1",
            "AKIAIOSFODNN7EXAMPLE",
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        )
    }

    fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The GetObject example of AWS's SigV4 documentation for S3 ("Example:
    /// GET Object", Authorization header): the same request, the same
    /// signature. (It was also computed apart from this code, with Python's
    /// hmac and hashlib following the documented steps.)
    #[test]
    fn signs_the_documented_example() {
        let time = SystemTime::UNIX_EPOCH + Duration::from_secs(1_369_353_600); // 2013-05-24T00:00:00Z
        let headers = signed_headers(
            "https://examplebucket.s3.amazonaws.com/test.txt",
            "examplebucket.s3.amazonaws.com",
            &[("range", "bytes=0-9")],
            &aws_example(),
            time,
        )
        .expect("signed");
        assert_eq!(
            header(&headers, "authorization"),
            Some(
                "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, \
                 SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, \
                 Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
            )
        );
        assert_eq!(
            header(&headers, "x-amz-content-sha256"),
            Some("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        );
        assert_eq!(header(&headers, "x-amz-date"), Some("20130524T000000Z"));
        assert_eq!(header(&headers, "x-amz-security-token"), None);
    }

    #[test]
    fn temporary_credentials_send_and_sign_their_token() {
        let settings = aws_example().session_token("FwoGZXIvYXdzEXAMPLE/+=");
        let headers = signed_headers(
            "https://examplebucket.s3.us-east-1.amazonaws.com/a%20b",
            "examplebucket.s3.us-east-1.amazonaws.com",
            &[],
            &settings,
            SystemTime::now(),
        )
        .expect("signed");
        assert_eq!(
            header(&headers, "x-amz-security-token"),
            Some("FwoGZXIvYXdzEXAMPLE/+=")
        );
        let authorization = header(&headers, "authorization").expect("signed");
        assert!(
            authorization.contains("x-amz-security-token"),
            "{authorization}"
        );
    }

    #[test]
    fn urls_like_the_sdk_builds_them() {
        let settings = aws_example();
        assert_eq!(
            settings.object_url("walcast-payloads", "walcast/ab cd+é"),
            Ok(
                "https://walcast-payloads.s3.us-east-1.amazonaws.com/walcast/ab%20cd%2B%C3%A9"
                    .into()
            )
        );
        // A dot in the name would not match the certificate: path style.
        assert_eq!(
            settings.object_url("my.bucket", "k"),
            Ok("https://s3.us-east-1.amazonaws.com/my.bucket/k".into())
        );
        let china = S3Settings::new("cn-north-1", "a", "b");
        assert_eq!(
            china.object_url("bucket", "k"),
            Ok("https://bucket.s3.cn-north-1.amazonaws.com.cn/k".into())
        );
        let local = aws_example().endpoint("http://127.0.0.1:4566/");
        assert_eq!(
            local.object_url("bucket", "a/b"),
            Ok("http://127.0.0.1:4566/bucket/a/b".into())
        );
        assert!(S3Settings::new("evil.com/x", "a", "b")
            .object_url("bucket", "k")
            .is_err());
    }

    #[test]
    fn settings_from_the_environment_as_the_sdks_read_it() {
        fn vars<'a>(pairs: &'a [(&str, &str)]) -> impl Fn(&str) -> Option<String> + 'a {
            move |name| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| (*v).to_owned())
            }
        }
        let lambda = [
            ("AWS_REGION", "eu-west-1"),
            ("AWS_ACCESS_KEY_ID", "ASIAEXAMPLE"),
            ("AWS_SECRET_ACCESS_KEY", "secret"),
            ("AWS_SESSION_TOKEN", "token"),
            ("AWS_ENDPOINT_URL", "http://general:1"),
            ("AWS_ENDPOINT_URL_S3", "http://s3-only:2"),
        ];
        let settings = S3Settings::from_vars(vars(&lambda[..4])).expect("settings");
        assert_eq!(settings.region, "eu-west-1");
        assert_eq!(settings.endpoint, None);
        assert_eq!(settings.credentials.session_token(), Some("token"));
        let settings = S3Settings::from_vars(vars(&lambda[..5])).expect("settings");
        assert_eq!(settings.endpoint.as_deref(), Some("http://general:1"));
        let settings = S3Settings::from_vars(vars(&lambda)).expect("settings");
        assert_eq!(settings.endpoint.as_deref(), Some("http://s3-only:2"));
        let ignoring = [
            ("AWS_REGION", "eu-west-1"),
            ("AWS_ACCESS_KEY_ID", "a"),
            ("AWS_SECRET_ACCESS_KEY", "b"),
            ("AWS_ENDPOINT_URL_S3", "http://s3-only:2"),
            ("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "true"),
        ];
        assert_eq!(
            S3Settings::from_vars(vars(&ignoring))
                .expect("settings")
                .endpoint,
            None
        );
        let error = S3Settings::from_vars(vars(&lambda[..1])).expect_err("no keys");
        assert!(error.contains("AWS_ACCESS_KEY_ID"), "{error}");
        let error = S3Settings::from_vars(vars(&lambda[1..3])).expect_err("no region");
        assert!(error.contains("AWS_REGION"), "{error}");
        let debug = format!(
            "{:?}",
            S3Settings::from_vars(vars(&lambda)).expect("settings")
        );
        assert!(
            !debug.contains("secret") && !debug.contains("ASIA"),
            "{debug}"
        );
    }

    #[test]
    fn error_documents_are_read() {
        let xml = "<?xml version=\"1.0\"?><Error><Code>NoSuchKey</Code>\
                   <Message>The specified key does not exist.</Message><Key>a&amp;b</Key></Error>";
        assert_eq!(element(xml, "Code").as_deref(), Some("NoSuchKey"));
        assert_eq!(
            element(xml, "Message").as_deref(),
            Some("The specified key does not exist.")
        );
        assert_eq!(element(xml, "Key").as_deref(), Some("a&b"));
        assert_eq!(element(xml, "RequestId"), None);
    }
}

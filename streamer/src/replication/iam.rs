//! RDS and Aurora IAM database authentication (`source.auth: iam`).
//!
//! The password of each connection is a fresh token: a SigV4-presigned
//! `connect` request for the service `rds-db`, for `host:port` and the database
//! user, valid 15 minutes, signed with the default AWS credential chain (AWS_*
//! variables, profile, web identity, the ECS task role, the EC2 instance
//! profile). Postgres only checks it when the connection starts, so a stream
//! outlives its token; a reconnect makes a new one. The token is a secret: it is
//! never logged.
//!
//! ```text
//! db.xxxx.eu-west-1.rds.amazonaws.com:5432/?Action=connect&DBUser=walcast
//!   &X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIA…/20260101/eu-west-1/rds-db/aws4_request
//!   &X-Amz-Date=20260101T000000Z&X-Amz-Expires=900&X-Amz-SignedHeaders=host
//!   &X-Amz-Signature=<64 hex>[&X-Amz-Security-Token=… (temporary credentials)]
//! ```

use std::time::{Duration, SystemTime};

use aws_credential_types::provider::ProvideCredentials;
use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    sign, SignableBody, SignableRequest, SignatureLocation, SigningSettings,
};
use aws_sigv4::sign::v4;

use super::ReplicationError;

/// How long a token is valid (the most RDS accepts).
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(15 * 60);

/// A fresh token for `user` at `host:port`, to use as the password. `region` is
/// `source.region`; without it the one in an RDS host name, else the default AWS
/// region chain (`AWS_REGION`, the profile).
pub async fn token(
    region: Option<&str>,
    host: &str,
    port: u16,
    user: &str,
) -> Result<String, ReplicationError> {
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .load()
        .await;
    let region = region
        .map(str::to_owned)
        .or_else(|| region_of_host(host))
        .or_else(|| sdk.region().map(|r| r.to_string()))
        .ok_or_else(|| {
            ReplicationError::Definite(
                "source.auth is iam, but no region is known: set source.region \
                 (WALCAST_SOURCE_REGION) or AWS_REGION"
                    .into(),
            )
        })?;
    let provider = sdk.credentials_provider().ok_or_else(|| {
        ReplicationError::Definite(
            "source.auth is iam, but there is no AWS credential provider".into(),
        )
    })?;
    let credentials = provider.provide_credentials().await.map_err(|e| {
        let text = format!(
            "source.auth is iam: no AWS credentials (AWS_* variables, profile, web \
             identity, ECS task role, EC2 instance profile): {}",
            super::error_chain(&e)
        );
        // Missing credentials are for a person to fix; a provider that could not be
        // reached (IMDS, the ECS endpoint) may answer next time.
        use aws_credential_types::provider::error::CredentialsError;
        match e {
            CredentialsError::ProviderTimedOut(_) | CredentialsError::ProviderError(_) => {
                ReplicationError::Transient(text)
            }
            _ => ReplicationError::Definite(text),
        }
    })?;
    presign(host, port, user, &region, &credentials, SystemTime::now())
}

/// The region in an RDS or Aurora endpoint name
/// (`name.id.eu-west-1.rds.amazonaws.com`, also `.rds.amazonaws.com.cn`).
pub fn region_of_host(host: &str) -> Option<String> {
    let labels: Vec<&str> = host.split('.').collect();
    let rds = labels.iter().position(|l| *l == "rds")?;
    (rds >= 1 && labels.get(rds + 1) == Some(&"amazonaws")).then(|| labels[rds - 1].to_owned())
}

/// The token for `user` at `host:port`, signed with `credentials` at `time`.
pub fn presign(
    host: &str,
    port: u16,
    user: &str,
    region: &str,
    credentials: &Credentials,
    time: SystemTime,
) -> Result<String, ReplicationError> {
    let failed = |e: &dyn std::fmt::Display| {
        ReplicationError::Definite(format!("source.auth is iam: signing the token failed: {e}"))
    };
    let endpoint = format!("{host}:{port}");
    let url = format!(
        "https://{endpoint}/?Action=connect&DBUser={}",
        uri_encode(user)
    );
    let mut settings = SigningSettings::default();
    settings.signature_location = SignatureLocation::QueryParams;
    settings.expires_in = Some(TOKEN_LIFETIME);
    let identity = credentials.clone().into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name("rds-db")
        .time(time)
        .settings(settings)
        .build()
        .map_err(|e| failed(&e))?
        .into();
    let request = SignableRequest::new(
        "GET",
        url.as_str(),
        std::iter::once(("host", endpoint.as_str())),
        SignableBody::Bytes(&[]),
    )
    .map_err(|e| failed(&e))?;
    let (instructions, _signature) = sign(request, &params).map_err(|e| failed(&e))?.into_parts();
    let (_headers, query) = instructions.into_parts();
    let mut token = format!("{endpoint}/?Action=connect&DBUser={}", uri_encode(user));
    for (name, value) in query {
        token.push('&');
        token.push_str(name);
        token.push('=');
        token.push_str(&uri_encode(&value));
    }
    Ok(token)
}

/// RFC 3986 percent-encoding of everything but the unreserved characters, as SigV4 wants.
fn uri_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: &str = "db1.abc123.eu-west-1.rds.amazonaws.com";
    /// 2026-01-01T00:00:00Z.
    const TIME: u64 = 1_767_225_600;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    /// The expected signatures were computed apart from this code, by a short
    /// script following AWS's SigV4 documentation (canonical request, string to
    /// sign, the HMAC-SHA256 key chain over date, region, `rds-db`, `aws4_request`).
    #[test]
    fn token_matches_an_independently_computed_fixture() {
        let creds = Credentials::new(
            "AKIDEXAMPLE",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            None,
            None,
            "fixture",
        );
        let token = presign(HOST, 5432, "walcast", "eu-west-1", &creds, at(TIME)).expect("token");
        assert_eq!(
            token,
            "db1.abc123.eu-west-1.rds.amazonaws.com:5432/?Action=connect&DBUser=walcast\
             &X-Amz-Algorithm=AWS4-HMAC-SHA256\
             &X-Amz-Credential=AKIDEXAMPLE%2F20260101%2Feu-west-1%2Frds-db%2Faws4_request\
             &X-Amz-Date=20260101T000000Z&X-Amz-Expires=900&X-Amz-SignedHeaders=host\
             &X-Amz-Signature=198e2c0a0456ec594046004076a8e3beead30b8d3698cc4b70d8ac03acdb94e2"
        );
        // Temporary credentials (an ECS task role): the session token is signed too.
        let session = Credentials::new(
            "AKIDEXAMPLE",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            Some("IQoJb3JpZ2luX2VjEXAMPLE+/=".into()),
            None,
            "fixture",
        );
        let token = presign(HOST, 5432, "walcast", "eu-west-1", &session, at(TIME)).expect("token");
        assert!(
            token.contains("&X-Amz-Security-Token=IQoJb3JpZ2luX2VjEXAMPLE%2B%2F%3D"),
            "{token}"
        );
        assert!(
            token.contains(
                "&X-Amz-Signature=eec5101563848d9b982729d02a05bfff872acf6e53b9fb49fe90522a40d4bc70"
            ),
            "{token}"
        );
        // A second later, another token.
        let later =
            presign(HOST, 5432, "walcast", "eu-west-1", &creds, at(TIME + 1)).expect("token");
        assert!(later.contains("X-Amz-Date=20260101T000001Z"), "{later}");
    }

    #[test]
    fn region_comes_from_rds_host_names() {
        assert_eq!(region_of_host(HOST).as_deref(), Some("eu-west-1"));
        assert_eq!(
            region_of_host("c.cluster-xyz.cn-north-1.rds.amazonaws.com.cn").as_deref(),
            Some("cn-north-1")
        );
        assert_eq!(region_of_host("db.example.com"), None);
        assert_eq!(region_of_host("127.0.0.1"), None);
    }
}

//! TLS for both connections, with libpq's `sslmode` meanings: the order of
//! connection attempts ([`connect_as_libpq`]) and, for the catalog (SQL)
//! connection, the rustls configuration. The replication connection gets the
//! same attempts, and pgwire-replication's own rustls set-up.
//!
//! | sslmode | first attempt | then, if the server turns it down | verifies the chain | the host name |
//! |---|---|---|---|---|
//! | disable | plain | – | – | – |
//! | allow | plain | TLS | no | no |
//! | prefer (default) | TLS if offered, else plain | plain | no | no |
//! | require | TLS | – | no | no |
//! | verify-ca | TLS | – | yes | no |
//! | verify-full | TLS | – | yes | yes |
//!
//! "Turns it down" is what a server with only `hostssl` (or only `hostnossl`)
//! lines in pg_hba.conf does to the other kind of connection, an authentication
//! failure, or a failed handshake; a server that cannot be reached is not tried twice.

use std::future::Future;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::ReplicationError;
use crate::config::{SslMode, Tls};

/// One connection attempt's TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wire {
    /// In the clear.
    Plain,
    /// TLS if the server offers it, else in the clear (`prefer`'s first attempt).
    TlsIfOffered,
    /// TLS or nothing.
    Tls,
}

/// Why an attempt failed, as far as trying the other kind of connection goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The server does not offer TLS (it answered the SSLRequest with `N`).
    NoTls,
    /// The server turned the connection down at start-up (pg_hba.conf,
    /// authentication), or the TLS handshake failed: the other kind may pass.
    Refused,
    /// Anything else (unreachable, starting up, …): the other kind would fare no better.
    Other,
}

/// libpq's attempts for `mode`: the first, and the one made when the server turns
/// the first down.
pub(crate) fn attempts(mode: SslMode) -> (Wire, Option<Wire>) {
    match mode {
        SslMode::Disable => (Wire::Plain, None),
        SslMode::Allow => (Wire::Plain, Some(Wire::Tls)),
        SslMode::Prefer => (Wire::TlsIfOffered, Some(Wire::Plain)),
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => (Wire::Tls, None),
    }
}

/// Connects as libpq does for `mode`: `attempt` makes one connection over the
/// given wire; when the server turns the first attempt down and `mode` has a
/// second, that one is made. When both fail the error names both.
pub(crate) async fn connect_as_libpq<T, F, Fut>(
    mode: SslMode,
    mut attempt: F,
) -> Result<T, ReplicationError>
where
    F: FnMut(Wire) -> Fut,
    Fut: Future<Output = Result<T, (Refusal, ReplicationError)>>,
{
    let (first, fallback) = attempts(mode);
    let (why, err) = match attempt(first).await {
        Ok(t) => return Ok(t),
        Err(e) => e,
    };
    let Some(second) = fallback.filter(|_| why == Refusal::Refused) else {
        return Err(err);
    };
    match attempt(second).await {
        Ok(t) => {
            tracing::debug!(sslmode = ?mode, ?second, "connected on the second attempt");
            Ok(t)
        }
        // allow: the server refused the plain connection and offers no TLS either.
        Err((Refusal::NoTls, _)) => Err(err),
        // prefer against a server without TLS: both attempts were plain.
        Err((_, again)) if again.to_string() == err.to_string() => Err(err),
        Err((_, err2)) => {
            let (tls, plain) = if first == Wire::Plain {
                (err2, err)
            } else {
                (err, err2)
            };
            let text = format!("with TLS: {tls}; without TLS: {plain}");
            Err(if tls.is_transient() && plain.is_transient() {
                ReplicationError::Transient(text)
            } else {
                ReplicationError::Definite(text)
            })
        }
    }
}

/// The rustls client configuration for a TLS attempt under `tls`.
pub fn client_config(tls: &Tls) -> Result<ClientConfig, ReplicationError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| ReplicationError::Definite(format!("TLS set-up: {e}")))?;
    let config = match tls.mode {
        SslMode::Disable | SslMode::Allow | SslMode::Prefer | SslMode::Require => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
            .with_no_client_auth(),
        SslMode::VerifyCa | SslMode::VerifyFull => {
            let roots = Arc::new(roots(tls)?);
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider)
                .build()
                .map_err(|e| ReplicationError::Definite(format!("TLS set-up: {e}")))?;
            if tls.mode == SslMode::VerifyFull {
                builder.with_webpki_verifier(webpki).with_no_client_auth()
            } else {
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(ChainOnly(webpki)))
                    .with_no_client_auth()
            }
        }
    };
    Ok(config)
}

fn roots(tls: &Tls) -> Result<RootCertStore, ReplicationError> {
    let mut store = RootCertStore::empty();
    match &tls.root_cert {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| {
                    ReplicationError::Definite(format!(
                        "source.url: sslrootcert {}: {e}",
                        path.display()
                    ))
                })?;
            let (added, _) = store.add_parsable_certificates(certs);
            if added == 0 {
                return Err(ReplicationError::Definite(format!(
                    "source.url: sslrootcert {} holds no usable certificate",
                    path.display()
                )));
            }
        }
        None => store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    Ok(store)
}

/// `prefer` / `require`: encryption without verification, as libpq does.
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must verify; the name may differ.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName))
            | Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `connect_as_libpq` with attempts that answer from `answers` in turn;
    /// returns the result and the wires tried.
    fn run(
        mode: SslMode,
        answers: Vec<Result<(), (Refusal, &'static str)>>,
    ) -> (Result<(), String>, Vec<Wire>) {
        let tried = std::sync::Mutex::new(Vec::new());
        let answers = std::sync::Mutex::new(answers.into_iter());
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let result = rt.block_on(connect_as_libpq(mode, |wire| {
            tried.lock().expect("lock").push(wire);
            let answer = answers.lock().expect("lock").next().expect("an answer");
            async move {
                answer.map_err(|(why, text)| (why, ReplicationError::Definite(text.to_owned())))
            }
        }));
        (
            result.map_err(|e| e.to_string()),
            tried.into_inner().expect("lock"),
        )
    }

    #[test]
    fn attempts_follow_libpq() {
        use Wire::*;
        let refused = |t| Err((Refusal::Refused, t));
        // prefer: TLS if offered; plain when the encrypted connection is turned down.
        assert_eq!(run(SslMode::Prefer, vec![Ok(())]).1, [TlsIfOffered]);
        let (r, tried) = run(SslMode::Prefer, vec![refused("hostnossl"), Ok(())]);
        assert_eq!((r, tried), (Ok(()), vec![TlsIfOffered, Plain]));
        // Both fail: both named.
        let (r, _) = run(
            SslMode::Prefer,
            vec![refused("bad password"), refused("hostssl")],
        );
        assert_eq!(
            r.expect_err("fails"),
            "with TLS: bad password; without TLS: hostssl"
        );
        // The same error twice (the server offered no TLS): once.
        let (r, _) = run(SslMode::Prefer, vec![refused("no"), refused("no")]);
        assert_eq!(r.expect_err("fails"), "no");
        // Unreachable: not tried twice.
        let (r, tried) = run(SslMode::Prefer, vec![Err((Refusal::Other, "refused"))]);
        assert_eq!(
            (r.expect_err("fails"), tried),
            ("refused".into(), vec![TlsIfOffered])
        );
        // allow: plain, then TLS; a server without TLS keeps the first error.
        let (r, tried) = run(SslMode::Allow, vec![refused("hostssl"), Ok(())]);
        assert_eq!((r, tried), (Ok(()), vec![Plain, Tls]));
        let (r, _) = run(
            SslMode::Allow,
            vec![refused("hostssl"), Err((Refusal::NoTls, "no TLS"))],
        );
        assert_eq!(r.expect_err("fails"), "hostssl");
        // disable, require, verify-*: one attempt.
        assert_eq!(run(SslMode::Disable, vec![refused("x")]).1, [Plain]);
        for mode in [SslMode::Require, SslMode::VerifyCa, SslMode::VerifyFull] {
            assert_eq!(run(mode, vec![refused("x")]).1, [Tls]);
        }
    }
}

//! What a destination reports when it fails ([`Fault`]), and the one place
//! that decides what to do about it ([`classify`]).
//!
//! A fault is either about a whole call or about one entry of a batch the
//! service otherwise took: the same code means different things in each (an
//! unknown refusal of a call is the destination's problem, an unknown
//! service-side refusal of an entry passes), so the kind travels with the code.

use std::fmt;

/// A failure a destination reported: the one input of the sink's `classify`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// The call got no answer: timeout, connection refused, DNS (always retried).
    Unreachable(String),
    /// The service refused the whole call.
    Call {
        /// Service error code (`AWS.SimpleQueueService.NonExistentQueue`), when it gave one.
        code: Option<String>,
        /// HTTP status, when there was a response.
        status: Option<u16>,
        /// What the service said (never message contents).
        message: String,
    },
    /// The service took the call but refused this entry of the batch.
    Entry {
        /// Service error code.
        code: String,
        /// The request was at fault, not the service.
        sender_fault: bool,
        /// What the service said.
        message: String,
    },
}

impl Fault {
    /// The service's error code, if it gave one.
    pub fn code(&self) -> Option<&str> {
        match self {
            Fault::Unreachable(_) => None,
            Fault::Call { code, .. } => code.as_deref(),
            Fault::Entry { code, .. } => Some(code),
        }
    }

    /// A request the SDK would not build (a value it refuses; never retried).
    pub fn construction(e: impl fmt::Display) -> Fault {
        Fault::Call {
            code: Some("ConstructionFailure".into()),
            status: None,
            message: e.to_string(),
        }
    }

    /// One failed entry of a batch response (SQS and SNS answer alike): the
    /// entry's index, from its id, and its fault.
    pub fn failed_entry(
        id: &str,
        code: &str,
        message: Option<&str>,
        sender_fault: bool,
    ) -> (usize, Fault) {
        let fault = Fault::Entry {
            code: code.to_owned(),
            sender_fault,
            message: message.unwrap_or("").to_owned(),
        };
        (id.parse().unwrap_or(usize::MAX), fault)
    }

    /// An AWS SDK error (SQS or SNS: the same type), as one line.
    pub fn from_sdk<E>(
        e: aws_sdk_sqs::error::SdkError<E, aws_sdk_sqs::config::http::HttpResponse>,
    ) -> Fault
    where
        E: aws_sdk_sqs::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        use aws_sdk_sqs::error::SdkError;
        match e {
            SdkError::ServiceError(se) => Fault::Call {
                code: se.err().code().map(str::to_owned),
                status: Some(se.raw().status().as_u16()),
                message: se.err().message().unwrap_or("").to_owned(),
            },
            SdkError::ConstructionFailure(_) => {
                Fault::construction(aws_sdk_sqs::error::DisplayErrorContext(&e))
            }
            other => {
                // What kind of failure, and its innermost cause (the OS error).
                let what = match &other {
                    SdkError::TimeoutError(_) => "timed out",
                    SdkError::DispatchFailure(_) => "cannot reach the endpoint",
                    SdkError::ResponseError(_) => "unreadable response",
                    _ => "request failed",
                };
                let mut cause: &(dyn std::error::Error + 'static) = &other;
                while let Some(next) = cause.source() {
                    cause = next;
                }
                let cause = cause.to_string();
                Fault::Unreachable(if cause == other.to_string() {
                    what.to_owned()
                } else {
                    format!("{what}: {cause}")
                })
            }
        }
    }

    /// The service or the way to it is overloaded: throttling (SQS's
    /// `RequestThrottled`, SNS's and KMS's `ThrottlingException`, S3's
    /// `SlowDown`), a 5xx or 429, no answer at all. The sink's window of calls
    /// shrinks on it ([`super::window`]).
    pub fn is_congestion(&self) -> bool {
        let c = self.code().unwrap_or("").to_ascii_lowercase();
        let overloaded = [
            "throttl",
            "toomanyrequests",
            "slowdown",
            "serviceunavailable",
        ]
        .iter()
        .any(|k| c.contains(k));
        match self {
            Fault::Unreachable(_) => true,
            Fault::Call {
                status: Some(s), ..
            } if *s >= 500 || *s == 429 => true,
            _ => overloaded,
        }
    }

    /// What the code says, by the words in it.
    pub(super) fn cause(&self) -> Cause {
        let c = self.code().unwrap_or("").to_ascii_lowercase();
        let any = |keys: &[&str]| keys.iter().any(|k| c.contains(k));
        if matches!(self, Fault::Unreachable(_))
            || any(&[
                "throttl",
                "toomanyrequests",
                "slowdown",
                "serviceunavailable",
                "internalerror",
                "internalfailure",
                "requesttimeout",
                "expiredtoken",
                "requestexpired",
            ])
        {
            Cause::Transient
        } else if any(&[
            "nonexistentqueue",
            "queuedoesnotexist",
            "notfound",
            "nosuchbucket",
        ]) {
            Cause::Missing
        } else if any(&[
            "invalidclienttokenid",
            "signaturedoesnotmatch",
            "unrecognizedclient",
            "invalidsecurity",
            "missingauthentication",
        ]) {
            Cause::Credentials
        } else if any(&[
            "accessdenied",
            "authorization",
            "kms",
            "optinrequired",
            "invalidaddress",
            "unsupportedoperation",
            "constructionfailure",
        ]) {
            Cause::Unusable
        } else if any(&[
            "toolong",
            "toolarge",
            "invalidmessagecontents",
            "invalidparameter",
            "invalidattribute",
            "validation",
            "malformed",
        ]) {
            Cause::BadMessage
        } else {
            Cause::Unknown
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (code, status, message) = match self {
            Fault::Unreachable(m) => return f.write_str(m),
            Fault::Call {
                code,
                status,
                message,
            } => (code.as_deref(), *status, message),
            Fault::Entry { code, message, .. } => (Some(code.as_str()), None, message),
        };
        match (code, status) {
            (Some(c), Some(s)) => write!(f, "{c} (HTTP {s})")?,
            (Some(c), None) => f.write_str(c)?,
            (None, Some(s)) => write!(f, "HTTP {s}")?,
            (None, None) => {}
        }
        match (code.is_some() || status.is_some(), message.is_empty()) {
            (true, false) => write!(f, ": {message}"),
            (false, _) => f.write_str(message),
            (true, true) => Ok(()),
        }
    }
}

/// What an error code says (see [`Fault::cause`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Cause {
    /// Throttling, a service hiccup, no answer.
    Transient,
    /// The queue or topic does not exist.
    Missing,
    /// The credentials were refused.
    Credentials,
    /// The destination cannot be used otherwise (access denied, KMS, …).
    Unusable,
    /// The message is wrong (too large, invalid).
    BadMessage,
    /// A code we do not know.
    Unknown,
}

/// What to do about a fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Transient: back off and send again.
    Retry,
    /// This message is refused for good: dead-letter it (or stop).
    RejectMessage,
    /// The destination itself is unusable (missing, no access): stop.
    Fatal,
}

/// The one place where faults are classified: throttling, 5xx, timeouts and
/// connection errors are retried; a bad message is refused for good; a missing
/// or forbidden destination is fatal. A code we do not know is retried on a
/// 5xx or 429, and otherwise: for a whole call, fatal (stop and say so rather
/// than guess); for an entry, retried when the service was at fault and
/// refused for good when the request was.
pub fn classify(fault: &Fault) -> Disposition {
    match fault.cause() {
        Cause::Transient => Disposition::Retry,
        Cause::Missing | Cause::Credentials | Cause::Unusable => Disposition::Fatal,
        Cause::BadMessage => Disposition::RejectMessage,
        Cause::Unknown => match fault {
            Fault::Call {
                status: Some(s), ..
            } if *s >= 500 || *s == 429 => Disposition::Retry,
            Fault::Entry {
                sender_fault: false,
                ..
            } => Disposition::Retry,
            Fault::Entry { .. } => Disposition::RejectMessage,
            Fault::Call { .. } | Fault::Unreachable(_) => Disposition::Fatal,
        },
    }
}

/// Why a message is refused for good: the `reason` of its dead-letter envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Over the destination's limit for one message: refused before sending.
    TooLarge {
        /// The message's size as the destination counts it.
        bytes: usize,
        /// The destination's limit.
        limit: usize,
    },
    /// The destination refused it.
    Fault(Fault),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::TooLarge { bytes, limit } => write!(
                f,
                "message of {bytes} bytes is over the {limit} byte limit (set sink.s3.bucket to \
                 send such events through S3)"
            ),
            Refusal::Fault(fault) => fault.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Disposition::*;

    fn call(code: &str, status: u16) -> Disposition {
        classify(&Fault::Call {
            code: Some(code.into()),
            status: Some(status),
            message: String::new(),
        })
    }

    fn entry(code: &str, sender_fault: bool) -> Disposition {
        classify(&Fault::Entry {
            code: code.into(),
            sender_fault,
            message: String::new(),
        })
    }

    #[test]
    fn calls() {
        assert_eq!(classify(&Fault::Unreachable("refused".into())), Retry);
        assert_eq!(call("ThrottlingException", 400), Retry);
        assert_eq!(call("AWS.SimpleQueueService.RequestThrottled", 403), Retry);
        // KMS throttling is throttling, not an unusable key.
        assert_eq!(call("KMS.ThrottlingException", 400), Retry);
        assert_eq!(call("InternalError", 500), Retry);
        assert_eq!(call("Whatever", 503), Retry);
        assert_eq!(call("Whatever", 429), Retry);
        assert_eq!(call("AWS.SimpleQueueService.NonExistentQueue", 400), Fatal);
        assert_eq!(call("QueueDoesNotExist", 400), Fatal);
        assert_eq!(call("NotFound", 404), Fatal);
        assert_eq!(call("AccessDenied", 403), Fatal);
        assert_eq!(call("InvalidClientTokenId", 403), Fatal);
        assert_eq!(call("InvalidMessageContents", 400), RejectMessage);
        assert_eq!(call("InvalidParameterValue", 400), RejectMessage);
        // An unknown refusal of a whole call: stop and say so rather than guess.
        assert_eq!(call("SomethingNew", 400), Fatal);
        let no_code = Fault::Call {
            code: None,
            status: Some(400),
            message: String::new(),
        };
        assert_eq!(classify(&no_code), Fatal);
    }

    #[test]
    fn entries() {
        assert_eq!(entry("InternalError", false), Retry);
        assert_eq!(entry("ThrottlingException", true), Retry);
        // Unknown: the service's fault passes, the request's does not.
        assert_eq!(entry("SomethingNew", false), Retry);
        assert_eq!(entry("SomethingNew", true), RejectMessage);
        assert_eq!(entry("InvalidParameterValue", true), RejectMessage);
        assert_eq!(entry("KMS.DisabledException", true), Fatal);
        assert_eq!(entry("KMS.ThrottlingException", true), Retry);
    }

    #[test]
    fn congestion() {
        let call = |code: &str, status| Fault::Call {
            code: Some(code.into()),
            status: Some(status),
            message: String::new(),
        };
        let entry = |code: &str| Fault::Entry {
            code: code.into(),
            sender_fault: false,
            message: String::new(),
        };
        for congested in [
            call("AWS.SimpleQueueService.RequestThrottled", 403),
            call("ThrottlingException", 400),
            call("KMS.ThrottlingException", 400),
            call("SlowDown", 503),
            call("Whatever", 503),
            call("Whatever", 429),
            entry("ThrottlingException"),
            entry("ServiceUnavailable"),
            Fault::Unreachable("timed out".into()),
        ] {
            assert!(congested.is_congestion(), "{congested}");
        }
        for not in [
            call("InvalidParameterValue", 400),
            call("AccessDenied", 403),
            call("KMS.DisabledException", 400),
            entry("InternalError"),
        ] {
            assert!(!not.is_congestion(), "{not}");
        }
    }

    #[test]
    fn faults_print_as_one_line() {
        let f = |code: Option<&str>, status, message: &str| {
            Fault::Call {
                code: code.map(Into::into),
                status,
                message: message.into(),
            }
            .to_string()
        };
        assert_eq!(f(Some("C"), Some(400), "m"), "C (HTTP 400): m");
        assert_eq!(f(Some("C"), None, ""), "C");
        assert_eq!(f(None, Some(500), ""), "HTTP 500");
        assert_eq!(f(None, None, "m"), "m");
        let (index, fault) = Fault::failed_entry("3", "E", Some("bad"), true);
        assert_eq!((index, fault.to_string()), (3, "E: bad".to_owned()));
        assert_eq!(Fault::failed_entry("x", "E", None, true).0, usize::MAX);
        let too_large = Refusal::TooLarge {
            bytes: 2000,
            limit: 1000,
        };
        assert_eq!(
            too_large.to_string(),
            "message of 2000 bytes is over the 1000 byte limit (set sink.s3.bucket to send \
             such events through S3)"
        );
    }
}

//! Which registry failures are the infrastructure's (retried) and which
//! are final: decided by the error's type and HTTP status, never its text.

use super::RegistryError;
use crate::model::FailureKind;

impl RegistryError {
    /// Unreachable, overloaded, rate-limiting or failing registries
    /// (transport errors, 5xx, 429, 408, auth) and corrupted transfers are
    /// infrastructure;
    /// a refused request (other 4xx), an invalid manifest or a bad
    /// configuration is final.
    pub fn kind(&self) -> FailureKind {
        match self {
            RegistryError::Http { .. }
            | RegistryError::Io { .. }
            | RegistryError::Auth(_)
            | RegistryError::RateLimited(_)
            | RegistryError::DigestMismatch { .. } => FailureKind::Infra,
            RegistryError::Status { status, .. } => {
                if status.is_server_error() || status.as_u16() == 429 || status.as_u16() == 408 {
                    FailureKind::Infra
                } else {
                    FailureKind::Recipe
                }
            }
            RegistryError::Config(_) | RegistryError::Invalid(_) => FailureKind::Recipe,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::StatusCode;

    fn status(code: u16) -> RegistryError {
        RegistryError::Status {
            what: "blob HEAD",
            reference: "a@sha256:00".into(),
            status: StatusCode::from_u16(code).unwrap(),
            body: String::new(),
        }
    }

    #[test]
    fn registry_failures_are_told_apart_by_type_and_status() {
        for infra in [status(503), status(500), status(429), status(408)] {
            assert_eq!(infra.kind(), FailureKind::Infra, "{infra}");
        }
        let transport = RegistryError::Http {
            registry: "127.0.0.1:5000".into(),
            url: "http://127.0.0.1:5000/v2/".into(),
            message: "whatever words the transport chose".into(),
        };
        assert_eq!(transport.kind(), FailureKind::Infra);
        let limited = RegistryError::RateLimited(Box::new(crate::registry::RateLimited {
            registry: "registry-1.docker.io".into(),
            url: "https://registry-1.docker.io/v2/library/debian/manifests/13".into(),
            until: chrono::Utc::now(),
            said: "limit 100 per 21600s, 0 remaining".into(),
            max_wait: 900,
        }));
        assert_eq!(limited.kind(), FailureKind::Infra);
        for fin in [
            status(404),
            status(400),
            RegistryError::Invalid("index lacks linux/arm64".into()),
        ] {
            assert_eq!(fin.kind(), FailureKind::Recipe, "{fin}");
        }
    }
}

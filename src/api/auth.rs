//! Who may write, or read build logs: the bearer token of the protected
//! routes (`POST /v1/reload`, `POST /v1/rebuild`, `GET /v1/logs/{name}`).
//!
//! Authentication comes first: a request without `Authorization: Bearer
//! <token>` gets 401 with `WWW-Authenticate: Bearer`, whether or not writes
//! are enabled. A bearer token that is wrong, or any token when writes are
//! disabled (`api.token` empty), gets 403. The comparison is constant-time.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;

/// The challenge sent with every 401.
pub const CHALLENGE: &str = "Bearer realm=\"kiln\"";

/// The bearer token presented, if the request has one (the scheme is
/// case-insensitive, as in RFC 7235).
fn presented(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Constant-time comparison: the time taken does not depend on where the
/// presented token first differs.
fn same(presented: &str, token: &str) -> bool {
    let (a, b) = (presented.as_bytes(), token.as_bytes());
    let mut diff = a.len() ^ b.len();
    for (i, y) in b.iter().enumerate() {
        diff |= usize::from(a.get(i).copied().unwrap_or(0) ^ y);
    }
    diff == 0
}

/// Why a request may not write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// No `Authorization: Bearer …` header: 401.
    #[error("a bearer token is required: Authorization: Bearer <api.token>")]
    NoToken,
    /// No bearer token, and no token could help: 401 all the same.
    #[error(
        "a bearer token is required (and writes and logs are disabled here: api.token is empty)"
    )]
    NoTokenWritesDisabled,
    /// A bearer token, but writes are disabled: 403.
    #[error("writes and logs are disabled: set api.token")]
    WritesDisabled,
    /// A bearer token that is not `api.token`: 403.
    #[error("the bearer token is not the one configured in api.token")]
    WrongToken,
}

impl Denied {
    /// The JSON refusal: 401 with the challenge, or 403.
    pub fn answer(self) -> Response {
        let (status, kind) = match self {
            Denied::NoToken | Denied::NoTokenWritesDisabled => {
                (StatusCode::UNAUTHORIZED, "unauthorized")
            }
            Denied::WritesDisabled => (StatusCode::FORBIDDEN, "writes-disabled"),
            Denied::WrongToken => (StatusCode::FORBIDDEN, "forbidden"),
        };
        let mut r = super::error(status, kind, self.to_string());
        if status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(CHALLENGE),
            );
        }
        r
    }
}

/// `Ok` when the request may write. `token` is `api.token`; empty
/// disables writes.
pub fn writer(token: &str, headers: &HeaderMap) -> Result<(), Denied> {
    match presented(headers) {
        None if token.is_empty() => Err(Denied::NoTokenWritesDisabled),
        None => Err(Denied::NoToken),
        Some(_) if token.is_empty() => Err(Denied::WritesDisabled),
        Some(p) if !same(p, token) => Err(Denied::WrongToken),
        Some(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(auth: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(a) = auth {
            h.insert(header::AUTHORIZATION, HeaderValue::from_str(a).unwrap());
        }
        h
    }

    fn status(token: &str, auth: Option<&str>) -> u16 {
        match writer(token, &with(auth)) {
            Ok(()) => 200,
            Err(d) => d.answer().status().as_u16(),
        }
    }

    #[test]
    fn missing_or_not_bearer_is_401_with_a_challenge() {
        for auth in [
            None,
            Some("Basic czNjcmV0"),
            Some("Bearer "),
            Some("s3cret"),
        ] {
            for token in ["s3cret", ""] {
                let r = writer(token, &with(auth)).unwrap_err().answer();
                assert_eq!(r.status(), 401, "{auth:?} {token:?}");
                assert_eq!(r.headers()[header::WWW_AUTHENTICATE], CHALLENGE);
            }
        }
    }

    #[test]
    fn wrong_token_or_writes_disabled_is_403() {
        assert_eq!(status("s3cret", Some("Bearer s3cre")), 403);
        assert_eq!(status("s3cret", Some("Bearer s3cret2")), 403);
        assert_eq!(status("", Some("Bearer anything")), 403);
        assert_eq!(status("s3cret", Some("Bearer s3cret")), 200);
        assert_eq!(status("s3cret", Some("bearer s3cret")), 200);
    }
}

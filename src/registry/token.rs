//! Answering a registry's 401: basic auth, or a bearer token from the
//! realm its `WWW-Authenticate` names (Docker's token protocol: `GET
//! realm?service=…&scope=…` with basic credentials, or an OAuth2 `POST`
//! exchanging an identity token).
//!
//! A scope is one or more space-separated `repository:<name>:<actions>`
//! (a cross-repository mount asks for push on the target and pull on the
//! source); each goes to the realm as its own `scope` parameter. Tokens
//! are cached per scope until shortly before they expire (`expires_in`,
//! 60 s when the server does not say).

use std::time::{Duration, Instant};

use reqwest::StatusCode;

use super::auth::{Credentials, Secret};
use super::{Registry, RegistryError};

/// A bearer token and when to stop using it.
pub(super) struct Token {
    value: String,
    expires: Instant,
}

/// The `key="value"` parameters of a challenge.
struct Challenge {
    realm: String,
    service: String,
}

impl Registry {
    /// The cached token for `scope`, unless it expired.
    pub(super) async fn cached_token(&self, scope: &str) -> Option<String> {
        let mut tokens = self.tokens.lock().await;
        match tokens.get(scope) {
            Some(t) if t.expires > Instant::now() => Some(t.value.clone()),
            Some(_) => {
                tokens.remove(scope);
                None
            }
            None => None,
        }
    }

    /// Answer a 401: remember that the registry wants basic auth, or
    /// fetch a bearer token for `scope` from the realm.
    pub(super) async fn authenticate(
        &self,
        challenge: &str,
        scope: &str,
    ) -> Result<(), RegistryError> {
        let creds = self.credentials().await?;
        let Some(params) = challenge.strip_prefix("Bearer ") else {
            match creds {
                Some(c) if matches!(c.secret, Secret::Password(_)) => {
                    self.basic.store(true, std::sync::atomic::Ordering::Relaxed);
                    return Ok(());
                }
                Some(c) => {
                    return Err(RegistryError::Auth(format!(
                        "{} asks for basic auth, but its credentials ({}) are an identity token; \
                         log in with a password (`docker login {}`)",
                        self.host, c.from, self.host
                    )));
                }
                None => return Err(self.needs_credentials()),
            }
        };
        let ch = parse_challenge(params).ok_or_else(|| {
            RegistryError::Auth(format!(
                "{} answered 401 with a bearer challenge naming no realm: {challenge}",
                self.host
            ))
        })?;
        let token = self.fetch_token(&ch, scope, creds.as_ref()).await?;
        self.tokens.lock().await.insert(scope.to_string(), token);
        Ok(())
    }

    fn needs_credentials(&self) -> RegistryError {
        RegistryError::Auth(format!(
            "{} needs credentials: log in (`docker login {}`, or a credential helper in \
             registry.docker_config), or for Kiln's own registry set \
             KILN_REGISTRY_USERNAME/KILN_REGISTRY_PASSWORD",
            self.host, self.host
        ))
    }

    /// One token for `scope` from the realm: anonymous, with basic
    /// credentials, or by an identity token.
    async fn fetch_token(
        &self,
        ch: &Challenge,
        scope: &str,
        creds: Option<&Credentials>,
    ) -> Result<Token, RegistryError> {
        let realm = &ch.realm;
        let scopes: Vec<&str> = scope.split(' ').filter(|s| !s.is_empty()).collect();
        let req = match creds.map(|c| (&c.username, &c.secret)) {
            Some((_, Secret::IdentityToken(refresh))) => {
                let form: Vec<(&str, &str)> = vec![
                    ("grant_type", "refresh_token"),
                    ("refresh_token", refresh.as_str()),
                    ("service", ch.service.as_str()),
                    ("scope", scope),
                    ("client_id", "kiln"),
                    ("access_type", "offline"),
                ];
                self.http.post(realm).form(&form)
            }
            other => {
                let mut query: Vec<(&str, &str)> = vec![("service", ch.service.as_str())];
                query.extend(scopes.iter().map(|s| ("scope", *s)));
                let req = self.http.get(realm).query(&query);
                match other {
                    Some((user, Secret::Password(p))) => req.basic_auth(user, Some(p)),
                    _ => req,
                }
            }
        };
        let whose = creds.map_or_else(
            || "anonymous".to_string(),
            |c| format!("the credentials for {} from {}", self.host, c.from),
        );
        let resp = req.send().await.map_err(|e| {
            RegistryError::Auth(format!(
                "{}: token from {realm} for {scope}: {}; check that the token service is reachable",
                self.host,
                super::error_chain(&e)
            ))
        })?;
        let status = resp.status();
        if !status.is_success() {
            let fix = match (status, creds) {
                (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN, Some(_)) => format!(
                    "{whose} were refused: log in again (`docker login {}`)",
                    self.host
                ),
                (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN, None) => {
                    match self.needs_credentials() {
                        RegistryError::Auth(m) => m,
                        other => other.to_string(),
                    }
                }
                _ => "the token service failed; run again later".to_string(),
            };
            return Err(RegistryError::Auth(format!(
                "{}: token from {realm} for {scope}: {status}: {fix}",
                self.host
            )));
        }
        let v: serde_json::Value = resp
            .json()
            .await
            .map_err(|e| RegistryError::Auth(format!("{}: token from {realm}: {e}", self.host)))?;
        let value = v["token"]
            .as_str()
            .or_else(|| v["access_token"].as_str())
            .ok_or_else(|| {
                RegistryError::Auth(format!(
                    "{}: token from {realm}: no token in the answer",
                    self.host
                ))
            })?
            .to_string();
        let life = Duration::from_secs(v["expires_in"].as_u64().unwrap_or(60).max(1));
        // Stop using it a little before it expires (a request in flight
        // must not arrive with a dead token).
        let margin = (life / 4).min(Duration::from_secs(10));
        tracing::debug!(registry = %self.host, %scope, expires_in = life.as_secs(), "bearer token");
        Ok(Token {
            value,
            expires: Instant::now() + life - margin,
        })
    }
}

fn parse_challenge(params: &str) -> Option<Challenge> {
    let mut realm = String::new();
    let mut service = String::new();
    for part in split_params(params) {
        if let Some((k, v)) = part.split_once('=') {
            let v = v.trim().trim_matches('"').to_string();
            match k.trim() {
                "realm" => realm = v,
                "service" => service = v,
                _ => {}
            }
        }
    }
    (!realm.is_empty()).then_some(Challenge { realm, service })
}

/// Split `a="x,y",b="z"` on commas outside quotes.
fn split_params(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in s.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenge_params() {
        let p = split_params(
            r#"realm="https://auth/token",service="reg",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(p.len(), 3);
        assert_eq!(p[2], r#"scope="repository:a/b:pull,push""#);
        let c = parse_challenge(r#"realm="https://auth/token",service="reg""#).unwrap();
        assert_eq!(
            (c.realm.as_str(), c.service.as_str()),
            ("https://auth/token", "reg")
        );
        assert!(parse_challenge(r#"service="reg""#).is_none());
    }
}

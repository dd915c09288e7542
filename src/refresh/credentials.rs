//! Which GitHub credentials Kiln acts with, and a cheap authenticated read
//! that proves them before `kiln release` builds anything.
//!
//! Two kinds: a personal token read from the variable `refresh.token_env`
//! names, or a GitHub App (`refresh.app_id`, `installation_id`, `app_key`):
//! octocrab signs a JWT (RS256) with the App's private key, exchanges it at
//! `POST /app/installations/{id}/access_tokens` and caches the installation
//! token until it expires. Neither secret is ever logged or printed.

use octocrab::Octocrab;
use octocrab::models::{AppId, InstallationId};

use crate::config::Refresh;

/// Why the GitHub credentials cannot be used; each names its source.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error(
        "no GitHub credentials: set the environment variable {env} (refresh.token_env) to a token, or configure a GitHub App (refresh.app_id, installation_id, app_key)"
    )]
    Missing { env: String },
    #[error("GitHub App {app_id}: cannot read its private key {path} (refresh.app_key): {message}")]
    Key {
        app_id: u64,
        path: String,
        message: String,
    },
    #[error("GitHub credentials from {source_name} were refused by {url}: {message}")]
    Refused {
        source_name: String,
        url: String,
        message: String,
    },
    #[error("GitHub client for {url}: {message}")]
    Client { url: String, message: String },
}

/// Where the credentials come from, as an operator would name it.
pub fn source_name(cfg: &Refresh) -> String {
    if cfg.app_id != 0 {
        format!(
            "GitHub App {} (installation {}, key {})",
            cfg.app_id, cfg.installation_id, cfg.app_key
        )
    } else {
        format!(
            "the environment variable {} (refresh.token_env)",
            cfg.token_env
        )
    }
}

/// The client acting with the configured credentials; without any, an
/// anonymous one (reads of public repositories still work).
pub fn client(cfg: &Refresh) -> Result<Octocrab, CredentialError> {
    let err = |message: String| CredentialError::Client {
        url: cfg.api_url.clone(),
        message,
    };
    let b = Octocrab::builder()
        .base_uri(cfg.api_url.as_str())
        .map_err(|e| err(e.to_string()))?;
    if cfg.app_id != 0 {
        let key_err = |message: String| CredentialError::Key {
            app_id: cfg.app_id,
            path: cfg.app_key.clone(),
            message,
        };
        let pem = std::fs::read(&cfg.app_key).map_err(|e| key_err(e.to_string()))?;
        let app = b
            .app_from_rsa_pem(AppId(cfg.app_id), pem)
            .map_err(|e| key_err(e.to_string()))?
            .build()
            .map_err(|e| err(e.to_string()))?;
        return app
            .installation(InstallationId(cfg.installation_id))
            .map_err(|e| err(e.to_string()));
    }
    match std::env::var(&cfg.token_env) {
        Ok(token) if !token.is_empty() => b.personal_token(token).build(),
        _ => b.build(),
    }
    .map_err(|e| err(e.to_string()))
}

/// A client whose credentials GitHub accepted: present, and answering an
/// authenticated read (`GET /user` for a token; for an App, minting the
/// installation token, then `GET /installation/repositories`).
pub async fn checked_client(cfg: &Refresh) -> Result<Octocrab, CredentialError> {
    let has_token = std::env::var(&cfg.token_env).is_ok_and(|t| !t.is_empty());
    if cfg.app_id == 0 && !has_token {
        return Err(CredentialError::Missing {
            env: cfg.token_env.clone(),
        });
    }
    let gh = client(cfg)?;
    let route = if cfg.app_id != 0 {
        "/installation/repositories?per_page=1"
    } else {
        "/user"
    };
    gh.get::<serde_json::Value, _, ()>(route, None)
        .await
        .map_err(|e| CredentialError::Refused {
            source_name: source_name(cfg),
            url: cfg.api_url.clone(),
            message: brief(&e),
        })?;
    Ok(gh)
}

/// octocrab's error without its backtrace, GitHub's message when it sent
/// one.
fn brief(e: &octocrab::Error) -> String {
    match e {
        octocrab::Error::GitHub { source, .. } => {
            format!("{} {}", source.status_code, source.message)
        }
        other => other.to_string(),
    }
}

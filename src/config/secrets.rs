//! The secrets a configuration holds, and their redaction for printing
//! (`kiln config` shows them only with `--show-secrets`).
//!
//! What the config itself can hold: `api.token`, and credentials written
//! into a URL's userinfo (`https://user:token@host/…`) in `registry.url`,
//! `refresh.api_url` and `plan.opam_repository`. The other credentials live
//! outside it and are never read into it: registry passwords and identity
//! tokens (`KILN_REGISTRY_PASSWORD`, Docker's config.json and credential
//! helpers), the GitHub token (the variable `refresh.token_env` names) and
//! the private keys under `identity.dir` (the config holds their paths).

use super::Config;

/// What `kiln config` prints in place of a secret.
pub const REDACTED: &str = "<redacted>";

impl Config {
    /// Every secret held here replaced by [`REDACTED`]; an empty token
    /// stays empty (it says writes are off).
    pub fn redact_secrets(&mut self) {
        if !self.api.token.is_empty() {
            self.api.token = REDACTED.to_string();
        }
        for url in [
            &mut self.registry.url,
            &mut self.refresh.api_url,
            &mut self.plan.opam_repository,
        ] {
            *url = redact_userinfo(url);
        }
    }
}

/// `scheme://user:secret@host/…` → `scheme://<redacted>@host/…`; anything
/// else as it is.
pub fn redact_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://{REDACTED}{}", &rest[at..]),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact_userinfo;

    #[test]
    fn userinfo_is_redacted_and_nothing_else() {
        assert_eq!(
            redact_userinfo("https://x-access-token:ghs_abc@github.com/o/r.git"),
            "https://<redacted>@github.com/o/r.git"
        );
        assert_eq!(
            redact_userinfo("http://u:p@127.0.0.1:5000"),
            "http://<redacted>@127.0.0.1:5000"
        );
        for same in [
            "http://127.0.0.1:5000",
            "https://github.com/o/r.git?at=x@y",
            "/local/repo",
        ] {
            assert_eq!(redact_userinfo(same), same);
        }
    }
}

//! CI refresh: once versions are available, each consumer repository gets a
//! pull request (or an issue) updating the file where it keeps its compiler
//! versions or pins, through GitHub's REST API (octocrab).
//!
//! Safe to rerun: an open pull request from Kiln's branch is found and
//! reused, a branch or commit that already exists is not made again, and a
//! file that already says what it should is left alone.

use std::collections::BTreeMap;

use base64::Engine as _;
use octocrab::Octocrab;
use serde::Serialize;
use serde_json::{Value, json};

use crate::config::{Consumer, Refresh};

pub mod release;

#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    #[error("GitHub client for {url}: {message}")]
    Client { url: String, message: String },
    #[error("{repo}: {path} on {branch}: {message}")]
    File {
        repo: String,
        path: String,
        branch: String,
        message: String,
    },
    #[error("{repo}: {what}: {message}")]
    Api {
        repo: String,
        what: String,
        message: String,
    },
}

/// What to tell the consumers.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Update {
    /// Versions now available everywhere they are required.
    pub versions: Vec<String>,
    /// Image name → pinned reference (`host/repo:tag@sha256:…`).
    pub pins: BTreeMap<String, String>,
    /// The pins before this release, for the diff in the body.
    pub previous: BTreeMap<String, String>,
}

/// What refreshing one consumer did (or would do, in a dry run).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum Action {
    UpToDate,
    PullRequestOpened { number: u64, url: String },
    PullRequestExists { number: u64, url: String },
    IssueOpened { number: u64 },
    IssueExists { number: u64 },
    WouldChange { diff: String },
}

pub fn client(cfg: &Refresh) -> Result<Octocrab, RefreshError> {
    let err = |message: String| RefreshError::Client {
        url: cfg.api_url.clone(),
        message,
    };
    let mut b = Octocrab::builder()
        .base_uri(cfg.api_url.as_str())
        .map_err(|e| err(e.to_string()))?;
    if let Ok(token) = std::env::var(&cfg.token_env) {
        b = b.personal_token(token);
    }
    b.build().map_err(|e| err(e.to_string()))
}

/// The file's new content for `update`, keeping whatever else it holds.
pub fn render(format: &str, old: &str, update: &Update) -> Result<String, String> {
    match format {
        "json-pins" => {
            let mut v: Value = if old.trim().is_empty() {
                json!({})
            } else {
                serde_json::from_str(old).map_err(|e| format!("not JSON: {e}"))?
            };
            let obj = v
                .as_object_mut()
                .ok_or("expected a JSON object of image → pin")?;
            for (k, p) in &update.pins {
                obj.insert(k.clone(), json!(p));
            }
            Ok(format!(
                "{}\n",
                serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?
            ))
        }
        "yaml-pins" => {
            let mut m: BTreeMap<String, serde_norway::Value> = if old.trim().is_empty() {
                BTreeMap::new()
            } else {
                serde_norway::from_str(old).map_err(|e| format!("not a YAML mapping: {e}"))?
            };
            for (k, p) in &update.pins {
                m.insert(k.clone(), serde_norway::Value::String(p.clone()));
            }
            serde_norway::to_string(&m).map_err(|e| e.to_string())
        }
        "version-list" => {
            let mut lines: Vec<String> = old.lines().map(str::to_string).collect();
            for v in &update.versions {
                if !lines.iter().any(|l| l.trim() == v) {
                    lines.push(v.clone());
                }
            }
            Ok(format!("{}\n", lines.join("\n").trim_end()))
        }
        other => Err(format!("unknown format {other:?}")),
    }
}

/// The pin changes as a Markdown table.
pub fn pin_diff(update: &Update) -> String {
    let mut s = String::from("| image | before | after |\n| --- | --- | --- |\n");
    for (k, new) in &update.pins {
        let old = update
            .previous
            .get(k)
            .map(String::as_str)
            .unwrap_or("(none)");
        if old != new {
            s.push_str(&format!("| `{k}` | `{old}` | `{new}` |\n"));
        }
    }
    s
}

fn api(repo: &str, what: &str, e: octocrab::Error) -> RefreshError {
    RefreshError::Api {
        repo: repo.to_string(),
        what: what.to_string(),
        message: e.to_string(),
    }
}

fn is_status(e: &octocrab::Error, code: u16) -> bool {
    matches!(e, octocrab::Error::GitHub { source, .. } if source.status_code.as_u16() == code)
}

/// `(content, sha)` of a file on a branch; `None` when absent.
async fn get_file(
    gh: &Octocrab,
    c: &Consumer,
    branch: &str,
) -> Result<Option<(String, String)>, RefreshError> {
    let route = format!("/repos/{}/contents/{}?ref={branch}", c.repo, c.path);
    match gh.get::<Value, _, ()>(route, None).await {
        Ok(v) => {
            let b64: String = v["content"]
                .as_str()
                .unwrap_or("")
                .chars()
                .filter(|c| !c.is_whitespace())
                .collect();
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|e| RefreshError::File {
                    repo: c.repo.clone(),
                    path: c.path.clone(),
                    branch: branch.to_string(),
                    message: format!("bad base64 content: {e}"),
                })?;
            Ok(Some((
                String::from_utf8_lossy(&bytes).into_owned(),
                v["sha"].as_str().unwrap_or("").to_string(),
            )))
        }
        Err(e) if is_status(&e, 404) => Ok(None),
        Err(e) => Err(api(&c.repo, &format!("reading {}", c.path), e)),
    }
}

/// Refresh one consumer. `branch` names Kiln's branch for this release.
pub async fn refresh(
    gh: &Octocrab,
    c: &Consumer,
    update: &Update,
    branch: &str,
    title: &str,
    dry_run: bool,
) -> Result<Action, RefreshError> {
    let file_err = |message: String| RefreshError::File {
        repo: c.repo.clone(),
        path: c.path.clone(),
        branch: c.base.clone(),
        message,
    };
    let (old, _) = get_file(gh, c, &c.base)
        .await?
        .ok_or_else(|| file_err("not found: create it, or fix refresh.consumers".into()))?;
    let new = render(&c.format, &old, update).map_err(file_err)?;
    let body = format!(
        "Kiln published base images for OCaml {}: every required image is built, verified and pinned by digest.\n\n{}\nThis {} was opened by `kiln release`.",
        update.versions.join(", "),
        pin_diff(update),
        if c.mode == "issue" {
            "issue"
        } else {
            "pull request"
        }
    );
    if new == old {
        return Ok(Action::UpToDate);
    }
    if dry_run {
        return Ok(Action::WouldChange {
            diff: format!(
                "--- {path}\n+++ {path}\n-{}\n+{}",
                old.trim_end().replace('\n', "\n-"),
                new.trim_end().replace('\n', "\n+"),
                path = c.path
            ),
        });
    }
    if c.mode == "issue" {
        return open_issue(gh, c, title, &body, &new).await;
    }
    open_pull_request(gh, c, branch, title, &body, &new).await
}

/// An issue asking for `new`, unless an open issue has the same title.
async fn open_issue(
    gh: &Octocrab,
    c: &Consumer,
    title: &str,
    body: &str,
    new: &str,
) -> Result<Action, RefreshError> {
    let open: Value = gh
        .get(
            format!("/repos/{}/issues?state=open&per_page=100", c.repo),
            None::<&()>,
        )
        .await
        .map_err(|e| api(&c.repo, "listing issues", e))?;
    if let Some(i) = open
        .as_array()
        .into_iter()
        .flatten()
        .find(|i| i["title"] == title)
    {
        return Ok(Action::IssueExists {
            number: i["number"].as_u64().unwrap_or(0),
        });
    }
    let i: Value = gh
        .post(format!("/repos/{}/issues", c.repo), Some(&json!({"title": title, "body": format!("{body}\n\nWanted in `{}`:\n\n```\n{new}```\n", c.path)})))
        .await
        .map_err(|e| api(&c.repo, "opening an issue", e))?;
    Ok(Action::IssueOpened {
        number: i["number"].as_u64().unwrap_or(0),
    })
}

/// A pull request committing `new` on `branch`, unless one from that
/// branch is open; the branch and the commit are made only if missing.
async fn open_pull_request(
    gh: &Octocrab,
    c: &Consumer,
    branch: &str,
    title: &str,
    body: &str,
    new: &str,
) -> Result<Action, RefreshError> {
    let owner = c.repo.split('/').next().unwrap_or("");
    let open: Value = gh
        .get(
            format!("/repos/{}/pulls?state=open&head={owner}:{branch}", c.repo),
            None::<&()>,
        )
        .await
        .map_err(|e| api(&c.repo, "listing pull requests", e))?;
    if let Some(pr) = open.as_array().into_iter().flatten().next() {
        return Ok(Action::PullRequestExists {
            number: pr["number"].as_u64().unwrap_or(0),
            url: pr["html_url"].as_str().unwrap_or("").to_string(),
        });
    }
    create_branch(gh, c, branch).await?;
    commit_file(gh, c, branch, title, new).await?;
    let pr: Value = gh
        .post(
            format!("/repos/{}/pulls", c.repo),
            Some(&json!({"title": title, "head": branch, "base": c.base, "body": body})),
        )
        .await
        .map_err(|e| api(&c.repo, "opening a pull request", e))?;
    Ok(Action::PullRequestOpened {
        number: pr["number"].as_u64().unwrap_or(0),
        url: pr["html_url"].as_str().unwrap_or("").to_string(),
    })
}

/// The branch, from the base's head, unless a previous run made it.
async fn create_branch(gh: &Octocrab, c: &Consumer, branch: &str) -> Result<(), RefreshError> {
    let base: Value = gh
        .get(
            format!("/repos/{}/git/ref/heads/{}", c.repo, c.base),
            None::<&()>,
        )
        .await
        .map_err(|e| api(&c.repo, &format!("reading branch {}", c.base), e))?;
    let sha = base["object"]["sha"].as_str().unwrap_or("").to_string();
    match gh
        .post::<_, Value>(
            format!("/repos/{}/git/refs", c.repo),
            Some(&json!({"ref": format!("refs/heads/{branch}"), "sha": sha})),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if is_status(&e, 422) => Ok(()),
        Err(e) => Err(api(&c.repo, &format!("creating branch {branch}"), e)),
    }
}

/// The commit, unless the branch already has the new content.
async fn commit_file(
    gh: &Octocrab,
    c: &Consumer,
    branch: &str,
    title: &str,
    new: &str,
) -> Result<(), RefreshError> {
    let on_branch = get_file(gh, c, branch).await?;
    if on_branch.as_ref().map(|(t, _)| t.as_str()) != Some(new) {
        let mut put = json!({
            "message": title,
            "content": base64::engine::general_purpose::STANDARD.encode(new.as_bytes()),
            "branch": branch,
        });
        if let Some((_, sha)) = &on_branch {
            put["sha"] = json!(sha);
        }
        gh.put::<Value, _, _>(format!("/repos/{}/contents/{}", c.repo, c.path), Some(&put))
            .await
            .map_err(|e| api(&c.repo, &format!("committing {}", c.path), e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update() -> Update {
        Update {
            versions: vec!["5.5.0".into(), "4.14.4".into()],
            pins: BTreeMap::from([(
                "ocaml/opam:debian-13-ocaml-5.5".to_string(),
                "r/o:t@sha256:b".to_string(),
            )]),
            previous: BTreeMap::from([(
                "ocaml/opam:debian-13-ocaml-5.5".to_string(),
                "r/o:t@sha256:a".to_string(),
            )]),
        }
    }

    #[test]
    fn formats() {
        let j = render("json-pins", "{\"keep\": 1}", &update()).unwrap();
        assert!(j.contains("\"keep\": 1") && j.contains("sha256:b"));
        let y = render("yaml-pins", "other: x\n", &update()).unwrap();
        assert!(y.contains("other: x") && y.contains("sha256:b"));
        let l = render("version-list", "4.14.3\n5.5.0\n", &update()).unwrap();
        assert_eq!(l, "4.14.3\n5.5.0\n4.14.4\n");
        assert!(render("json-pins", "[1]", &update()).is_err());
        assert!(pin_diff(&update()).contains("`r/o:t@sha256:a` | `r/o:t@sha256:b`"));
    }
}

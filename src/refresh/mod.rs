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

pub mod credentials;
pub mod ocaml_version;
pub mod opam_pin;
pub mod release;

#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    #[error(transparent)]
    Credentials(#[from] credentials::CredentialError),
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
    /// What ocaml-version's files should say (the `ocaml-version` format).
    #[serde(skip)]
    pub ocaml_version: Option<ocaml_version::Wanted>,
    /// The ocaml-version lower bound and opam-repository commit (the
    /// `opam-pin` format).
    pub opam_pin: Option<opam_pin::OpamPin>,
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
    Ok(credentials::client(cfg)?)
}

/// Each file's new content for `update` (`old`: path → content on the
/// base branch), keeping whatever else it holds.
pub fn render(
    c: &Consumer,
    old: &BTreeMap<String, String>,
    update: &Update,
) -> Result<BTreeMap<String, String>, String> {
    match c.format.as_str() {
        "ocaml-version" => {
            let wanted = update
                .ocaml_version
                .as_ref()
                .ok_or("no catalogue state to write into ocaml-version")?;
            let find = |suffix: &str| old.iter().find(|(p, _)| p.ends_with(suffix));
            let (ml_path, ml) = find(ocaml_version::ML).ok_or("paths name no ocaml_version.ml")?;
            let mli = find(ocaml_version::MLI);
            let changes = find(ocaml_version::CHANGES);
            let files = ocaml_version::Files {
                ml: ml.clone(),
                mli: mli.map(|m| m.1.clone()),
                changes: changes.map(|m| m.1.clone()),
            };
            let new = ocaml_version::patch(&files, wanted).map_err(|e| e.to_string())?;
            let mut out = BTreeMap::from([(ml_path.clone(), new.files.ml)]);
            if let (Some((p, _)), Some(t)) = (mli, new.files.mli) {
                out.insert(p.clone(), t);
            }
            if let (Some((p, _)), Some(t)) = (changes, new.files.changes) {
                out.insert(p.clone(), t);
            }
            Ok(out)
        }
        "opam-pin" => {
            let pin = update.opam_pin.as_ref().ok_or("no opam pin to write")?;
            old.iter()
                .map(|(p, t)| {
                    Ok((
                        p.clone(),
                        opam_pin::render(p, t, pin).map_err(|e| format!("{p}: {e}"))?,
                    ))
                })
                .collect()
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
    path: &str,
    branch: &str,
) -> Result<Option<(String, String)>, RefreshError> {
    let route = format!("/repos/{}/contents/{path}?ref={branch}", c.repo);
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
                    path: path.to_string(),
                    branch: branch.to_string(),
                    message: format!("bad base64 content: {e}"),
                })?;
            Ok(Some((
                String::from_utf8_lossy(&bytes).into_owned(),
                v["sha"].as_str().unwrap_or("").to_string(),
            )))
        }
        Err(e) if is_status(&e, 404) => Ok(None),
        Err(e) => Err(api(&c.repo, &format!("reading {path}"), e)),
    }
}

/// Every path of the consumer as its base branch holds it.
async fn read_base(gh: &Octocrab, c: &Consumer) -> Result<BTreeMap<String, String>, RefreshError> {
    let mut out = BTreeMap::new();
    for path in &c.paths {
        let (text, _) =
            get_file(gh, c, path, &c.base)
                .await?
                .ok_or_else(|| RefreshError::File {
                    repo: c.repo.clone(),
                    path: path.clone(),
                    branch: c.base.clone(),
                    message: "not found: create it, or fix refresh.consumers".into(),
                })?;
        out.insert(path.clone(), text);
    }
    Ok(out)
}

/// The pull request's (or issue's) body.
fn body(c: &Consumer, update: &Update) -> String {
    let what = match (&update.opam_pin, c.format.as_str()) {
        (Some(p), "opam-pin") => format!(
            "Kiln published base images for OCaml {}: every required image is built, verified and pinned by digest. \
             This moves the `ocaml-version` lower bound to {} and the opam-repository pin to {}, the commit the images were built with.\n\n{}",
            update.versions.join(", "),
            p.ocaml_version,
            p.commit,
            pin_diff(update)
        ),
        _ => format!(
            "OCaml {}: the change Kiln's catalogue makes to ocaml-version, opened before the base images are built.\n",
            update.versions.join(", ")
        ),
    };
    let kind = if c.mode == "issue" {
        "issue"
    } else {
        "pull request"
    };
    format!("{what}\nThis {kind} was opened by `kiln release`.")
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
    let old = read_base(gh, c).await?;
    let new = render(c, &old, update).map_err(|message| RefreshError::File {
        repo: c.repo.clone(),
        path: c.paths.join(", "),
        branch: c.base.clone(),
        message,
    })?;
    let changed: Vec<(String, String)> = new
        .into_iter()
        .filter(|(p, t)| old.get(p) != Some(t))
        .collect();
    if changed.is_empty() {
        return Ok(Action::UpToDate);
    }
    if dry_run {
        let diff = changed
            .iter()
            .map(|(p, t)| {
                similar::TextDiff::from_lines(old[p].as_str(), t.as_str())
                    .unified_diff()
                    .header(&format!("a/{p}"), &format!("b/{p}"))
                    .to_string()
            })
            .collect();
        return Ok(Action::WouldChange { diff });
    }
    let body = body(c, update);
    if c.mode == "issue" {
        return open_issue(gh, c, title, &body, &changed).await;
    }
    open_pull_request(gh, c, branch, title, &body, &changed).await
}

/// An issue asking for the change, unless an open issue has the same title.
async fn open_issue(
    gh: &Octocrab,
    c: &Consumer,
    title: &str,
    body: &str,
    changed: &[(String, String)],
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
    let wanted: String = changed
        .iter()
        .map(|(p, t)| format!("\n\nWanted in `{p}`:\n\n```\n{t}```\n"))
        .collect();
    let i: Value = gh
        .post(
            format!("/repos/{}/issues", c.repo),
            Some(&json!({"title": title, "body": format!("{body}{wanted}")})),
        )
        .await
        .map_err(|e| api(&c.repo, "opening an issue", e))?;
    Ok(Action::IssueOpened {
        number: i["number"].as_u64().unwrap_or(0),
    })
}

/// A pull request committing the changed files on `branch`, unless one
/// from that branch is open; the branch and the commits are made only if
/// missing.
async fn open_pull_request(
    gh: &Octocrab,
    c: &Consumer,
    branch: &str,
    title: &str,
    body: &str,
    changed: &[(String, String)],
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
    for (path, new) in changed {
        commit_file(gh, c, path, branch, title, new).await?;
    }
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
    path: &str,
    branch: &str,
    title: &str,
    new: &str,
) -> Result<(), RefreshError> {
    let on_branch = get_file(gh, c, path, branch).await?;
    if on_branch.as_ref().map(|(t, _)| t.as_str()) != Some(new) {
        let mut put = json!({
            "message": title,
            "content": base64::engine::general_purpose::STANDARD.encode(new.as_bytes()),
            "branch": branch,
        });
        if let Some((_, sha)) = &on_branch {
            put["sha"] = json!(sha);
        }
        gh.put::<Value, _, _>(format!("/repos/{}/contents/{path}", c.repo), Some(&put))
            .await
            .map_err(|e| api(&c.repo, &format!("committing {path}"), e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn consumer(format: &str, paths: &[&str]) -> Consumer {
        Consumer {
            repo: "o/r".into(),
            base: "main".into(),
            paths: paths.iter().map(|p| p.to_string()).collect(),
            format: format.into(),
            mode: "pull-request".into(),
        }
    }

    #[test]
    fn opam_pin_renders_each_file_and_names_the_one_it_cannot() {
        let update = Update {
            opam_pin: Some(opam_pin::OpamPin {
                ocaml_version: "4.1.4".into(),
                commit: "c".repeat(40),
            }),
            ..Update::default()
        };
        let c = consumer("opam-pin", &["x.opam", "Dockerfile"]);
        let old = BTreeMap::from([
            (
                "x.opam".to_string(),
                "\"ocaml-version\" {>= \"4.1.3\"}\n".to_string(),
            ),
            ("Dockerfile".to_string(), "FROM x\n".to_string()),
        ]);
        let e = render(&c, &old, &update).unwrap_err();
        assert!(e.starts_with("Dockerfile: holds no"), "{e}");
        let mut pins = BTreeMap::new();
        pins.insert("a".to_string(), "r/o:t@sha256:b".to_string());
        let table = pin_diff(&Update {
            pins,
            ..Update::default()
        });
        assert!(
            table.contains("| `a` | `(none)` | `r/o:t@sha256:b` |"),
            "{table}"
        );
    }
}

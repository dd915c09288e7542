//! What a test publishes to a registry is removed when the test ends,
//! failed or not: [`Published`] deletes, on drop, every manifest of every
//! repository under a namespace (or of one repository), and, when the
//! registry's storage is on this machine, the repositories' directories,
//! so that the shared registry's catalogue does not grow with every run.
//!
//! Through the distribution API with `curl` (synchronous, usable in a
//! drop), and only under names a test made (`kiln-test…`).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use super::Bounded;

const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

/// Removes what was published under a namespace or repository on drop.
pub struct Published {
    /// `http://host:port`
    url: String,
    /// A namespace (`kiln-test-x-123`: every `kiln-test-x-123/…`) or one
    /// repository.
    name: String,
    whole_namespace: bool,
}

impl Published {
    /// Every repository under `namespace`, which must be a test's own
    /// (`kiln-test-…`).
    pub fn namespace(url: &str, namespace: &str) -> Published {
        assert!(
            namespace.starts_with("kiln-test"),
            "only a test's own namespace is removed: {namespace}"
        );
        Published {
            url: url.trim_end_matches('/').to_string(),
            name: namespace.to_string(),
            whole_namespace: true,
        }
    }

    /// One repository a test made (`kiln-test…`).
    pub fn repository(url: &str, repository: &str) -> Published {
        assert!(
            repository.starts_with("kiln-test"),
            "only a test's own repository is removed: {repository}"
        );
        Published {
            url: url.trim_end_matches('/').to_string(),
            name: repository.to_string(),
            whole_namespace: false,
        }
    }
}

/// `curl` with a short limit: a registry that is gone (a private one
/// already stopped) answers nothing, and the drop moves on.
fn curl(args: &[&str]) -> Option<(String, String)> {
    let out = Command::new("curl")
        .args(["-sS", "-m", "10", "-D", "-"])
        .args(args)
        .output_within(Duration::from_secs(20))
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .map(|(h, b)| (h.to_string(), b.to_string()))
        .unwrap_or((text.clone(), String::new()));
    Some((head, body))
}

fn header(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

/// The repositories of the registry's catalogue.
fn catalog(url: &str) -> Vec<String> {
    let Some((_, body)) = curl(&[&format!("{url}/v2/_catalog?n=100000")]) else {
        return vec![];
    };
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    v["repositories"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|r| r.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Every manifest digest reachable from `repo`'s tags (indexes and their
/// children).
fn digests(url: &str, repo: &str) -> Vec<String> {
    let Some((_, body)) = curl(&[&format!("{url}/v2/{repo}/tags/list")]) else {
        return vec![];
    };
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    let tags: Vec<String> = v["tags"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|t| t.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let mut out = Vec::new();
    for tag in tags {
        let Some((head, body)) = curl(&[
            "-H",
            &format!("Accept: {ACCEPT}"),
            &format!("{url}/v2/{repo}/manifests/{tag}"),
        ]) else {
            continue;
        };
        if let Some(d) = header(&head, "Docker-Content-Digest") {
            out.push(d);
        }
        let m: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        for child in m["manifests"].as_array().into_iter().flatten() {
            if let Some(d) = child["digest"].as_str() {
                out.push(d.to_string());
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Where the registry at `url` stores its data, when it runs on this
/// machine as a `docker-registry serve CONFIG` whose config says so.
fn local_storage(url: &str) -> Option<PathBuf> {
    let addr = url.split("://").nth(1)?.to_string();
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if !args.first().is_some_and(|a| a.ends_with("docker-registry"))
            || args.get(1).map(String::as_str) != Some("serve")
        {
            continue;
        }
        let Some(config) = args.get(2) else { continue };
        let text = std::fs::read_to_string(config).unwrap_or_default();
        if !text.contains(&format!("addr: {addr}")) {
            continue;
        }
        let root = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("rootdirectory:"))?;
        return Some(PathBuf::from(root.trim()).join("docker/registry/v2/repositories"));
    }
    None
}

impl Drop for Published {
    fn drop(&mut self) {
        let repos: Vec<String> = if self.whole_namespace {
            let prefix = format!("{}/", self.name);
            catalog(&self.url)
                .into_iter()
                .filter(|r| r.starts_with(&prefix))
                .collect()
        } else {
            vec![self.name.clone()]
        };
        for repo in &repos {
            for d in digests(&self.url, repo) {
                let _ = curl(&[
                    "-X",
                    "DELETE",
                    &format!("{}/v2/{repo}/manifests/{d}", self.url),
                ]);
            }
        }
        if let Some(storage) = local_storage(&self.url) {
            let _ = std::fs::remove_dir_all(storage.join(&self.name));
        }
    }
}

//! docker-base-images' `builds.expected` (the pipeline's dump: every
//! Dockerfile it builds, indented by one tab, under a header naming what it
//! is): cut into one [`Build`] per Dockerfile.

use std::path::Path;

/// One Dockerfile of builds.expected.
#[derive(Debug, Clone)]
pub struct Build {
    /// 1-based line of its header in builds.expected.
    pub line: usize,
    /// The distro (`debian-13`, `windows-server-mingw-ltsc2025`).
    pub os: String,
    pub arch: String,
    /// `None` for the `<os>-opam` image; the switch (`4.14.3+flambda+fp`,
    /// `5.5.0~beta1`) for a compiler image.
    pub switch: Option<String>,
    pub text: String,
}

impl Build {
    /// How the conformance test names it: `debian-13/amd64/opam`,
    /// `alpine-3.23/arm64/4.14.3+flambda`.
    pub fn id(&self) -> String {
        format!(
            "{}/{}/{}",
            self.os,
            self.arch,
            self.switch.as_deref().unwrap_or("opam")
        )
    }
}

const ARCHES: [&str; 7] = [
    "amd64", "arm64", "ppc64le", "s390x", "riscv64", "i386", "arm32v7",
];

/// `<what>/<arch>` section headers: a distro (the opam image) or a switch.
fn header(line: &str) -> Option<(&str, &str)> {
    let (what, arch) = line.rsplit_once('/')?;
    ARCHES.contains(&arch).then_some((what, arch))
}

/// The distro of a compiler Dockerfile: its `FROM
/// ocurrent/opam-staging:<os>-opam-<arch>`.
fn compiler_os(text: &str, arch: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let rest = l.trim().strip_prefix("FROM ocurrent/opam-staging:")?;
        rest.strip_suffix(&format!("-opam-{arch}"))
            .map(str::to_string)
    })
}

/// Every Dockerfile of `path`, in order; the `archive` group (not a base
/// image) is left out and counted in the second value.
pub fn read(path: &Path) -> (Vec<Build>, usize) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut builds: Vec<Build> = Vec::new();
    let mut current: Option<Build> = None;
    let mut group = String::new();
    let mut skipped = 0;
    let finish = |b: Option<Build>, builds: &mut Vec<Build>| {
        if let Some(mut b) = b {
            while b.text.ends_with("\n\n") {
                b.text.pop();
            }
            if b.switch.is_some() {
                b.os = compiler_os(&b.text, &b.arch)
                    .unwrap_or_else(|| panic!("builds.expected:{}: no opam-staging FROM", b.line));
            }
            builds.push(b);
        }
    };
    for (i, line) in text.lines().enumerate() {
        if let Some(body) = line.strip_prefix('\t') {
            if let Some(b) = current.as_mut() {
                b.text.push_str(body);
                b.text.push('\n');
            }
            continue;
        }
        if line.is_empty() {
            if let Some(b) = current.as_mut() {
                b.text.push('\n');
            }
            continue;
        }
        finish(current.take(), &mut builds);
        if line.contains(" -> ") {
            continue;
        }
        match header(line) {
            Some(_) if group == "archive" => skipped += 1,
            Some((what, arch)) => {
                let is_switch = what.starts_with(|c: char| c.is_ascii_digit());
                current = Some(Build {
                    line: i + 1,
                    os: if is_switch {
                        String::new()
                    } else {
                        what.to_string()
                    },
                    arch: arch.to_string(),
                    switch: is_switch.then(|| what.to_string()),
                    text: String::new(),
                });
            }
            None => {
                group = line.to_string();
                if group == "archive" {
                    // The archive image's own header has no arch.
                    skipped += 1;
                }
            }
        }
    }
    finish(current.take(), &mut builds);
    (builds, skipped)
}

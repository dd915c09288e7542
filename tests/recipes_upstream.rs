//! The production recipes against docker-base-images' generated
//! Dockerfiles (e18903f), step by step.
//!
//! `tests/fixtures/upstream/recipe-facts.json` holds, per package family,
//! what each step of upstream's two Dockerfiles (the `<distro>-opam` image
//! and the 5.4.1 compiler image built on it) establishes, in order: packages
//! installed, users, files, links, environment, user, workdir, opam actions
//! (`extract/recipe_facts.py` made it; no upstream text is kept). This test
//! renders Kiln's recipe for the same distro, arch and compiler, reduces it
//! by the same rules, and matches the two lists (longest common
//! subsequence, so order counts). What is left over must be a deliberate
//! difference: a Kiln fact comes from a step preceded by a comment
//! `# difference(<name>)` and an upstream fact is excused, up to a count,
//! by a difference the recipe names; every name is in [`DIFFERENCES`], and
//! every entry there is named by some recipe. So a new, undocumented
//! difference fails here, and so does a stale excuse.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use kiln::catalogue::{self, Arch};
use kiln::plan::{self, Filter, template, validate};
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A deliberate difference from upstream: its name (as in the recipes'
/// `# difference(<name>)` comments) and the upstream facts it excuses, as
/// (prefix, at most how many) per family.
struct Difference {
    name: &'static str,
    upstream_only: &'static [(&'static str, usize)],
}

const DIFFERENCES: &[Difference] = &[
    // Upstream sets git's identity and safe directories in its builder to
    // clone and check out opam's branches; tarballs need neither.
    Difference {
        name: "opam-from-release-tarballs",
        upstream_only: &[
            ("git-config user.email", 1),
            ("git-config user.name", 1),
            ("git-config safe.directory", 6),
        ],
    },
    // Upstream's builder names master's binary opam-master.
    Difference {
        name: "opam-dev-is-a-release",
        upstream_only: &[
            ("file /usr/local/bin/opam-master", 1),
            ("mode /usr/local/bin/opam-master ", 1),
            ("file /usr/bin/opam-master", 1),
            ("mode /usr/bin/opam-master ", 1),
        ],
    },
    // Windows: upstream's context lands at the Windows path of the same directory.
    Difference {
        name: "opam-repository-from-bundle",
        upstream_only: &[("checkout C:\\cygwin64\\home\\opam\\opam-repository", 1)],
    },
    Difference {
        name: "archive-mirror-during-build",
        upstream_only: &[],
    },
    Difference {
        name: "beta-repository-from-sources",
        upstream_only: &[],
    },
    Difference {
        name: "gcc15-overlay-from-sources",
        upstream_only: &[],
    },
    Difference {
        name: "kiln-labels",
        upstream_only: &[],
    },
    // The compiler stage of the one recipe: upstream's second Dockerfile.
    Difference {
        name: "one-recipe-two-stages",
        upstream_only: &[],
    },
    // The winget-builder stage, its copy into the image and the Path entry.
    Difference {
        name: "no-winget",
        upstream_only: &[
            ("stage", 1),
            ("user ContainerAdministrator", 2),
            ("dir C:\\Program", 1),
            ("file \"C:\\Program", 3),
            ("file C:\\Program Files\\winget-cli", 1),
            ("machine-env PATH", 1),
        ],
    },
    Difference {
        name: "cygsympathy-from-sources",
        upstream_only: &[],
    },
    Difference {
        name: "vs-installer-exit-codes",
        upstream_only: &[],
    },
    // Upstream copies the whole msvs-tools checkout's scripts into /bin and
    // cleans its download.
    Difference {
        name: "msvs-tools-from-sources",
        upstream_only: &[("file /bin", 1), ("remove /cygdrive/c/TEMP/msvs-tools", 1)],
    },
];

/// Sources the recipes fetch that versions/sources.yaml cannot declare yet:
/// no upstream record of a checksum exists (git branches upstream adds as
/// remotes). A target needing one is refused until it is declared.
const UNDECLARED: &[(&str, &str)] = &[
    (
        "ocaml-beta-repository.tar.gz",
        "a git branch (ocaml/ocaml-beta-repository), no published archive",
    ),
    (
        "ocaml-patches-overlay.tar.gz",
        "a git branch (ocurrent/opam-repository#patches), no published archive",
    ),
];

// ---------------------------------------------------------------- reduction

/// One instruction: keyword, argument (continuations joined) and the
/// difference names commented just before it.
struct Instruction {
    keyword: String,
    arg: String,
    differences: Vec<String>,
}

fn instructions(text: &str, escape: char) -> Vec<Instruction> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut pending: Vec<String> = Vec::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (cur.is_empty() && trimmed.is_empty()) {
            if let Some(rest) = trimmed.strip_prefix("# difference(")
                && let Some((name, _)) = rest.split_once(')')
            {
                pending.push(name.to_string());
            }
            continue;
        }
        let line = line.trim_end();
        if let Some(body) = line.strip_suffix(escape) {
            cur.push_str(body);
            cur.push(' ');
            continue;
        }
        cur.push_str(line);
        let (kw, arg) = cur.trim().split_once(' ').unwrap_or((cur.trim(), ""));
        out.push(Instruction {
            keyword: kw.to_uppercase(),
            arg: arg.trim().to_string(),
            differences: std::mem::take(&mut pending),
        });
        cur.clear();
    }
    out
}

fn skip_path(p: &str) -> bool {
    p.starts_with("/tmp") || p.starts_with("../") || p == "." || p.starts_with("src_ext")
}

/// Split at top-level separators, outside quotes.
fn split_top(cmd: &str, seps: &[&str]) -> Vec<String> {
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let chars: Vec<char> = cmd.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if let Some(q) = quote {
            cur.push(c);
            if c == q {
                quote = None;
            } else if c == '\\' && q == '"' && i + 1 < chars.len() {
                cur.push(chars[i + 1]);
                i += 1;
            }
        } else if c == '\'' || c == '"' {
            quote = Some(c);
            cur.push(c);
        } else if let Some(s) = seps
            .iter()
            .find(|s| chars[i..].iter().take(s.len()).copied().eq(s.chars()))
        {
            parts.push(cur.trim().to_string());
            cur.clear();
            i += s.len() - 1;
        } else {
            cur.push(c);
        }
        i += 1;
    }
    parts.push(cur.trim().to_string());
    parts.into_iter().filter(|p| !p.is_empty()).collect()
}

/// POSIX-shell words (quotes and backslashes); unbalanced quotes fall back
/// to whitespace.
fn words(cmd: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = cmd.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(x) => cur.push(x),
                        None => return cmd.split_whitespace().map(String::from).collect(),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.peek() {
                            Some(&n) if matches!(n, '"' | '\\' | '$' | '`') => {
                                cur.push(n);
                                chars.next();
                            }
                            _ => cur.push('\\'),
                        },
                        Some(x) => cur.push(x),
                        None => return cmd.split_whitespace().map(String::from).collect(),
                    }
                }
            }
            '\\' => {
                in_word = true;
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    out
}

fn installs(ws: &[String]) -> Vec<String> {
    let mut p: Vec<&String> = ws.iter().filter(|w| !w.starts_with('-')).collect();
    p.sort();
    p.iter().map(|w| format!("install {w}")).collect()
}

fn shell_facts(cmd: &str) -> Vec<String> {
    let cmd = cmd.trim();
    if let Some(rest) = cmd.strip_prefix("if ")
        && let Some((cond, body)) = rest.split_once("; then ")
        && let Some(body) = body.trim_end().strip_suffix("fi")
    {
        return match cond.trim() {
            "true" => shell_facts(body.trim_end().trim_end_matches(';')),
            "false" => vec![],
            _ => vec![format!(
                "run {}",
                cmd.split_whitespace().collect::<Vec<_>>().join(" ")
            )],
        };
    }
    split_top(cmd, &["&&", "||", ";", "|"])
        .iter()
        .flat_map(|p| simple_facts(p))
        .collect()
}

fn is_assignment(w: &str) -> bool {
    let Some((k, _)) = w.split_once('=') else {
        return false;
    };
    let mut ch = k.chars();
    ch.next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && ch.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn pm(a: &[String], update: &str) -> Vec<String> {
    if a.iter().any(|w| w == update) && update == "update" {
        vec!["pm update".into()]
    } else if a.iter().any(|w| w == "upgrade") {
        vec!["pm upgrade".into()]
    } else {
        vec![]
    }
}

fn simple_facts(part: &str) -> Vec<String> {
    let mut ws = words(part);
    while ws
        .first()
        .is_some_and(|w| is_assignment(w) || w == "env" || w == "sudo")
    {
        ws.remove(0);
    }
    let Some(c) = ws.first().cloned() else {
        return vec![];
    };
    for r in [">", ">>"] {
        if let Some(i) = ws.iter().position(|w| w == r) {
            let target = ws.get(i + 1).cloned().unwrap_or_default();
            return if skip_path(&target) {
                vec![]
            } else {
                vec![format!("file {target}")]
            };
        }
    }
    let a = &ws[1..];
    let paths: Vec<&String> = a.iter().filter(|w| !w.starts_with('-')).collect();
    if let Some(f) = package_facts(&c, a) {
        return f;
    }
    match c.as_str() {
        "yes"
        | "true"
        | "cd"
        | "tar"
        | "curl"
        | "make"
        | "./configure"
        | "shell/bootstrap-ocaml.sh"
        | "test"
        | "echo" => vec![],
        "git" => git_facts(a),
        "rm" => paths
            .iter()
            .filter(|p| !skip_path(p))
            .map(|p| format!("remove {p}"))
            .collect(),
        "mkdir" => paths
            .iter()
            .filter(|p| !skip_path(p))
            .map(|p| format!("dir {p}"))
            .collect(),
        "chmod" | "chown" if paths.len() >= 2 => paths[1..]
            .iter()
            .filter(|p| !skip_path(p))
            .map(|p| {
                format!(
                    "{} {p} {}",
                    if c == "chmod" { "mode" } else { "owner" },
                    paths[0]
                )
            })
            .collect(),
        "cp" | "mv" | "ln" if !paths.is_empty() => {
            let dst = paths[paths.len() - 1];
            let kind = match c.as_str() {
                "ln" if a.iter().any(|w| w.starts_with('-') && w.contains('s')) => "symlink",
                "ln" => "hardlink",
                _ => "file",
            };
            if skip_path(dst) {
                vec![]
            } else {
                vec![format!("{kind} {dst}")]
            }
        }
        "useradd" | "adduser" | "addgroup" => user_facts(&c, a),
        "strip" => vec!["strip".into()],
        "sed" if a.iter().any(|w| w.starts_with("-i")) => {
            let last = a.last().cloned().unwrap_or_default();
            vec![format!("edit {}", last.rsplit('/').next().unwrap_or(&last))]
        }
        "opam" => opam_facts(a),
        _ => vec![format!("run {}", ws.join(" "))],
    }
}

/// Package-manager commands (`None`: not one).
fn package_facts(c: &str, a: &[String]) -> Option<Vec<String>> {
    let has = |w: &str| a.iter().any(|x| x == w);
    let after =
        |w: &str| -> Vec<String> { a.iter().skip_while(|x| *x != w).skip(1).cloned().collect() };
    Some(match c {
        "apt-get" if has("install") => installs(&after("install")),
        "apt-get" | "apk" if !has("add") => pm(a, "update"),
        "apk" => installs(&a[1..]),
        "yum" | "dnf" => {
            let group = a.first().is_some_and(|w| w == "groupinstall")
                || (a.first().is_some_and(|w| w == "group")
                    && a.get(1).is_some_and(|w| w == "install"));
            if group {
                a.iter()
                    .filter(|w| {
                        !w.starts_with('-')
                            && !["group", "install", "groupinstall"].contains(&w.as_str())
                    })
                    .map(|w| format!("install @{w}"))
                    .collect()
            } else if a.first().is_some_and(|w| w == "install") {
                installs(&a[1..])
            } else if a.first().is_some_and(|w| w == "update") {
                vec!["pm upgrade".into()]
            } else {
                vec![]
            }
        }
        "zypper" if has("install") => {
            let rest = after("install");
            if rest.iter().any(|w| w == "-t") {
                rest.iter()
                    .filter(|w| !w.starts_with('-') && *w != "pattern")
                    .map(|w| format!("install @{w}"))
                    .collect()
            } else {
                installs(&rest)
            }
        }
        "zypper" if has("update") => vec!["pm upgrade".into()],
        "zypper" => vec![],
        "pacman" if a.first().is_some_and(|w| w == "-Syu") => {
            let mut f = vec!["pm upgrade".to_string()];
            f.extend(installs(&a[1..]));
            f
        }
        "pacman" => vec![],
        _ => return None,
    })
}

/// `useradd`, `adduser`, `addgroup`: who, with which id.
fn user_facts(c: &str, a: &[String]) -> Vec<String> {
    let flags: &[&str] = if c == "addgroup" {
        &["-g"]
    } else {
        &["-u", "--uid"]
    };
    let id = a
        .windows(2)
        .filter(|w| flags.contains(&w[0].as_str()))
        .map(|w| w[1].clone())
        .next_back()
        .unwrap_or_default();
    let (kind, key) = if c == "addgroup" {
        ("group-add", "gid")
    } else {
        ("user-add", "uid")
    };
    vec![format!(
        "{kind} {} {key}={id}",
        a.last().cloned().unwrap_or_default()
    )]
}

fn git_facts(mut a: &[String]) -> Vec<String> {
    while a.first().is_some_and(|w| w == "-C") {
        a = a.get(2..).unwrap_or(&[]);
    }
    match a.first().map(String::as_str) {
        Some("config") => a[1..]
            .iter()
            .find(|w| !w.starts_with("--"))
            .map(|k| vec![format!("git-config {k}")])
            .unwrap_or_default(),
        Some("clone") => {
            let p: Vec<&String> = a[1..].iter().filter(|w| !w.starts_with('-')).collect();
            match p.last() {
                Some(dst) if p.len() >= 2 && !skip_path(dst) => vec![format!("checkout {dst}")],
                _ => vec![],
            }
        }
        _ => vec![],
    }
}

fn opam_facts(a: &[String]) -> Vec<String> {
    let sub: Vec<&str> = a.iter().map(String::as_str).collect();
    match sub.as_slice() {
        ["init", ..] => vec!["opam-init".into()],
        ["switch", "create", name, ..] => {
            let pk = sub
                .iter()
                .find_map(|w| w.strip_prefix("--packages="))
                .unwrap_or("");
            vec![format!("switch {name} packages={pk}")]
        }
        ["pin", "add", rest @ ..] => {
            let r: Vec<&str> = rest
                .iter()
                .filter(|w| !w.starts_with('-') && **w != "version")
                .copied()
                .collect();
            vec![format!("pin {}", r.join(" "))]
        }
        ["install", rest @ ..] => rest
            .iter()
            .filter(|w| !w.starts_with('-'))
            .map(|w| format!("opam-install {w}"))
            .collect(),
        ["repo", "add", name, ..] => vec![format!("opam-repo {name}")],
        _ => vec![format!("run opam {}", sub.join(" "))],
    }
}

fn windows_facts(cmd: &str) -> Vec<String> {
    if let Some(i) = cmd.find("bash.exe --login -c \"")
        && let Some(inner) = cmd[i + 21..].trim_end().strip_suffix('"')
    {
        return shell_facts(&inner.replace("\\\"", "\""));
    }
    if cmd.contains("SetEnvironmentVariable")
        || (cmd.contains("reg add") && cmd.contains("/V Path"))
    {
        let mut f = vec![];
        if cmd.contains("INCLUDE|LIB|LIBPATH") {
            f.push("machine-env INCLUDE LIB LIBPATH".to_string());
        }
        f.push("machine-env PATH".to_string());
        return f;
    }
    let mut facts = vec![];
    for part in split_top(cmd, &["&&"]) {
        let ws: Vec<&str> = part.split_whitespace().collect();
        let Some(first) = ws.first() else { continue };
        let redirect = part
            .rfind('>')
            .map(|i| part[i + 1..].trim())
            .filter(|t| t.starts_with("C:\\") && !t.contains(char::is_whitespace));
        if let Some(t) = redirect {
            facts.push(format!("file {t}"));
        } else if *first == "opam" {
            facts.extend(opam_facts(&words(&part)[1..]));
        } else if first.contains("setup-x86_64.exe") {
            if let Some(i) = ws.iter().position(|w| *w == "--packages") {
                let p: Vec<String> = ws[i + 1].split(',').map(String::from).collect();
                facts.extend(installs(&p));
            }
        } else if *first == "mklink" && ws.len() >= 3 {
            facts.push(format!("symlink {}", ws[ws.len() - 2]));
        } else if *first == "move" && ws.len() >= 3 {
            let base = ws[1].rsplit('\\').next().unwrap_or(ws[1]);
            facts.push(format!("file {}\\{base}", ws[2]));
        } else if *first == "mkdir" && ws.len() >= 2 {
            facts.push(format!("dir {}", ws[1].trim_matches('"')));
        } else if *first == "awk" && part.contains("inplace") {
            let last = ws[ws.len() - 1];
            facts.push(format!("edit {}", last.rsplit('\\').next().unwrap_or(last)));
        }
    }
    facts
}

fn env_facts(arg: &str) -> Vec<String> {
    let mut out = vec![];
    let mut rest = arg.trim();
    while let Some((k, v)) = rest.split_once('=') {
        if k.contains(char::is_whitespace) || k.is_empty() {
            break;
        }
        let (value, tail) = if let Some(q) = v.strip_prefix('"') {
            let end = q.find('"').unwrap_or(q.len());
            (&q[..end], q.get(end + 1..).unwrap_or(""))
        } else {
            v.split_once(char::is_whitespace).unwrap_or((v, ""))
        };
        out.push(format!("env {k}={value}"));
        rest = tail.trim();
    }
    if out.is_empty()
        && let Some((k, v)) = arg.split_once(' ')
    {
        out.push(format!("env {k}={}", v.trim_matches('"')));
    }
    out
}

fn json_words(arg: &str) -> Option<Vec<String>> {
    let v: Value = serde_json::from_str(arg).ok()?;
    v.as_array()?
        .iter()
        .map(|x| x.as_str().map(String::from))
        .collect()
}

/// Facts of one instruction.
fn instruction_facts(i: &Instruction, windows: bool) -> Vec<String> {
    let arg = i.arg.as_str();
    match i.keyword.as_str() {
        "FROM" if arg.starts_with("ocurrent/opam-staging") => vec![],
        "FROM" => vec!["stage".into()],
        "SHELL" => match json_words(arg) {
            Some(v) if v == ["/bin/sh", "-c"] => vec![],
            Some(v) => vec![format!("shell {}", v.join(" "))],
            None => vec![format!("shell {arg}")],
        },
        "LABEL" => arg
            .split_whitespace()
            .filter_map(|t| t.split_once('='))
            .map(|(k, _)| format!("label {k}"))
            .collect(),
        "ENV" => env_facts(arg),
        "USER" => vec![format!("user {arg}")],
        "WORKDIR" => vec![format!("workdir {arg}")],
        "ENTRYPOINT" | "CMD" => {
            let v = json_words(arg)
                .map(|w| w.join(" "))
                .unwrap_or(arg.to_string());
            vec![format!("{} {v}", i.keyword.to_lowercase())]
        }
        "COPY" => {
            let ws: Vec<String> = match arg.find('[') {
                Some(b) => json_words(&arg[b..]).unwrap_or_default(),
                None => arg.split_whitespace().map(String::from).collect(),
            };
            let ws: Vec<&String> = ws.iter().filter(|w| !w.starts_with("--")).collect();
            match (ws.first(), ws.last()) {
                (Some(s), Some(d)) if *s == "." => vec![format!("checkout {d}")],
                (_, Some(d)) => vec![format!("file {d}")],
                _ => vec![],
            }
        }
        "RUN" if windows => windows_facts(arg),
        "RUN" => shell_facts(arg),
        _ => vec![],
    }
}

/// (fact, difference names of its step) in order.
fn reduce(text: &str) -> Vec<(String, Vec<String>)> {
    let windows = text.contains("escape=`");
    let escape = if windows { '`' } else { '\\' };
    instructions(text, escape)
        .iter()
        .flat_map(|i| {
            instruction_facts(i, windows)
                .into_iter()
                .map(|f| (f, i.differences.clone()))
                .collect::<Vec<_>>()
        })
        .collect()
}

// ---------------------------------------------------------------- comparison

/// Indices of a longest common subsequence of `a` and `b`.
fn lcs(a: &[String], b: &[String]) -> (BTreeSet<usize>, BTreeSet<usize>) {
    let (n, m) = (a.len(), b.len());
    let mut t = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            t[i][j] = if a[i] == b[j] {
                t[i + 1][j + 1] + 1
            } else {
                t[i + 1][j].max(t[i][j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    let (mut ia, mut ib) = (BTreeSet::new(), BTreeSet::new());
    while i < n && j < m {
        if a[i] == b[j] {
            ia.insert(i);
            ib.insert(j);
            i += 1;
            j += 1;
        } else if t[i + 1][j] >= t[i][j + 1] {
            i += 1;
        } else {
            j += 1;
        }
    }
    (ia, ib)
}

/// Every difference between upstream's facts and a rendered recipe that no
/// documented difference covers, one line each (empty: the recipe matches).
fn undocumented(upstream: &[String], recipe: &str) -> Vec<String> {
    let kiln = reduce(recipe);
    let kiln_facts: Vec<String> = kiln.iter().map(|(f, _)| f.clone()).collect();
    let (matched_up, matched_kiln) = lcs(upstream, &kiln_facts);
    let named: BTreeSet<String> = recipe
        .lines()
        .filter_map(|l| l.trim().strip_prefix("# difference("))
        .filter_map(|r| r.split_once(')').map(|(n, _)| n.to_string()))
        .collect();
    let known: BTreeSet<&str> = DIFFERENCES.iter().map(|d| d.name).collect();
    let mut problems = vec![];
    for n in &named {
        if !known.contains(n.as_str()) {
            problems.push(format!(
                "difference({n}) is commented in the recipe but unknown to this test"
            ));
        }
    }
    for (j, (fact, names)) in kiln.iter().enumerate() {
        if matched_kiln.contains(&j) {
            continue;
        }
        if !names.iter().any(|n| known.contains(n.as_str())) {
            problems.push(format!(
                "Kiln only, in no step marked `# difference(…)`: {fact}"
            ));
        }
    }
    let mut budget: BTreeMap<&str, usize> = BTreeMap::new();
    for d in DIFFERENCES.iter().filter(|d| named.contains(d.name)) {
        for (prefix, n) in d.upstream_only {
            *budget.entry(prefix).or_default() += n;
        }
    }
    for (i, fact) in upstream.iter().enumerate() {
        if matched_up.contains(&i) {
            continue;
        }
        let excuse = budget
            .iter_mut()
            .find(|(p, n)| fact.starts_with(**p) && **n > 0);
        match excuse {
            Some((_, n)) => *n -= 1,
            None => problems.push(format!(
                "upstream only, excused by no difference the recipe names: {fact}"
            )),
        }
    }
    problems
}

// ---------------------------------------------------------------- fixtures

fn upstream_facts() -> Value {
    let p = root().join("tests/fixtures/upstream/recipe-facts.json");
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

fn facts_of(v: &Value, family: &str) -> Vec<String> {
    v["families"][family]["facts"]
        .as_array()
        .unwrap_or_else(|| panic!("recipe-facts.json: no family {family}"))
        .iter()
        .map(|f| f.as_str().unwrap().to_string())
        .collect()
}

fn shipped() -> catalogue::Catalogue {
    catalogue::load(&root().join("versions"), &root().join("platforms")).unwrap()
}

/// Kiln's recipe for one OS release, rendered for the plain 5.4.1 on amd64
/// with `kiln catalogue validate`'s build-time stand-ins.
fn rendered(cat: &catalogue::Catalogue, os: &str, version: &str) -> String {
    let filter = Filter {
        version: Some(version.into()),
        os: Some(os.into()),
        arch: Some(Arch::Amd64),
        ..Filter::default()
    };
    let targets = plan::expand(cat, &filter).unwrap();
    let t = targets
        .iter()
        .find(|t| t.variant.is_none())
        .unwrap_or_else(|| panic!("no target {os} {version} amd64"));
    render_target(t)
}

fn render_target(t: &plan::Target) -> String {
    let mut vars = t.vars.clone();
    for (k, v) in validate::PLACEHOLDERS {
        vars.insert(k.to_string(), v.to_string());
    }
    let path = &t.recipes[0];
    let text = std::fs::read_to_string(path).unwrap();
    template::render(&path.display().to_string(), &text, &vars).unwrap()
}

const FAMILIES: [(&str, &str); 7] = [
    ("apt", "debian-13"),
    ("apk", "alpine-3.23"),
    ("dnf", "fedora-44"),
    ("zypper", "opensuse-16.0"),
    ("pacman", "archlinux"),
    ("mingw", "windows-server-mingw-ltsc2025"),
    ("msvc", "windows-server-msvc-ltsc2025"),
];

fn check_family(family: &str) {
    let up = upstream_facts();
    let os = up["families"][family]["distro"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(FAMILIES.iter().find(|(f, _)| *f == family).unwrap().1, os);
    let recipe = rendered(&shipped(), &os, "5.4.1");
    let problems = undocumented(&facts_of(&up, family), &recipe);
    assert!(
        problems.is_empty(),
        "{family} ({os}, 5.4.1, amd64) differs from docker-base-images e18903f:\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn apt_follows_upstream_step_by_step() {
    check_family("apt");
}

#[test]
fn apk_follows_upstream_step_by_step() {
    check_family("apk");
}

#[test]
fn dnf_follows_upstream_step_by_step() {
    check_family("dnf");
}

#[test]
fn zypper_follows_upstream_step_by_step() {
    check_family("zypper");
}

#[test]
fn pacman_follows_upstream_step_by_step() {
    check_family("pacman");
}

#[test]
fn windows_mingw_follows_upstream_step_by_step() {
    check_family("mingw");
}

#[test]
fn windows_msvc_follows_upstream_step_by_step() {
    check_family("msvc");
}

#[test]
fn an_undocumented_difference_fails_the_comparison() {
    let up = upstream_facts();
    let upstream = facts_of(&up, "apt");
    let recipe = rendered(&shipped(), "debian-13", "5.4.1");
    assert!(undocumented(&upstream, &recipe).is_empty());
    // A package dropped, a step added, a user with another uid, an unknown name.
    let dropped = recipe.replacen(" libx11-dev bubblewrap", " libx11-dev", 1);
    let p = undocumented(&upstream, &dropped);
    assert!(p.iter().any(|l| l.ends_with("install bubblewrap")), "{p:?}");
    let added = recipe.replacen(
        "RUN passwd -l opam",
        "RUN passwd -l opam\nRUN touch /etc/kiln",
        1,
    );
    let p = undocumented(&upstream, &added);
    assert!(
        p.iter().any(|l| l.ends_with("run touch /etc/kiln")),
        "{p:?}"
    );
    let uid = recipe.replacen("--uid 1000", "--uid 1001", 1);
    let p = undocumented(&upstream, &uid);
    assert!(
        p.iter().any(|l| l.contains("user-add opam uid=1001")),
        "{p:?}"
    );
    let unknown = recipe.replacen("# difference(kiln-labels)", "# difference(kiln-labelz)", 1);
    let p = undocumented(&upstream, &unknown);
    assert!(p.iter().any(|l| l.contains("kiln-labelz")), "{p:?}");
    // Order counts: the switch created before opam init is a difference.
    let moved = recipe.replacen("RUN opam init -k git", "RUN opam init-later", 1)
        + "RUN opam init -k git -a /home/opam/opam-repository --bare\n";
    assert!(!undocumented(&upstream, &moved).is_empty());
}

#[test]
fn every_documented_difference_is_named_by_a_recipe() {
    let mut named = BTreeSet::new();
    for dir in ["platforms/linux", "platforms/windows"] {
        for e in std::fs::read_dir(root().join(dir)).unwrap() {
            let text = std::fs::read_to_string(e.unwrap().path()).unwrap();
            for l in text.lines() {
                if let Some((n, _)) = l
                    .trim()
                    .strip_prefix("# difference(")
                    .and_then(|r| r.split_once(')'))
                {
                    named.insert(n.to_string());
                }
            }
        }
    }
    for d in DIFFERENCES {
        assert!(
            named.contains(d.name),
            "difference {} is named by no recipe",
            d.name
        );
    }
}

/// The `{{sources_url}}/<name>` a rendered recipe fetches.
fn fetched(text: &str) -> BTreeSet<String> {
    let base = format!(
        "{}/",
        validate::PLACEHOLDERS
            .iter()
            .find(|(k, _)| *k == "sources_url")
            .unwrap()
            .1
    );
    text.match_indices(&base)
        .map(|(i, _)| {
            text[i + base.len()..]
                .split(|c: char| c.is_whitespace() || c == '"' || c == '\'')
                .next()
                .unwrap_or("")
                .to_string()
        })
        .collect()
}

#[test]
fn every_source_a_recipe_fetches_is_declared_with_its_sha256() {
    let text = std::fs::read_to_string(root().join("versions/sources.yaml")).unwrap();
    let doc: serde_norway::Value = serde_norway::from_str(&text).unwrap();
    let mut declared = BTreeSet::new();
    for s in doc["sources"].as_sequence().unwrap() {
        let name = s["name"].as_str().unwrap();
        let sha = s["sha256"].as_str().unwrap();
        assert!(
            sha.len() == 64
                && sha
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
            "versions/sources.yaml: {name}: sha256 {sha:?} is not 64 lowercase hex"
        );
        assert!(
            s["url"].as_str().unwrap().starts_with("https://"),
            "{name}: url"
        );
        assert!(declared.insert(name.to_string()), "{name} declared twice");
    }
    let cat = shipped();
    let mut wanted = BTreeSet::new();
    for t in validate::all_targets(&cat).unwrap() {
        // A compiler-less image is its recipe's `opam` stage, which the
        // compiler targets of its OS release render too.
        if t.builder == catalogue::BuilderKind::Docker
            && t.version.is_some()
            && t.recipes[0].starts_with(root().join("platforms"))
        {
            wanted.extend(fetched(&render_target(&t)));
        }
    }
    // The bundle and the archive cache are made by the sources server itself.
    wanted.remove("opam-repository.bundle");
    wanted.retain(|n| !n.starts_with("opam-cache"));
    // A step a target does not run names no source (`{{sources_url}}/` and
    // an empty `{{ocaml_beta_repository_source}}`).
    wanted.remove("");
    let undeclared: BTreeSet<String> = UNDECLARED.iter().map(|(n, _)| n.to_string()).collect();
    for n in &wanted {
        assert!(
            declared.contains(n) || undeclared.contains(n),
            "a recipe fetches {{{{sources_url}}}}/{n}, which versions/sources.yaml does not declare"
        );
    }
    for n in &declared {
        assert!(
            wanted.contains(n),
            "versions/sources.yaml declares {n}, which no recipe fetches"
        );
    }
    for n in &undeclared {
        assert!(
            wanted.contains(n) && !declared.contains(n),
            "UNDECLARED lists {n}: stale"
        );
    }
}

#[test]
fn old_compilers_get_upstreams_extra_steps() {
    let cat = shipped();
    // 4.14.3 on Alpine 3.23 (gcc 15.2): the GCC 15 overlay; not on Debian 13 (gcc 14.2).
    let alpine = reduce(&rendered(&cat, "alpine-3.23", "4.14.3"));
    assert!(
        alpine
            .iter()
            .any(|(f, _)| f == "opam-repo ocaml-patches-overlay")
    );
    assert!(
        !alpine.iter().any(|(f, _)| f == "install zstd"),
        "zstd only from 5.1"
    );
    let debian = reduce(&rendered(&cat, "debian-13", "4.14.3"));
    assert!(
        !debian
            .iter()
            .any(|(f, _)| f == "opam-repo ocaml-patches-overlay")
    );
    assert!(
        debian
            .iter()
            .any(|(f, _)| f == "switch 4.14 packages=ocaml-base-compiler.4.14.3")
    );
    // Below 4.08: the secondary compiler.
    let old = reduce(&rendered(&cat, "debian-12", "4.07.1"));
    assert!(
        old.iter()
            .any(|(f, _)| f == "opam-install ocaml-secondary-compiler")
    );
    // A dev compiler: the beta repository; a beta: its own switch name.
    let dev = reduce(&rendered(&cat, "debian-13", "5.6.0"));
    assert!(dev.iter().any(|(f, _)| f == "opam-repo beta"));
    // Every Linux OS release says which gcc it ships.
    for pf in cat.platforms.iter().filter(|p| p.platform == "linux") {
        for os in &pf.releases {
            assert!(
                os.vars.contains_key("gcc"),
                "platforms/linux/platform.yaml: {}: vars.gcc",
                os.id
            );
        }
    }
}

#[test]
fn thirty_two_bit_arches_run_under_linux32() {
    let cat = shipped();
    let mut t = plan::expand(
        &cat,
        &Filter {
            version: Some("5.4.1".into()),
            os: Some("debian-13".into()),
            arch: Some(Arch::Amd64),
            ..Filter::default()
        },
    )
    .unwrap()
    .remove(0);
    // No OS release builds i386 any more (docker-base-images #346); the
    // variables of an i386 target are what a recipe would see.
    kiln::plan::recipe_vars::add(
        &mut t.vars,
        &t.version.clone().unwrap(),
        t.status.unwrap(),
        Arch::I386,
        &t.opam_packages.clone(),
    );
    let facts = reduce(&render_target(&t));
    assert!(
        facts
            .iter()
            .any(|(f, _)| f == "shell /usr/bin/linux32 /bin/sh -c")
    );
    assert!(
        facts
            .iter()
            .any(|(f, _)| f == "entrypoint /usr/bin/linux32 opam exec --")
    );
}

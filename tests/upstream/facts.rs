//! A Dockerfile reduced to facts, one per thing an instruction establishes,
//! at the grain the conformance test compares upstream and Kiln at:
//!
//! | instruction | facts |
//! | --- | --- |
//! | parser directive | `directive syntax=docker/dockerfile:1`, `directive escape=\`` |
//! | `FROM` | `from <image>` (no digest, no stage name); upstream's `ocurrent/opam-staging:<os>-opam-<arch>` and Kiln's `FROM opam` are both `from <os>-opam` |
//! | `SHELL` | `shell <argv>`, none for Docker's default `/bin/sh -c` |
//! | `LABEL`, `ENV` | `label k=v`, `env K=V`, one per pair |
//! | `USER`, `WORKDIR`, `ENTRYPOINT`, `CMD` | `user u`, `workdir d`, `entrypoint argv…`, `cmd …` |
//! | `COPY`, `ADD` | `copy [from=<stage index>] [chown=o] src… -> dst`, `link dst` for `--link`, `add src -> dst` |
//! | heredoc `COPY`, `RUN <<EOF cat >> f` | `write f = <content>`, `append f = <content>` (and `owner f u` for `--chown`) |
//! | `RUN` | per command joined by `&&` (outside quotes and `if … fi`): a package manager's `pm <tool> <words but packages>` and `package <tool> <name>` per package; `printf`/`echo` into a file, `write`/`append f = <content>` (and `owner f u` when run as a user); any other command `run <command>`, whitespace collapsed |
//!
//! A step a switch turns off (`RUN if false; then …; fi`, Windows `if
//! false==true …`) gives nothing, one it turns on gives its body's facts.
//! A Windows `bash.exe --login -c "…"` is reduced as the shell command it
//! runs. The only normalisation of a command is that of the source
//! server's URL, which Kiln's recipes name `{{sources_url}}` and which
//! renderings for reading keep as that placeholder.

/// One instruction: keyword and argument (continuations joined), and a
/// heredoc body when it has one.
#[derive(Debug)]
struct Instruction {
    keyword: String,
    arg: String,
    heredoc: Option<String>,
}

fn escape_of(text: &str) -> char {
    let windows = text
        .lines()
        .take_while(|l| l.starts_with('#') || l.trim().is_empty())
        .any(|l| l.trim() == "# escape=`");
    if windows { '`' } else { '\\' }
}

/// Parser directives: the `# key=value` lines Docker reads before anything
/// else (a blank line or any other line ends them).
fn directives(text: &str) -> Vec<String> {
    text.lines()
        .map_while(|l| l.strip_prefix("# "))
        .filter_map(|d| {
            let (k, _) = d.split_once('=')?;
            ["syntax", "escape"]
                .contains(&k)
                .then(|| format!("directive {d}"))
        })
        .collect()
}

fn instructions(text: &str) -> Vec<Instruction> {
    let escape = escape_of(text);
    let mut out = Vec::new();
    let mut lines = text.lines().peekable();
    let mut cur = String::new();
    while let Some(line) = lines.next() {
        let trimmed = line.trim();
        if cur.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        if let Some(body) = line.trim_end().strip_suffix(escape) {
            cur.push_str(body.trim_end());
            cur.push(' ');
            continue;
        }
        cur.push_str(line.trim());
        let full = std::mem::take(&mut cur);
        let (kw, arg) = full.split_once(' ').unwrap_or((&full, ""));
        // `<<-EOF` or `<<EOF`: the body up to a line `EOF`.
        let heredoc = arg.contains("<<").then(|| {
            let mut body = Vec::new();
            for l in lines.by_ref() {
                if l.trim() == "EOF" {
                    break;
                }
                body.push(l.trim_start_matches('\t').to_string());
            }
            body.join("\n")
        });
        out.push(Instruction {
            keyword: kw.to_uppercase(),
            arg: arg.trim().to_string(),
            heredoc,
        });
    }
    out
}

/// Split at top-level `&&`, outside quotes, `$(…)` and `if … fi`.
pub fn split_and(cmd: &str) -> Vec<String> {
    let chars: Vec<char> = cmd.chars().collect();
    let mut parts = Vec::new();
    let mut cur = String::new();
    let (mut quote, mut depth) = (None::<char>, 0i32);
    let mut i = 0;
    let word_at = |i: usize, w: &str| {
        let at_start = i == 0 || chars[i - 1].is_whitespace() || chars[i - 1] == ';';
        let end = i + w.len();
        at_start
            && chars.len() >= end
            && chars[i..end].iter().copied().eq(w.chars())
            && (end == chars.len() || chars[end].is_whitespace() || chars[end] == ';')
    };
    while i < chars.len() {
        let c = chars[i];
        if let Some(q) = quote {
            if c == q {
                quote = None;
            } else if c == '\\' && q == '"' && i + 1 < chars.len() {
                cur.push(c);
                i += 1;
                cur.push(chars[i]);
                i += 1;
                continue;
            }
        } else if c == '\'' || c == '"' {
            quote = Some(c);
        } else if c == '$' && chars.get(i + 1) == Some(&'(') {
            depth += 1;
        } else if c == ')' && depth > 0 {
            depth -= 1;
        } else if word_at(i, "if") {
            depth += 1;
        } else if word_at(i, "fi") && depth > 0 {
            depth -= 1;
        } else if depth == 0 && c == '&' && chars.get(i + 1) == Some(&'&') {
            parts.push(collapse(&cur));
            cur.clear();
            i += 2;
            continue;
        }
        cur.push(c);
        i += 1;
    }
    parts.push(collapse(&cur));
    parts.into_iter().filter(|p| !p.is_empty()).collect()
}

pub fn collapse(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// POSIX-shell words (quotes removed); `None` when quotes do not balance.
pub fn words(cmd: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = cmd.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next()? {
                        '\'' => break,
                        x => cur.push(x),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next()? {
                        '"' => break,
                        '\\' => match chars.peek() {
                            Some(&n) if matches!(n, '"' | '\\' | '$' | '`') => {
                                cur.push(n);
                                chars.next();
                            }
                            _ => cur.push('\\'),
                        },
                        x => cur.push(x),
                    }
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
    Some(out)
}

const PACKAGE_MANAGERS: [&str; 6] = ["apt-get", "apk", "yum", "dnf", "zypper", "pacman"];

/// `pm …` and `package …` facts of a package-manager command (`None`:
/// not one).
fn package_facts(ws: &[String]) -> Option<Vec<String>> {
    let at = ws
        .iter()
        .position(|w| PACKAGE_MANAGERS.contains(&w.as_str()))?;
    // Only environment assignments and sudo may come before the tool.
    if !ws[..at].iter().all(|w| w == "sudo" || w.contains('=')) {
        return None;
    }
    let tool = ws[at].as_str();
    let args = &ws[at + 1..];
    let sub: Vec<&str> = args
        .iter()
        .filter(|w| !w.starts_with('-'))
        .take(2)
        .map(String::as_str)
        .collect();
    let takes_packages = match tool {
        "pacman" => args.first().is_some_and(|a| a.starts_with("-S")),
        _ => matches!(
            sub.as_slice(),
            ["install", ..]
                | ["add", ..]
                | ["groupinstall", ..]
                | ["group", "install"]
                | ["remove", ..]
                | ["del", ..]
        ),
    };
    let mut pm = ws[..=at].to_vec();
    let mut packages = Vec::new();
    let mut seen_sub = tool == "pacman";
    for w in args {
        let is_sub = !seen_sub && !w.starts_with('-');
        if is_sub {
            pm.push(w.clone());
            seen_sub = w != "group";
            continue;
        }
        if takes_packages && seen_sub && !w.starts_with('-') && w != "pattern" {
            packages.push(format!("package {tool} {w}"));
        } else {
            pm.push(w.clone());
        }
    }
    let mut facts = vec![format!("pm {}", pm.join(" "))];
    facts.extend(packages);
    Some(facts)
}

/// `write`/`append` facts of `printf '%s\n' 'a' 'b' > f` or `echo 'x' >> f`.
fn file_facts(ws: &[String], user: &str) -> Option<Vec<String>> {
    let op = ws.iter().position(|w| w == ">" || w == ">>")?;
    let (path, kind) = (
        ws.get(op + 1)?,
        if ws[op] == ">" { "write" } else { "append" },
    );
    let content = match ws.first()?.as_str() {
        "printf" if ws.get(1).is_some_and(|f| f == "%s\\n") => ws[2..op].join("\n"),
        "echo" => ws[1..op].join(" "),
        _ => return None,
    };
    let mut f = vec![format!("{kind} {path} = {content}")];
    if user != "root" && kind == "write" {
        f.push(format!("owner {path} {user}"));
    }
    Some(f)
}

/// The facts of one shell command line (Linux, or Cygwin's bash).
pub fn shell_facts(cmd: &str, user: &str) -> Vec<String> {
    let cmd = cmd.trim();
    if let Some(body) = switch_body(cmd) {
        return body.map(|b| shell_facts(&b, user)).unwrap_or_default();
    }
    let mut out = Vec::new();
    for part in split_and(cmd) {
        let ws = words(&part);
        let structured = ws
            .as_ref()
            .and_then(|ws| package_facts(ws).or_else(|| file_facts(ws, user)));
        match structured {
            Some(f) => out.extend(f),
            None => out.push(format!("run {part}")),
        }
    }
    out
}

/// `if true; then X; fi` → `Some(Some(X))`, `if false; …` → `Some(None)`,
/// anything else → `None` (the same for Windows `if true==true X`).
fn switch_body(cmd: &str) -> Option<Option<String>> {
    if let Some(rest) = cmd.strip_prefix("if true; then ") {
        let body = rest.trim_end().strip_suffix("fi")?;
        return Some(Some(body.trim_end().trim_end_matches(';').to_string()));
    }
    if let Some(rest) = cmd.strip_prefix("if true==true ") {
        return Some(Some(rest.to_string()));
    }
    if cmd.starts_with("if false; then ") || cmd.starts_with("if false==true ") {
        return Some(None);
    }
    None
}

fn windows_facts(cmd: &str, user: &str) -> Vec<String> {
    if let Some(body) = switch_body(cmd.trim()) {
        return body.map(|b| windows_facts(&b, user)).unwrap_or_default();
    }
    const BASH: &str = "C:\\cygwin64\\bin\\bash.exe --login -c \"";
    if let Some(inner) = cmd.trim().strip_prefix(BASH)
        && let Some(inner) = inner.strip_suffix('"')
    {
        let inner = inner.replace("\\\"", "\"").replace("\\$", "$");
        return shell_facts(&inner, user)
            .into_iter()
            .map(|f| format!("{f} (cygwin)"))
            .collect();
    }
    split_and(cmd)
        .into_iter()
        .map(|p| format!("run {p}"))
        .collect()
}

fn json_words(arg: &str) -> Option<Vec<String>> {
    let v: serde_json::Value = serde_json::from_str(arg).ok()?;
    v.as_array()?
        .iter()
        .map(|x| x.as_str().map(String::from))
        .collect()
}

/// `k="v" k2=v2` pairs (values unquoted).
fn pairs(arg: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let Some(ws) = words(arg) else {
        return out;
    };
    for w in ws {
        if let Some((k, v)) = w.split_once('=') {
            out.push((k.to_string(), v.to_string()));
        } else if let Some(last) = out.last_mut() {
            // `ENV K V` (legacy form) or a value with spaces.
            last.1.push(' ');
            last.1.push_str(&w);
        } else {
            out.push((w, String::new()));
        }
    }
    if out.len() == 1 && out[0].1.is_empty() {
        // `ENV K V`
        if let Some((k, v)) = arg.split_once(' ') {
            return vec![(k.to_string(), v.trim_matches('"').to_string())];
        }
    }
    out
}

/// The reduction of a whole Dockerfile; `os` names the image's OS release
/// (for the `from <os>-opam` of a compiler Dockerfile).
pub fn reduce(text: &str, os: &str) -> Vec<String> {
    let windows = escape_of(text) == '`';
    let mut facts = directives(text);
    let mut stages: Vec<Option<String>> = Vec::new();
    let mut user = "root".to_string();
    for i in instructions(text) {
        let arg = i.arg.as_str();
        match i.keyword.as_str() {
            "FROM" => {
                let ws: Vec<&str> = arg.split_whitespace().collect();
                let image = ws.first().copied().unwrap_or("");
                let alias = ws
                    .iter()
                    .position(|w| w.eq_ignore_ascii_case("as"))
                    .and_then(|p| ws.get(p + 1))
                    .map(|s| s.to_string());
                let image = image.split('@').next().unwrap_or(image);
                let from = if image.starts_with("ocurrent/opam-staging:") || image == "opam" {
                    format!("{os}-opam")
                } else {
                    image.to_string()
                };
                facts.push(format!("from {from}"));
                stages.push(alias);
                user = if windows {
                    "ContainerAdministrator"
                } else {
                    "root"
                }
                .into();
            }
            "SHELL" => match json_words(arg) {
                Some(v) if v == ["/bin/sh", "-c"] => {}
                Some(v) => facts.push(format!("shell {}", v.join(" "))),
                None => facts.push(format!("shell {arg}")),
            },
            "LABEL" => facts.extend(
                pairs(arg)
                    .into_iter()
                    .map(|(k, v)| format!("label {k}={v}")),
            ),
            "ENV" => facts.extend(pairs(arg).into_iter().map(|(k, v)| format!("env {k}={v}"))),
            "USER" => {
                user = arg.to_string();
                facts.push(format!("user {arg}"));
            }
            "WORKDIR" => facts.push(format!("workdir {arg}")),
            "ENTRYPOINT" | "CMD" => {
                let v = json_words(arg)
                    .map(|w| w.join(" "))
                    .unwrap_or(arg.to_string());
                facts.push(format!("{} {v}", i.keyword.to_lowercase()));
            }
            "COPY" | "ADD" => facts.extend(copy_facts(&i, &stages)),
            "RUN" => facts.extend(run_facts(&i, windows, &user)),
            other => facts.push(format!("{} {arg}", other.to_lowercase())),
        }
    }
    facts
}

fn copy_facts(i: &Instruction, stages: &[Option<String>]) -> Vec<String> {
    let arg = i.arg.as_str();
    let mut flags = Vec::new();
    let mut link = false;
    let mut rest = arg;
    while let Some(r) = rest.strip_prefix("--") {
        let (flag, tail) = r.split_once(' ').unwrap_or((r, ""));
        match flag.split_once('=') {
            Some(("from", s)) => {
                let index = stages
                    .iter()
                    .position(|n| n.as_deref() == Some(s))
                    .map(|p| p.to_string())
                    .unwrap_or(s.to_string());
                flags.push(format!("from={index}"));
            }
            Some((k, v)) => flags.push(format!("{k}={v}")),
            None if flag == "link" => link = true,
            None => flags.push(flag.to_string()),
        }
        rest = tail.trim_start();
    }
    let kw = i.keyword.to_lowercase();
    if let Some(body) = &i.heredoc {
        // `COPY <<-EOF /dst`: a file written with this content.
        let dst = rest.split_whitespace().last().unwrap_or("");
        let mut f = vec![format!("write {dst} = {body}")];
        if let Some(o) = flags.iter().find_map(|f| f.strip_prefix("chown=")) {
            f.push(format!("owner {dst} {o}"));
        }
        return f;
    }
    let ws: Vec<String> = match rest.find('[') {
        Some(b) => json_words(&rest[b..]).unwrap_or_default(),
        None => rest.split_whitespace().map(String::from).collect(),
    };
    let Some((dst, srcs)) = ws.split_last() else {
        return vec![format!("{kw} {arg}")];
    };
    let mut f = vec![format!(
        "{kw}{}{} {} -> {dst}",
        if flags.is_empty() { "" } else { " " },
        flags.join(" "),
        srcs.join(" ")
    )];
    if link {
        f.push(format!("link {dst}"));
    }
    f
}

fn run_facts(i: &Instruction, windows: bool, user: &str) -> Vec<String> {
    if let Some(body) = &i.heredoc {
        // `RUN <<-EOF cat >> /etc/apk/repositories`
        let after = i.arg.split_once("<<").map(|(_, a)| a).unwrap_or("");
        let ws: Vec<&str> = after.split_whitespace().collect();
        if let Some(p) = ws.iter().position(|w| *w == ">" || *w == ">>") {
            let kind = if ws[p] == ">" { "write" } else { "append" };
            return vec![format!("{kind} {} = {body}", ws.get(p + 1).unwrap_or(&""))];
        }
        return vec![format!("run {} <<EOF {body}", i.arg)];
    }
    if windows {
        windows_facts(&i.arg, user)
    } else {
        shell_facts(&i.arg, user)
    }
}

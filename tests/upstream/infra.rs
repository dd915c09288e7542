//! Kiln's macOS, FreeBSD and OpenBSD recipes reduced to the facts of
//! `tests/fixtures/upstream/extract/infra_facts.py`'s vocabulary (that
//! script reads upstream's macos-infra, freebsd-infra and obuilder qemu
//! files; its header lists the facts), so that both can be compared.

use super::facts::words;

const VARS: [&str; 7] = [
    "OPAMYES",
    "OPAMCONFIRMLEVEL",
    "OPAMERRLOGLEN",
    "OPAMPRECISETRACKING",
    "HOMEBREW_DISABLE_LOCKING",
    "HOMEBREW_NO_AUTO_UPDATE",
    "PATH",
];

/// Commands of a script: comments dropped, `\` continuations joined, each
/// split at top-level ` && `; a heredoc's or `su -c '…'`'s lines are
/// commands too, and lines echoed inside `{ … } > file` are written to
/// that file.
pub fn commands(script: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut group: Vec<String> = Vec::new();
    let mut in_group = false;
    for raw in script.lines() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(body) = line.strip_suffix('\\') {
            cur.push_str(body);
            cur.push(' ');
            continue;
        }
        cur.push_str(line);
        let full = std::mem::take(&mut cur);
        if full == "{" {
            in_group = true;
            continue;
        }
        if in_group {
            if let Some(dst) = full.strip_prefix("} >") {
                let dst = dst.trim().to_string();
                for g in group.drain(..) {
                    out.push(format!("{g} >> {dst}"));
                }
                in_group = false;
            } else {
                group.push(full);
            }
            continue;
        }
        // `su -l user -c '` opens a block of commands; `'` closes it.
        if full.starts_with("su ") && full.ends_with("-c '") || full == "'" {
            continue;
        }
        let full = full.trim_end_matches(" &&").to_string();
        out.extend(full.split(" && ").map(|p| p.trim().to_string()));
    }
    out
}

/// The facts of one command.
pub fn command_facts(cmd: &str) -> Vec<String> {
    let Some(mut w) = words(cmd) else {
        return vec![];
    };
    // bsdinstall takes its sets from the environment it is given.
    if let Some(at) = w.iter().position(|x| x == "bsdinstall") {
        let sets = w[..at]
            .iter()
            .find_map(|x| x.strip_prefix("DISTRIBUTIONS="))
            .unwrap_or("");
        return vec![format!("bsdinstall {sets}")];
    }
    while w
        .first()
        .is_some_and(|x| x == "sudo" || x == "env" || (x.contains('=') && !x.starts_with('-')))
    {
        w.remove(0);
    }
    let Some(c) = w.first().cloned() else {
        return vec![];
    };
    let args: Vec<&str> = w.iter().map(String::as_str).collect();
    let non_flags = |from: usize| -> Vec<String> {
        args[from..]
            .iter()
            .filter(|x| !x.starts_with('-'))
            .map(|x| x.to_string())
            .collect()
    };
    if cmd.contains("login.conf") && cmd.contains("stacksize-cur=32M") {
        return vec!["login-class staff stacksize-cur=32M".into()];
    }
    match c.as_str() {
        "build_opam" if args.len() >= 3 => {
            let v = args[1]
                .rsplit("opam-full-")
                .next()
                .and_then(|x| x.strip_suffix(".tar.gz"))
                .unwrap_or("");
            vec![format!("opam {} {v}", args[2])]
        }
        "brew" if args.get(1) == Some(&"install") => non_flags(2)
            .into_iter()
            .map(|p| format!("package {p}"))
            .collect(),
        "pkg" if args.contains(&"--chroot") => vec![
            if args.contains(&"install") {
                "pkg-bootstrap"
            } else {
                "pkg-upgrade"
            }
            .to_string(),
        ],
        "pkg" if args.contains(&"install") => {
            let at = args.iter().position(|a| *a == "install").unwrap_or(0);
            non_flags(at + 1)
                .into_iter()
                .map(|p| format!("package {p}"))
                .collect()
        }
        "pkg_add" => non_flags(1)
            .into_iter()
            .map(|p| format!("package {p}"))
            .collect(),
        "ln" if args.last().is_some_and(|l| l.ends_with("/opam")) && args.len() >= 3 => {
            let target = args[args.len() - 2].rsplit('/').next().unwrap_or("");
            vec![format!("opam-default {target}")]
        }
        "ln" if args
            .last()
            .is_some_and(|l| l.rsplit('/').next() == Some("local")) =>
        {
            vec!["home-link local".into()]
        }
        "echo" if args.contains(&">>") || args.contains(&">") => {
            let op = args
                .iter()
                .position(|a| *a == ">>" || *a == ">")
                .unwrap_or(0);
            let text = args[1..op].join(" ");
            let dst = args.get(op + 1).copied().unwrap_or("");
            file_fact(&text, dst)
        }
        "export" if args.len() == 2 => file_fact(&format!("export {}", args[1]), "profile"),
        "opam" => opam_facts(&args[1..]),
        "git" if args.get(1) == Some(&"config") => {
            let kv: Vec<&&str> = args[2..].iter().filter(|x| !x.starts_with("--")).collect();
            match kv.as_slice() {
                [k, v, ..] => vec![format!("git-config {k}={v}")],
                _ => vec![],
            }
        }
        "git" if args.get(1) == Some(&"clone") && cmd.contains("opam-repository") => {
            vec![
                if cmd.contains("github.com") {
                    "opam-repository github"
                } else {
                    "opam-repository bundle"
                }
                .to_string(),
            ]
        }
        "rm" if cmd.contains(".opam/repo/default/.git") => vec!["opam-repository-no-git".into()],
        "pw" if args.contains(&"useradd") => {
            let after = |f: &str| {
                args.iter()
                    .position(|a| *a == f)
                    .and_then(|i| args.get(i + 1))
                    .copied()
                    .unwrap_or("")
            };
            vec![format!("user {} uid={}", after("-n"), after("-u"))]
        }
        "bsdinstall" => vec![],
        "freebsd-update" => vec!["freebsd-update".into()],
        "jail" if args.contains(&"-c") => {
            let command = args
                .iter()
                .find_map(|a| a.strip_prefix("command="))
                .unwrap_or("");
            let script = command.rsplit('/').next().unwrap_or("");
            let user = args.iter().find_map(|a| a.strip_prefix("exec.jail_user="));
            vec![format!(
                "jail {script}{}",
                user.map(|u| format!(" as {u}")).unwrap_or_default()
            )]
        }
        "syspatch" => vec!["syspatch".into()],
        "usermod" => vec![format!("usermod {}", args[1..].join(" "))],
        "sed" if args.contains(&"/etc/fstab") => {
            let opts = cmd
                .split("s/rw,/")
                .nth(1)
                .and_then(|r| r.split('/').next())
                .unwrap_or("");
            vec![format!("fstab {opts}")]
        }
        "mkdir" if args.contains(&"src") => vec!["dir src".into()],
        "disklabel" if args.contains(&"sd1") => vec!["cache-disk disklabel sd1".into()],
        "newfs" => vec![format!("cache-disk newfs {}", args.last().unwrap_or(&""))],
        "mount" if args.contains(&"/dev/sd1a") => vec!["cache-disk mount".into()],
        "shutdown" => vec![format!("shutdown {}", args[1..].join(" "))],
        _ => vec![],
    }
}

fn file_fact(text: &str, dst: &str) -> Vec<String> {
    let base = dst.rsplit('/').next().unwrap_or(dst);
    match base {
        "installurl" => return vec![format!("installurl {text}")],
        "doas.conf" => return vec![format!("doas {text}")],
        "sshd_config" => return vec![format!("sshd {text}")],
        _ => {}
    }
    if dst.contains("sudoers.d") {
        return vec![format!("sudoers {base}")];
    }
    let t = text.strip_prefix("export ").unwrap_or(text);
    if let Some((k, v)) = t.split_once('=')
        && VARS.contains(&k)
    {
        let v = v.strip_suffix(&format!("; export {k}")).unwrap_or(v);
        return vec![format!("env {k}={v}")];
    }
    vec![]
}

fn opam_facts(a: &[&str]) -> Vec<String> {
    let after = |f: &str| {
        a.iter()
            .position(|x| *x == f)
            .and_then(|i| a.get(i + 1))
            .copied()
    };
    match a {
        ["init", ..] => {
            let mut f = vec![format!(
                "opam-init kind={} setup={} sandboxing={}",
                after("-k").unwrap_or("git"),
                if a.contains(&"-a") { "auto" } else { "none" },
                if a.contains(&"--disable-sandboxing") {
                    "off"
                } else {
                    "on"
                }
            )];
            if let Some(c) = after("-c") {
                f.push(format!("switch {c}"));
            }
            f
        }
        ["switch", "create", rest @ ..] => {
            let name = rest.iter().find(|x| !x.starts_with('-')).unwrap_or(&"");
            let mut f = vec![format!("switch {name}")];
            if let Some(p) = a.iter().find_map(|x| x.strip_prefix("--packages=")) {
                f.push(format!("switch-packages {p}"));
            }
            f
        }
        ["pin", "add", rest @ ..] => {
            let r: Vec<&&str> = rest
                .iter()
                .filter(|x| !x.starts_with('-') && **x != "version")
                .collect();
            match r.as_slice() {
                [p, v, ..] => vec![format!("pin {p} {v}")],
                _ => vec![],
            }
        }
        ["install", rest @ ..] => rest
            .iter()
            .filter(|x| !x.starts_with('-'))
            .map(|x| format!("opam-install {x}"))
            .collect(),
        _ => vec![],
    }
}

/// The facts of a whole script (or install.site with its rc.firsttime).
pub fn script_facts(script: &str) -> Vec<String> {
    commands(script)
        .iter()
        .flat_map(|c| command_facts(c))
        .collect()
}

/// install.conf: `answer <question> = <answer>` per line.
pub fn answers(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(q, a)| format!("answer {} = {}", q.trim(), a.trim()))
        .collect()
}

/// disklabel: `partition <mount> <size>` per line.
pub fn partitions(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            Some(format!("partition {} {}", w.next()?, w.next()?))
        })
        .collect()
}

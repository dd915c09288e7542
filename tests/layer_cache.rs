//! The engine's layer cache within its host's budget, on a private dockerd
//! (so that no other test's steps are counted or pruned): the steps of
//! published builds stay until they pass `cache_budget_gib`; then the
//! oldest go first, and a step younger than `cache_min_age_secs` never
//! goes. `kiln doctor` shows what the cache holds against the budget.

mod common;

use common::engine::{PrivateEngine, make_bridge};
use common::{Bounded, LIMIT, Profile};

/// The build log of the profile's one target.
fn log_of(p: &Profile) -> String {
    let dir = p.path().join("state/log");
    let file = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .find(|e| {
            let n = e.file_name().to_string_lossy().to_string();
            n.starts_with("linux_busybox-cachebudget_5.5") && n.ends_with("_amd64.log")
        })
        .unwrap_or_else(|| panic!("no build log in {}", dir.display()));
    std::fs::read_to_string(file.path()).unwrap()
}

/// Whether the step running `step` came from the cache in `log`.
fn cached(log: &str, step: &str) -> bool {
    let at = log
        .rfind(step)
        .unwrap_or_else(|| panic!("no step {step:?} in {log}"));
    let next = &log[at..];
    let end = next[1..].find("Step ").map_or(next.len(), |e| e + 1);
    next[..end].contains("Using cache")
}

/// The recipe's first own step writes 8 MiB named `mark`: each mark is a
/// chain of steps of its own.
fn pad(mark: &str) -> String {
    format!("RUN head -c 8388608 /dev/urandom > /pad-{mark}")
}

/// Build with the recipe's pad step set to `mark`: its stderr.
fn build(p: &Profile, mark: &str, min_age: u64) -> String {
    p.edit("platforms/linux/busybox.Dockerfile", |t| {
        let keep: Vec<&str> = t.lines().filter(|l| !l.contains("/pad-")).collect();
        keep.join("\n").replacen(
            "RUN mkdir -p /usr/local/bin",
            &format!("{}\nRUN mkdir -p /usr/local/bin", pad(mark)),
            1,
        ) + "\n"
    });
    let out = p
        .command()
        .args(["--set", &format!("docker.cache_min_age_secs={min_age}")])
        .args(["build", "--json"])
        .env("KILN_LOG", "kiln::builders::docker=info")
        .output_within(LIMIT)
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    stderr
}

/// The marks whose pad step the private engine's cache holds, sorted.
fn marks(engine: &PrivateEngine) -> Vec<String> {
    let docker = |args: &[&str]| {
        let out = std::process::Command::new("docker")
            .arg("-H")
            .arg(format!("unix://{}", engine.socket().display()))
            .args(args)
            .output_within(LIMIT)
            .unwrap();
        assert!(
            out.status.success(),
            "docker {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let ids = docker(&["images", "-a", "-q", "--no-trunc"]);
    let mut marks: Vec<String> = ids
        .lines()
        .filter(|l| !l.is_empty())
        .filter_map(|id| {
            let cmd = docker(&["inspect", "-f", "{{json .ContainerConfig.Cmd}}", id]);
            let at = cmd.find("/pad-")? + 5;
            Some(
                cmd[at..]
                    .split(|c: char| !c.is_ascii_alphanumeric())
                    .next()?
                    .to_string(),
            )
        })
        .collect();
    marks.sort();
    marks.dedup();
    marks
}

#[test]
fn the_oldest_steps_go_first_once_the_cache_passes_its_budget_and_young_ones_never() {
    common::fixtures();
    let dir = tempfile::tempdir().unwrap();
    let bridge = make_bridge("kilnlc", "172.31.244.1/24");
    let engine = PrivateEngine::start(dir.path(), &bridge.0);
    // 20 MiB: two pads fit, three do not.
    let p = Profile::busybox("cache-budget", "busybox-cachebudget")
        .own_state()
        .toml(&format!(
            "[docker]\n[[docker.hosts]]\nname = \"private\"\nendpoint = \"unix://{}\"\nos = \"linux\"\narch = \"amd64\"\nconcurrency = 1\ncache_budget_gib = 0.01953125\n",
            engine.socket().display()
        ))
        .create();
    let run = std::process::id();
    let (a, b, c) = (format!("a{run}"), format!("b{run}"), format!("c{run}"));
    // Three builds while every step is young: over the budget, nothing goes.
    build(&p, &a, 3600);
    build(&p, &b, 3600);
    let stderr = build(&p, &c, 3600);
    assert!(
        stderr.contains("every step left is young"),
        "over the budget, young steps kept: {stderr}"
    );
    // `kiln doctor` shows the cache over its budget: three pads.
    let out = p.kiln(&["doctor"]);
    let doctor = String::from_utf8_lossy(&out.stdout).to_string();
    let line = doctor
        .lines()
        .find(|l| l.contains("docker engine (private)"))
        .unwrap_or_else(|| panic!("{doctor}"));
    assert!(line.contains(" of 20.0 MiB ("), "{line}");
    let held: f64 = line
        .split("layer cache ")
        .nth(1)
        .and_then(|s| s.split(" MiB").next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    assert!(held >= 24.0, "three pads held: {line}");
    assert_eq!(
        marks(&engine),
        [&a, &b, &c].map(String::clone),
        "all three kept"
    );
    // Once they are old enough, the next build prunes down to the
    // budget, oldest first: A's steps, then B's, go; C's and its own stay.
    let d = format!("d{run}");
    let stderr = build(&p, &d, 0);
    assert!(!cached(&log_of(&p), &pad(&d)), "{}", log_of(&p));
    assert!(
        stderr.contains("layer cache pruned to its budget"),
        "{stderr}"
    );
    assert_eq!(
        marks(&engine),
        [&c, &d].map(String::clone),
        "the oldest pruned"
    );
    drop(engine);
}

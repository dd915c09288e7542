//! The example fleet (`kiln.fleet.toml`) is a configuration Kiln accepts
//! and that covers the whole catalogue; `kiln config --check` names what a
//! configuration leaves without a host (by the builders' own routing).

use std::path::Path;
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `kiln <args>` with `toml` as its configuration (written beside
/// nothing: the catalogue paths are the repository's).
fn kiln_with(toml: &str, args: &[&str]) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fleet.toml");
    let r = root().display();
    std::fs::write(
        &file,
        format!(
            "versions_dir = \"{r}/versions\"\nplatforms_dir = \"{r}/platforms\"\nstate_dir = \"{d}/state\"\n[database]\npath = \"{d}/state/kiln.db\"\n{toml}",
            d = dir.path().display()
        ),
    )
    .unwrap();
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("--config")
        .arg(&file)
        .args(args)
        .output()
        .unwrap()
}

/// `kiln config --check --json` on `toml`: its exit code and answer.
fn check(toml: &str) -> (Option<i32>, serde_json::Value) {
    let out = kiln_with(toml, &["config", "--check", "--json"]);
    let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code(), json)
}

fn fleet() -> String {
    std::fs::read_to_string(root().join("kiln.fleet.toml")).unwrap()
}

fn no_host(v: &serde_json::Value) -> Vec<String> {
    v["no_host"].as_object().unwrap().keys().cloned().collect()
}

#[test]
fn the_example_fleet_builds_every_release_and_arch_of_the_catalogue() {
    let (code, v) = check(&fleet());
    assert_eq!(code, Some(0), "{v:#}");
    assert_eq!(v["ok"], true, "{v:#}");
    let covered: Vec<&str> = v["covered"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s.as_str())
        .collect();
    for slot in [
        "linux/debian-13/riscv64",
        "linux/debian-13/s390x",
        "windows/windows-mingw-ltsc2019/amd64",
        "windows/windows-server-msvc-ltsc2025/amd64",
        "macos/macos-homebrew/arm64",
        "freebsd/freebsd-15.1/amd64",
        "openbsd/openbsd-79-amd64/amd64",
    ] {
        assert!(covered.contains(&slot), "{slot} not in {covered:?}");
    }
}

#[test]
fn a_release_whose_os_build_no_host_runs_is_named() {
    // Without the ltsc2022 host, its releases go to the Hyper-V ltsc2025
    // host; once that one is process-isolated, nothing runs them.
    let text = fleet();
    let start = text.find("name = \"win-ltsc2022\"").unwrap();
    let start = text[..start].rfind("[[docker.hosts]]").unwrap();
    let end = start + text[start..].find("sources_address").unwrap();
    let end = end + text[end..].find('\n').unwrap();
    let without = format!("{}{}", &text[..start], &text[end..]);
    let (code, v) = check(&without);
    assert_eq!(code, Some(0), "{v:#}");
    let process = without.replace("isolation = \"hyperv\"\n", "");
    let (code, v) = check(&process);
    assert_eq!(code, Some(1), "{v:#}");
    assert_eq!(
        no_host(&v),
        [
            "windows/windows-server-mingw-ltsc2022/amd64",
            "windows/windows-server-msvc-ltsc2022/amd64"
        ],
        "{v:#}"
    );
}

#[test]
fn the_default_configuration_is_this_machine_and_says_what_it_cannot_build() {
    let (code, v) = check("");
    assert_eq!(code, Some(1), "{v:#}");
    let missing = no_host(&v);
    assert!(
        missing.iter().any(|s| s.starts_with("windows/"))
            && missing.iter().any(|s| s.starts_with("macos/"))
            && missing.iter().any(|s| s.starts_with("freebsd/")),
        "{missing:?}"
    );
    assert!(
        !missing.iter().any(|s| s.starts_with("linux/")),
        "{missing:?}"
    );
}

/// `kiln plan --estimate --json` with `toml`: the simulated round.
fn estimate(toml: &str) -> serde_json::Value {
    let out = kiln_with(toml, &["plan", "--estimate", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn the_example_fleet_builds_a_production_round_within_a_day_and_names_its_bottleneck() {
    let e = estimate(&fleet());
    assert_eq!(e["unroutable"], 0, "{e:#}");
    let builds = e["builds"].as_u64().unwrap();
    assert!(builds > 500, "{e:#}");
    let hours = e["makespan_secs"].as_f64().unwrap() / 3600.0;
    assert!(hours > 1.0 && hours < 24.0, "{hours} h: {e:#}");
    // The host that ends the round is the riscv64 builder, the slowest
    // arch with the fewest slots; its kind is the bottleneck.
    let hosts = e["hosts"].as_object().unwrap();
    let (last, h) = hosts
        .iter()
        .max_by(|a, b| {
            a.1["last_end_secs"]
                .as_f64()
                .unwrap()
                .total_cmp(&b.1["last_end_secs"].as_f64().unwrap())
        })
        .unwrap();
    assert_eq!(last, "riscv64", "{e:#}");
    assert_eq!(e["bottleneck"], h["kind"]);
    // Halving that host's slots makes the round longer.
    let slower = estimate(&fleet().replacen(
        "arch = \"riscv64\"\nconcurrency = 2",
        "arch = \"riscv64\"\nconcurrency = 1",
        1,
    ));
    assert!(
        slower["makespan_secs"].as_f64().unwrap() > e["makespan_secs"].as_f64().unwrap(),
        "{slower:#}"
    );
}

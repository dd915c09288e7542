//! The registry's moving tags and aliases never drift from the lockfile:
//! every publishing run, every daemon round and `kiln verify --repair`
//! gives each alias its one owner and puts back what the registry holds
//! elsewhere (src/publish/owners.rs, src/publish/reconcile.rs).
//!
//! On the demo profile with the busybox fixture as its Linux slice: the
//! release manager's withdraw-and-restore of a series, a tag moved by hand,
//! and a lockfile recovered from the registry meeting an older catalogue.
//! After each step `kiln verify` is clean and skopeo reads every moving
//! tag and alias at the digest the lockfile names.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Profile, fixtures};
use sha2::Digest;

const FIVE: &str = "versions/5.5.yaml";
const SETS: &str = "versions/sets.yaml";

/// The digest the registry holds under `repository:tag` (skopeo's raw
/// manifest, hashed), or `None` when skopeo cannot read it.
fn registry_digest(repository: &str, tag: &str) -> Option<String> {
    let out = Command::new("skopeo")
        .args(["inspect", "--tls-verify=false", "--raw"])
        .arg(format!("docker://127.0.0.1:5000/{repository}:{tag}"))
        .output()
        .unwrap();
    out.status
        .success()
        .then(|| format!("sha256:{}", hex::encode(sha2::Sha256::digest(&out.stdout))))
}

fn build_linux(p: &Profile) -> serde_json::Value {
    let (code, summary) = p.build(&["--platform", "linux"]);
    assert_eq!(code, Some(0), "{summary:#}");
    summary
}

/// `kiln verify` finds nothing wrong, and every moving tag and alias of
/// every entry reads back at the entry's digest through skopeo.
fn assert_clean(p: &Profile, step: &str) {
    let out = p.kiln(&["verify", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{step}: verify --json: {e}: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(v["problems"], serde_json::json!([]), "{step}: {v:#}");
    assert!(out.status.success(), "{step}: {v:#}");
    let entries = p.entries();
    assert!(!entries.is_empty(), "{step}: nothing published");
    for (key, e) in &entries {
        let repo = e["repository"].as_str().unwrap();
        let tags = std::iter::once(&e["tag"]).chain(e["aliases"].as_array().unwrap());
        for t in tags {
            let t = t.as_str().unwrap();
            assert_eq!(
                registry_digest(repo, t).as_deref(),
                e["digest"].as_str(),
                "{step}: {repo}:{t} (entry {key})"
            );
        }
    }
}

fn entry_key(p: &Profile, series: &str) -> String {
    format!("{}/opam:busybox-ocaml-{series}", p.namespace)
}

fn aliases(p: &Profile, key: &str) -> Vec<String> {
    p.entry(key)["aliases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

/// The series-less aliases of the fixture's newest compiler.
const NEWEST: [&str; 3] = ["latest", "bb", "busybox"];

fn holds_newest(p: &Profile, key: &str) -> bool {
    let a = aliases(p, key);
    NEWEST.iter().all(|n| a.iter().any(|x| x == n))
}

fn holds_none_of_newest(p: &Profile, key: &str) -> bool {
    let a = aliases(p, key);
    NEWEST.iter().all(|n| !a.iter().any(|x| x == n))
}

/// Take the 5.5 series out of the profile's catalogue (what a release
/// manager withdrawing it does); returns what to put back.
fn withdraw_55(p: &Profile) -> (String, String) {
    let five = std::fs::read_to_string(p.file(FIVE)).unwrap();
    let sets = std::fs::read_to_string(p.file(SETS)).unwrap();
    std::fs::remove_file(p.file(FIVE)).unwrap();
    std::fs::write(
        p.file(SETS),
        "recent: [\"4.13\"]\nsignificant: [\"4.13\"]\n",
    )
    .unwrap();
    (five, sets)
}

fn restore_55(p: &Profile, (five, sets): &(String, String)) {
    std::fs::write(p.file(FIVE), five).unwrap();
    std::fs::write(p.file(SETS), sets).unwrap();
}

#[test]
fn withdrawing_and_restoring_a_series_keeps_every_tag_on_its_owner() {
    fixtures();
    let p = Profile::demo("drift-withdraw").create();
    let (k413, k55) = (entry_key(&p, "4.13"), entry_key(&p, "5.5"));
    // 1. Both series: the newest compiler holds latest, bb and busybox.
    let s = build_linux(&p);
    assert_eq!(s["built"], 2, "{s:#}");
    assert!(holds_newest(&p, &k55), "{:?}", aliases(&p, &k55));
    assert!(holds_none_of_newest(&p, &k413), "{:?}", aliases(&p, &k413));
    assert_clean(&p, "both series");
    let d55 = p.entry(&k55)["digest"].as_str().unwrap().to_string();
    let d413 = p.entry(&k413)["digest"].as_str().unwrap().to_string();
    // 2. 5.5 withdrawn: the aliases go to 4.13, and the 5.5 entry loses
    //    them in the same publication.
    let saved = withdraw_55(&p);
    let s = build_linux(&p);
    assert_eq!(s["unchanged"], 1, "{s:#}");
    assert!(holds_newest(&p, &k413), "{:?}", aliases(&p, &k413));
    assert!(holds_none_of_newest(&p, &k55), "{:?}", aliases(&p, &k55));
    assert_eq!(
        registry_digest(&format!("{}/opam", p.namespace), "latest"),
        Some(d413.clone())
    );
    assert_clean(&p, "5.5 withdrawn");
    // 3. Restored: nothing is built, and the aliases come back to 5.5 in
    //    the registry too (the old code left `latest` on OCaml 4.13.1).
    restore_55(&p, &saved);
    let s = build_linux(&p);
    assert_eq!(
        (s["built"].as_u64(), s["unchanged"].as_u64()),
        (Some(0), Some(2)),
        "{s:#}"
    );
    let moved: Vec<&str> = s["repaired"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["tag"].as_str().unwrap())
        .collect();
    for a in NEWEST {
        assert!(
            moved.contains(&format!("{}/opam:{a}", p.namespace).as_str()),
            "{a} not moved back: {s:#}"
        );
    }
    assert!(holds_newest(&p, &k55), "{:?}", aliases(&p, &k55));
    assert!(holds_none_of_newest(&p, &k413), "{:?}", aliases(&p, &k413));
    assert_eq!(
        registry_digest(&format!("{}/opam", p.namespace), "latest"),
        Some(d55)
    );
    assert_clean(&p, "5.5 restored");
    // The move is in the owner's record.
    let repairs = p.entry(&k55)["repairs"].clone();
    assert!(
        repairs
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["tag"] == "latest" && r["was"] == d413.as_str()),
        "{repairs:#}"
    );
    // And a further run moves nothing.
    let s = build_linux(&p);
    assert_eq!(s["repaired"], serde_json::json!([]), "{s:#}");
}

/// Point `repository:tag` at another image of the registry, as an
/// operator's `skopeo copy` (or another tool) would.
fn move_by_hand(repository: &str, tag: &str, to_tag: &str) {
    let out = Command::new("skopeo")
        .args([
            "copy",
            "--all",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
        ])
        .arg(format!("docker://127.0.0.1:5000/{repository}:{to_tag}"))
        .arg(format!("docker://127.0.0.1:5000/{repository}:{tag}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo copy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_tag_moved_by_hand_is_put_back_by_the_next_no_op_run_and_by_verify_repair() {
    fixtures();
    let p = Profile::demo("drift-hand").create();
    build_linux(&p);
    let repo = format!("{}/opam", p.namespace);
    let (k413, k55) = (entry_key(&p, "4.13"), entry_key(&p, "5.5"));
    let d55 = p.entry(&k55)["digest"].as_str().unwrap().to_string();
    let d413 = p.entry(&k413)["digest"].as_str().unwrap().to_string();
    move_by_hand(&repo, "latest", "busybox-ocaml-4.13");
    assert_eq!(
        registry_digest(&repo, "latest").as_deref(),
        Some(d413.as_str())
    );
    let out = p.kiln(&["verify"]);
    assert!(!out.status.success(), "verify must see the drift");
    // A no-op build puts it back and says so in its log.
    let out = p
        .command()
        .args(["build", "--platform", "linux"])
        .env("KILN_LOG", "warn")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    let line = format!("drift: latest was {d413}, now {d55} (owner busybox-ocaml-5.5)");
    assert!(text.contains(&line), "no `{line}` in:\n{text}");
    assert!(text.contains("0 built"), "{text}");
    assert_clean(&p, "after the no-op run");
    // `kiln verify --repair` does the same alone; a missing alias too.
    move_by_hand(&repo, "bb", "busybox-ocaml-4.13");
    let out = p.kiln(&["verify", "--repair"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&format!("drift: {repo}:bb was {d413}, now {d55}")),
        "{text}"
    );
    assert_clean(&p, "after verify --repair");
}

#[test]
fn a_recovered_lockfile_meets_an_older_then_the_newer_catalogue() {
    fixtures();
    let p = Profile::demo("drift-recover").create();
    build_linux(&p);
    let (k413, k55) = (entry_key(&p, "4.13"), entry_key(&p, "5.5"));
    std::fs::remove_file(p.lockfile_path()).unwrap();
    let out = p.kiln(&["lockfile", "recover"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_clean(&p, "recovered");
    let saved = withdraw_55(&p);
    let s = build_linux(&p);
    assert_eq!(s["built"], 0, "{s:#}");
    assert!(holds_newest(&p, &k413), "{:?}", aliases(&p, &k413));
    assert_clean(&p, "recovered, older catalogue");
    restore_55(&p, &saved);
    let s = build_linux(&p);
    assert_eq!(s["built"], 0, "{s:#}");
    assert!(holds_newest(&p, &k55), "{:?}", aliases(&p, &k55));
    assert!(holds_none_of_newest(&p, &k413), "{:?}", aliases(&p, &k413));
    assert_clean(&p, "recovered, newer catalogue");
}

/// A running daemon, killed when the test ends however it ends.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_daemon_round_that_builds_nothing_still_puts_drift_back() {
    fixtures();
    let port = common::free_port();
    let p = Profile::demo("drift-daemon")
        .own_state()
        .toml(&format!(
            "[api]\nlisten = \"127.0.0.1:{port}\"\ntoken = \"drift-token\"\n[daemon]\nschedule = \"0 0 3 1 1 *\"\n"
        ))
        .create();
    // Only what this test watches: the daemon's round would otherwise
    // also queue the OpenBSD-path image, whose sources it never synced.
    for other in ["openbsd", "macos", "windows"] {
        std::fs::remove_dir_all(p.file(&format!("platforms/{other}"))).unwrap();
    }
    build_linux(&p);
    let repo = format!("{}/opam", p.namespace);
    let d55 = p.entry(&entry_key(&p, "5.5"))["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let d413 = p.entry(&entry_key(&p, "4.13"))["digest"]
        .as_str()
        .unwrap()
        .to_string();
    move_by_hand(&repo, "latest", "busybox-ocaml-4.13");
    let mut child = p
        .command()
        .args(["daemon"])
        .env("KILN_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let _daemon = Daemon(child);
    // Every log line, read as it comes.
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let url = format!("http://127.0.0.1:{port}/v1/rebuild");
    common::wait_until("the daemon's API", 60, || {
        Command::new("curl")
            .args([
                "-sf",
                "-X",
                "POST",
                "-H",
                "Authorization: Bearer drift-token",
                &url,
            ])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    let line = format!("drift: latest was {d413}, now {d55} (owner busybox-ocaml-5.5)");
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "no `{line}` within 300 s:\n{}",
            seen.join("\n")
        );
        match rx.recv_timeout(left) {
            Ok(l) if l.contains(&line) => break,
            Ok(l) => seen.push(l),
            Err(e) => panic!(
                "daemon log ended ({e}) without `{line}`:\n{}",
                seen.join("\n")
            ),
        }
    }
    common::wait_until("round reconciled", 60, || {
        registry_digest(&repo, "latest").as_deref() == Some(d55.as_str())
    });
    // The round built nothing.
    let out = p.kiln(&["daemon", "status", "--json"]);
    let rounds: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        rounds.as_array().unwrap().iter().all(|r| r["built"] == 0),
        "{rounds:#}"
    );
    assert_clean(&p, "after the daemon round");
}

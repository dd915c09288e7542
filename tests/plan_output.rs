//! What `kiln plan` prints, as a user piping it sees it: a reader that
//! goes away ends it quietly, and it says how much registry traffic a
//! full round of the shipped catalogue makes against the configured
//! limits.

use std::path::PathBuf;

use kiln::catalogue;
use kiln::plan::{self, Filter};

fn cat() -> catalogue::Catalogue {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    catalogue::load(&root.join("versions"), &root.join("platforms")).unwrap()
}
/// `kiln plan` with the repository's catalogue, stdout a pipe read by a
/// reader that stops after the first bytes (`kiln plan --json | head -c
/// 100`): Kiln ends quietly with exit 0 — no panic, no SIGPIPE.
#[test]
fn a_closed_stdout_ends_kiln_plan_quietly() {
    use std::io::Read;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["plan", "--targets", "--json"])
        .current_dir(&root)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 100];
    let mut out = child.stdout.take().unwrap();
    out.read_exact(&mut first).unwrap();
    drop(out);
    // Bounded: a Kiln blocked on its closed stdout would hang here.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("kiln plan did not end after its reader went away");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let done = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&done.stderr);
    assert_eq!(done.status.code(), Some(0), "{:?}: {stderr}", done.status);
    assert!(stderr.is_empty(), "{stderr}");
}

/// `kiln plan` says how many manifest pulls (per parent registry) and
/// pushes a full round of the shipped catalogue makes, and which exceed
/// the configured limits.
#[test]
fn plan_sets_a_rounds_registry_traffic_against_the_limits() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let plan = |limit: &str| -> serde_json::Value {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(["--set", &format!("registry.pull_limit={limit}")])
            .args(["plan", "--json"])
            .current_dir(&root)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let roomy = plan("100000")["traffic"].clone();
    let pulls = roomy["pulls"].as_object().unwrap();
    for host in ["registry-1.docker.io", "quay.io", "mcr.microsoft.com"] {
        assert!(pulls[host].as_u64().unwrap() >= 2, "{host}: {roomy:#}");
    }
    let total: u64 = pulls.values().map(|v| v.as_u64().unwrap()).sum();
    assert_eq!(roomy["pulls_total"].as_u64(), Some(total));
    // Every image tag pushes at least its index, immutable and moving tag.
    let tags = plan::tags(&plan::expand(&cat(), &Filter::default()).unwrap(), "kiln");
    assert!(roomy["pushes"].as_u64().unwrap() > 3 * tags.len() as u64 / 2);
    assert_eq!(roomy["over"], serde_json::json!([]));
    let tight = plan("10")["traffic"].clone();
    let over = tight["over"].as_array().unwrap();
    assert!(
        over.iter()
            .any(|o| o.as_str().unwrap().contains("registry-1.docker.io")),
        "{tight:#}"
    );
}

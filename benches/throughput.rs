//! Throughput of a round, measured in one run (throughput issue #28):
//!
//! (a) one distro, six compilers, whose opam stage takes real time (a
//!     deliberate `sleep`, and 4 MiB of output that differs per build, as
//!     a real compile's binaries do), built through `pipeline::run` on the local engine
//!     twice, each time into a fresh namespace: with the opam stage shared
//!     through the engine's layer cache (what Kiln does), and without it
//!     (every compiler runs its opam stage again: the engine's cache off,
//!     as before the layer cache was kept). Wall time and the bytes the
//!     registry stored (what was pushed);
//! (b) the schedule simulation of one weekly round of the production
//!     matrix on the example fleet (`kiln.fleet.toml`), with and without
//!     the shared opam stage: makespan, bottleneck, bytes crossing the
//!     Kiln host (durations: the documented assumptions of
//!     `pipeline::simulate::Costs`).
//!
//! Needs the services (`bash scripts/services.sh up`). Run: `cargo bench
//! --bench throughput`; KILN_BENCH_OPAM_SECS sets the opam stage's sleep
//! (default 20).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use kiln::config::{Config, Sources};
use kiln::pipeline::{self, Options};
use kiln::plan::Filter;

const SERIES: [&str; 6] = ["4.10", "4.11", "4.12", "4.13", "4.14", "5.5"];

/// A catalogue of six compilers on one busybox release, its recipe a
/// two-stage Dockerfile whose opam stage sleeps `secs`.
fn catalogue(dir: &Path, root: &Path, secs: u64) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir.join("versions"))?;
    std::fs::create_dir_all(dir.join("platforms/linux"))?;
    for s in SERIES {
        std::fs::write(
            dir.join(format!("versions/{s}.yaml")),
            format!(
                "series: '{s}'\nnative: [amd64]\nbytecode_only: []\nreleases:\n- version: {s}.0\n  status: released\n"
            ),
        )?;
    }
    std::fs::write(
        dir.join("versions/sets.yaml"),
        format!("recent: {SERIES:?}\nsignificant: []\n"),
    )?;
    std::fs::write(
        dir.join("platforms/linux/platform.yaml"),
        "platform: linux\nbuilder: docker\nrepository: opam\nreleases:\n  - id: busybox-bench\n    distro: busybox\n    tier: 1\n    arches: [amd64]\n    recipes: [busybox.Dockerfile]\n    parent: 127.0.0.1:5000/kiln-fixtures/busybox:latest\n",
    )?;
    std::fs::write(
        dir.join("platforms/linux/policy.yaml"),
        "versions: [recent]\nrequired_tiers: [1]\n",
    )?;
    let recipe =
        std::fs::read_to_string(root.join("tests/fixtures/machinery/linux/busybox.Dockerfile"))?;
    let from = "FROM {{parent}}@{{parent_digest}}\n";
    anyhow::ensure!(recipe.contains(from), "the fixture recipe changed");
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos();
    std::fs::write(
        dir.join("platforms/linux/busybox.Dockerfile"),
        recipe.replacen(
            from,
            &format!(
                "FROM {{{{parent}}}}@{{{{parent_digest}}}} AS opam\nRUN sleep {secs} && echo bench-{nonce} > /opam-stage && head -c 4194304 /dev/urandom > /opam-binaries\nFROM opam AS compiler\n"
            ),
            1,
        ),
    )?;
    Ok(())
}

fn stored_bytes(data: &Path) -> anyhow::Result<u64> {
    let out = Command::new("du").arg("-sb").arg(data).output()?;
    anyhow::ensure!(out.status.success(), "du {}", data.display());
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0))
}

/// One round of the six compilers: wall seconds and bytes stored.
fn round(
    rt: &tokio::runtime::Runtime,
    root: &Path,
    data: &Path,
    name: &str,
    shared: bool,
    secs: u64,
) -> anyhow::Result<(f64, u64)> {
    let dir = tempfile::tempdir()?;
    catalogue(dir.path(), root, secs)?;
    let config_path: PathBuf = dir.path().join("kiln.toml");
    std::fs::write(
        &config_path,
        format!(
            "state_dir = \"state\"\n[database]\npath = \"state/kiln.db\"\n[registry]\nnamespace = \"kiln-bench-{name}-{}\"\n[plan]\nopam_repository_commit = \"bench-pinned\"\n",
            std::process::id()
        ),
    )?;
    let config = Config::load(&Sources {
        file: Some(config_path),
        env: vec![],
        sets: vec![],
    })?;
    let cat = kiln::catalogue::load(&config.versions_dir, &config.platforms_dir)?;
    let opts = Options {
        filter: Filter::default(),
        dry_run: false,
        reconcile: kiln::publish::Scope::Full,
        // Forced builds run with the engine's cache off.
        force: !shared,
    };
    let before = stored_bytes(data)?;
    let start = Instant::now();
    let s = rt.block_on(pipeline::run(&config, &cat, &opts, &|_| {}))?;
    let secs = start.elapsed().as_secs_f64();
    anyhow::ensure!(
        s.built == SERIES.len() && s.failed == 0,
        "{name}: {} built, {} failed: {:?}",
        s.built,
        s.failed,
        s.tags.iter().map(|t| &t.outcome).collect::<Vec<_>>()
    );
    Ok((secs, stored_bytes(data)?.saturating_sub(before)))
}

fn main() -> anyhow::Result<()> {
    if std::env::args().any(|a| a == "--list") {
        return Ok(());
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let secs: u64 = std::env::var("KILN_BENCH_OPAM_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let data = root.join(".kiln/registry/data");
    anyhow::ensure!(
        data.exists(),
        "{}: start the services with `bash scripts/services.sh up`",
        data.display()
    );
    let rt = tokio::runtime::Runtime::new()?;
    let mib = |b: u64| b as f64 / f64::from(1u32 << 20);
    let (not_s, not_b) = round(&rt, root, &data, "unshared", false, secs)?;
    let (sh_s, sh_b) = round(&rt, root, &data, "shared", true, secs)?;
    println!(
        "(a) six compilers, opam stage {secs} s: shared {sh_s:.1} s, {:.1} MiB stored; not shared {not_s:.1} s, {:.1} MiB stored ({:.1}x faster, {:.1}x fewer bytes)",
        mib(sh_b),
        mib(not_b),
        not_s / sh_s,
        not_b as f64 / sh_b.max(1) as f64
    );
    // (b) The simulated weekly round on the example fleet.
    let mut fleet = Config::load(&Sources {
        file: Some(root.join("kiln.fleet.toml")),
        env: vec![],
        sets: vec![],
    })?;
    fleet.versions_dir = root.join("versions");
    fleet.platforms_dir = root.join("platforms");
    let cat = kiln::catalogue::load(&fleet.versions_dir, &fleet.platforms_dir)?;
    let all = kiln::plan::expand(&cat, &Filter::default())?;
    let costs = pipeline::simulate::Costs::default();
    let start = Instant::now();
    let shared = pipeline::simulate::simulate(&fleet, &all, &costs, true);
    let took = start.elapsed();
    let not = pipeline::simulate::simulate(&fleet, &all, &costs, false);
    let h = |s: f64| s / 3600.0;
    println!(
        "(b) weekly round of {} builds on the example fleet ({} hosts): {:.1} h with the shared opam stage, {:.1} h without ({:.1}x); bottleneck: {} hosts; {:.0} GiB cross the Kiln host; goal < 24 h: {}; simulated in {:.1} ms",
        shared.builds,
        shared.hosts.len(),
        h(shared.makespan_secs),
        h(not.makespan_secs),
        not.makespan_secs / shared.makespan_secs,
        shared.bottleneck,
        shared.bytes as f64 / f64::from(1u32 << 30),
        if shared.makespan_secs < 24.0 * 3600.0 {
            "met"
        } else {
            "MISSED"
        },
        took.as_secs_f64() * 1000.0
    );
    Ok(())
}

//! Reconciliation over the full production matrix, measured against the
//! reference tool in the same run.
//!
//! The shipped catalogue's whole plan becomes a lockfile (one entry per
//! moving tag, each alias given to its owner), and the local registry is
//! seeded with a small index under every moving tag and alias. Then:
//! (a) a no-op reconciliation (`publish::reconcile`, `Scope::Full`: every
//!     moving tag and alias read back with HEAD, nothing to move), against
//!     `skopeo inspect --raw` of the same tags, 16 processes at a time;
//! (b) the same after every tenth name of the first repository was moved
//!     elsewhere by hand: each one put back;
//! (c) a whole no-op round as `kiln build` runs it: every target's build
//!     key computed (recipes rendered, inputs hashed; the parents pinned
//!     as a run's parent cache holds them after their one HEAD each),
//!     every tag decided unchanged against the lockfile, then (a). Goal:
//!     under 10 s.
//!
//! Needs the services (`bash scripts/services.sh up`: registry, skopeo).
//! Run: `cargo bench --bench reconcile`.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use kiln::catalogue::Arch;
use kiln::lockfile::{ArchEntry, ArtifactKind, Entry, Lockfile};
use kiln::plan::{Filter, Target};
use kiln::publish::{Scope, owners, reconcile};
use kiln::registry::{DOCKER_MANIFEST, OCI_INDEX, Registry, sha256_digest};
use serde_json::json;

const HOST: &str = "127.0.0.1:5000";

/// One small image, and an index over it: what every tag points at.
async fn seed_index(reg: &Registry, repo: &str, n: usize) -> anyhow::Result<(Vec<u8>, String)> {
    let cfg = json!({"os": "linux", "architecture": "amd64", "rootfs": {"type": "layers", "diff_ids": []}, "config": {"Labels": {"n": n.to_string()}}});
    let (cd, cs) = reg
        .push_blob(repo, serde_json::to_vec(&cfg)?.into())
        .await?;
    let m = json!({"schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": cd, "size": cs}, "layers": []});
    let mb = serde_json::to_vec(&m)?;
    let md = reg
        .put_manifest(repo, &sha256_digest(&mb), &mb, DOCKER_MANIFEST)
        .await?;
    let idx = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": DOCKER_MANIFEST, "digest": md, "size": mb.len(), "platform": {"os": "linux", "architecture": "amd64"}}]});
    let ib = serde_json::to_vec(&idx)?;
    let id = reg
        .put_manifest(repo, &sha256_digest(&ib), &ib, OCI_INDEX)
        .await?;
    Ok((ib, id))
}

/// A lockfile with one entry per planned tag, all at `digest`.
fn lockfile(all: &[Target], ns: &str, digest: &str) -> Lockfile {
    let mut lock = Lockfile::default();
    for (id, ts) in kiln::pipeline::group_by_tag(all, ns) {
        let t = ts[0];
        let arches: BTreeMap<Arch, ArchEntry> = ts
            .iter()
            .map(|t| {
                let a = ArchEntry {
                    digest: digest.to_string(),
                    build_key: "bench".into(),
                    size: None,
                };
                (t.arch, a)
            })
            .collect();
        let e = Entry {
            kind: ArtifactKind::Image,
            platform: t.platform.clone(),
            os: t.os.clone(),
            ocaml: t.version.clone(),
            variant: t.variant.clone(),
            repository: id.repository.clone(),
            tag: id.tag.clone(),
            immutable_tag: format!("{}-bench", id.tag),
            aliases: vec![],
            digest: digest.to_string(),
            arches,
            build_key: "bench".into(),
            inputs: BTreeMap::new(),
            published_at: chrono::Utc::now(),
            verified_at: None,
            history: vec![],
            adopted: None,
            repairs: vec![],
        };
        lock.entries.insert(e.key(), e);
    }
    let owned = owners::owners(&lock, all, ns);
    for (k, aliases) in owned {
        if let Some(e) = lock.entries.get_mut(&k) {
            e.aliases = aliases;
        }
    }
    lock
}

/// Every target's build key, as a run computes them, with each parent
/// pinned (one made-up digest per reference and platform).
async fn keys(
    cfg: &kiln::config::Config,
    all: &[Target],
) -> anyhow::Result<Vec<kiln::plan::Prepared>> {
    let mut parents = kiln::plan::prepare::ParentCache::default();
    for t in all {
        if let Some(p) = &t.parent {
            let platform = kiln::registry::index::Platform::for_arch(&t.platform, t.arch);
            let digest = sha256_digest(format!("{p} {platform}").as_bytes());
            parents.pin(p, &platform, p.clone(), digest);
        }
    }
    let builders = kiln::builders::Builders::new(cfg);
    let mut out = Vec::with_capacity(all.len());
    for t in all {
        let vars = builders.get(t.builder).build_vars();
        out.push(kiln::plan::prepare::prepare(cfg, t, COMMIT, &vars, &mut parents).await?);
    }
    Ok(out)
}

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// Decide every tag of `prepared` against `lock`: how many are unchanged.
fn decide_all(prepared: &[kiln::plan::Prepared], lock: &Lockfile, ns: &str) -> usize {
    let mut by_tag: BTreeMap<String, Vec<kiln::plan::Prepared>> = BTreeMap::new();
    for p in prepared {
        by_tag
            .entry(p.target.tag_id(ns).key())
            .or_default()
            .push(p.clone());
    }
    by_tag
        .iter()
        .filter(|(k, ps)| {
            let keys = kiln::pipeline::decide::arch_keys(ps);
            matches!(
                kiln::pipeline::decide::decide(lock.entries.get(*k), &keys),
                kiln::pipeline::decide::Decision::Unchanged { .. }
            )
        })
        .count()
}

/// `skopeo inspect --raw` of every name, 16 processes at a time.
fn skopeo_all(names: &[(String, String)]) -> anyhow::Result<f64> {
    let list: String = names
        .iter()
        .map(|(r, t)| format!("docker://{HOST}/{r}:{t}\n"))
        .collect();
    let file = tempfile::NamedTempFile::new()?;
    std::fs::write(file.path(), list)?;
    let start = Instant::now();
    let ok = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "xargs -P 16 -n 1 skopeo inspect --tls-verify=false --raw < {} > /dev/null",
            file.path().display()
        ))
        .status()?
        .success();
    anyhow::ensure!(ok, "skopeo inspect failed");
    Ok(start.elapsed().as_secs_f64())
}

fn main() -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // The shipped catalogue, with its one git source still pending (its
    // commit is declared on a networked machine) declared at a made-up
    // commit, so that every target has a key.
    let tree = tempfile::tempdir()?;
    for d in ["versions", "platforms"] {
        let ok = Command::new("cp")
            .arg("-r")
            .arg(root.join(d))
            .arg(tree.path())
            .status()?;
        anyhow::ensure!(ok.success(), "cp -r {d}");
    }
    let sources = tree.path().join("versions/sources.yaml");
    let text = std::fs::read_to_string(&sources)?;
    std::fs::write(
        &sources,
        text.replace(
            "    ref: patches\n",
            &format!("    ref: patches\n    commit: {COMMIT}\n"),
        ),
    )?;
    let mut cfg = kiln::config::Config::defaults(root)?;
    cfg.versions_dir = tree.path().join("versions");
    cfg.platforms_dir = tree.path().join("platforms");
    let reg = Registry::new(&cfg.registry)?;
    let cat = kiln::catalogue::load(&cfg.versions_dir, &cfg.platforms_dir)?;
    let all = kiln::plan::expand(&cat, &Filter::default())?;
    let ns = format!("kiln-bench-reconcile-{}", std::process::id());
    let rt = tokio::runtime::Runtime::new()?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("lockfile.json");
    rt.block_on(async {
        reg.ping().await.map_err(|e| {
            anyhow::anyhow!("{e}: start the services with `bash scripts/services.sh up`")
        })?;
        // Every repository of the plan gets its own seed index.
        let repos: std::collections::BTreeSet<String> = kiln::pipeline::group_by_tag(&all, &ns)
            .keys()
            .map(|id| id.repository.clone())
            .collect();
        let mut seeds = BTreeMap::new();
        for (n, r) in repos.iter().enumerate() {
            seeds.insert(r.clone(), seed_index(&reg, r, n).await?);
        }
        let mut lock = lockfile(&all, &ns, "sha256:0");
        // The published keys are this commit's keys: every tag unchanged.
        let prepared = keys(&cfg, &all).await?;
        for (id, ps) in kiln::pipeline::group_by_tag(&all, &ns) {
            let mine: Vec<_> = prepared
                .iter()
                .filter(|p| ps.iter().any(|t| t.id() == p.target.id()))
                .cloned()
                .collect();
            let ak = kiln::pipeline::decide::arch_keys(&mine);
            if let Some(e) = lock.entries.get_mut(&id.key()) {
                e.build_key = kiln::pipeline::decide::group_key(&ak);
                for (a, x) in e.arches.iter_mut() {
                    x.build_key = ak[a].clone();
                }
            }
        }
        let mut names = Vec::new();
        for e in lock.entries.values_mut() {
            let (bytes, digest) = &seeds[&e.repository];
            e.digest = digest.clone();
            for a in e.arches.values_mut() {
                a.digest = digest.clone();
            }
            for t in std::iter::once(&e.tag).chain(e.aliases.iter()) {
                reg.put_manifest(&e.repository, t, bytes, OCI_INDEX).await?;
                names.push((e.repository.clone(), t.clone()));
            }
        }
        lock.save(&path)?;
        println!(
            "production matrix: {} targets, {} moving tags, {} names (tags + aliases) in {} repositories",
            all.len(),
            lock.entries.len(),
            names.len(),
            repos.len()
        );
        // (a) The no-op round.
        let start = Instant::now();
        let r = reconcile(&reg, &path, &all, &ns, Scope::Full).await?;
        let kiln_s = start.elapsed().as_secs_f64();
        anyhow::ensure!(r.moved.is_empty(), "a seeded registry drifted: {:?}", r.moved);
        let skopeo_s = skopeo_all(&names)?;
        println!(
            "(a) no-op reconciliation of {} names: kiln {kiln_s:.3} s, skopeo inspect x16 {skopeo_s:.2} s ({:.0}x)",
            r.checked,
            skopeo_s / kiln_s
        );
        // (c) The whole no-op round: keys, decisions, reconciliation.
        let start = Instant::now();
        let prepared = keys(&cfg, &all).await?;
        let keyed_s = start.elapsed().as_secs_f64();
        let unchanged = decide_all(&prepared, &Lockfile::load(&path)?, &ns);
        anyhow::ensure!(
            unchanged == lock.entries.len(),
            "{unchanged} of {} tags decided unchanged",
            lock.entries.len()
        );
        let r = reconcile(&reg, &path, &all, &ns, Scope::Full).await?;
        anyhow::ensure!(r.moved.is_empty(), "a seeded registry drifted: {:?}", r.moved);
        let round_s = start.elapsed().as_secs_f64();
        let parents: std::collections::BTreeSet<_> = all
            .iter()
            .filter_map(|t| Some((t.parent.clone()?, t.arch)))
            .collect();
        println!(
            "(c) no-op round over {} targets: {round_s:.2} s (keys {keyed_s:.2} s, then decide + reconcile; a real round adds one HEAD per parent and arch, {} here, at the parents' registries), goal < 10 s: {}; skopeo inspect x16 of its names alone {skopeo_s:.2} s ({:.1}x)",
            all.len(),
            parents.len(),
            if round_s < 10.0 { "met" } else { "MISSED" },
            skopeo_s / round_s
        );
        // (b) Every tenth name of the first repository moved by hand.
        let other = seed_index(&reg, &names[0].0, 9999).await?;
        let mut moved = 0;
        for (repo, t) in names.iter().step_by(10) {
            if repo == &names[0].0 {
                reg.put_manifest(repo, t, &other.0, OCI_INDEX).await?;
                moved += 1;
            }
        }
        let start = Instant::now();
        let r = reconcile(&reg, &path, &all, &ns, Scope::Full).await?;
        let secs = start.elapsed().as_secs_f64();
        anyhow::ensure!(r.moved.len() == moved, "moved {} of {moved}", r.moved.len());
        println!(
            "(b) {} of {} names drifted: put back in {secs:.3} s",
            moved, r.checked
        );
        Ok(())
    })
}

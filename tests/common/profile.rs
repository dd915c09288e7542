//! The test profile: a temp dir holding a `kiln.toml`, a catalogue slice
//! (`versions/`, `platforms/`) and, once Kiln has run, `manifests/` and the
//! database; and the `kiln` binary driven with `--config` pointing at it.
//!
//! ```ignore
//! let p = Profile::demo("zfs-ok").toml(&zfs_toml("test-zfs-ok", None)).create();
//! let (code, summary) = p.build(&["--platform", "macos"]);
//! let entry = p.entry(&format!("{}/macos-base:macos-homebrew-ocaml-5.5", p.namespace));
//! ```
//!
//! Tests read what Kiln wrote as JSON (the lockfile's published format), not
//! through the library's types.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::registry::Published;
use super::{Bounded, LIMIT};

/// The checkout: where `scripts/` and the services' state (`.kiln`) are.
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The state `scripts/services.sh` keeps (registry storage, fixtures, logs,
/// work dirs); test profiles share it unless they ask for their own.
pub fn state_dir() -> PathBuf {
    root().join(".kiln")
}

/// The `kiln` binary under test.
pub fn kiln() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
}

/// `kiln fixtures` in the checkout: the busybox parents, pushed to the
/// shared registry by the shared engine.
pub fn fixtures() {
    let out = kiln()
        .arg("fixtures")
        .current_dir(root())
        .output_within(LIMIT)
        .unwrap();
    assert!(
        out.status.success(),
        "kiln fixtures: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The JSON a command printed, once it succeeded (its stderr shown when
/// it did not).
pub fn ok_json<T: serde::de::DeserializeOwned>(out: Output) -> T {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `[zfs]` with one host on the services' pool `kiln`, building macOS under
/// `prefix`.
pub fn zfs_toml(prefix: &str, provision_timeout_secs: Option<u64>) -> String {
    let timeout = provision_timeout_secs
        .map(|t| format!("provision_timeout_secs = {t}\n"))
        .unwrap_or_default();
    format!(
        "[zfs]\n{timeout}[[zfs.hosts]]\nname = \"local\"\npool = \"kiln\"\nprefix = \"{prefix}\"\nplatforms = [\"macos\"]\narch = \"amd64\"\n"
    )
}

/// `[qemu]` on TCG (no KVM needed) with this limit for each boot (install,
/// first boot, verify), logging in with the key `scripts/qemu-fixture.sh`
/// made in the shared state. Disks are not kept: profiles share the state
/// dir, and each test must boot its own.
pub fn qemu_toml(boot_timeout_secs: u64) -> String {
    format!(
        "[qemu]\naccel = \"tcg\"\nsystem = \"qemu-system-x86_64\"\nimg = \"qemu-img\"\n\
         boot_timeout_secs = {boot_timeout_secs}\nfirst_boot_timeout_secs = {boot_timeout_secs}\n\
         verify_timeout_secs = {boot_timeout_secs}\nssh_key = \"{}\"\nkeep_disks = false\n",
        state_dir().join("qemu/id_ed25519").display()
    )
}

pub struct Profile {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    /// The registry namespace this profile publishes under (unique per
    /// profile name and test process).
    pub namespace: String,
    /// What the profile published, removed from its registry when the
    /// profile drops (failed test or not).
    _published: Option<Published>,
}

enum Catalogue {
    /// `scripts/demo/versions` and `scripts/demo/platforms`, with the Linux
    /// slice replaced by the busybox machinery fixture
    /// (`tests/fixtures/machinery/linux`): the demo's real compilers take
    /// minutes to build, the fixture seconds.
    Demo,
    /// The demo exactly as README's first command runs it.
    RealDemo,
    /// OCaml 5.5 on one busybox release, amd64 only.
    Busybox {
        os: String,
        parent: String,
        recipe_prefix: String,
        reproducible: bool,
    },
}

/// How a profile is made; [`ProfileBuilder::create`] writes it.
pub struct ProfileBuilder {
    name: String,
    catalogue: Catalogue,
    platforms: Vec<String>,
    own_state: bool,
    registry_url: Option<String>,
    plan: Option<String>,
    /// Follow the demo's opam repository (as `RealDemo` always does).
    demo_opam_repository: bool,
    toml: String,
}

impl Profile {
    /// The demo catalogue slice (every demo platform and version), with
    /// the busybox fixture as its Linux platform.
    pub fn demo(name: &str) -> ProfileBuilder {
        ProfileBuilder::new(name, Catalogue::Demo)
    }

    /// The demo catalogue as it is, real Linux compilers included, and its
    /// opam repository (`scripts/demo/opam-repository.sh` makes it).
    pub fn real_demo(name: &str) -> ProfileBuilder {
        ProfileBuilder::new(name, Catalogue::RealDemo)
    }

    /// One tag: busybox release `os`, amd64, OCaml 5.5, on the busybox
    /// fixture parent.
    pub fn busybox(name: &str, os: &str) -> ProfileBuilder {
        ProfileBuilder::new(
            name,
            Catalogue::Busybox {
                os: os.to_string(),
                parent: "127.0.0.1:5000/kiln-fixtures/busybox:latest".to_string(),
                recipe_prefix: String::new(),
                reproducible: false,
            },
        )
    }

    /// An empty catalogue and an empty `kiln.toml`: Kiln's defaults.
    pub fn bare() -> Profile {
        let dir = tempfile::tempdir().unwrap();
        for sub in ["versions", "platforms"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        let config = dir.path().join("kiln.toml");
        std::fs::write(&config, "").unwrap();
        Profile {
            dir,
            config,
            namespace: "kiln".to_string(),
            _published: None,
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The row of `builder`'s host `name` in `kiln workers --json`,
    /// whatever its exit status (a host that is down makes it 1).
    pub fn worker_row(&self, builder: &str, name: &str) -> serde_json::Value {
        let out = self
            .command()
            .args(["workers", "--json"])
            .output_within(LIMIT)
            .unwrap();
        let inv: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
        inv["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["builder"] == builder && h["host"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no {builder} host {name} in {inv}"))
    }

    /// `kiln --config <this profile>`, to add arguments to.
    pub fn command(&self) -> Command {
        let mut c = kiln();
        c.arg("--config").arg(&self.config);
        c
    }

    /// `kiln --config <this profile> <args>`, its output (bounded by
    /// [`LIMIT`]).
    pub fn kiln(&self, args: &[&str]) -> Output {
        self.command().args(args).output_within(LIMIT).unwrap()
    }

    /// `kiln build --json <args>`: its exit code and summary.
    /// `kiln sources sync`: what the profile's targets take from the source
    /// mirror, fetched once into the registry (it must succeed).
    pub fn sync_sources(&self) {
        let out = self.kiln(&["sources", "sync"]);
        assert!(
            out.status.success(),
            "kiln sources sync: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `kiln sources sync <args>` (plan filter flags), which must succeed.
    pub fn sync_sources_for(&self, args: &[&str]) {
        let out = self
            .command()
            .args(["sources", "sync"])
            .args(args)
            .output_within(LIMIT)
            .unwrap();
        assert!(
            out.status.success(),
            "kiln sources sync {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn build(&self, args: &[&str]) -> (Option<i32>, serde_json::Value) {
        let out = self
            .command()
            .args(["build", "--json"])
            .args(args)
            .output_within(LIMIT)
            .unwrap();
        assert!(
            !out.stdout.is_empty(),
            "kiln build: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        (
            out.status.code(),
            serde_json::from_slice(&out.stdout).unwrap(),
        )
    }

    pub fn lockfile_path(&self) -> PathBuf {
        self.path().join("manifests/lockfile.json")
    }

    /// The lockfile's entries by key (`<repository>:<tag>`); none when
    /// nothing was ever published.
    pub fn entries(&self) -> serde_json::Map<String, serde_json::Value> {
        match std::fs::read(self.lockfile_path()) {
            Ok(bytes) => {
                let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
                v["entries"].as_object().cloned().unwrap_or_default()
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => serde_json::Map::new(),
            Err(e) => panic!("{}: {e}", self.lockfile_path().display()),
        }
    }

    /// One lockfile entry; panics, listing the keys, when it is missing.
    pub fn entry(&self, key: &str) -> serde_json::Value {
        let entries = self.entries();
        entries.get(key).cloned().unwrap_or_else(|| {
            panic!(
                "no lockfile entry {key}; have {:?}",
                entries.keys().collect::<Vec<_>>()
            )
        })
    }

    /// A file of the profile, by path relative to it.
    pub fn file(&self, rel: &str) -> PathBuf {
        self.path().join(rel)
    }

    /// Rewrite a file of the profile (a recipe, a platform file).
    pub fn edit(&self, rel: &str, f: impl FnOnce(&str) -> String) {
        let path = self.file(rel);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, f(&text)).unwrap();
    }
}

impl ProfileBuilder {
    fn new(name: &str, catalogue: Catalogue) -> ProfileBuilder {
        ProfileBuilder {
            name: name.to_string(),
            catalogue,
            platforms: vec![],
            own_state: false,
            registry_url: None,
            plan: None,
            demo_opam_repository: false,
            toml: String::new(),
        }
    }

    /// Also copy this demo platform (`scripts/demo/platforms/<os>`).
    pub fn platform(mut self, os: &str) -> Self {
        self.platforms.push(os.to_string());
        self
    }

    /// The busybox release's parent image.
    pub fn parent(mut self, image: &str) -> Self {
        if let Catalogue::Busybox { parent, .. } = &mut self.catalogue {
            *parent = image.to_string();
        }
        self
    }

    /// Dockerfile lines run before the busybox recipe's own steps.
    pub fn recipe_prefix(mut self, lines: &str) -> Self {
        if let Catalogue::Busybox { recipe_prefix, .. } = &mut self.catalogue {
            *recipe_prefix = lines.to_string();
        }
        self
    }

    /// Declare the busybox release's recipe reproducible.
    pub fn reproducible(mut self) -> Self {
        if let Catalogue::Busybox { reproducible, .. } = &mut self.catalogue {
            *reproducible = true;
        }
        self
    }

    /// State dir and database inside the profile (`state/`), instead of the
    /// services' shared `.kiln`.
    pub fn own_state(mut self) -> Self {
        self.own_state = true;
        self
    }

    /// `[registry] url`; default: the shared registry.
    pub fn registry_url(mut self, url: &str) -> Self {
        self.registry_url = Some(url.to_string());
        self
    }

    /// The lines of `[plan]`; default: a pinned opam-repository commit.
    pub fn plan(mut self, lines: &str) -> Self {
        self.plan = Some(lines.to_string());
        self
    }

    /// Follow the demo's opam repository (`scripts/demo/opam-repository.sh`
    /// makes it, the same commit every time), as the real demo does,
    /// instead of a pinned commit that exists nowhere: for recipes that
    /// take the opam-repository bundle from the source mirror.
    pub fn demo_opam_repository(mut self) -> Self {
        self.demo_opam_repository = true;
        self
    }

    /// More of kiln.toml, appended after `[plan]` (whole tables).
    pub fn toml(mut self, tables: &str) -> Self {
        self.toml.push_str(tables);
        if !self.toml.ends_with('\n') {
            self.toml.push('\n');
        }
        self
    }

    pub fn create(self) -> Profile {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        let demo = root().join("scripts/demo");
        match &self.catalogue {
            Catalogue::Demo => {
                for sub in ["versions", "platforms"] {
                    copy_tree(&demo.join(sub), p);
                }
                std::fs::remove_dir_all(p.join("platforms/linux")).unwrap();
                copy_tree(
                    &root().join("tests/fixtures/machinery/linux"),
                    &p.join("platforms"),
                );
            }
            Catalogue::RealDemo => {
                for sub in ["versions", "platforms"] {
                    copy_tree(&demo.join(sub), p);
                }
            }
            Catalogue::Busybox {
                os,
                parent,
                recipe_prefix,
                reproducible,
            } => {
                std::fs::create_dir_all(p.join("versions")).unwrap();
                std::fs::create_dir_all(p.join("platforms/linux")).unwrap();
                std::fs::copy(demo.join("versions/5.5.yaml"), p.join("versions/5.5.yaml")).unwrap();
                std::fs::write(
                    p.join("versions/sets.yaml"),
                    "recent: [\"5.5\"]\nsignificant: []\n",
                )
                .unwrap();
                std::fs::write(
                    p.join("platforms/linux/platform.yaml"),
                    format!("platform: linux\nbuilder: docker\nrepository: opam\nreleases:\n  - id: {os}\n    distro: busybox\n    tier: 1\n    arches: [amd64]\n    recipes: [busybox.Dockerfile]\n    parent: {parent}\n    reproducible: {reproducible}\n"),
                )
                .unwrap();
                std::fs::write(
                    p.join("platforms/linux/policy.yaml"),
                    "versions: [latest]\nrequired_tiers: [1]\n",
                )
                .unwrap();
                let recipe = std::fs::read_to_string(
                    root().join("tests/fixtures/machinery/linux/busybox.Dockerfile"),
                )
                .unwrap();
                std::fs::write(
                    p.join("platforms/linux/busybox.Dockerfile"),
                    recipe.replace("RUN mkdir -p", &format!("{recipe_prefix}RUN mkdir -p")),
                )
                .unwrap();
            }
        }
        for os in &self.platforms {
            copy_tree(&demo.join("platforms").join(os), &p.join("platforms"));
        }
        if p.join("platforms/openbsd").exists() {
            openbsd_sets(p);
        }
        let namespace = format!("kiln-test-{}-{}", self.name, std::process::id());
        let (state, database) = if self.own_state {
            ("state".to_string(), "state/kiln.db")
        } else {
            (state_dir().display().to_string(), "kiln.db")
        };
        let registry = self
            .registry_url
            .clone()
            .unwrap_or_else(|| "http://127.0.0.1:5000".to_string());
        let url = self
            .registry_url
            .map(|u| format!("url = \"{u}\"\n"))
            .unwrap_or_default();
        let real = matches!(self.catalogue, Catalogue::RealDemo);
        let plan = self.plan.unwrap_or_else(|| {
            if real || self.demo_opam_repository {
                // The demo's opam repository, as a git repository of the profile's own.
                let git = p.join("opam-repository.git");
                let ok = Command::new("bash")
                    .arg(root().join("scripts/demo/opam-repository.sh"))
                    .arg(demo.join("opam-repository"))
                    .arg(&git)
                    .stdout(std::process::Stdio::null())
                    .status_within(LIMIT)
                    .unwrap()
                    .success();
                assert!(ok, "scripts/demo/opam-repository.sh failed");
                format!(
                    "opam_repository = \"{}\"\nopam_repository_ref = \"refs/heads/master\"",
                    git.display()
                )
            } else {
                "opam_repository_commit = \"test-pinned\"".to_string()
            }
        });
        let config = p.join("kiln.toml");
        std::fs::write(
            &config,
            format!(
                "state_dir = \"{state}\"\nmanifests_dir = \"manifests\"\n[database]\npath = \"{database}\"\n[registry]\nnamespace = \"{namespace}\"\n{url}[plan]\n{plan}\n{}",
                self.toml
            ),
        )
        .unwrap();
        Profile {
            dir,
            config,
            _published: Some(Published::namespace(&registry, &namespace)),
            namespace,
        }
    }
}

/// The demo's OpenBSD slice takes its install sets from the source mirror,
/// declared in the demo's `versions/sources.yaml` with URLs relative to that
/// file: the profile's copy names the shared state's fixture sets by
/// absolute path (`kiln sources sync` fetches them).
fn openbsd_sets(p: &Path) {
    let sources = p.join("versions/sources.yaml");
    let text = std::fs::read_to_string(&sources).unwrap_or_else(|_| {
        std::fs::read_to_string(root().join("scripts/demo/versions/sources.yaml")).unwrap()
    });
    let text = text.replace(
        "file:../../../.kiln/",
        &format!("file://{}/", state_dir().display()),
    );
    std::fs::write(sources, text).unwrap();
}

/// `cp -r from into/`.
fn copy_tree(from: &Path, into: &Path) {
    assert!(
        Command::new("cp")
            .arg("-r")
            .arg(from)
            .arg(into)
            .status_within(LIMIT)
            .unwrap()
            .success(),
        "cp -r {} {}",
        from.display(),
        into.display()
    );
}

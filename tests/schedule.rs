//! `kiln build` runs the tags of a plan concurrently on the real engine and
//! registry: two tags' builds overlap in time (read back from the state
//! store's records of each arch's start and end), and one tag's failed
//! arch does not hold the other tag back from publishing.

use chrono::{DateTime, Utc};
use kiln::catalogue::Arch;
use kiln::model::TagId;
use kiln::publish::lockfile::Lockfile;
use kiln::state::StateStore;

mod common;
use common::Profile;

/// The span from the first arch's start to the last arch's end of `tag`.
fn tag_span(state: &StateStore, id: &TagId) -> (DateTime<Utc>, DateTime<Utc>) {
    let spans: Vec<_> = [Arch::Amd64, Arch::Arm64]
        .into_iter()
        .map(|a| {
            state
                .span(id, a)
                .unwrap()
                .unwrap_or_else(|| panic!("{id} {a}: no build record"))
        })
        .collect();
    (
        spans.iter().map(|s| s.started).min().unwrap(),
        spans.iter().map(|s| s.updated).max().unwrap(),
    )
}

#[test]
fn tags_build_at_the_same_time_and_a_failed_arch_holds_no_other_tag_back() {
    common::fixtures();
    let p = Profile::demo("schedule")
        .own_state()
        .toml(
            "[[docker.hosts]]\nname = \"local\"\nendpoint = \"unix:///var/run/docker.sock\"\nos = \"linux\"\narch = \"amd64\"\nemulate = [\"arm64\"]\nconcurrency = 4\n",
        )
        .create();
    // Each arch takes its time (a step no earlier build cached), and the
    // arm64 build of OCaml 4.13 fails after it.
    p.edit("platforms/linux/busybox.Dockerfile", |t| {
        t.replacen(
            "RUN mkdir -p /usr/local/bin",
            &format!(
                "{}RUN case '{{{{arch}}}}/{{{{ocaml_version}}}}' in arm64/4.13*) echo deliberate failure; exit 3;; esac\nRUN mkdir -p /usr/local/bin",
                common::uncached_step("sleep 4")
            ),
            1,
        )
    });
    let out = p.kiln(&["fixtures"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (code, s) = p.build(&["--os", "busybox"]);
    assert_eq!(code, Some(1), "one tag failed: {s}");
    let outcome = |suffix: &str| {
        s["tags"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["tag"].as_str().unwrap().ends_with(suffix))
            .unwrap_or_else(|| panic!("no tag {suffix} in {s}"))["outcome"]
            .clone()
    };
    let failed = outcome("busybox-ocaml-4.13");
    assert_eq!(failed["outcome"], "failed", "{s}");
    assert_eq!(outcome("busybox-ocaml-5.5")["outcome"], "built", "{s}");
    // The failed tag published nothing; the other one did.
    let lock = Lockfile::load(&p.lockfile_path()).unwrap();
    let tags: Vec<&str> = lock.entries.values().map(|e| e.tag.as_str()).collect();
    assert_eq!(tags, ["busybox-ocaml-5.5"], "{s}");
    // The two tags' builds overlapped in time.
    let config = kiln::config::Config::load(&kiln::config::Sources {
        file: Some(p.config.clone()),
        env: vec![],
        sets: vec![],
    })
    .unwrap();
    let state = StateStore::open(&config.database.path).unwrap();
    let repo = format!("{}/opam", p.namespace);
    let a = tag_span(&state, &TagId::new(&repo, "busybox-ocaml-4.13"));
    let b = tag_span(&state, &TagId::new(&repo, "busybox-ocaml-5.5"));
    assert!(
        a.0.max(b.0) < a.1.min(b.1),
        "the tags ran one after the other: 4.13 {a:?}, 5.5 {b:?}"
    );
}

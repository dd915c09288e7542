//! `kiln daemon` on the real stack: scheduled rounds that build nothing
//! when nothing changed, a rebuild asked for through the API, SIGTERM
//! (no new job, the running one finishes and publishes), a second daemon
//! refused, a bad schedule refused, kill -9 mid-build followed by a
//! restart that resumes the interrupted round, a tag never built by two
//! jobs at once, and pollers whose first sighting only records.
//!
//! Every daemon is a [`Spawned`]: killed with its process group if the
//! test fails. A job is held at a [`Barrier`] (a recipe step) wherever a
//! test needs it running, never for a number of seconds.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kiln::publish::lockfile::Lockfile;

mod common;
use common::barrier::Barrier;
use common::{Bounded, LIMIT, Spawned};

struct Profile {
    p: common::Profile,
    /// The daemon's API port.
    port: u16,
}

impl std::ops::Deref for Profile {
    type Target = common::Profile;
    fn deref(&self) -> &common::Profile {
        &self.p
    }
}

/// A one-tag profile (busybox, amd64, OCaml 5.5.0) with its own state dir.
fn profile(name: &str, schedule: &str, recipe_prefix: &str) -> Profile {
    profile_with(
        name,
        recipe_prefix,
        &Settings {
            daemon: format!("schedule = \"{schedule}\"\nmax_attempts = 3\n"),
            ..Settings::default()
        },
    )
}

/// What a test changes in the profile's kiln.toml.
#[derive(Default)]
struct Settings {
    /// Lines of `[daemon]` (tables such as `[daemon.schedules]` may follow).
    daemon: String,
    /// Lines of `[plan]`; default: a pinned opam-repository commit.
    plan: Option<String>,
    /// `[registry] url`; default: the shared registry.
    registry_url: Option<String>,
    /// The parent image; default: the busybox fixture.
    parent: Option<String>,
}

fn profile_with(name: &str, recipe_prefix: &str, settings: &Settings) -> Profile {
    common::fixtures();
    let port = common::free_port();
    let mut b =
        common::Profile::busybox(&format!("daemon-{name}"), &format!("busybox-daemon-{name}"))
            .own_state()
            .recipe_prefix(recipe_prefix)
            .toml(&format!(
                "[api]\nlisten = \"127.0.0.1:{port}\"\ntoken = \"daemon-token\"\n[daemon]\n{}",
                settings.daemon
            ));
    if let Some(url) = &settings.registry_url {
        b = b.registry_url(url);
    }
    if let Some(plan) = &settings.plan {
        b = b.plan(plan);
    }
    if let Some(parent) = &settings.parent {
        b = b.parent(parent);
    }
    Profile {
        p: b.create(),
        port,
    }
}

impl Profile {
    /// `kiln daemon`, logging at info (read with `stderr_so_far`).
    fn spawn(&self) -> Spawned {
        Spawned::piped(
            "kiln daemon",
            self.command().arg("daemon").env("KILN_LOG", "info"),
        )
    }

    /// A daemon run that must end by itself (a refusal): its output.
    fn refused(&self) -> std::process::Output {
        self.spawn().output_within(Duration::from_secs(120))
    }

    fn rounds(&self) -> Vec<serde_json::Value> {
        let out = self
            .command()
            .args(["daemon", "status", "--json", "--limit", "50"])
            .output_within(LIMIT)
            .unwrap();
        let mut v: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v.reverse();
        v
    }

    fn wait_rounds(&self, n: usize, done: bool, secs: u64) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let r = self.rounds();
            let finished = r
                .iter()
                .filter(|x| !done || x["state"] != "running")
                .count();
            if finished >= n {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "waited for {n} rounds, have {r:?}"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    fn lockfile(&self) -> Lockfile {
        Lockfile::load(&self.lockfile_path()).unwrap()
    }
}

fn sigterm(daemon: &mut Spawned) -> Option<i32> {
    daemon.signal(libc::SIGTERM);
    daemon.wait_within(Duration::from_secs(120)).code()
}

/// Wait until the daemon logged `line`; panic (with its log) after `secs`.
fn wait_logged(daemon: &Spawned, line: &str, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !daemon.stderr_so_far().contains(line) {
        assert!(
            Instant::now() < deadline,
            "the daemon never logged {line:?}:\n{}",
            daemon.stderr_so_far()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn wait_http(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "daemon API never answered");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn scheduled_rounds_build_once_then_nothing_and_stop_on_sigterm() {
    // The default schedule is once a year; linux has its own, every 3 s.
    let p = profile_with(
        "sched",
        "",
        &Settings {
            daemon: "schedule = \"0 0 3 1 1 *\"\nmax_attempts = 3\n[daemon.schedules]\nlinux = \"*/3 * * * * *\"\n".into(),
            ..Settings::default()
        },
    );
    let mut d = p.spawn();
    wait_http(p.port);
    // A second daemon on the same state refuses to start, naming the first.
    let second = p.refused();
    assert_eq!(second.status.code(), Some(2));
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(
        err.contains(&format!("another kiln daemon (pid {})", d.id())),
        "{err}"
    );

    let r = p.wait_rounds(2, true, 120);
    assert_eq!(r[0]["trigger"], "schedule: linux", "{r:?}");
    assert_eq!(r[0]["built"], 1, "{r:?}");
    assert_eq!(r[1]["built"], 0, "{r:?}");
    assert_eq!(r[1]["unchanged"], 1, "{r:?}");
    let lock = p.lockfile();
    let key = format!("{}/opam:busybox-daemon-sched-ocaml-5.5", p.namespace);
    assert!(
        lock.entries[&key].history.is_empty(),
        "no digest change without an input change"
    );

    // A rebuild asked for through the API (token required).
    let rt = tokio::runtime::Runtime::new().unwrap();
    let status = |token: Option<&str>| {
        rt.block_on(async {
            let mut r =
                reqwest::Client::new().post(format!("http://127.0.0.1:{}/v1/rebuild", p.port));
            if let Some(t) = token {
                r = r.bearer_auth(t);
            }
            r.send().await.unwrap().status().as_u16()
        })
    };
    assert_eq!(status(None), 401);
    assert_eq!(status(Some("daemon-token")), 202);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !p
        .rounds()
        .iter()
        .any(|x| x["trigger"] == "manual: api" && x["state"] == "done")
    {
        assert!(
            Instant::now() < deadline,
            "the requested round never ran: {:?}",
            p.rounds()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(
        p.lockfile(),
        lock,
        "rounds without input changes must not touch the lockfile"
    );
    assert_eq!(sigterm(&mut d), Some(0));
    assert!(p.rounds().iter().all(|x| x["state"] != "running"));
}

#[test]
fn bad_schedule_is_refused_at_start() {
    let p = profile("badcron", "every tuesday", "");
    let out = p.refused();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("daemon.schedule") && err.contains("every tuesday"),
        "{err}"
    );
    // A bad per-platform schedule, and one for a platform that does not exist.
    for (line, named) in [
        (
            "macos = \"at noon\"",
            "daemon.schedules.macos = \"at noon\"",
        ),
        (
            "beos = \"* * * * * *\"",
            "daemon.schedules.beos: unknown platform",
        ),
    ] {
        let p = profile_with(
            "badcron2",
            "",
            &Settings {
                daemon: format!(
                    "schedule = \"0 0 3 * * Sun\"\nmax_attempts = 3\n[daemon.schedules]\n{line}\n"
                ),
                ..Settings::default()
            },
        );
        let out = p.refused();
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(named), "{err}");
        assert!(
            !p.dir.path().join("state/kiln.db").exists(),
            "nothing started"
        );
    }
}

#[test]
fn killed_mid_build_then_restarted_resumes_and_publishes_once() {
    // A step no earlier build left in the engine's layer cache: it must
    // take its 6 s.
    let p = profile("kill", "*/2 * * * * *", &common::uncached_step("sleep 6"));
    let mut d = p.spawn();
    wait_http(p.port);
    // Wait until the first round is building, then kill -9 the daemon.
    let log = p
        .dir
        .path()
        .join("state/log/linux_busybox-daemon-kill_5.5.0_amd64.log");
    let deadline = Instant::now() + Duration::from_secs(90);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("sleep 6")
    {
        assert!(
            Instant::now() < deadline,
            "the round never started building"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    d.sigkill();
    let r = p.rounds();
    assert_eq!(r.last().unwrap()["state"], "running", "{r:?}");
    assert!(
        p.lockfile().entries.is_empty(),
        "nothing may be published by a killed round"
    );
    // Restart: the interrupted round is marked and resumed.
    let mut d = p.spawn();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let r = p.rounds();
        if r.iter()
            .any(|x| x["trigger"] == "resume-interrupted" && x["state"] == "done")
        {
            assert_eq!(r[0]["state"], "interrupted", "{r:?}");
            break;
        }
        assert!(Instant::now() < deadline, "no resumed round: {r:?}");
        std::thread::sleep(Duration::from_millis(300));
    }
    let lock = p.lockfile();
    assert_eq!(lock.entries.len(), 1);
    assert!(
        lock.entries.values().all(|e| e.history.is_empty()),
        "published once"
    );
    assert_eq!(sigterm(&mut d), Some(0));
}

fn post_rebuild(port: u16) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let status = rt.block_on(async {
        reqwest::Client::new()
            .post(format!("http://127.0.0.1:{port}/v1/rebuild"))
            .bearer_auth("daemon-token")
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    });
    assert_eq!(status, 202);
}

fn jobs(p: &Profile) -> Vec<serde_json::Value> {
    let out = p
        .command()
        .args(["daemon", "jobs", "--json", "--limit", "50"])
        .output_within(LIMIT)
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

fn metrics(port: u16) -> String {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    })
}

/// The registry the daemon publishes to is down for a minute: the job
/// fails as an infrastructure failure, is retried with backoff, and
/// completes once the registry is back. Logs are JSON with target ids;
/// the metrics count the failures.
#[test]
fn registry_down_for_a_minute_jobs_retry_and_complete() {
    let reg_dir = tempfile::tempdir().unwrap();
    let mut registry = common::PrivateRegistry::start(reg_dir.path());
    let p = profile_with(
        "regdown",
        "",
        &Settings {
            daemon: "schedule = \"0 0 3 1 1 *\"\nmax_attempts = 8\nretry_base_secs = 5\n".into(),
            registry_url: Some(registry.url()),
            ..Settings::default()
        },
    );
    let log = p.dir.path().join("daemon.log");
    let mut d = Spawned::start(
        "kiln daemon",
        p.command()
            .args(["--log-format", "json", "daemon"])
            .env("KILN_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap()),
    );
    wait_http(p.port);
    registry.kill();
    let down = Instant::now();
    post_rebuild(p.port);
    // Failed at least twice, each time as infrastructure, and queued again.
    common::wait_until("two infrastructure failures", 120, || {
        jobs(&p).first().is_some_and(|j| {
            j["attempts"].as_i64() >= Some(2) && j["failure"] == "infra" && j["state"] == "queued"
        })
    });
    let m = metrics(p.port);
    assert!(
        m.lines().any(
            |l| l.starts_with("kiln_build_failures_total{kind=\"infra\"}") && !l.ends_with(" 0")
        ),
        "{m}"
    );
    assert!(m.contains("kiln_jobs{state=\"queued\"} 1"), "{m}");
    assert!(
        p.lockfile().entries.is_empty(),
        "nothing published while the registry is down"
    );
    // Back after a minute.
    let elapsed = down.elapsed();
    if elapsed < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_secs(60) - elapsed);
    }
    registry.restart();
    common::wait_until("the job to complete", 240, || {
        jobs(&p).first().is_some_and(|j| j["state"] == "succeeded")
    });
    let job = jobs(&p)[0].clone();
    assert_eq!(job["outcome"], "built", "{job}");
    assert!(job["attempts"].as_i64().unwrap() >= 3, "{job}");
    let lock = p.lockfile();
    assert_eq!(lock.entries.len(), 1);
    let r = p.rounds();
    assert_eq!(
        (r[0]["state"].as_str(), r[0]["built"].as_i64()),
        (Some("done"), Some(1)),
        "{r:?}"
    );
    assert_eq!(sigterm(&mut d), Some(0));
    // Every log line is a JSON object; the job's lines carry its target id.
    let text = std::fs::read_to_string(&log).unwrap();
    let target = format!("{}/opam:busybox-daemon-regdown-ocaml-5.5", p.namespace);
    let mut with_target = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        if v["span"]["target"] == target.as_str() {
            with_target += 1;
        }
    }
    assert!(
        with_target >= 3,
        "job log lines with the target id: {with_target}\n{text}"
    );
    assert!(text.contains("\"kind\":\"infra\""), "{text}");
}

/// The pollers: a new opam-repository commit that changes a package the
/// image installs, a new digest behind the parent's tag, and an edited
/// recipe each queue the tag, and the lockfile history says which input
/// changed; an opam-repository commit that changes nothing the image
/// installs rebuilds nothing.
#[test]
fn polled_inputs_trigger_rebuilds_that_name_the_change() {
    let git_dir = tempfile::tempdir().unwrap();
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .args([
                "-c",
                "user.name=kiln",
                "-c",
                "user.email=kiln@example.invalid",
            ])
            .args(args)
            .current_dir(git_dir.path())
            .output_within(LIMIT)
            .unwrap();
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    git(&["init", "-q", "-b", "main"]);
    std::fs::write(git_dir.path().join("README"), "one\n").unwrap();
    git(&["add", "README"]);
    git(&["commit", "-q", "-m", "one"]);
    // A parent of our own, so that moving its tag disturbs no other test;
    // removed from the registry and the engine when the test ends.
    let parent_repo = format!("kiln-test-parent-{}", std::process::id());
    let parent = format!("127.0.0.1:5000/{parent_repo}:latest");
    let _parent_gone =
        common::registry::Published::repository("http://127.0.0.1:5000", &parent_repo);
    let _local_gone = LocalImage(parent.clone());
    let copy = Command::new("skopeo")
        .args([
            "copy",
            "--all",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            "docker://127.0.0.1:5000/kiln-fixtures/busybox:latest",
            &format!("docker://{parent}"),
        ])
        .output_within(LIMIT)
        .unwrap();
    assert!(
        copy.status.success(),
        "{}",
        String::from_utf8_lossy(&copy.stderr)
    );
    let p = profile_with(
        "poll",
        "",
        &Settings {
            daemon: "schedule = \"0 0 3 1 1 *\"\nmax_attempts = 3\npoll_secs = 1\n".into(),
            plan: Some(format!(
                "opam_repository = \"{}\"\nopam_repository_commit = \"\"\nopam_repository_ref = \"main\"",
                git_dir.path().display()
            )),
            parent: Some(parent.clone()),
            ..Settings::default()
        },
    );
    let mut d = p.spawn();
    wait_http(p.port);
    post_rebuild(p.port);
    let key = format!("{}/opam:busybox-daemon-poll-ocaml-5.5", p.namespace);
    let history = |n: usize| {
        common::wait_until(&format!("{n} changes of {key}"), 180, || {
            Lockfile::load(&p.lockfile_path())
                .ok()
                .and_then(|l| l.entries.get(&key).map(|e| e.history.len()))
                == Some(n)
        });
        p.lockfile().entries[&key].history[0]
            .replaced_because
            .clone()
    };
    common::wait_until("the first build", 180, || {
        p.rounds()
            .iter()
            .any(|r| r["trigger"] == "manual: api" && r["state"] == "done")
    });
    assert_eq!(p.lockfile().entries.len(), 1);

    // 1. opam-repository moves, changing nothing the image installs: the
    //    poller reads the change (its mirror follows the ref) and rebuilds
    //    nothing.
    let rounds_before = p.rounds().len();
    std::fs::write(git_dir.path().join("README"), "two\n").unwrap();
    git(&["commit", "-q", "-am", "two"]);
    let head = |dir: &std::path::Path, r: &str| {
        let out = Command::new("git")
            .arg("--git-dir")
            .arg(dir)
            .args(["rev-parse", r])
            .output_within(LIMIT)
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let upstream = head(&git_dir.path().join(".git"), "main");
    let mirror = p.path().join("state/opam-repository.git");
    common::wait_until("the poller to read the unrelated commit", 60, || {
        head(&mirror, "refs/kiln/followed") == upstream
    });
    wait_logged(&d, "changes no package the images install", 60);
    // A round the poll could have opened is open before the loop takes
    // the next request: one asked for now comes after it.
    post_rebuild(p.port);
    common::wait_until("the requested round", 120, || {
        p.rounds().len() > rounds_before && p.rounds().iter().all(|r| r["state"] != "running")
    });
    let r = p.rounds();
    assert_eq!(r.len(), rounds_before + 1, "{r:?}");
    assert_eq!(r[rounds_before]["trigger"], "manual: api", "{r:?}");
    assert_eq!(r[rounds_before]["built"], 0, "{r:?}");
    assert_eq!(p.lockfile().entries[&key].history.len(), 0);

    // 2. opam-repository changes the opam file of the compiler the image
    //    installs: it rebuilds, and the history names the input.
    let opam = git_dir
        .path()
        .join("packages/ocaml-base-compiler/ocaml-base-compiler.5.5.0");
    std::fs::create_dir_all(&opam).unwrap();
    std::fs::write(opam.join("opam"), "opam-version: \"2.0\"\n").unwrap();
    git(&["add", "packages"]);
    git(&["commit", "-q", "-m", "ocaml-base-compiler.5.5.0"]);
    let why = history(1);
    assert!(why.contains("opam_repository_commit"), "{why}");
    assert!(
        p.rounds()
            .iter()
            .any(|r| r["trigger"].as_str().is_some_and(|t| {
                t.starts_with("opam-repository moved") && t.contains("ocaml-base-compiler.5.5.0")
            })),
        "{:?}",
        p.rounds()
    );

    // 3. The parent's tag moves to a new image.
    let mut docker_build = Spawned::piped(
        "docker build",
        Command::new("docker")
            .args(["build", "-q", "-t", &parent, "-"])
            .stdin(Stdio::piped()),
    );
    {
        use std::io::Write;
        let mut stdin = docker_build.stdin().unwrap();
        stdin
            .write_all(format!("FROM {parent}\nLABEL org.ocaml.kiln.test=moved\n").as_bytes())
            .unwrap();
    }
    let build = docker_build.output_within(LIMIT);
    assert!(
        build.status.success(),
        "{}",
        String::from_utf8_lossy(&build.stderr)
    );
    let push = Command::new("docker")
        .args(["push", &parent])
        .output_within(LIMIT)
        .unwrap();
    assert!(
        push.status.success(),
        "{}",
        String::from_utf8_lossy(&push.stderr)
    );
    let why = history(2);
    assert!(why.contains("parent"), "{why}");
    assert!(
        p.rounds()
            .iter()
            .any(|r| r["trigger"] == format!("parent changed: {parent}").as_str()),
        "{:?}",
        p.rounds()
    );

    // 4. The recipe changes.
    let recipe = p.dir.path().join("platforms/linux/busybox.Dockerfile");
    let text = std::fs::read_to_string(&recipe).unwrap();
    std::fs::write(&recipe, format!("{text}\nRUN echo recipe-changed\n")).unwrap();
    let why = history(3);
    assert!(why.contains("recipe"), "{why}");
    assert!(
        p.rounds()
            .iter()
            .any(|r| r["trigger"] == "catalogue changed"),
        "{:?}",
        p.rounds()
    );
    assert_eq!(sigterm(&mut d), Some(0));
}

/// A local image the test made, removed from the engine on drop.
struct LocalImage(String);

impl Drop for LocalImage {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rmi", "-f", &self.0])
            .output_within(Duration::from_secs(120));
    }
}

/// A daemon whose only trigger is the API (the schedules are once a
/// year), building one busybox tag whose recipe waits at `barrier`.
fn held_profile(name: &str, barrier: &Barrier, daemon: &str) -> Profile {
    profile_with(
        name,
        &barrier.docker_step(name),
        &Settings {
            daemon: format!("schedule = \"0 0 3 1 1 *\"\nmax_attempts = 3\n{daemon}"),
            ..Settings::default()
        },
    )
}

/// SIGTERM while a job runs: no new job starts, the running one finishes
/// and publishes completely, then the daemon exits 0.
#[test]
fn sigterm_lets_the_running_job_finish_and_publish() {
    let barrier = Barrier::for_engine("docker0");
    let p = held_profile("term", &barrier, "");
    let mut d = p.spawn();
    wait_http(p.port);
    post_rebuild(p.port);
    barrier.wait_for_arrivals(1, Duration::from_secs(180));
    d.signal(libc::SIGTERM);
    wait_logged(&d, "stopping: no new jobs; running ones finish", 60);
    // Still running: it waits for the job, which is held mid-build.
    assert!(
        d.try_wait().is_none(),
        "the daemon exited with a job running:\n{}",
        d.stderr_so_far()
    );
    assert_eq!(jobs(&p)[0]["state"], "running", "{:?}", jobs(&p));
    barrier.open();
    let code = d.wait_within(Duration::from_secs(300)).code();
    assert_eq!(code, Some(0), "{}", d.stderr_so_far());
    let job = jobs(&p)[0].clone();
    assert_eq!(
        (job["state"].as_str(), job["outcome"].as_str()),
        (Some("succeeded"), Some("built")),
        "{job}"
    );
    let key = format!("{}/opam:busybox-daemon-term-ocaml-5.5", p.namespace);
    let lock = p.lockfile();
    assert!(lock.entries.contains_key(&key), "{:?}", lock.entries.keys());
    assert!(
        p.rounds().iter().all(|r| r["state"] != "running"),
        "{:?}",
        p.rounds()
    );
}

/// A rebuild asked for while the tag's job runs queues a second job for
/// the same tag; it does not start while the first runs, though the
/// engine has a free slot (two), and runs once the first has finished.
#[test]
fn a_tag_is_never_built_by_two_jobs_at_once() {
    let barrier = Barrier::for_engine("docker0");
    let p = held_profile("once", &barrier, "");
    let mut d = p.spawn();
    wait_http(p.port);
    post_rebuild(p.port);
    barrier.wait_for_arrivals(1, Duration::from_secs(180));
    // A second rebuild: the tag is queued again behind its running job.
    post_rebuild(p.port);
    common::wait_until("the second job to be queued", 60, || jobs(&p).len() == 2);
    // A third: once the daemon has handled it (a round opened, or nothing
    // to queue), the loop has passed the point where it would have started
    // the second job.
    post_rebuild(p.port);
    let handled = |d: &Spawned| {
        d.stderr_so_far()
            .lines()
            .filter(|l| l.contains("round opened") || l.contains("nothing to queue"))
            .count()
    };
    common::wait_until("the daemon to handle three requests", 60, || {
        handled(&d) == 3
    });
    let j = jobs(&p);
    assert_eq!(j.len(), 2, "{j:?}");
    let (second, first) = (&j[0], &j[1]);
    assert_eq!(first["state"], "running", "{j:?}");
    assert_eq!(second["state"], "queued", "the second job started: {j:?}");
    assert_eq!(barrier.arrived().len(), 1, "{:?}", barrier.arrived());
    assert!(
        d.stderr_so_far()
            .contains("nothing to queue: every affected tag is queued already"),
        "{}",
        d.stderr_so_far()
    );
    barrier.open();
    common::wait_until("both jobs to finish", 300, || {
        jobs(&p).iter().all(|j| j["state"] == "succeeded")
    });
    let j = jobs(&p);
    let (second, first) = (&j[0], &j[1]);
    assert_eq!(first["outcome"], "built", "{j:?}");
    // The second read the first one's publication: nothing left to build.
    assert_eq!(second["outcome"], "unchanged", "{j:?}");
    let at = |j: &serde_json::Value, field: &str| {
        chrono::DateTime::parse_from_rfc3339(j[field].as_str().unwrap_or_default())
            .unwrap_or_else(|e| panic!("{field} of {j}: {e}"))
    };
    assert!(
        at(second, "started_at") >= at(first, "finished_at"),
        "the second job started before the first finished: {j:?}"
    );
    assert_eq!(sigterm(&mut d), Some(0));
}

/// The pollers' first sighting of the catalogue and of each parent only
/// records what they saw: a fresh daemon opens no round for it; a
/// restarted one opens a round only for what changed while it was down.
#[test]
fn a_pollers_first_sighting_only_records() {
    let p = profile_with(
        "first",
        "",
        &Settings {
            daemon: "schedule = \"0 0 3 1 1 *\"\nmax_attempts = 3\npoll_secs = 1\n".into(),
            ..Settings::default()
        },
    );
    let db = p.path().join("state/kiln.db");
    let parent = "127.0.0.1:5000/kiln-fixtures/busybox:latest";
    let watched = || -> Vec<Option<String>> {
        let Ok(q) = kiln::state::queue::Queue::open(&db) else {
            return vec![None, None];
        };
        [
            "catalogue".to_string(),
            format!("parent {parent} linux/amd64"),
        ]
        .iter()
        .map(|k| q.watch_get(k).ok().flatten())
        .collect()
    };
    let triggers = || -> Vec<String> {
        p.rounds()
            .iter()
            .map(|r| r["trigger"].as_str().unwrap_or("").to_string())
            .collect()
    };
    // A rebuild asked for through the API is taken once the poll before
    // it has opened whatever rounds it opens: the fence after a poll.
    let fence = |n: usize| {
        post_rebuild(p.port);
        common::wait_until(&format!("{n} rounds, all done"), 300, || {
            let r = p.rounds();
            r.len() >= n && r.iter().all(|x| x["state"] != "running")
        });
    };

    let mut d = p.spawn();
    wait_http(p.port);
    common::wait_until("the pollers' first sighting", 60, || {
        watched().iter().all(Option::is_some)
    });
    fence(1);
    assert_eq!(
        triggers(),
        ["manual: api"],
        "the first sighting opened a round"
    );
    assert_eq!(sigterm(&mut d), Some(0));

    // Restarted after the recipe changed: that change, and nothing else.
    p.edit("platforms/linux/busybox.Dockerfile", |t| {
        format!("{t}RUN echo changed > /changed\n")
    });
    let mut d = p.spawn();
    wait_http(p.port);
    common::wait_until("the change's round", 120, || p.rounds().len() >= 2);
    fence(3);
    assert_eq!(
        triggers(),
        ["manual: api", "catalogue changed", "manual: api"],
        "{:?}",
        p.rounds()
    );
    assert_eq!(p.rounds()[1]["built"], 1, "{:?}", p.rounds());
    assert_eq!(sigterm(&mut d), Some(0));
}

/// One writer per state dir (issue #31): a `kiln build` started while the
/// daemon runs is carried out by the daemon — queued in its queue, one
/// job per tag, followed to its end — never built beside it.
#[test]
fn a_cli_build_beside_the_daemon_is_handed_to_it() {
    // Once a year: only the hand-off queues anything.
    let p = profile("handoff", "0 0 3 1 1 *", "");
    let mut d = p.spawn();
    wait_http(p.port);
    let build = |what: &str| {
        let out = p
            .command()
            .args(["build", "--json"])
            .output_within(LIMIT)
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "{what}: {err}");
        assert!(
            err.contains(&format!("handed to the daemon (pid {})", d.id())),
            "{what}: {err}"
        );
        let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        summary
    };
    let first = build("first build");
    assert_eq!(first["built"], 1, "{first:#}");
    let key = format!("{}/opam:busybox-daemon-handoff-ocaml-5.5", p.namespace);
    let digest = p.lockfile().entries[&key].digest.clone();
    assert_eq!(first["tags"][0]["outcome"]["digest"], digest.as_str());
    // The daemon ran it: its queue holds the one job, its log the build.
    wait_logged(&d, "job succeeded", 30);
    let second = build("second build");
    assert_eq!(second["unchanged"], 1, "{second:#}");
    let queued: Vec<serde_json::Value> = serde_json::from_slice(
        &p.command()
            .args(["daemon", "jobs", "--json"])
            .output_within(LIMIT)
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert_eq!(queued.len(), 2, "{queued:#?}");
    assert_eq!(queued[1]["outcome"], "built", "{queued:#?}");
    assert_eq!(queued[0]["outcome"], "unchanged", "{queued:#?}");
    assert_eq!(p.lockfile().entries[&key].digest, digest);
    // A release's builds are handed over the same way (no consumers: no
    // GitHub to ask).
    let out = p
        .command()
        .args(["release", "5.5.0", "--json"])
        .output_within(LIMIT)
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("the daemon (pid {}) holds the state dir", d.id()))
            && err.contains("handed to the daemon"),
        "{err}"
    );
    assert_eq!(jobs(&p).len(), 3, "the release's job is the daemon's");
    // Commands that move tags but cannot hand their work over are refused
    // while the daemon runs, naming it, and change nothing.
    for args in [vec!["rollback", key.as_str()], vec!["verify", "--repair"]] {
        let out = p.command().args(&args).output_within(LIMIT).unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}: {err}");
        assert!(
            err.contains(&format!("the daemon (pid {}) holds", d.id())),
            "{args:?}: {err}"
        );
    }
    assert_eq!(p.lockfile().entries[&key].digest, digest);
    assert_eq!(sigterm(&mut d), Some(0));
}

/// POST to the daemon's API, with the token if given: status and body.
fn post_json(port: u16, path: &str, token: Option<&str>) -> (u16, serde_json::Value) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut req = reqwest::Client::new().post(format!("http://127.0.0.1:{port}{path}"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or_default())
    })
}

/// The engine's containers running this test's barrier step, and the
/// local build images of the daemon `pid`: what a stopped build must not
/// leave behind.
fn leftovers(step: &str, pid: u32) -> Vec<String> {
    let docker = |args: &[&str]| {
        let out = Command::new("docker")
            .args(args)
            .output_within(LIMIT)
            .unwrap();
        assert!(out.status.success(), "docker {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let containers = docker(&["ps", "-a", "--no-trunc", "--format", "{{.ID}} {{.Command}}"]);
    let images = docker(&[
        "images",
        "--format",
        "{{.Repository}}:{{.Tag}}",
        "kiln-build/*",
    ]);
    containers
        .lines()
        .filter(|l| l.contains(step))
        .chain(images.lines().filter(|l| l.contains(&format!(":{pid}-"))))
        .map(str::to_string)
        .collect()
}

/// Wait until job `id` is in `state` (see [`common::jobs::wait_state`]).
fn wait_job(p: &Profile, d: &Spawned, id: i64, state: &str, secs: u64) -> serde_json::Value {
    common::jobs::wait_state(&|| p.command(), d, id, state, secs)
}

/// A running job cancelled with `kiln jobs cancel` stops mid-build and
/// leaves no container or local image; nothing is published; the daemon
/// goes on; `kiln jobs retry` queues it again and it completes.
#[test]
fn a_cancelled_job_leaves_nothing_and_a_retry_completes_it() {
    let barrier = Barrier::for_engine("docker0");
    let p = held_profile("cancel", &barrier, "");
    let mut d = p.spawn();
    wait_http(p.port);
    post_rebuild(p.port);
    barrier.wait_for_arrivals(1, Duration::from_secs(180));
    let step = "/wait/cancel";
    let pid = d.id();
    // The check sees the held build's step container.
    assert!(
        !leftovers(step, pid).is_empty(),
        "the held step is invisible"
    );
    let id = jobs(&p)[0]["id"].as_i64().unwrap();
    let out = p
        .command()
        .args(["jobs", "cancel", &id.to_string(), "--json"])
        .output_within(LIMIT)
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let said: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(said["cancel"], "requested", "{said}");
    let job = wait_job(&p, &d, id, "cancelled", 60);
    assert!(
        job["error"].as_str().unwrap().contains("cancelled by cli"),
        "{job}"
    );
    // Recorded only once the cleanups ran: nothing is left by then.
    assert_eq!(leftovers(step, pid), Vec::<String>::new());
    assert!(d.try_wait().is_none(), "{}", d.stderr_so_far());
    let key = format!("{}/opam:busybox-daemon-cancel-ocaml-5.5", p.namespace);
    let published =
        |p: &Profile| p.lockfile_path().exists() && p.lockfile().entries.contains_key(&key);
    assert!(!published(&p), "a cancelled build published");
    // A finished job cannot be cancelled; a cancelled one can be retried
    // (the CLI and the API, with the token, alike).
    let again = p
        .command()
        .args(["jobs", "cancel", &id.to_string()])
        .output_within(LIMIT)
        .unwrap();
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains(&format!("job #{id} is cancelled")),
        "{again:?}"
    );
    let (status, body) = post_json(
        p.port,
        &format!("/v1/jobs/{id}/cancel"),
        Some("daemon-token"),
    );
    assert_eq!(status, 409, "{body}");
    let (status, _) = post_json(p.port, &format!("/v1/jobs/{id}/retry"), None);
    assert_eq!(status, 401, "job control needs the token");
    barrier.open();
    let (status, body) = post_json(
        p.port,
        &format!("/v1/jobs/{id}/retry"),
        Some("daemon-token"),
    );
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["job"], id, "{body}");
    let job = wait_job(&p, &d, id, "succeeded", 300);
    assert_eq!(job["outcome"], "built", "{job}");
    assert!(published(&p));
    assert_eq!(sigterm(&mut d), Some(0));
}

/// SIGTERM while a job is held mid-build: after `daemon.drain_secs` the
/// build is stopped, leaves nothing, and the job is queued again without
/// spending an attempt; the daemon exits 0; the next start builds it.
#[test]
fn sigterm_past_the_drain_bound_requeues_the_running_job() {
    let barrier = Barrier::for_engine("docker0");
    let p = held_profile("drain", &barrier, "drain_secs = 3\n");
    let mut d = p.spawn();
    wait_http(p.port);
    post_rebuild(p.port);
    barrier.wait_for_arrivals(1, Duration::from_secs(180));
    let pid = d.id();
    let stopped = Instant::now();
    d.signal(libc::SIGTERM);
    let code = d.wait_within(Duration::from_secs(120)).code();
    let took = stopped.elapsed();
    assert_eq!(code, Some(0), "{}", d.stderr_so_far());
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(60),
        "exited after {took:?}:\n{}",
        d.stderr_so_far()
    );
    assert_eq!(leftovers("/wait/drain", pid), Vec::<String>::new());
    let job = jobs(&p)[0].clone();
    assert_eq!(
        (job["state"].as_str(), job["attempts"].as_i64()),
        (Some("queued"), Some(0)),
        "{job}"
    );
    barrier.open();
    let mut d = p.spawn();
    let id = job["id"].as_i64().unwrap();
    let job = wait_job(&p, &d, id, "succeeded", 300);
    assert_eq!(job["outcome"], "built", "{job}");
    assert_eq!(sigterm(&mut d), Some(0));
}

/// `POST /v1/jobs` with the token queues one tag in the daemon, forced to
/// rebuild although its key is unchanged: the job builds it again and the
/// digest holds. An unknown tag is 404, no token 401, a bad body 400.
#[test]
fn the_api_queues_one_tag_forced() {
    let p = profile("apiforce", "0 0 3 1 1 *", "");
    let mut d = p.spawn();
    wait_http(p.port);
    post_rebuild(p.port);
    let first = p.wait_rounds(1, true, 300);
    assert_eq!(first[0]["built"], 1, "{first:?}");
    let key = format!("{}/opam:busybox-daemon-apiforce-ocaml-5.5", p.namespace);
    let digest = p.lockfile().entries[&key].digest.clone();
    let post = |body: &str, token: Option<&str>| {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let mut req = reqwest::Client::new()
                .post(format!("http://127.0.0.1:{}/v1/jobs", p.port))
                .header("content-type", "application/json")
                .body(body.to_string());
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            (
                status,
                resp.json::<serde_json::Value>().await.unwrap_or_default(),
            )
        })
    };
    let body = format!("{{\"tag\": \"{key}\", \"force\": true}}");
    assert_eq!(post(&body, None).0, 401);
    assert_eq!(post("{\"tag\": 1}", Some("daemon-token")).0, 400);
    let (status, unknown) = post(
        "{\"tag\": \"opam:no-such-tag\", \"force\": true}",
        Some("daemon-token"),
    );
    assert_eq!(status, 404, "{unknown}");
    let (status, queued) = post(&body, Some("daemon-token"));
    assert_eq!(status, 202, "{queued}");
    let id = queued["job"].as_i64().unwrap();
    let job = wait_job(&p, &d, id, "succeeded", 300);
    assert_eq!(job["outcome"], "built", "forced, not unchanged: {job}");
    assert_eq!(p.lockfile().entries[&key].digest, digest);
    assert_eq!(sigterm(&mut d), Some(0));
}

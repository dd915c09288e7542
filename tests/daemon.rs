//! `kiln daemon` on the real stack: scheduled rounds that build nothing
//! when nothing changed, a rebuild asked for through the API, SIGTERM,
//! a second daemon refused, a bad schedule refused, and kill -9 mid-build
//! followed by a restart that resumes the interrupted round.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kiln::publish::lockfile::Lockfile;

mod common;

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
    fn spawn(&self) -> Child {
        self.command()
            .arg("daemon")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    fn rounds(&self) -> Vec<serde_json::Value> {
        let out = self
            .command()
            .args(["daemon", "status", "--json", "--limit", "50"])
            .output()
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

fn sigterm(child: &mut Child) -> Option<i32> {
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(Some(s)) = child.try_wait() {
            return s.code();
        }
        assert!(Instant::now() < deadline, "daemon did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(200));
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
    let second = p.spawn().wait_with_output().unwrap();
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
    let out = p.spawn().wait_with_output().unwrap();
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
        let out = p.spawn().wait_with_output().unwrap();
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
    let p = profile("kill", "*/2 * * * * *", "RUN sleep 6\n");
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
    unsafe {
        libc::kill(d.id() as i32, libc::SIGKILL);
    }
    let _ = d.wait();
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
        .output()
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
    let mut d = p
        .command()
        .args(["--log-format", "json", "daemon"])
        .env("KILN_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
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
            .output()
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
    // A parent of our own, so that moving its tag disturbs no other test.
    let parent = format!(
        "127.0.0.1:5000/kiln-test-parent-{}:latest",
        std::process::id()
    );
    let copy = Command::new("skopeo")
        .args([
            "copy",
            "--all",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            "docker://127.0.0.1:5000/kiln-fixtures/busybox:latest",
            &format!("docker://{parent}"),
        ])
        .output()
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
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let upstream = head(&git_dir.path().join(".git"), "main");
    let mirror = p.path().join("state/opam-repository.git");
    common::wait_until("the poller to read the unrelated commit", 60, || {
        head(&mirror, "refs/kiln/followed") == upstream
    });
    // A few more polls: still nothing.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(p.lockfile().entries[&key].history.len(), 0);
    assert_eq!(p.rounds().len(), rounds_before, "{:?}", p.rounds());

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
    let build = Command::new("docker")
        .args(["build", "-q", "-t", &parent, "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(
                format!("FROM {parent}\nLABEL org.ocaml.kiln.test=moved\n").as_bytes(),
            )?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(
        build.status.success(),
        "{}",
        String::from_utf8_lossy(&build.stderr)
    );
    let push = Command::new("docker")
        .args(["push", &parent])
        .output()
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
    let _ = Command::new("docker").args(["rmi", &parent]).output();
}

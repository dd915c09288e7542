//! The daemon rides out its state store failing: a finished job whose
//! result cannot be written (SQLite busy: another process holds the
//! database's write lock past the busy timeout) is retried with a log
//! line, never the end of the daemon, and the round completes once the
//! store answers again.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Profile, fixtures, wait_until};

/// A running daemon, killed when the test ends however it ends.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn json(p: &Profile, args: &[&str]) -> serde_json::Value {
    let out = p.kiln(args);
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
}

#[test]
fn a_busy_state_store_when_a_job_ends_is_retried_not_fatal() {
    fixtures();
    let port = common::free_port();
    // The job sleeps, so that the store is locked while it runs and is
    // still locked (past the 10 s busy timeout) when it ends.
    let p = Profile::busybox("state-busy", "busybox-state-busy")
        .own_state()
        .recipe_prefix(&common::uncached_step("sleep 6"))
        .toml(&format!(
            "[api]\nlisten = \"127.0.0.1:{port}\"\ntoken = \"t\"\n[daemon]\nschedule = \"0 0 3 1 1 *\"\nmax_attempts = 5\nretry_base_secs = 1\n"
        ))
        .create();
    let mut child = p
        .command()
        .arg("daemon")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut daemon = Daemon(child);
    let log = Arc::new(Mutex::new(String::new()));
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let mut l = sink.lock().unwrap();
            l.push_str(&line);
            l.push('\n');
        }
    });
    let url = format!("http://127.0.0.1:{port}/v1/rebuild");
    wait_until("the daemon's API", 60, || {
        Command::new("curl")
            .args(["-sf", "-X", "POST", "-H", "Authorization: Bearer t", &url])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    wait_until("a running job", 120, || {
        json(&p, &["daemon", "jobs", "--json"])
            .as_array()
            .is_some_and(|jobs| jobs.iter().any(|j| j["state"] == "running"))
    });
    // Another process takes the database's write lock and holds it past
    // the job's end and past the busy timeout.
    let db = rusqlite::Connection::open(p.path().join("state/kiln.db")).unwrap();
    db.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let held = Instant::now();
    let deadline = held + Duration::from_secs(90);
    while !log
        .lock()
        .unwrap()
        .contains("recording a finished job: the state store failed")
    {
        assert!(
            Instant::now() < deadline,
            "no retry logged while the store was locked:\n{}",
            log.lock().unwrap()
        );
        assert!(
            daemon.0.try_wait().unwrap().is_none(),
            "the daemon exited while its store was locked:\n{}",
            log.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    db.execute_batch("COMMIT").unwrap();
    drop(db);
    // The store answers again: the job's result is recorded and the
    // round ends with the tag built, the daemon still running.
    wait_until("the round built its tag", 180, || {
        json(&p, &["daemon", "status", "--json"])
            .as_array()
            .is_some_and(|r| r.iter().any(|x| x["state"] != "running" && x["built"] == 1))
    });
    assert!(
        daemon.0.try_wait().unwrap().is_none(),
        "the daemon exited:\n{}",
        log.lock().unwrap()
    );
    assert!(!p.entries().is_empty(), "nothing published");
}

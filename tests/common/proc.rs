//! Processes a test starts die with the test, and no wait is unbounded.
//!
//! [`Spawned`] owns one spawned process (a `kiln daemon`, `kiln serve`,
//! `kiln build`, an sshd, a QEMU): it runs in a process group of its own,
//! and dropping the guard — at the end of the test or while a failed
//! assertion unwinds — kills that group and reaps the process. Its waits
//! take a limit and panic, naming the process and what it printed so far,
//! when the limit passes (the drop then kills it).
//!
//! [`Bounded`] gives `Command` the same: `output_within` and
//! `status_within` instead of `output` and `status`.

use std::io::Read;
use std::os::unix::process::CommandExt as _;
use std::process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The longest any one command of the suite may take (a real compiler
/// build under emulation is the slowest): a hang fails instead of
/// stalling the run.
pub const LIMIT: Duration = Duration::from_secs(1800);

/// One spawned process, killed with its process group on drop.
pub struct Spawned {
    what: String,
    child: Option<Child>,
    out: Option<Reader>,
    err: Option<Reader>,
}

/// A pipe read to its end by a thread, readable at any time.
struct Reader {
    bytes: Arc<Mutex<Vec<u8>>>,
    thread: std::thread::JoinHandle<()>,
}

impl Reader {
    fn start(mut from: impl Read + Send + 'static) -> Reader {
        let bytes = Arc::new(Mutex::new(Vec::new()));
        let to = bytes.clone();
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = from.read(&mut buf) {
                if n == 0 {
                    break;
                }
                to.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .extend_from_slice(&buf[..n]);
            }
        });
        Reader { bytes, thread }
    }

    fn so_far(&self) -> Vec<u8> {
        self.bytes.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Spawned {
    /// Spawn `cmd` (its stdio as the caller set it) in a process group of
    /// its own; `what` names it in panics.
    pub fn start(what: &str, cmd: &mut Command) -> Spawned {
        let child = cmd
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {what}: {e}"));
        Spawned::adopt(what, child)
    }

    /// As [`Spawned::start`], with stdout and stderr piped and read as the
    /// process runs (see [`Spawned::stdout_so_far`], [`Spawned::output_within`]).
    pub fn piped(what: &str, cmd: &mut Command) -> Spawned {
        let child = cmd
            .process_group(0)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {what}: {e}"));
        Spawned::adopt(what, child)
    }

    /// Guard a child already spawned (in a process group of its own); its
    /// piped stdout and stderr, if any, are read as it runs.
    fn adopt(what: &str, mut child: Child) -> Spawned {
        let out = child.stdout.take().map(Reader::start);
        let err = child.stderr.take().map(Reader::start);
        Spawned {
            what: what.to_string(),
            child: Some(child),
            out,
            err,
        }
    }

    fn child(&mut self) -> &mut Child {
        self.child
            .as_mut()
            .expect("a Spawned is used after its wait")
    }

    pub fn id(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    pub fn stdin(&mut self) -> Option<ChildStdin> {
        self.child().stdin.take()
    }

    /// What it wrote to stderr so far (when piped).
    pub fn stderr_so_far(&self) -> String {
        self.err
            .as_ref()
            .map(|r| String::from_utf8_lossy(&r.so_far()).into_owned())
            .unwrap_or_default()
    }

    /// What it wrote to stdout so far (when piped).
    pub fn stdout_so_far(&self) -> String {
        self.out
            .as_ref()
            .map(|r| String::from_utf8_lossy(&r.so_far()).into_owned())
            .unwrap_or_default()
    }

    /// Send `signal` to the process alone (not its group): what `kill`
    /// does to a Kiln, whose own children must then die with it.
    pub fn signal(&self, signal: i32) {
        if let Some(c) = &self.child {
            // SAFETY: kill(2) on a pid this guard has not reaped yet.
            unsafe {
                libc::kill(c.id() as i32, signal);
            }
        }
    }

    /// `kill -9` of the process alone, then reap it.
    pub fn sigkill(&mut self) {
        self.signal(libc::SIGKILL);
        let limit = Duration::from_secs(30);
        self.wait_within(limit);
    }

    /// The exit status, if it exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        let what = self.what.clone();
        self.child()
            .try_wait()
            .unwrap_or_else(|e| panic!("waiting for {what}: {e}"))
    }

    /// Wait up to `limit` for it to exit; `None` past it (still running).
    pub fn wait_until(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.try_wait() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Wait up to `limit` for it to exit; past it, panic (the drop kills it).
    pub fn wait_within(&mut self, limit: Duration) -> ExitStatus {
        self.wait_until(limit).unwrap_or_else(|| {
            panic!(
                "{} still running after {limit:?}; stderr so far:\n{}",
                self.what,
                self.stderr_so_far()
            )
        })
    }

    /// Wait up to `limit` for it to exit and for its pipes to close; its
    /// status and everything it printed. Past the limit, panic.
    pub fn output_within(self, limit: Duration) -> Output {
        self.output_until(limit).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Spawned::output_within`], a timeout as an error (the process
    /// killed with its group) instead of a panic.
    pub fn output_until(mut self, limit: Duration) -> std::io::Result<Output> {
        let deadline = Instant::now() + limit;
        let Some(status) = self.wait_until(limit) else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "{} still running after {limit:?} (killed); stdout so far:\n{}\nstderr so far:\n{}",
                    self.what,
                    self.stdout_so_far(),
                    self.stderr_so_far()
                ),
            ));
        };
        // A grandchild may hold a pipe open after the process exited: read
        // until the pipes close or the limit, whichever is first.
        for r in [&self.out, &self.err].into_iter().flatten() {
            while !r.thread.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let take = |r: &Option<Reader>| r.as_ref().map(Reader::so_far).unwrap_or_default();
        Ok(Output {
            status,
            stdout: take(&self.out),
            stderr: take(&self.err),
        })
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        // SAFETY: killpg(2) on the group this guard's process leads.
        unsafe {
            libc::killpg(child.id() as i32, libc::SIGKILL);
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Bounded waits for `Command`: past the limit the command is killed
/// with its process group and the wait is an error (`TimedOut`, naming
/// the command and what it printed), never a hang.
pub trait Bounded {
    /// `output()`, bounded.
    fn output_within(&mut self, limit: Duration) -> std::io::Result<Output>;
    /// `status()`, bounded (stdio inherited, as `status()` does).
    fn status_within(&mut self, limit: Duration) -> std::io::Result<ExitStatus>;
}

impl Bounded for Command {
    fn output_within(&mut self, limit: Duration) -> std::io::Result<Output> {
        let what = describe(self);
        self.stdin(Stdio::null());
        let child = self
            .process_group(0)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        Spawned::adopt(&what, child).output_until(limit)
    }

    fn status_within(&mut self, limit: Duration) -> std::io::Result<ExitStatus> {
        let what = describe(self);
        let child = self.process_group(0).spawn()?;
        Spawned::adopt(&what, child)
            .wait_until(limit)
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("{what} still running after {limit:?} (killed)"),
                )
            })
    }
}

/// A command as panics name it (its program and first arguments).
fn describe(c: &Command) -> String {
    let mut s = c.get_program().to_string_lossy().into_owned();
    for a in c.get_args().take(6) {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

//! Running external tools (`zfs`, `qemu-img`, `skopeo`, …) with errors that
//! name the command, its exit status and what it printed.
//!
//! Every child runs in its own process group so that a timeout or an
//! interrupted build can kill everything it started, not just the leader.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("cannot start `{command}`: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("`{command}` timed out after {secs}s and was killed")]
    Timeout { command: String, secs: u64 },
    #[error("`{command}`: {source}")]
    Io {
        command: String,
        source: std::io::Error,
    },
}

/// A command line to run.
#[derive(Debug, Clone)]
pub struct Cmd {
    program: OsString,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    cwd: Option<PathBuf>,
    timeout: Option<Duration>,
    stdin: Option<Vec<u8>>,
    /// Keep stdin open (after writing `stdin`) until the command ends: the
    /// command may read its end-of-file as "the caller is gone".
    hold_stdin: bool,
    /// Give the caller stdin as a pipe to write into ([`Cmd::spawn_stream`]).
    pipe_stdin: bool,
}

/// What a successful command printed.
#[derive(Debug, Clone)]
pub struct Output {
    pub stdout: String,
    pub stderr: String,
}

impl Cmd {
    pub fn new(program: impl Into<OsString>) -> Self {
        Cmd {
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            cwd: None,
            timeout: None,
            stdin: None,
            hold_stdin: false,
            pipe_stdin: false,
        }
    }

    pub fn arg(mut self, a: impl Into<OsString>) -> Self {
        self.args.push(a.into());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, k: impl Into<OsString>, v: impl Into<OsString>) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    pub fn cwd(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cwd = Some(dir.into());
        self
    }

    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = Some(t);
        self
    }

    pub fn stdin(mut self, data: Vec<u8>) -> Self {
        self.stdin = Some(data);
        self
    }

    /// Write `data` to stdin and keep it open until the command ends, so
    /// that the command sees end-of-file only when Kiln (or the connection
    /// carrying it) is gone: a remote script's watchdog reads it.
    pub fn stdin_held(mut self, data: Vec<u8>) -> Self {
        self.stdin = Some(data);
        self.hold_stdin = true;
        self
    }

    /// Stdin as a pipe the caller writes ([`Streaming::stdin`]): a filter.
    pub fn stdin_piped(mut self) -> Self {
        self.pipe_stdin = true;
        self
    }

    /// The command as a shell-like string, for messages.
    pub fn display(&self) -> String {
        let mut s = self.program.to_string_lossy().into_owned();
        for a in &self.args {
            s.push(' ');
            s.push_str(&a.to_string_lossy());
        }
        s
    }

    fn command(&self) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(&self.program);
        c.args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(if self.stdin.is_some() || self.pipe_stdin {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .process_group(0)
            .kill_on_drop(true);
        // Own process group (so a timeout kills the whole tree), but tied to
        // Kiln's life: if Kiln dies (SIGKILL, Ctrl-C), the kernel kills the
        // child too, instead of leaving a QEMU or a provisioning script
        // running. Children are spawned from runtime threads, which live as
        // long as Kiln does.
        #[cfg(target_os = "linux")]
        // SAFETY: prctl is async-signal-safe and touches no memory of the
        // parent; it runs in the child between fork and exec.
        unsafe {
            c.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        if let Some(d) = &self.cwd {
            c.current_dir(d);
        }
        c
    }

    /// Spawn the command (`command` is how errors name it) and start
    /// feeding its stdin.
    fn start(&self, command: &str) -> Result<(tokio::process::Child, HeldStdin), ProcessError> {
        let mut child = self
            .command()
            .spawn()
            .map_err(|source| ProcessError::Spawn {
                command: command.to_string(),
                source,
            })?;
        let held = self.feed_stdin(&mut child);
        Ok((child, held))
    }

    /// Run to completion; a non-zero exit is an error carrying stderr.
    pub async fn run(&self) -> Result<Output, ProcessError> {
        let (status, out) = self.run_any().await?;
        if !status.success() {
            return Err(ProcessError::Failed {
                command: self.display(),
                status: status.to_string(),
                stderr: out.stderr.trim().to_string(),
            });
        }
        Ok(out)
    }

    /// Run to completion and say how it ended, whatever its exit status:
    /// for tools whose failures speak on stdout (Docker's credential
    /// helpers say "credentials not found" there).
    pub async fn run_any(&self) -> Result<(std::process::ExitStatus, Output), ProcessError> {
        let command = self.display();
        let (mut child, _held) = self.start(&command)?;
        let pgid = child.id();
        let mut out = child.stdout.take();
        let mut err = child.stderr.take();
        let collect = async {
            let mut o = Vec::new();
            let mut e = Vec::new();
            let (r1, r2) = tokio::join!(
                async {
                    match out.as_mut() {
                        Some(s) => s.read_to_end(&mut o).await.map(|_| ()),
                        None => Ok(()),
                    }
                },
                async {
                    match err.as_mut() {
                        Some(s) => s.read_to_end(&mut e).await.map(|_| ()),
                        None => Ok(()),
                    }
                }
            );
            r1.and(r2)?;
            let status = child.wait().await?;
            Ok::<_, std::io::Error>((status, o, e))
        };
        let result = match self.timeout {
            Some(t) => match tokio::time::timeout(t, collect).await {
                Ok(r) => r,
                Err(_) => {
                    if let Some(pid) = pgid {
                        kill_group(pid);
                    }
                    return Err(ProcessError::Timeout {
                        command,
                        secs: t.as_secs(),
                    });
                }
            },
            None => collect.await,
        };
        let (status, o, e) = result.map_err(|source| ProcessError::Io {
            command: command.clone(),
            source,
        })?;
        // Reap anything the command left behind in its group.
        if let Some(pid) = pgid {
            kill_group(pid);
        }
        let stdout = String::from_utf8_lossy(&o).into_owned();
        let stderr = String::from_utf8_lossy(&e).into_owned();
        Ok((status, Output { stdout, stderr }))
    }
}

/// Closes a held stdin when dropped (the writer task waits for it).
pub struct HeldStdin(Option<tokio::sync::oneshot::Sender<()>>);

impl Drop for HeldStdin {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

/// A command started with its stdout to read as a stream (a `zfs send`),
/// stderr collected on the side.
pub struct Streaming {
    pub stdout: Option<tokio::process::ChildStdout>,
    /// With [`Cmd::stdin_piped`]: drop it to close the command's stdin.
    pub stdin: Option<tokio::process::ChildStdin>,
    child: tokio::process::Child,
    stderr: tokio::task::JoinHandle<Vec<u8>>,
    command: String,
    timeout: Option<Duration>,
    _held: HeldStdin,
}

impl Streaming {
    /// Kill it and everything in its process group now.
    pub fn kill(&mut self) {
        if let Some(pid) = self.child.id() {
            kill_group(pid);
        }
        let _ = self.child.start_kill();
    }

    /// Wait for the command to end (its stdout read or dropped by then); a
    /// non-zero exit is an error carrying stderr.
    pub async fn finish(mut self) -> Result<Output, ProcessError> {
        let pgid = self.child.id();
        let wait = self.child.wait();
        let status = match self.timeout {
            Some(t) => match tokio::time::timeout(t, wait).await {
                Ok(s) => s,
                Err(_) => {
                    if let Some(pid) = pgid {
                        kill_group(pid);
                    }
                    return Err(ProcessError::Timeout {
                        command: self.command,
                        secs: t.as_secs(),
                    });
                }
            },
            None => wait.await,
        }
        .map_err(|source| ProcessError::Io {
            command: self.command.clone(),
            source,
        })?;
        if let Some(pid) = pgid {
            kill_group(pid);
        }
        let e = (&mut self.stderr).await.unwrap_or_default();
        let stderr = String::from_utf8_lossy(&e).into_owned();
        if !status.success() {
            return Err(ProcessError::Failed {
                command: self.command,
                status: status.to_string(),
                stderr: stderr.trim().to_string(),
            });
        }
        Ok(Output {
            stdout: String::new(),
            stderr,
        })
    }
}

impl Cmd {
    /// Write the stdin data; with `hold_stdin`, keep the pipe open until
    /// the returned guard is dropped.
    fn feed_stdin(&self, child: &mut tokio::process::Child) -> HeldStdin {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let data = self.stdin.clone();
        if let Some(data) = data
            && let Some(mut stdin) = child.stdin.take()
        {
            let hold = self.hold_stdin;
            tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                let _ = stdin.write_all(&data).await;
                let _ = stdin.flush().await;
                if hold {
                    let _ = rx.await;
                }
                drop(stdin);
            });
        }
        HeldStdin(Some(tx))
    }

    /// Start the command with its stdout as a stream; call
    /// [`Streaming::finish`] once it has been read.
    pub fn spawn_stream(&self) -> Result<Streaming, ProcessError> {
        let command = self.display();
        let (mut child, held) = self.start(&command)?;
        let stdin = if self.pipe_stdin {
            child.stdin.take()
        } else {
            None
        };
        let stdout = child.stdout.take();
        let mut err = child.stderr.take();
        let stderr = tokio::spawn(async move {
            let mut e = Vec::new();
            if let Some(s) = err.as_mut() {
                let _ = s.read_to_end(&mut e).await;
            }
            e
        });
        Ok(Streaming {
            stdout,
            stdin,
            child,
            stderr,
            command,
            timeout: self.timeout,
            _held: held,
        })
    }
}

/// SIGKILL a whole process group; a group that is already gone is fine.
pub fn kill_group(pgid: u32) {
    if let Ok(pid) = i32::try_from(pgid) {
        // SAFETY: killpg only sends a signal; an invalid group yields ESRCH.
        unsafe {
            libc::killpg(pid, libc::SIGKILL);
        }
    }
}

/// Is `program` on PATH (or an existing path)?
pub fn which(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        let p = PathBuf::from(program);
        return p.exists().then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// Cleanups that guards dropped unfinished handed over: work whose undo is
/// asynchronous (remove a container, destroy a dataset) and whose future
/// was dropped before it could run it, as when the daemon cancels a job or
/// drains at SIGTERM. [`cleanups_settled`] waits for them.
fn pending_cleanups() -> std::sync::MutexGuard<'static, Vec<tokio::task::JoinHandle<()>>> {
    static PENDING: std::sync::OnceLock<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>> =
        std::sync::OnceLock::new();
    match PENDING.get_or_init(Default::default).lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// Run `undo` now, on the current runtime, from a guard's `Drop`: the
/// guard's owner was dropped before its own cleanup ran. Outside a runtime
/// (a test's plain drop) nothing can run it; the owner mark on what it
/// made lets the next sweep remove it instead, and this is logged.
pub fn cleanup_later(what: &str, undo: impl std::future::Future<Output = ()> + Send + 'static) {
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => {
            tracing::info!(what, "cleaning up after an interrupted build");
            pending_cleanups().push(rt.spawn(undo));
        }
        Err(_) => {
            tracing::warn!(what, "no runtime to clean up on: left to the next sweep");
        }
    }
}

/// Wait until every cleanup handed over by [`cleanup_later`] has run.
pub async fn cleanups_settled() {
    loop {
        let batch: Vec<_> = std::mem::take(&mut *pending_cleanups());
        if batch.is_empty() {
            return;
        }
        for h in batch {
            let _ = h.await;
        }
    }
}

/// This machine's name, for owner marks.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

/// `<hostname>/<pid>`: marks what this process creates outside itself
/// (containers, datasets, work dirs) so that, should it be killed before
/// cleaning up, a later Kiln can tell the leftovers from live work.
pub fn owner() -> String {
    format!("{}/{}", hostname(), std::process::id())
}

/// Is the owner named by an [`owner`] mark a process of this host that no
/// longer exists? Marks of other hosts are never judged gone.
pub fn owner_is_gone(owner: &str) -> bool {
    let Some((host, pid)) = owner.rsplit_once('/') else {
        return false;
    };
    let Ok(pid) = pid.parse::<i32>() else {
        return false;
    };
    if host != hostname() || pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks that the process exists.
    let rc = unsafe { libc::kill(pid, 0) };
    rc != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn failure_names_command_and_stderr() {
        let e = Cmd::new("sh")
            .args(["-c", "echo boom >&2; exit 3"])
            .run()
            .await
            .unwrap_err();
        let s = e.to_string();
        assert!(
            s.contains("sh -c") && s.contains("boom") && s.contains('3'),
            "{s}"
        );
    }

    #[tokio::test]
    async fn timeout_kills_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("pid");
        let e = Cmd::new("sh")
            .args([
                "-c",
                &format!("sleep 300 & echo $! > {}; wait", marker.display()),
            ])
            .timeout(Duration::from_millis(500))
            .run()
            .await
            .unwrap_err();
        assert!(matches!(e, ProcessError::Timeout { .. }), "{e}");
        let pid: i32 = std::fs::read_to_string(&marker)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        std::thread::sleep(Duration::from_millis(200));
        // The background sleep was in the group and must be gone.
        let alive = std::path::Path::new(&format!("/proc/{pid}")).exists()
            && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .unwrap_or_default()
                .contains(") Z ");
        assert!(!alive, "grandchild {pid} survived the timeout");
    }

    #[tokio::test]
    async fn stdin_and_stdout() {
        let o = Cmd::new("cat")
            .stdin(b"hello".to_vec())
            .run()
            .await
            .unwrap();
        assert_eq!(o.stdout, "hello");
    }
}

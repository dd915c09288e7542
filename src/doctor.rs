//! `kiln doctor`: is every component Kiln drives present and answering?
//!
//! Each check says what it found and, when it fails, the command that fixes
//! it. Required components failing make the command exit non-zero.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::config::Config;
use crate::process::{Cmd, which};

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Missing,
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub component: String,
    pub status: Status,
    pub required: bool,
    pub detail: String,
    /// The command that fixes a failing check.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub checks: Vec<Check>,
}

impl Report {
    /// True when every required component is there.
    pub fn healthy(&self) -> bool {
        self.checks
            .iter()
            .all(|c| !c.required || c.status == Status::Ok)
    }

    pub fn render_table(&self) -> String {
        let w = self
            .checks
            .iter()
            .map(|c| c.component.len())
            .max()
            .unwrap_or(9)
            .max(9);
        let mut s = format!(
            "{:<w$}  {:<8}  {:<8}  detail\n",
            "component", "status", "needed"
        );
        for c in &self.checks {
            let status = match c.status {
                Status::Ok => "ok",
                Status::Missing => "MISSING",
            };
            let needed = if c.required { "required" } else { "optional" };
            s.push_str(&format!(
                "{:<w$}  {:<8}  {:<8}  {}\n",
                c.component, status, needed, c.detail
            ));
            if let (Status::Missing, Some(fix)) = (&c.status, &c.fix) {
                s.push_str(&format!("{:<w$}  {:<8}  {:<8}  fix: {fix}\n", "", "", ""));
            }
        }
        s
    }
}

const SERVICES_FIX: &str = "bash scripts/services.sh up";

fn ok(component: &str, required: bool, detail: String) -> Check {
    Check {
        component: component.into(),
        status: Status::Ok,
        required,
        detail,
        fix: None,
    }
}

fn missing(component: &str, required: bool, detail: String, fix: &str) -> Check {
    Check {
        component: component.into(),
        status: Status::Missing,
        required,
        detail,
        fix: Some(fix.into()),
    }
}

pub async fn run(config: &Config) -> Report {
    let mut checks = Vec::new();
    let down = crate::state::hosts::HostHealth::open(&config.database.path)
        .and_then(|h| h.all())
        .unwrap_or_default();
    for host in &config.docker.hosts {
        let key = format!("docker:{}", host.name);
        checks.push(check_engine(host, down.iter().find(|d| d.host == key)).await);
    }
    checks.push(check_registry(&config.registry.url).await);
    for host in &config.zfs.hosts {
        let key = format!("zfs:{}", host.name);
        checks.push(check_zfs(host, down.iter().find(|d| d.host == key)).await);
    }
    for host in config.qemu.hosts.iter().filter(|h| !h.ssh.is_empty()) {
        let key = format!("qemu:{}", host.name);
        checks.push(check_qemu(host, config, down.iter().find(|d| d.host == key)).await);
    }
    checks.push(check_tool(&config.qemu.img, &["--version"], "qemu-img", true).await);
    checks.push(check_tool(&config.qemu.system, &["--version"], "qemu-system", true).await);
    // The QEMU install boot's private network namespace, whose port 80
    // socat forwards to the build's server.
    checks.push(check_tool("unshare", &["--version"], "unshare", true).await);
    checks.push(check_tool("socat", &["-V"], "socat", true).await);
    checks.push(check_kvm());
    checks.push(check_binfmt());
    checks.push(check_tool("skopeo", &["--version"], "skopeo", true).await);
    checks.extend(identities(config));
    Report { checks }
}

/// Every key Kiln logs in or signs with: the QEMU login key (and its
/// `.pub`), the GitHub App's private key when one is configured.
pub fn identities(config: &Config) -> Vec<Check> {
    let key = Path::new(&config.qemu.ssh_key);
    let keygen = format!("ssh-keygen -t ed25519 -N '' -f {}", key.display());
    let mut qemu = check_key("identity (qemu.ssh_key)", key, &keygen);
    let public = PathBuf::from(format!("{}.pub", key.display()));
    if qemu.status == Status::Ok && !public.is_file() {
        qemu = missing(
            &qemu.component,
            true,
            format!("{}: missing (the image authorizes it)", public.display()),
            &format!("ssh-keygen -y -f {} > {}", key.display(), public.display()),
        );
    }
    // A key at the old default, inside the state dir: say how to move it.
    let legacy = config.state_dir.join("qemu/id_ed25519");
    if qemu.status != Status::Ok && legacy.is_file() && legacy != key {
        qemu.fix = Some(format!(
            "mv {0} {0}.pub {1}/ (the key predates [identity] dir)",
            legacy.display(),
            key.parent().unwrap_or(Path::new(".")).display()
        ));
    }
    let mut checks = vec![qemu];
    if config.identity.dir.starts_with(&config.state_dir) {
        checks.push(missing(
            "identity.dir",
            true,
            format!(
                "{} is inside state_dir {}: losing the state would lose every key",
                config.identity.dir.display(),
                config.state_dir.display()
            ),
            "set [identity] dir outside state_dir and move the keys there",
        ));
    }
    if config.refresh.app_id != 0 {
        checks.push(check_key(
            "identity (refresh.app_key)",
            Path::new(&config.refresh.app_key),
            "save the GitHub App's private key (PEM) there, mode 0600",
        ));
    }
    checks
}

/// A private key: inside `identity.dir` and not the state dir, a regular
/// file, readable by Kiln, and by nobody else (mode 0600 or stricter).
fn check_key(component: &str, path: &Path, create: &str) -> Check {
    use std::os::unix::fs::PermissionsExt;
    let shown = path.display();
    let bad = |detail: String, fix: &str| missing(component, true, detail, fix);
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) => return bad(format!("{shown}: {e}"), create),
    };
    if !meta.is_file() {
        return bad(format!("{shown}: not a regular file"), create);
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return bad(
            format!("{shown}: mode {mode:04o}, readable by others than its owner"),
            &format!("chmod 600 {shown}"),
        );
    }
    if let Err(e) = std::fs::File::open(path) {
        return bad(
            format!("{shown}: unreadable: {e}"),
            &format!("chown $(id -u) {shown} && chmod 600 {shown}"),
        );
    }
    ok(component, true, format!("{shown} (mode {mode:04o})"))
}

/// A configured engine, reached as builds reach it (unix, tcp with TLS
/// when `DOCKER_CERT_PATH` is set, ssh); a host a build marked down says
/// so.
async fn check_engine(
    host: &crate::config::DockerHost,
    down: Option<&crate::state::hosts::Down>,
) -> Check {
    let component = format!("docker engine ({})", host.name);
    let endpoint = &host.endpoint;
    let marked = down
        .map(|d| format!("; marked down by a build since {}: {}", d.since, d.error))
        .unwrap_or_default();
    let engine = match crate::builders::docker::connect(host).await {
        Ok(e) => e,
        Err(e) => {
            return missing(
                &component,
                true,
                format!("{endpoint}: {e}{marked}"),
                SERVICES_FIX,
            );
        }
    };
    let info = tokio::time::timeout(Duration::from_secs(10), engine.docker.info())
        .await
        .ok()
        .and_then(Result::ok);
    if let Some(problem) = info.as_ref().and_then(|i| windows_mismatch(host, i)) {
        return missing(
            &component,
            true,
            format!("{endpoint}: {problem}{marked}"),
            "set the host's os_version and isolation in kiln.toml to what its engine runs (`docker info`: Kernel Version, Default Isolation)",
        );
    }
    // A local engine's root is on this machine's filesystem; a remote
    // Linux engine is asked (see `usage::free_disk`).
    let root = info.as_ref().and_then(|i| i.docker_root_dir.clone());
    let disk = match root {
        Some(root) if endpoint.starts_with("unix://") => free_disk(&root)
            .map(|free| format!(", {} GiB free", free / (1 << 30)))
            .unwrap_or_default(),
        Some(root) if host.os == "linux" => {
            match crate::builders::docker::usage::free_disk(&engine, &root).await {
                Ok(free) => format!(", {} GiB free in {root}", free / (1 << 30)),
                Err(e) => format!(", free disk unknown: {e}"),
            }
        }
        _ => String::new(),
    };
    // What the layer cache holds against the host's budget.
    let cache = match crate::builders::docker::cache::usage(&engine).await {
        Ok(u) => {
            let human = crate::builders::inventory::human;
            let budget = (host.cache_budget_gib * f64::from(1u32 << 30)) as u64;
            format!(
                ", layer cache {} of {} ({} steps)",
                human(u.bytes),
                human(budget),
                u.steps
            )
        }
        Err(e) => format!(", layer cache unknown: {e}"),
    };
    let disk = format!("{disk}{cache}");
    match tokio::time::timeout(Duration::from_secs(10), engine.docker.version()).await {
        Ok(Ok(v)) => ok(
            &component,
            true,
            format!(
                "{endpoint}: Docker {} API {} ({}/{}){disk}, builds {}{}{}",
                v.version.unwrap_or_default(),
                v.api_version.unwrap_or_default(),
                v.os.unwrap_or_default(),
                v.arch.unwrap_or_default(),
                host.arch,
                if host.emulate.is_empty() {
                    String::new()
                } else {
                    format!(
                        " (emulates {})",
                        host.emulate
                            .iter()
                            .map(|a| a.to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                },
                if down.is_some() {
                    format!("{marked}; it answers again: routing takes it back at its next probe")
                } else {
                    String::new()
                }
            ),
        ),
        Ok(Err(e)) => missing(
            &component,
            true,
            format!("{endpoint}: {e}{marked}"),
            SERVICES_FIX,
        ),
        Err(_) => missing(
            &component,
            true,
            format!("{endpoint}: no answer within 10s{marked}"),
            SERVICES_FIX,
        ),
    }
}

/// A Windows host whose engine runs another OS build or isolation than
/// its configuration says (routing trusts the configuration): why.
fn windows_mismatch(
    host: &crate::config::DockerHost,
    info: &bollard::models::SystemInfo,
) -> Option<String> {
    if host.os != "windows" {
        return None;
    }
    let want = host.isolation.unwrap_or_default();
    let isolation = info.isolation.map(|i| i.to_string()).unwrap_or_default();
    if !isolation.is_empty() && isolation != "default" && isolation != want.as_str() {
        return Some(format!(
            "its engine isolates containers by {isolation}, the configuration says {}",
            want.as_str()
        ));
    }
    // `10.0 20348 (20348.1.amd64fre…)`: the build is the second word.
    let running = info
        .kernel_version
        .as_deref()
        .and_then(|k| k.split_whitespace().nth(1))
        .and_then(|b| b.parse::<u32>().ok());
    let configured = host
        .os_version
        .as_deref()
        .and_then(crate::config::windows_build);
    match (running, configured) {
        (Some(r), Some(c)) if r != c => Some(format!(
            "its engine runs Windows build {r}, the configuration says os_version {}",
            host.os_version.as_deref().unwrap_or_default()
        )),
        _ => None,
    }
}

/// Free bytes on the filesystem holding `path` (a local engine's root).
fn free_disk(path: &str) -> Option<u64> {
    let c = std::ffi::CString::new(path).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid C string and `st` a writable statvfs.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some(st.f_bavail as u64 * st.f_frsize as u64)
}

async fn check_registry(url: &str) -> Check {
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
    {
        Ok(c) => c,
        Err(e) => return missing("registry", true, e.to_string(), SERVICES_FIX),
    };
    let probe = format!("{}/v2/", url.trim_end_matches('/'));
    match client.get(&probe).send().await {
        Ok(r) if r.status().is_success() || r.status().as_u16() == 401 => {
            let api = r
                .headers()
                .get("docker-distribution-api-version")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("?")
                .to_string();
            ok(
                "registry",
                true,
                format!("{probe} answers {} ({api})", r.status()),
            )
        }
        Ok(r) => missing(
            "registry",
            true,
            format!("{probe} answers {}", r.status()),
            SERVICES_FIX,
        ),
        Err(e) => missing("registry", true, format!("{probe}: {e}"), SERVICES_FIX),
    }
}

/// A ZFS host: reachable (over ssh for a remote one), with zfs and an
/// ONLINE pool; each way of failing named with its fix.
async fn check_zfs(
    host: &crate::config::ZfsHost,
    down: Option<&crate::state::hosts::Down>,
) -> Check {
    use crate::builders::zfs::probe::{Probe, probe};
    let component = format!("zfs pool ({})", host.name);
    let found = probe(host).await;
    if let Probe::Online { size, free } = &found {
        let on = if host.ssh.is_empty() {
            String::new()
        } else {
            format!(" on {}", host.ssh)
        };
        let marked = down
            .map(|d| format!("; {}", crate::builders::hosts::marked_down("ok", d)))
            .unwrap_or_default();
        return ok(
            &component,
            true,
            format!(
                "pool {} ONLINE{on}, {free} free of {size}{marked}",
                host.pool
            ),
        );
    }
    let (detail, fix) = found.problem(host).unwrap_or_default();
    // This machine's pool comes from the services script.
    let fix = if host.ssh.is_empty() && matches!(found, Probe::NoPool { .. } | Probe::NoZfs) {
        format!("{SERVICES_FIX} ({fix})")
    } else {
        fix
    };
    missing(&component, true, detail, &fix)
}

/// A remote QEMU host (`[[qemu.hosts]]`): reachable over ssh, with QEMU
/// and the build's tools, its work dir writable; KVM and free disk shown.
async fn check_qemu(
    host: &crate::config::QemuHost,
    config: &Config,
    down: Option<&crate::state::hosts::Down>,
) -> Check {
    let component = format!("qemu host ({})", host.name);
    match crate::builders::qemu::site::probe(host, &config.qemu).await {
        Ok(s) => {
            let detail = format!(
                "{} on {}, KVM {}, {} GiB free in {}",
                s.version,
                host.ssh,
                if s.kvm { "usable" } else { "not usable (TCG)" },
                s.free_kib / (1024 * 1024),
                host.work_dir
            );
            match down {
                Some(d) => ok(
                    &component,
                    true,
                    format!("{detail}; {}", crate::builders::hosts::marked_down("ok", d)),
                ),
                None => ok(&component, true, detail),
            }
        }
        Err((problem, fix)) => missing(&component, true, problem, &fix),
    }
}

async fn check_tool(program: &str, args: &[&str], component: &str, required: bool) -> Check {
    if which(program).is_none() {
        return missing(
            component,
            required,
            format!("{program} not found on PATH"),
            SERVICES_FIX,
        );
    }
    match Cmd::new(program)
        .args(args)
        .timeout(Duration::from_secs(10))
        .run()
        .await
    {
        Ok(out) => ok(
            component,
            required,
            out.stdout.lines().next().unwrap_or("").trim().to_string(),
        ),
        Err(e) => missing(component, required, e.to_string(), SERVICES_FIX),
    }
}

fn check_kvm() -> Check {
    if crate::builders::qemu::kvm_usable() {
        ok(
            "kvm",
            false,
            "/dev/kvm usable: QEMU runs accelerated".into(),
        )
    } else {
        missing(
            "kvm",
            false,
            "/dev/kvm not usable: QEMU falls back to TCG (slow)".into(),
            "modprobe kvm_intel || modprobe kvm_amd",
        )
    }
}

/// Foreign arches the kernel can run through binfmt_misc, in Kiln's names.
pub fn binfmt_arches() -> Vec<&'static str> {
    const MAP: &[(&str, &str)] = &[
        ("qemu-aarch64", "arm64"),
        ("qemu-arm", "arm32v7"),
        ("qemu-ppc64le", "ppc64le"),
        ("qemu-s390x", "s390x"),
        ("qemu-riscv64", "riscv64"),
    ];
    MAP.iter()
        .filter(|(file, _)| {
            std::fs::read_to_string(format!("/proc/sys/fs/binfmt_misc/{file}"))
                .map(|s| s.starts_with("enabled"))
                .unwrap_or(false)
        })
        .map(|(_, arch)| *arch)
        .collect()
}

fn check_binfmt() -> Check {
    let arches = binfmt_arches();
    if arches.is_empty() {
        missing(
            "binfmt emulation",
            false,
            "no foreign arch registered: only native builds".into(),
            SERVICES_FIX,
        )
    } else {
        ok("binfmt emulation", false, arches.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn healthy_ignores_optional() {
        let r = Report {
            checks: vec![
                ok("a", true, "fine".into()),
                missing("b", false, "gone".into(), "fix b"),
            ],
        };
        assert!(r.healthy());
        let table = r.render_table();
        assert!(table.contains("fix: fix b"), "{table}");
        let r = Report {
            checks: vec![missing("a", true, "gone".into(), "fix a")],
        };
        assert!(!r.healthy());
    }

    #[test]
    fn a_windows_engine_unlike_its_configuration_is_named() {
        use bollard::models::{SystemInfo, SystemInfoIsolationEnum};
        let host = crate::config::DockerHost {
            name: "win22".into(),
            endpoint: "tcp://10.0.0.9:2376".into(),
            os: "windows".into(),
            arch: "amd64".into(),
            emulate: vec![],
            concurrency: 1,
            cache_budget_gib: 50.0,
            sources_address: None,
            ssh_config: None,
            os_version: Some("10.0.20348".into()),
            isolation: None,
        };
        let info = |iso, kernel: &str| SystemInfo {
            isolation: Some(iso),
            kernel_version: Some(kernel.into()),
            ..Default::default()
        };
        let k2022 = "10.0 20348 (20348.1.amd64fre.fe_release.210507-1500)";
        let k2025 = "10.0 26100 (26100.1.amd64fre.ge_release.240331-1435)";
        assert_eq!(
            windows_mismatch(&host, &info(SystemInfoIsolationEnum::PROCESS, k2022)),
            None
        );
        let e = windows_mismatch(&host, &info(SystemInfoIsolationEnum::PROCESS, k2025)).unwrap();
        assert!(e.contains("build 26100") && e.contains("10.0.20348"), "{e}");
        let e = windows_mismatch(&host, &info(SystemInfoIsolationEnum::HYPERV, k2022)).unwrap();
        assert!(e.contains("by hyperv") && e.contains("says process"), "{e}");
        let mut linux = host.clone();
        linux.os = "linux".into();
        assert_eq!(
            windows_mismatch(&linux, &info(SystemInfoIsolationEnum::HYPERV, k2025)),
            None
        );
    }

    #[test]
    fn free_disk_reads_the_filesystem() {
        assert!(free_disk("/").is_some_and(|b| b > 0));
        assert_eq!(free_disk("/no/such/dir"), None);
    }
}

//! The hosts builds run on: Docker engines, ZFS workers, the QEMU
//! settings.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Docker {
    pub hosts: Vec<DockerHost>,
    /// A cached build step younger than this is never pruned (a build in
    /// flight on the host, from any Kiln process, may need it next).
    #[serde(default = "cache_min_age_secs")]
    pub cache_min_age_secs: u64,
}

fn cache_min_age_secs() -> u64 {
    3600
}

fn cache_budget_gib() -> f64 {
    50.0
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DockerHost {
    pub name: String,
    /// `unix:///path`, `tcp://host:port` (TLS from DOCKER_CERT_PATH) or `ssh://user@host`.
    pub endpoint: String,
    /// `linux` or `windows`.
    pub os: String,
    /// Native arch, in Kiln's arch names (amd64, arm64, …).
    pub arch: String,
    #[serde(default)]
    pub emulate: Vec<String>,
    #[serde(default = "one")]
    pub concurrency: usize,
    /// What the engine's layer cache (the steps of published builds) may
    /// hold, in GiB; past it, the oldest steps nothing builds on are
    /// pruned after each build (`builders/docker/cache.rs`).
    #[serde(default = "cache_budget_gib")]
    pub cache_budget_gib: f64,
    /// The address of this machine the host's build containers reach,
    /// where a build's source proxy listens (default for a `unix://`
    /// engine: its default bridge's gateway, e.g. 172.17.0.1). Needed for
    /// a `tcp://` or `ssh://` engine whose builds take sources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sources_address: Option<String>,
    /// An `ssh://` host's ssh_config file (`ssh -F`: port, key, known
    /// hosts), as `[[zfs.hosts]] ssh_config`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_config: Option<String>,
    /// A Windows host's OS build (`10.0.20348` for ltsc2022): which
    /// releases' images it can run ([`DockerHost::runs_os_version`]).
    /// Required for `os = "windows"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os_version: Option<String>,
    /// A Windows host's container isolation, as its engine is configured
    /// (`dockerd --exec-opt isolation=…`; `kiln doctor` checks the two
    /// agree): `process` runs only its own OS build, `hyperv` also older
    /// ones. Windows hosts only; default `process`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isolation: Option<Isolation>,
}

/// How a Windows engine isolates containers.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    /// Shares the host's kernel: the image's OS build must be the host's.
    #[default]
    Process,
    /// A utility VM per container: any OS build up to the host's.
    Hyperv,
}

impl Isolation {
    pub fn as_str(self) -> &'static str {
        match self {
            Isolation::Process => "process",
            Isolation::Hyperv => "hyperv",
        }
    }
}

/// The build number of a Windows version (`10.0.20348` → 20348; a
/// revision after it, `10.0.20348.2700`, is ignored).
pub fn windows_build(version: &str) -> Option<u32> {
    version.split('.').nth(2)?.parse().ok()
}

impl DockerHost {
    /// Can this host run containers of a Windows release of `os_version`?
    /// Not a Windows host, or no version on either side: yes (the OS and
    /// arch checks decide). With process isolation the builds must be
    /// equal (Windows' rule for sharing the kernel); with Hyper-V the
    /// host's may be newer.
    pub fn runs_os_version(&self, os_version: Option<&str>) -> bool {
        if self.os != "windows" {
            return true;
        }
        let (Some(host), Some(want)) = (
            self.os_version.as_deref().and_then(windows_build),
            os_version.and_then(windows_build),
        ) else {
            return true;
        };
        match self.isolation.unwrap_or_default() {
            Isolation::Process => host == want,
            Isolation::Hyperv => host >= want,
        }
    }
}

fn one() -> usize {
    1
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Zfs {
    pub hosts: Vec<ZfsHost>,
    /// `kiln gc` keeps unreferenced base images and kept QEMU disks
    /// younger than this.
    #[serde(default = "retention_days")]
    pub retention_days: u64,
    /// The provisioning script is killed after this long.
    #[serde(default = "provision_timeout_secs")]
    pub provision_timeout_secs: u64,
}

fn retention_days() -> u64 {
    14
}

fn provision_timeout_secs() -> u64 {
    7200
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ZfsHost {
    pub name: String,
    /// `user@host` (or an ssh_config `Host`) of a remote worker; empty:
    /// this machine.
    #[serde(default)]
    pub ssh: String,
    /// An ssh_config file for reaching it (`ssh -F`): port, key, known hosts.
    #[serde(default)]
    pub ssh_config: String,
    /// Run zfs, zpool and the build's scripts through `sudo -n` (the ssh
    /// user is not root, as on a macOS worker's admin account).
    #[serde(default)]
    pub sudo: bool,
    pub pool: String,
    pub prefix: String,
    /// Platforms (`macos`, `freebsd`) this host builds base datasets for.
    #[serde(default)]
    pub platforms: Vec<String>,
    /// The host's arch, in Kiln's names.
    #[serde(default = "amd64")]
    pub arch: String,
}

fn amd64() -> String {
    "amd64".into()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Qemu {
    pub accel: String,
    pub system: String,
    pub img: String,
    /// The install boot's limit.
    pub boot_timeout_secs: u64,
    /// The first boot's limit: `rc.firsttime` installs packages, opam and
    /// the compiler, then powers the machine off.
    pub first_boot_timeout_secs: u64,
    /// The verify boot's limit: boot, ssh login, smoke test.
    pub verify_timeout_secs: u64,
    /// The user obuilder's QEMU sandbox logs in as (`install.conf` creates
    /// it; recipes get it as `{{ssh_user}}`).
    pub ssh_user: String,
    /// The private key obuilder's workers log in with; its `.pub` is
    /// authorized in the image (`{{ssh_public_key}}`) and Kiln logs in with
    /// it to verify. Relative to `identity.dir` (never the state dir: a
    /// lost state must not lose the login); made absolute when loaded.
    pub ssh_key: String,
    /// Keep each target's last verified disk on this host, for a later run
    /// of the same key to adopt without booting.
    pub keep_disks: bool,
    /// Where OpenBSD builds run: Linux hosts with QEMU (and KVM), this
    /// machine or reached over ssh. None configured: this machine, one
    /// build at a time.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<QemuHost>,
}

/// A Linux host that runs QEMU builds (`[[qemu.hosts]]`). A remote one
/// needs sshd, `qemu-system-*`, `qemu-img`, `socat`, `unshare`, `tar` and
/// `pkill`, nothing of Kiln: the build's server, sets and sources reach it
/// through Kiln's ssh connection, and the compacted disks are streamed
/// from it into the registry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct QemuHost {
    pub name: String,
    /// `user@host` (or an ssh_config `Host`); empty: this machine.
    #[serde(default)]
    pub ssh: String,
    /// An ssh_config file for reaching it (`ssh -F`).
    #[serde(default)]
    pub ssh_config: String,
    /// Builds at once on this host.
    #[serde(default = "one")]
    pub concurrency: usize,
    /// Where a remote host keeps its builds' work dirs (each build's own
    /// directory, removed when the build ends or its connection is cut).
    #[serde(default = "qemu_work_dir")]
    pub work_dir: String,
    /// `kvm` or `tcg` on this host (`qemu.accel` when unset; `auto` is
    /// judged on this machine only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accel: Option<String>,
}

fn qemu_work_dir() -> String {
    "/var/tmp/kiln-qemu".into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Sources};

    fn windows(os_version: &str, isolation: Option<Isolation>) -> DockerHost {
        DockerHost {
            name: "win".into(),
            endpoint: "tcp://10.0.0.9:2376".into(),
            os: "windows".into(),
            arch: "amd64".into(),
            emulate: vec![],
            concurrency: 1,
            cache_budget_gib: 50.0,
            sources_address: Some("10.0.0.1".into()),
            ssh_config: None,
            os_version: Some(os_version.into()),
            isolation,
        }
    }

    #[test]
    fn process_isolation_runs_only_its_own_build_hyperv_also_older_ones() {
        let ltsc2019 = Some("10.0.17763");
        let ltsc2022 = Some("10.0.20348");
        let ltsc2025 = Some("10.0.26100");
        let process = windows("10.0.20348.2700", None);
        assert!(process.runs_os_version(ltsc2022));
        assert!(!process.runs_os_version(ltsc2019));
        assert!(!process.runs_os_version(ltsc2025));
        let hyperv = windows("10.0.20348", Some(Isolation::Hyperv));
        assert!(hyperv.runs_os_version(ltsc2022));
        assert!(hyperv.runs_os_version(ltsc2019));
        assert!(!hyperv.runs_os_version(ltsc2025));
        // A release that names no build is not filtered here.
        assert!(process.runs_os_version(None));
        // Linux hosts are not concerned.
        let mut linux = windows("10.0.20348", None);
        linux.os = "linux".into();
        assert!(linux.runs_os_version(ltsc2025));
    }

    fn load(toml: &str) -> Result<Config, String> {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("k.toml");
        std::fs::write(&file, toml).unwrap();
        Config::load(&Sources {
            file: Some(file),
            env: vec![],
            sets: vec![],
        })
        .map_err(|e| e.to_string())
    }

    const HOST: &str = "[[docker.hosts]]\nname = \"win22\"\nendpoint = \"tcp://10.0.0.9:2376\"\nos = \"windows\"\narch = \"amd64\"\n";

    #[test]
    fn a_windows_host_names_its_os_build_and_a_known_isolation() {
        let c = load(&format!(
            "{HOST}os_version = \"10.0.20348\"\nisolation = \"hyperv\"\n"
        ))
        .unwrap();
        let h = &c.docker.hosts[0];
        assert_eq!(
            (h.os_version.as_deref(), h.isolation),
            (Some("10.0.20348"), Some(Isolation::Hyperv))
        );
        let e = load(HOST).unwrap_err();
        assert!(
            e.contains("docker.hosts[0] (win22)") && e.contains("needs os_version"),
            "{e}"
        );
        let e = load(&format!("{HOST}os_version = \"ltsc2022\"\n")).unwrap_err();
        assert!(e.contains("os_version = \"ltsc2022\""), "{e}");
        let e = load(&format!(
            "{HOST}os_version = \"10.0.20348\"\nisolation = \"vm\"\n"
        ))
        .unwrap_err();
        assert!(e.contains("isolation") && e.contains("vm"), "{e}");
        let linux = HOST.replace("\"windows\"", "\"linux\"");
        let e = load(&format!("{linux}isolation = \"process\"\n")).unwrap_err();
        assert!(e.contains("are for Windows hosts"), "{e}");
    }
}

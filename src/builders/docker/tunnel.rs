//! An engine reached over ssh: Kiln's own ssh connection to the host (a
//! ControlMaster, as ZFS hosts get, [`crate::builders::zfs::host`]), the
//! host's Docker socket forwarded to a Unix socket here (`-L`), and on
//! the same connection the reverse forwards that bring a build's source
//! proxy to the host's build containers (`-R` on its bridge gateway). One
//! connection carries the API and the sources; dropping the tunnel ends
//! it, and with it every forward.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use crate::builders::zfs::host::{Forward, Host};
use crate::config::{DockerHost, ZfsHost};
use crate::process::ProcessError;

/// The Docker socket on the host (Debian's, and Docker's default).
pub const REMOTE_SOCKET: &str = "/var/run/docker.sock";

#[derive(Debug)]
pub struct Tunnel {
    host: Host,
    /// Holds the forwarded socket; removed on drop.
    _dir: tempfile::TempDir,
    pub socket: PathBuf,
}

impl Tunnel {
    /// Connect to `h` (`ssh://[user@]host[:port]`, or an ssh_config
    /// `Host` as `ssh://alias` with `ssh_config`) and forward its Docker
    /// socket here.
    pub async fn open(h: &DockerHost) -> Result<Tunnel, ProcessError> {
        // The connection machinery is the ZFS hosts'; only ssh matters.
        let target = ZfsHost {
            name: h.name.clone(),
            ssh: destination(&h.endpoint),
            ssh_config: h.ssh_config.clone().unwrap_or_default(),
            sudo: false,
            pool: String::new(),
            prefix: String::new(),
            platforms: vec![],
            arch: h.arch.clone(),
        };
        let host = Host::connect(&target).await?;
        // Socket directories of killed Kiln processes.
        crate::builders::zfs::host::sweep_dead_temp("kiln-docker-");
        let dir = tempfile::Builder::new()
            .prefix(&format!("kiln-docker-{}-", std::process::id()))
            .tempdir()
            .map_err(|source| ProcessError::Io {
                command: "a directory for the forwarded Docker socket".into(),
                source,
            })?;
        let socket = dir.path().join("docker.sock");
        host.forward_socket(&socket, REMOTE_SOCKET).await?;
        Ok(Tunnel {
            host,
            _dir: dir,
            socket,
        })
    }

    /// Make `local` reachable on the host at `bind:<port>` (the port its
    /// sshd allocates).
    pub async fn reverse(&self, bind: IpAddr, local: SocketAddr) -> Result<Forward, ProcessError> {
        self.host.reverse_forward_on(Some(bind), local).await
    }

    pub async fn cancel(&self, f: &Forward) {
        if let Err(e) = self.host.cancel_forward(f).await {
            tracing::warn!(error = %e, "cancelling a source forward (it goes with the connection)");
        }
    }
}

/// What ssh takes as its destination: `ssh://user@host:port` as it is
/// (OpenSSH reads the URI form), `ssh://alias` as the alias alone so that
/// an ssh_config `Host` matches it.
fn destination(endpoint: &str) -> String {
    let rest = endpoint.strip_prefix("ssh://").unwrap_or(endpoint);
    if rest.contains('@') || rest.contains(':') {
        endpoint.to_string()
    } else {
        rest.to_string()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_alias_is_given_bare_a_uri_whole() {
        assert_eq!(super::destination("ssh://builder-1"), "builder-1");
        assert_eq!(
            super::destination("ssh://kiln@arm64-1.example.org:2222"),
            "ssh://kiln@arm64-1.example.org:2222"
        );
    }
}

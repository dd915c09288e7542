//! What a ZFS build takes from Kiln's source mirror, served to the host
//! that runs the recipe.
//!
//! As for Docker and QEMU builds, the recipe sees `{{sources_url}}` as a
//! placeholder ([`SOURCES_URL`]) at plan time, so the server's ephemeral
//! port never enters the build key. When the build runs, the tree the
//! target uses ([`crate::sources::target_tree`]: declared sources, the
//! opam-repository bundle, opam's archive cache; each checked present
//! before the host is touched) is served on this machine's loopback by a
//! per-build [`SourceServer`], and made reachable from the build host:
//! a local host reaches it directly at `127.0.0.1:<port>`; a remote one
//! through a reverse forward over the build's own ssh connection (`ssh -O
//! forward -R 0:127.0.0.1:<port>`, the port on the host's loopback
//! allocated by its sshd), cancelled when the build ends, and gone with
//! the connection anyway if Kiln is killed (the master dies with it).

use super::driver::Zfs;
use super::host::Forward;
use crate::model::Failure;
use crate::sources::SourceServer;

/// The placeholder recipes get for `{{sources_url}}` at plan time: the
/// server's address on the build host, filled in when the build runs.
pub const SOURCES_URL: &str = "@KILN_SOURCES_URL@";

/// The server as the build host sees it: its URL there, and the forward
/// that carries it (remote hosts).
#[derive(Debug)]
pub struct Reached {
    /// The value of `{{sources_url}}` on the host.
    pub url: String,
    forward: Option<Forward>,
}

impl Reached {
    /// Make `server` reachable from `zfs`'s host, over the build's
    /// connection when the host is remote. A forward the host refuses
    /// (sshd's `AllowTcpForwarding no`) fails the build as infrastructure,
    /// before anything is created there.
    pub async fn on(zfs: &Zfs, server: &SourceServer, target: &str) -> Result<Reached, Failure> {
        if !zfs.on.is_remote() {
            return Ok(Reached {
                url: server.url(),
                forward: None,
            });
        }
        let forward = zfs.on.reverse_forward(server.addr()).await.map_err(|e| {
            Failure::infra(format!(
                "{target}: forwarding the source server to zfs host {} over its ssh connection: {e}",
                zfs.host.name
            ))
        })?;
        tracing::info!(%target, host = %zfs.host.name, local = %server.addr(), remote_port = forward.remote_port, "source server forwarded to the build host");
        Ok(Reached {
            url: format!("http://127.0.0.1:{}", forward.remote_port),
            forward: Some(forward),
        })
    }

    /// Close the forward (the host stops listening). Ending the connection
    /// closes it too, so a failure here is only logged.
    pub async fn close(self, zfs: &Zfs) {
        if let Some(f) = &self.forward
            && let Err(e) = zfs.on.cancel_forward(f).await
        {
            tracing::warn!(host = %zfs.host.name, remote_port = f.remote_port, error = %e, "cancelling the source server's forward");
        }
    }
}

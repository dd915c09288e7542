//! The full stream of a built tree, straight from the host into the
//! registry: `zfs send -R` runs on the host (over the build's connection),
//! Kiln hashes the raw stream as it arrives, feeds it through a local
//! `zstd`, and uploads what comes out as one blob while hashing it. No
//! copy of the stream lands on either disk. The blob is finished only if
//! `zfs send`, `zstd` and the upload all succeeded; otherwise the upload
//! session is cancelled and nothing is published.

use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::build::ZfsBuildError;
use super::driver::Zfs;
use super::host::unreachable;
use crate::process::{Cmd, ProcessError};
use crate::registry::Registry;

/// The stream's blob in the registry.
#[derive(Debug, Clone)]
pub struct Sent {
    /// `sha256:…` and size of the compressed stream (the layer).
    pub digest: String,
    pub size: u64,
    /// Hex sha256 of the raw `zfs send` stream.
    pub uncompressed_sha256: String,
}

const STREAM_TIMEOUT: Duration = Duration::from_secs(6 * 3600);

pub async fn send_full(
    zfs: &Zfs,
    snapshot: &str,
    reg: &Registry,
    repo: &str,
    target: &str,
) -> Result<Sent, ZfsBuildError> {
    let lost = |source: ProcessError| {
        if unreachable(&zfs.on, &source) {
            ZfsBuildError::HostLost {
                target: target.to_string(),
                host: zfs.host.name.clone(),
                step: "zfs send",
                source,
            }
        } else {
            ZfsBuildError::Io {
                target: target.to_string(),
                message: source.to_string(),
            }
        }
    };
    let io = |message: String| ZfsBuildError::Io {
        target: target.to_string(),
        message,
    };
    let mut src = zfs
        .on
        .cmd("zfs", &["send", "-R", snapshot])
        .timeout(STREAM_TIMEOUT)
        .spawn_stream()
        .map_err(lost)?;
    let mut z = Cmd::new("zstd")
        .args(["-q", "-c", "-T0"])
        .stdin_piped()
        .timeout(STREAM_TIMEOUT)
        .spawn_stream()
        .map_err(|e| io(e.to_string()))?;
    let (Some(raw), Some(zin), Some(zout)) = (src.stdout.take(), z.stdin.take(), z.stdout.take())
    else {
        src.kill();
        z.kill();
        return Err(io("zfs send or zstd has no pipe".into()));
    };
    let pump = tokio::spawn(pump(raw, zin));
    let uploaded = reg.upload_stream(repo, zout).await;
    if uploaded.is_err() {
        // Nobody reads zstd any more: stop the producers instead of
        // letting them block.
        src.kill();
        z.kill();
    }
    let hashed = pump
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
    let sent = src.finish().await;
    let packed = z.finish().await;
    let blob = match uploaded {
        Ok(b) => b,
        Err(e) => {
            drop(sent);
            return Err(io(format!("uploading the stream of {snapshot}: {e}")));
        }
    };
    let checked = match (sent, packed, hashed) {
        (Err(e), _, _) => Err(lost(e)),
        (_, Err(e), _) => Err(io(e.to_string())),
        (_, _, Err(e)) => Err(io(format!("reading the stream of {snapshot}: {e}"))),
        (Ok(_), Ok(_), Ok(raw)) => Ok(raw),
    };
    let uncompressed_sha256 = match checked {
        Ok(raw) => raw,
        Err(e) => {
            reg.cancel_stream(blob).await;
            return Err(e);
        }
    };
    reg.finish_stream(&blob)
        .await
        .map_err(|e| io(format!("finishing the upload of {snapshot}: {e}")))?;
    tracing::info!(%snapshot, bytes = blob.size, digest = %blob.digest, "stream sent from the host into the registry");
    Ok(Sent {
        digest: blob.digest,
        size: blob.size,
        uncompressed_sha256,
    })
}

/// Copy the raw stream into zstd, hashing it on the way; returns its hex
/// sha256. zstd's stdin is closed at the end (or on error).
async fn pump(
    mut raw: tokio::process::ChildStdout,
    mut zin: tokio::process::ChildStdin,
) -> std::io::Result<String> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = raw.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        zin.write_all(&buf[..n]).await?;
    }
    zin.shutdown().await?;
    Ok(hex::encode(h.finalize()))
}

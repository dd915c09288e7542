//! Fetching one source from its origin, once, checking its checksum on the
//! way: a file that does not match is deleted and never reaches the mirror.

use std::path::Path;
use std::time::Duration;

use sha2::Digest;
use tokio::io::AsyncWriteExt;

use super::{SourcesError, Wanted};

/// What a fetch left in the destination file.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// sha256 of the file (its blob digest in the registry), hex.
    pub sha256: String,
    pub size: u64,
}

/// The file a `file:///abs` or `file:<relative>` URL names; a relative
/// path is relative to the directory of the file that declared it.
fn local_path(w: &Wanted) -> Option<std::path::PathBuf> {
    if let Some(abs) = w.url.strip_prefix("file://") {
        return Some(abs.into());
    }
    let rel = w.url.strip_prefix("file:")?;
    let base = Path::new(&w.declared_in).parent().unwrap_or(Path::new("."));
    Some(base.join(rel))
}

/// Fetch `w.url` into `dest` (replacing it), verifying `w.checksum`.
pub async fn fetch(w: &Wanted, dest: &Path) -> Result<Fetched, SourcesError> {
    let fail = |message: String| SourcesError::Fetch {
        name: w.name.clone(),
        declared_in: w.declared_in.clone(),
        url: w.url.clone(),
        message,
    };
    let mut check = w.checksum.hasher();
    let mut sha = sha2::Sha256::new();
    let mut size = 0u64;
    let mut out = tokio::fs::File::create(dest)
        .await
        .map_err(SourcesError::io(dest))?;
    let mut feed = |chunk: &[u8]| {
        check.update(chunk);
        sha.update(chunk);
        size += chunk.len() as u64;
    };
    if let Some(path) = local_path(w) {
        let mut f = tokio::fs::File::open(&path)
            .await
            .map_err(|e| fail(e.to_string()))?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = tokio::io::AsyncReadExt::read(&mut f, &mut buf)
                .await
                .map_err(|e| fail(e.to_string()))?;
            if n == 0 {
                break;
            }
            feed(&buf[..n]);
            out.write_all(&buf[..n])
                .await
                .map_err(SourcesError::io(dest))?;
        }
    } else {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(20))
            .read_timeout(Duration::from_secs(120))
            .build()
            .map_err(|e| fail(e.to_string()))?;
        let mut r = client
            .get(&w.url)
            .send()
            .await
            .map_err(|e| fail(e.to_string()))?;
        if !r.status().is_success() {
            return Err(fail(format!("HTTP {}", r.status())));
        }
        while let Some(chunk) = r.chunk().await.map_err(|e| fail(e.to_string()))? {
            feed(&chunk);
            out.write_all(&chunk)
                .await
                .map_err(SourcesError::io(dest))?;
        }
    }
    out.flush().await.map_err(SourcesError::io(dest))?;
    let actual = check.hex();
    if actual != w.checksum.hex() {
        let _ = tokio::fs::remove_file(dest).await;
        return Err(SourcesError::Checksum {
            name: w.name.clone(),
            declared_in: w.declared_in.clone(),
            url: w.url.clone(),
            expected: w.checksum.opam(),
            actual: format!("{}={actual}", w.checksum.kind()),
        });
    }
    Ok(Fetched {
        sha256: hex::encode(sha.finalize()),
        size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::Checksum;

    fn wanted(url: &str) -> Wanted {
        Wanted {
            name: "SHA256".into(),
            url: url.into(),
            checksum: Checksum::Sha256("0".repeat(64)),
            declared_in: "/checkout/scripts/demo/versions/sources.yaml".into(),
        }
    }

    #[test]
    fn a_relative_file_url_is_read_beside_its_declaration() {
        assert_eq!(
            local_path(&wanted("file:../../../.kiln/sets/SHA256")),
            Some("/checkout/scripts/demo/versions/../../../.kiln/sets/SHA256".into())
        );
        assert_eq!(
            local_path(&wanted("file:///abs/SHA256")),
            Some("/abs/SHA256".into())
        );
        assert_eq!(local_path(&wanted("https://e/SHA256")), None);
    }
}

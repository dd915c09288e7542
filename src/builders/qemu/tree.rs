//! The files one QEMU build serves its guest, as a tree of nested paths
//! (`install.conf`, `pub/OpenBSD/7.9/amd64/base79.tgz`, …), and the
//! per-build HTTP server that offers it.
//!
//! The server listens on two sockets, for the two ways a guest reaches it:
//! a TCP port on 127.0.0.1 (QEMU's user networking maps the guest's
//! `10.0.2.2:<port>` to it: the first boot, with `@KILN_HTTP_BASE@`), and a
//! Unix socket in the build's work dir, which the install boot's private
//! network namespace forwards its port 80 to (OpenBSD's installer fetches
//! its response file from `http://<next-server>/install.conf`, port 80
//! only; see `boots::install`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};

/// What one path of the tree serves.
#[derive(Debug, Clone)]
pub enum Entry {
    /// A rendered recipe, a built tarball.
    Bytes(Vec<u8>),
    /// A file on disk, streamed (install sets run to hundreds of MB).
    File(PathBuf),
    /// Text files served as one gzipped tar (the site set), built when
    /// the server starts, once their placeholders are filled.
    Tgz(Vec<(String, String)>),
}

/// Path (no leading `/`) → entry.
#[derive(Debug, Clone, Default)]
pub struct Tree(pub BTreeMap<String, Entry>);

impl Tree {
    pub fn insert(&mut self, path: impl Into<String>, entry: Entry) {
        self.0.insert(path.into(), entry);
    }

    pub fn get(&self, path: &str) -> Option<&Entry> {
        self.0.get(path)
    }

    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    /// Replace the server placeholders in every text entry, now that the
    /// port is known (see `qemu::HTTP_BASE`).
    pub fn fill_placeholders(&mut self, base: &str, host: &str) {
        let fill = |s: &str| {
            s.replace(super::HTTP_BASE, base)
                .replace(super::HTTP_HOST, host)
        };
        for entry in self.0.values_mut() {
            match entry {
                Entry::Bytes(b) => {
                    if let Ok(s) = std::str::from_utf8(b) {
                        *b = fill(s).into_bytes();
                    }
                }
                Entry::Tgz(files) => {
                    for (_, text) in files.iter_mut() {
                        *text = fill(text);
                    }
                }
                Entry::File(_) => {}
            }
        }
    }

    /// Build every `Tgz` entry into its bytes.
    fn pack(&mut self) -> std::io::Result<()> {
        for entry in self.0.values_mut() {
            if let Entry::Tgz(files) = entry {
                *entry = Entry::Bytes(super::installer::site_tgz(files)?);
            }
        }
        Ok(())
    }
}

/// Write the tree under `dir` (QEMU's TFTP server reads a directory):
/// files linked (copied across file systems), bytes written, tarballs built.
/// A path that would leave `dir` is refused.
pub fn lay_out(tree: &Tree, dir: &Path) -> std::io::Result<()> {
    for (path, entry) in &tree.0 {
        let rel = Path::new(path);
        if rel.is_absolute()
            || rel
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{path}: not a relative path inside the tree"),
            ));
        }
        let to = dir.join(rel);
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)?;
        }
        match entry {
            Entry::Bytes(b) => std::fs::write(&to, b)?,
            Entry::Tgz(files) => std::fs::write(&to, super::installer::site_tgz(files)?)?,
            Entry::File(f) => {
                if std::fs::hard_link(f, &to).is_err() {
                    std::fs::copy(f, &to)?;
                }
            }
        }
    }
    Ok(())
}

async fn serve_path(State(tree): State<Arc<Tree>>, uri: Uri) -> Response {
    let path = uri.path().trim_start_matches('/');
    match tree.get(path) {
        Some(Entry::Bytes(b)) => b.clone().into_response(),
        Some(Entry::Tgz(_)) | None => StatusCode::NOT_FOUND.into_response(),
        Some(Entry::File(f)) => match tokio::fs::File::open(f).await {
            Ok(file) => Body::from_stream(tokio_util::io::ReaderStream::new(file)).into_response(),
            Err(e) => {
                tracing::warn!(file = %f.display(), error = %e, "serving a file of the build's tree");
                StatusCode::INTERNAL_SERVER_ERROR.into_response()
            }
        },
    }
}

/// The running server; both listeners stop when it is dropped.
pub struct Server {
    pub port: u16,
    pub socket: PathBuf,
    /// Where the QEMU host reaches it: its port on the host's loopback (the
    /// tree's placeholders name it) and its socket's path there (the same
    /// as here on this machine).
    pub site_port: u16,
    pub site_socket: PathBuf,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// Bind 127.0.0.1 on an ephemeral port, for [`serve`].
pub async fn bind() -> std::io::Result<(tokio::net::TcpListener, u16)> {
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = tcp.local_addr()?.port();
    Ok((tcp, port))
}

/// Serve the tree on `tcp` and on `socket`, its placeholders filled with
/// the port the QEMU host reaches it on (`site_port`: the bound port on
/// this machine, a forwarded one on a remote host).
pub fn serve(
    mut tree: Tree,
    tcp: tokio::net::TcpListener,
    socket: &Path,
    site_port: u16,
    site_socket: PathBuf,
) -> std::io::Result<Server> {
    let port = tcp.local_addr()?.port();
    tree.fill_placeholders(
        &format!("http://10.0.2.2:{site_port}"),
        &format!("10.0.2.2:{site_port}"),
    );
    tree.pack()?;
    let _ = std::fs::remove_file(socket);
    let unix = tokio::net::UnixListener::bind(socket)?;
    let app = axum::Router::new()
        .fallback(serve_path)
        .with_state(Arc::new(tree));
    let app2 = app.clone();
    let tasks = vec![
        tokio::spawn(async move {
            let _ = axum::serve(tcp, app).await;
        }),
        tokio::spawn(async move {
            let _ = axum::serve(unix, app2).await;
        }),
    ];
    Ok(Server {
        port,
        socket: socket.to_path_buf(),
        site_port,
        site_socket,
        tasks,
    })
}

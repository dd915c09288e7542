//! Kiln's per-build HTTP server: a tree of files (URL path → local file)
//! served read-only on an ephemeral port for one build, stopped when the
//! build ends (dropping the server aborts it).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::{BUNDLE_NAME, OPAM_CACHE, Present, SourcesError, Wanted};

/// What a server serves: relative URL paths (`a/b/c`) to files.
#[derive(Debug, Clone, Default)]
pub struct Tree {
    files: BTreeMap<String, PathBuf>,
}

impl Tree {
    pub fn new() -> Tree {
        Tree::default()
    }

    /// Serve `file` at `path` (no leading slash; `..` is refused).
    pub fn insert(&mut self, path: impl Into<String>, file: PathBuf) -> &mut Self {
        let path = path.into();
        if !path.split('/').any(|s| s.is_empty() || s == "..") {
            self.files.insert(path, file);
        }
        self
    }

    pub fn paths(&self) -> impl Iterator<Item = &String> {
        self.files.keys()
    }

    /// Every path with the file it serves (another server may lay the
    /// tree out under its own prefix: the QEMU builder's `sources/`).
    pub fn files(&self) -> impl Iterator<Item = (&String, &PathBuf)> {
        self.files.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// The layout builds see: each source by name, and in opam's
    /// archive-mirror layout by checksum; the opam-repository bundle.
    pub fn for_sources(
        wanted: &[Wanted],
        files: &BTreeMap<String, PathBuf>,
        bundle: Option<PathBuf>,
    ) -> Tree {
        let mut t = Tree::new();
        for w in wanted {
            if let Some(f) = files.get(&w.name) {
                t.insert(w.name.clone(), f.clone());
                t.insert(
                    format!("{OPAM_CACHE}/{}", w.checksum.cache_path()),
                    f.clone(),
                );
            }
        }
        if let Some(b) = bundle {
            t.insert(BUNDLE_NAME, b);
        }
        t
    }
}

async fn get(State(tree): State<Arc<Tree>>, UrlPath(path): UrlPath<String>) -> Response {
    serve_file(&tree, &path).await
}

/// The file the tree serves at `path`, streamed; 404 when it has none.
pub(super) async fn serve_file(tree: &Tree, path: &str) -> Response {
    let Some(file) = tree.files.get(path.trim_start_matches('/')) else {
        tracing::debug!(%path, "source server: not found");
        return StatusCode::NOT_FOUND.into_response();
    };
    match tokio::fs::File::open(file).await {
        Ok(f) => {
            let len = f.metadata().await.map(|m| m.len()).ok();
            let body = Body::from_stream(tokio_util::io::ReaderStream::new(f));
            let mut r = Response::new(body);
            if let Some(len) = len
                && let Ok(v) = header::HeaderValue::from_str(&len.to_string())
            {
                r.headers_mut().insert(header::CONTENT_LENGTH, v);
            }
            r
        }
        Err(e) => {
            tracing::warn!(file = %file.display(), error = %e, "source server: cannot read");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// Serve `app` on `bind` (port 0: an ephemeral one), named `what` in
/// errors and logs: its address and the task serving it.
pub(super) async fn listen(
    bind: SocketAddr,
    app: axum::Router,
    what: &'static str,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), SourcesError> {
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .map_err(SourcesError::io(format!("{what} on {bind}")))?;
    let addr = listener.local_addr().map_err(SourcesError::io(what))?;
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "{what} stopped");
        }
    });
    Ok((addr, task))
}

/// A running server; dropped, it stops.
pub struct SourceServer {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl SourceServer {
    /// Serve `tree` on `bind` (port 0 for an ephemeral one).
    pub async fn start(tree: Tree, bind: SocketAddr) -> Result<SourceServer, SourcesError> {
        let app = axum::Router::new()
            .route("/{*path}", axum::routing::get(get))
            .with_state(Arc::new(tree));
        let (addr, task) = listen(bind, app, "source server").await?;
        Ok(SourceServer { addr, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>`, the value of `{{sources_url}}`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for SourceServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The tree for a build from what the mirror holds.
pub async fn tree_for(
    mirror: &super::Mirror<'_>,
    wanted: &[Wanted],
    present: &[Present],
    bundle: Option<&Present>,
) -> Result<Tree, SourcesError> {
    let files = mirror.materialize_all(present).await?;
    let bundle = match bundle {
        Some(b) => Some(mirror.materialize(b).await?),
        None => None,
    };
    Ok(Tree::for_sources(wanted, &files, bundle))
}

//! What the API asks the daemon's scheduler: a rebuild round of
//! everything, or one tag queued (forced: built although its key is
//! unchanged), answered with the job's id or why not.

/// A request from the API to the running daemon.
#[derive(Debug)]
pub enum Rebuild {
    /// A round over every tag, asked by `who`.
    Round { who: String },
    /// One tag (`REPOSITORY:TAG` or `TAG`), its job's id sent back.
    Tag {
        tag: String,
        force: bool,
        reply: tokio::sync::oneshot::Sender<Result<i64, TagRefused>>,
    },
}

/// Why one tag was not queued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TagRefused {
    /// No such tag in the catalogue's plan.
    Unknown(String),
    /// The catalogue or the state store failed.
    Failed(String),
}

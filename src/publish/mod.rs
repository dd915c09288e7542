//! Publication: the digest lockfile and the order in which tags move.

pub mod lockfile;

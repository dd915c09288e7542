//! macOS and FreeBSD base datasets built on ZFS and shipped as send streams.

pub mod driver;

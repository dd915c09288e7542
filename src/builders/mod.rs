//! Per-platform builders: Docker (Linux, Windows), ZFS datasets (macOS, FreeBSD), QEMU disks (OpenBSD).

pub mod docker;
pub mod qemu;
pub mod run;
pub mod zfs;

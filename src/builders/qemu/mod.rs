//! OpenBSD qcow2 disk images built unattended under QEMU.

pub mod img;

//! OpenBSD qcow2 disk images built unattended under QEMU.

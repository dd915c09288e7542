//! The version catalogue (`versions/`) and platform definitions (`platforms/`).

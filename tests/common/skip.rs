//! A test that cannot run here (a component is missing) says so where it
//! is seen: never a silent "ok".
//!
//! `skip` prints `SKIPPED <file>::<test>: <reason>` to stderr (shown when the
//! test output is) and appends the same line to [`skip_file`], which
//! `scripts/test.sh` empties before `cargo test` and prints after it. With
//! `KILN_REQUIRE_ALL=1` in the environment (every component is known to be
//! up), a skip is a failure instead.
//!
//! The caller returns right after (or, for a part of a test, carries on
//! without that part).

use std::io::Write;
use std::path::{Path, PathBuf};

/// Where skips are collected: `<target dir>/tmp/kiln-skipped.txt`.
pub fn skip_file() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("kiln-skipped.txt")
}

/// `test`: the test's name (or the part of it that is skipped);
/// `reason`: what is missing, and why if known.
pub fn skip(test: &str, reason: &str) {
    let line = format!(
        "SKIPPED {}::{test}: {}",
        env!("CARGO_CRATE_NAME"),
        // One line per skip, whatever the reason holds.
        reason.trim().replace('\n', " / ")
    );
    if std::env::var("KILN_REQUIRE_ALL").as_deref() == Ok("1") {
        panic!("{line} (KILN_REQUIRE_ALL=1: nothing may be skipped)");
    }
    eprintln!("{line}");
    let file = skip_file();
    if let Some(dir) = file.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&file)
        .unwrap_or_else(|e| panic!("{line}; and cannot record it in {}: {e}", file.display()));
    // One write per line: O_APPEND keeps lines from parallel tests whole.
    f.write_all(format!("{line}\n").as_bytes())
        .unwrap_or_else(|e| panic!("{line}; and cannot record it in {}: {e}", file.display()));
}

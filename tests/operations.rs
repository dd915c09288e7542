//! Operating Kiln: secrets stay out of what it prints, and a piped long
//! command says what it is doing.

mod common;

use common::{Profile, fixtures};

#[test]
fn kiln_config_redacts_the_api_token_unless_asked() {
    let token = "s3cret-api-token-for-the-test";
    let p = Profile::busybox("config-redact", "busybox-config-redact")
        .toml(&format!(
            "[api]\nlisten = \"127.0.0.1:0\"\ntoken = \"{token}\"\n"
        ))
        .create();
    for args in [&["config"][..], &["config", "--json"][..]] {
        let out = p.kiln(args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!text.contains(token), "{args:?} printed the token:\n{text}");
        assert!(text.contains("<redacted>"), "{args:?}:\n{text}");
    }
    let out = p.kiln(&["config", "--json", "--show-secrets"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["api"]["token"], token);
}

#[test]
fn a_piped_build_prints_a_line_per_build_start_and_end() {
    fixtures();
    let p = Profile::busybox("piped-progress", "busybox-piped").create();
    // stdout and stderr are pipes here, as in a CI log.
    let out = p.kiln(&["build"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let target = "linux/busybox-piped/5.5.0/amd64";
    assert!(err.contains("kiln: 1 arch builds planned"), "{err}");
    assert!(
        err.contains(&format!("kiln: started {target} (docker)")),
        "{err}"
    );
    let built = err
        .lines()
        .find(|l| l.starts_with(&format!("kiln: built {target} in ")))
        .unwrap_or_else(|| panic!("no end line:\n{err}"));
    assert!(built.ends_with('s'), "{built}");
    // With --json, stderr carries no progress.
    let out = p.kiln(&["build", "--json"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("kiln: "), "{err}");
}

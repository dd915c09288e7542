//! Build keys: a content hash of everything that determines a target's
//! output. Same key → nothing to build, and the published digest stays.
//!
//! The inputs are kept as named strings (recorded in the lockfile next to
//! the key) so that when a key changes, Kiln can say which input changed.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

/// Named inputs of one target's build.
pub type Inputs = BTreeMap<String, String>;

/// `sha256:<hex>` over the canonical `name=value\n` lines, sorted by name.
pub fn build_key(inputs: &Inputs) -> String {
    let mut h = Sha256::new();
    h.update(b"kiln-build-key-v1\n");
    for (k, v) in inputs {
        h.update(k.as_bytes());
        h.update(b"=");
        h.update(v.as_bytes());
        h.update(b"\n");
    }
    format!("sha256:{}", hex::encode(h.finalize()))
}

/// The key of a tag group: its per-arch keys, by arch.
pub fn group_key(arch_keys: &BTreeMap<String, String>) -> String {
    let inputs: Inputs = arch_keys
        .iter()
        .map(|(a, k)| (format!("arch:{a}"), k.clone()))
        .collect();
    build_key(&inputs)
}

/// Which inputs differ between two builds, for "why did this change".
pub fn changed(old: &Inputs, new: &Inputs) -> Vec<String> {
    let mut names: Vec<String> = old
        .keys()
        .chain(new.keys())
        .filter(|k| old.get(*k) != new.get(*k))
        .cloned()
        .collect();
    names.sort();
    names.dedup();
    names
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_stable_and_sensitive() {
        let mut a = Inputs::new();
        a.insert("ocaml".into(), "5.5.0".into());
        a.insert("parent_digest".into(), "sha256:aa".into());
        let k1 = build_key(&a);
        assert_eq!(k1, build_key(&a.clone()));
        let mut b = a.clone();
        b.insert("parent_digest".into(), "sha256:bb".into());
        assert_ne!(k1, build_key(&b));
        assert_eq!(changed(&a, &b), ["parent_digest"]);
        // Field boundaries matter: a=bc vs ab=c.
        let x: Inputs = [("a".to_string(), "bc".to_string())].into();
        let y: Inputs = [("ab".to_string(), "c".to_string())].into();
        assert_ne!(build_key(&x), build_key(&y));
    }

    /// Keys published by an earlier Kiln must come out the same, or every
    /// tag would rebuild: pinned to `sha256sum` of the canonical text.
    #[test]
    fn a_key_is_the_sha256_of_its_canonical_lines() {
        let a: Inputs = [
            ("parent_digest".to_string(), "sha256:aa".to_string()),
            ("ocaml".to_string(), "5.5.0".to_string()),
        ]
        .into();
        // printf 'kiln-build-key-v1\nocaml=5.5.0\nparent_digest=sha256:aa\n' | sha256sum
        assert_eq!(
            build_key(&a),
            "sha256:2d278eb341fac19fcbd5bd50a3deace639decc72bf6d8f8d6246736d8caf334f"
        );
        let arches: BTreeMap<String, String> = [
            ("arm64".to_string(), "sha256:2".to_string()),
            ("amd64".to_string(), "sha256:1".to_string()),
        ]
        .into();
        // printf 'kiln-build-key-v1\narch:amd64=sha256:1\narch:arm64=sha256:2\n' | sha256sum
        assert_eq!(
            group_key(&arches),
            "sha256:067dbd3276b43ef3b8504600a65521d6a43873b9891830773dd00c2b99267a5c"
        );
    }

    #[test]
    fn added_and_removed_inputs_count_as_changed_once_each_in_order() {
        let old: Inputs = [
            ("recipe".to_string(), "r".to_string()),
            ("parent".to_string(), "p".to_string()),
            ("gone".to_string(), "g".to_string()),
        ]
        .into();
        let new: Inputs = [
            ("recipe".to_string(), "r".to_string()),
            ("parent".to_string(), "p2".to_string()),
            ("added".to_string(), "a".to_string()),
        ]
        .into();
        assert_eq!(changed(&old, &new), ["added", "gone", "parent"]);
        assert!(changed(&old, &old).is_empty());
    }

    #[test]
    fn a_recipe_hash_is_its_sha256_in_hex() {
        // The FIPS 180-2 test vector for "abc".
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}

//! signify(1)'s Ed25519 files, as OpenBSD signs its releases, and the
//! checksum listing a release's `SHA256.sig` carries.
//!
//! A public key file is `untrusted comment: …\n<base64>\n`, the base64
//! decoding to `Ed` + an 8-byte key number + the 32-byte Ed25519 key. A
//! signature with an embedded message (`signify -S -e`, which is how
//! `SHA256.sig` is made) is `untrusted comment: …\n<base64>\n<message>`,
//! the base64 decoding to `Ed` + key number + the 64-byte signature of the
//! message. `signify -C`/`-V -e` refuses a file whose comment line does not
//! start with the header, whose base64 does not decode to exactly that
//! length or does not start with `Ed`, a signature made by another key
//! number ("checked against wrong key"), and a signature that does not
//! verify; [`verify_embedded`] refuses the same, naming the file and line.
//!
//! One deliberate difference: the Ed25519 check is ed25519-dalek's
//! `verify_strict`, which also refuses small-order public keys and a
//! non-canonical `R` that signify's ref10 code would let through. No key
//! OpenBSD publishes is either, so no genuine release is refused by it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine;

/// The first line of every signify file starts with this.
pub const COMMENT_HEADER: &str = "untrusted comment: ";
/// signify's `COMMENTMAXLEN`, the terminating NUL included.
const COMMENT_MAX: usize = 1024;
/// signify's `PKALG`: the only algorithm it knows.
const PKALG: &[u8; 2] = b"Ed";
const KEYNUM_LEN: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum SignifyError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {message}")]
    Malformed {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error(
        "{sig}: verification failed: signed with key {signed_by}, checked against {pubkey}, which is key {key}"
    )]
    WrongKey {
        sig: PathBuf,
        pubkey: PathBuf,
        signed_by: String,
        key: String,
    },
    #[error(
        "{sig}: signature verification failed with {pubkey} (key {key}): the signed listing or its signature was altered"
    )]
    BadSignature {
        sig: PathBuf,
        pubkey: PathBuf,
        key: String,
    },
}

/// A signify public key.
#[derive(Debug, Clone)]
pub struct PublicKey {
    pub keynum: [u8; KEYNUM_LEN],
    key: ed25519_dalek::VerifyingKey,
}

impl PublicKey {
    /// The key number as signify prints it nowhere but everyone compares:
    /// 16 hex digits.
    pub fn keynum_hex(&self) -> String {
        hex::encode(self.keynum)
    }
}

/// What the two signify lines of a file hold, and where the rest begins.
struct Parsed<const N: usize> {
    bytes: [u8; N],
    rest: usize,
}

fn malformed(path: &Path, line: usize, message: impl Into<String>) -> SignifyError {
    SignifyError::Malformed {
        path: path.to_path_buf(),
        line,
        message: message.into(),
    }
}

/// signify's `parseb64file`: the comment line, the base64 line (decoding
/// to exactly `N` bytes, `Ed` first), and the offset after its newline.
fn parse_b64<const N: usize>(path: &Path, text: &[u8]) -> Result<Parsed<N>, SignifyError> {
    let Some(comment_end) = text.iter().position(|&b| b == b'\n') else {
        return Err(malformed(path, 1, "no line ends the untrusted comment"));
    };
    let comment = &text[..comment_end];
    if comment.len() <= COMMENT_HEADER.len() || !comment.starts_with(COMMENT_HEADER.as_bytes()) {
        return Err(malformed(
            path,
            1,
            format!("invalid comment: a signify file starts with {COMMENT_HEADER:?} and a comment"),
        ));
    }
    if comment.len() - COMMENT_HEADER.len() >= COMMENT_MAX {
        return Err(malformed(path, 1, "comment too long"));
    }
    let b64_start = comment_end + 1;
    let Some(b64_len) = text[b64_start..].iter().position(|&b| b == b'\n') else {
        return Err(malformed(path, 2, "missing new line after base64"));
    };
    // b64_pton skips white space.
    let b64: Vec<u8> = text[b64_start..b64_start + b64_len]
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(&b64)
        .map_err(|e| malformed(path, 2, format!("unable to parse the base64: {e}")))?;
    let bytes: [u8; N] = decoded.as_slice().try_into().map_err(|_| {
        malformed(
            path,
            2,
            format!("unable to parse: {} bytes, expected {N}", decoded.len()),
        )
    })?;
    if &bytes[..2] != PKALG {
        return Err(malformed(
            path,
            2,
            "unsupported file: not an Ed25519 signify file (no \"Ed\")",
        ));
    }
    Ok(Parsed {
        bytes,
        rest: b64_start + b64_len + 1,
    })
}

/// A public key file's bytes (`path` names it in errors).
pub fn parse_public_key(path: &Path, text: &[u8]) -> Result<PublicKey, SignifyError> {
    let p: Parsed<{ 2 + KEYNUM_LEN + 32 }> = parse_b64(path, text)?;
    let mut keynum = [0; KEYNUM_LEN];
    keynum.copy_from_slice(&p.bytes[2..2 + KEYNUM_LEN]);
    let mut key = [0; 32];
    key.copy_from_slice(&p.bytes[2 + KEYNUM_LEN..]);
    let key = ed25519_dalek::VerifyingKey::from_bytes(&key)
        .map_err(|_| malformed(path, 2, "not an Ed25519 public key"))?;
    Ok(PublicKey { keynum, key })
}

/// Read a public key file.
pub fn read_public_key(path: &Path) -> Result<PublicKey, SignifyError> {
    parse_public_key(path, &read(path)?)
}

pub(crate) fn read(path: &Path) -> Result<Vec<u8>, SignifyError> {
    std::fs::read(path).map_err(|source| SignifyError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// A verified embedded message.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The signed bytes, exactly.
    pub message: Vec<u8>,
    /// The 1-based line of the signature file the message starts on.
    pub first_line: usize,
}

/// `signify -V -e`: the message `sig_text` (the bytes of the file `sig`)
/// carries, once its signature verifies with `key` (read from `pubkey`).
pub fn verify_embedded(
    sig: &Path,
    sig_text: &[u8],
    pubkey: &Path,
    key: &PublicKey,
) -> Result<Verified, SignifyError> {
    let p: Parsed<{ 2 + KEYNUM_LEN + 64 }> = parse_b64(sig, sig_text)?;
    let signed_by = &p.bytes[2..2 + KEYNUM_LEN];
    if signed_by != key.keynum {
        return Err(SignifyError::WrongKey {
            sig: sig.to_path_buf(),
            pubkey: pubkey.to_path_buf(),
            signed_by: hex::encode(signed_by),
            key: key.keynum_hex(),
        });
    }
    let mut signature = [0; 64];
    signature.copy_from_slice(&p.bytes[2 + KEYNUM_LEN..]);
    let signature = ed25519_dalek::Signature::from_bytes(&signature);
    let message = &sig_text[p.rest..];
    key.key
        .verify_strict(message, &signature)
        .map_err(|_| SignifyError::BadSignature {
            sig: sig.to_path_buf(),
            pubkey: pubkey.to_path_buf(),
            key: key.keynum_hex(),
        })?;
    Ok(Verified {
        message: message.to_vec(),
        first_line: 3,
    })
}

/// A `SHA256` listing: file name → sha256 (lowercase hex), each with the
/// line of the signature file it is on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    pub files: BTreeMap<String, (String, usize)>,
}

impl Listing {
    pub fn sha256(&self, file: &str) -> Option<&str> {
        self.files.get(file).map(|(h, _)| h.as_str())
    }
}

/// The verified message as BSD-style checksum lines, `SHA256 (file) =
/// hex`, every line of it (signify -C refuses a line it cannot parse).
/// Errors name `path` and the line (`first_line` is the message's first).
pub fn parse_listing(
    path: &Path,
    first_line: usize,
    message: &[u8],
) -> Result<Listing, SignifyError> {
    let text = std::str::from_utf8(message)
        .map_err(|_| malformed(path, first_line, "the signed listing is not UTF-8 text"))?;
    let mut out = Listing::default();
    for (i, line) in text.lines().enumerate() {
        let n = first_line + i;
        let bad = |m: &str| malformed(path, n, format!("{m}: {line:?}"));
        let rest = line
            .strip_prefix("SHA256 (")
            .ok_or_else(|| bad("not a SHA256 (file) = hex line"))?;
        let (file, hash) = rest
            .split_once(") = ")
            .ok_or_else(|| bad("not a SHA256 (file) = hex line"))?;
        if file.is_empty() || file.contains(['(', ')', '/']) {
            return Err(bad("not a file name of the release directory"));
        }
        if !crate::catalogue::sources::valid_sha256(hash) {
            return Err(bad("the sha256 is not 64 lowercase hex digits"));
        }
        if let Some((_, first)) = out.files.get(file) {
            return Err(bad(&format!("{file} listed twice (first on line {first})")));
        }
        out.files.insert(file.to_string(), (hash.to_string(), n));
    }
    if out.files.is_empty() {
        return Err(malformed(path, first_line, "the signed listing is empty"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};

    const KEYNUM: [u8; 8] = *b"kiln0001";

    fn b64(b: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(b)
    }

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn pubkey_file(k: &SigningKey, keynum: [u8; 8]) -> Vec<u8> {
        let mut raw = b"Ed".to_vec();
        raw.extend(keynum);
        raw.extend(k.verifying_key().to_bytes());
        format!("untrusted comment: test public key\n{}\n", b64(&raw)).into_bytes()
    }

    fn sig_file(k: &SigningKey, keynum: [u8; 8], message: &[u8]) -> Vec<u8> {
        let mut raw = b"Ed".to_vec();
        raw.extend(keynum);
        raw.extend(k.sign(message).to_bytes());
        let mut out =
            format!("untrusted comment: verify with test.pub\n{}\n", b64(&raw)).into_bytes();
        out.extend(message);
        out
    }

    const LISTING: &[u8] = b"SHA256 (base79.tgz) = 0000000000000000000000000000000000000000000000000000000000000001\nSHA256 (bsd) = 0000000000000000000000000000000000000000000000000000000000000002\n";

    fn verify(sig: &[u8], pubkey: &[u8]) -> Result<Verified, SignifyError> {
        let k = parse_public_key(Path::new("k.pub"), pubkey)?;
        verify_embedded(Path::new("SHA256.sig"), sig, Path::new("k.pub"), &k)
    }

    #[test]
    fn a_genuine_embedded_signature_gives_its_message() {
        let k = key(7);
        let v = verify(&sig_file(&k, KEYNUM, LISTING), &pubkey_file(&k, KEYNUM)).unwrap();
        assert_eq!(v.message, LISTING);
        let l = parse_listing(Path::new("SHA256.sig"), v.first_line, &v.message).unwrap();
        assert_eq!(l.sha256("bsd").unwrap(), format!("{:064}", 2));
        assert_eq!(l.files["bsd"].1, 4);
    }

    #[test]
    fn one_changed_byte_of_the_listing_is_refused() {
        let k = key(7);
        let mut sig = sig_file(&k, KEYNUM, LISTING);
        let last = sig.len() - 2;
        sig[last] ^= 1;
        let e = verify(&sig, &pubkey_file(&k, KEYNUM)).unwrap_err();
        assert!(matches!(e, SignifyError::BadSignature { .. }), "{e}");
        assert!(e.to_string().contains("SHA256.sig"), "{e}");
    }

    #[test]
    fn another_key_number_is_the_wrong_key() {
        let k = key(7);
        let e = verify(
            &sig_file(&k, KEYNUM, LISTING),
            &pubkey_file(&key(8), *b"other001"),
        )
        .unwrap_err();
        let m = e.to_string();
        assert!(matches!(e, SignifyError::WrongKey { .. }), "{m}");
        assert!(
            m.contains(&hex::encode(KEYNUM)) && m.contains("k.pub"),
            "{m}"
        );
        // The same key number on another key: the signature fails.
        let e = verify(
            &sig_file(&k, KEYNUM, LISTING),
            &pubkey_file(&key(8), KEYNUM),
        )
        .unwrap_err();
        assert!(matches!(e, SignifyError::BadSignature { .. }), "{e}");
    }

    #[test]
    fn malformed_files_name_the_line() {
        let k = key(7);
        let good = sig_file(&k, KEYNUM, LISTING);
        let cases: [(Vec<u8>, usize); 5] = [
            (b"no comment\n".to_vec(), 1),
            (b"untrusted comment: \nAAAA\n".to_vec(), 1),
            (b"untrusted comment: x\nnot base64!\n".to_vec(), 2),
            (b"untrusted comment: x\nRWQ=\n".to_vec(), 2),
            (good.replace_first(b"RW", b"QW"), 2),
        ];
        for (text, line) in cases {
            let e = verify(&text, &pubkey_file(&k, KEYNUM))
                .unwrap_err()
                .to_string();
            assert!(e.starts_with(&format!("SHA256.sig:{line}:")), "{e}");
        }
        let e = verify(&good, b"untrusted comment: x\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("k.pub:2: missing new line"), "{e}");
    }

    #[test]
    fn listing_lines_are_bsd_sha256_lines() {
        let p = Path::new("SHA256.sig");
        let h = "a".repeat(64);
        for bad in [
            format!("SHA512 (bsd) = {h}\n"),
            format!("SHA256 (bsd) {h}\n"),
            format!("SHA256 (bsd) = {}\n", "A".repeat(64)),
            format!("SHA256 (a/b) = {h}\n"),
            format!("SHA256 (bsd) = {h}\nSHA256 (bsd) = {h}\n"),
            String::new(),
        ] {
            let e = parse_listing(p, 3, bad.as_bytes()).unwrap_err().to_string();
            assert!(e.starts_with("SHA256.sig:"), "{bad:?}: {e}");
        }
        let e = parse_listing(p, 3, format!("SHA256 (a) = {h}\nx\n").as_bytes()).unwrap_err();
        assert!(e.to_string().starts_with("SHA256.sig:4:"), "{e}");
    }

    trait ReplaceFirst {
        fn replace_first(&self, from: &[u8], to: &[u8]) -> Vec<u8>;
    }

    impl ReplaceFirst for Vec<u8> {
        fn replace_first(&self, from: &[u8], to: &[u8]) -> Vec<u8> {
            let at = self.windows(from.len()).position(|w| w == from).unwrap();
            let mut out = self[..at].to_vec();
            out.extend(to);
            out.extend(&self[at + from.len()..]);
            out
        }
    }
}

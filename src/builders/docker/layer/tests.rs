use super::*;

/// One entry of a test tar: path, type, content or link target, mtime.
struct E(&'static str, Kind, &'static str, u64);

/// A tar as an engine might write it: GNU headers, user names, in the
/// order given.
fn raw_tar(dir: &Path, name: &str, entries: &[E]) -> PathBuf {
    let mut b = tar::Builder::new(Vec::new());
    for E(path, kind, data, mtime) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mode(if *kind == Kind::Dir { 0o755 } else { 0o644 });
        h.set_mtime(*mtime);
        h.set_uid(0);
        h.set_gid(0);
        h.set_username("root").unwrap();
        h.set_groupname("wheel").unwrap();
        match kind {
            Kind::File => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, path, data.as_bytes()).unwrap();
            }
            Kind::Dir => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                b.append_data(&mut h, path, &[][..]).unwrap();
            }
            Kind::HardLink | Kind::Symlink => {
                h.set_entry_type(if *kind == Kind::HardLink {
                    tar::EntryType::Link
                } else {
                    tar::EntryType::Symlink
                });
                h.set_size(0);
                b.append_link(&mut h, path, data).unwrap();
            }
            _ => unreachable!(),
        }
    }
    let p = dir.join(name);
    std::fs::write(&p, b.into_inner().unwrap()).unwrap();
    p
}

/// The entries of a gzipped layer, with their contents.
fn read_layer(p: &Path) -> Vec<(Meta, Vec<u8>)> {
    let gz = flate2::read::GzDecoder::new(File::open(p).unwrap());
    let mut ar = tar::Archive::new(gz);
    let mut out = Vec::new();
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let m = Meta::read(&mut e).unwrap().unwrap();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        out.push((m, data));
    }
    out
}

fn names(entries: &[(Meta, Vec<u8>)]) -> Vec<String> {
    entries.iter().map(|(m, _)| m.name()).collect()
}

const SDE: u64 = 1_633_305_600;

#[test]
fn mtimes_are_clamped_and_user_names_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let raw = raw_tar(
        dir.path(),
        "raw.tar",
        &[
            E("old", Kind::File, "a", 100),
            E("new", Kind::File, "b", 2_000_000_000),
        ],
    );
    let out = dir.path().join("out.tar.gz");
    normalize(&raw, &out, SDE).unwrap();
    let entries = read_layer(&out);
    assert_eq!(names(&entries), ["new", "old"]);
    assert_eq!(entries[0].0.mtime, SDE);
    assert_eq!(entries[1].0.mtime, 100);
    let gz = flate2::read::GzDecoder::new(File::open(&out).unwrap());
    let mut ar = tar::Archive::new(gz);
    for e in ar.entries().unwrap() {
        let e = e.unwrap();
        assert_eq!(e.header().username().unwrap(), Some(""));
        assert_eq!(e.header().groupname().unwrap(), Some(""));
    }
}

#[test]
fn entries_go_in_path_order_each_directory_before_what_it_holds() {
    let dir = tempfile::tempdir().unwrap();
    let raw = raw_tar(
        dir.path(),
        "raw.tar",
        &[
            E("usr/local/bin/ocaml", Kind::File, "#!/bin/sh\n", 5),
            E("usr/", Kind::Dir, "", 5),
            E("usr/local/bin/", Kind::Dir, "", 5),
            E("etc/", Kind::Dir, "", 5),
            E("usr/local/", Kind::Dir, "", 5),
            E("usr/local/bin/opam", Kind::Symlink, "ocaml", 5),
        ],
    );
    let out = dir.path().join("out.tar.gz");
    normalize(&raw, &out, SDE).unwrap();
    let entries = read_layer(&out);
    assert_eq!(
        names(&entries),
        [
            "etc/",
            "usr/",
            "usr/local/",
            "usr/local/bin/",
            "usr/local/bin/ocaml",
            "usr/local/bin/opam"
        ]
    );
    assert_eq!(entries[4].1, b"#!/bin/sh\n");
    assert_eq!(entries[5].0.kind, Kind::Symlink);
    assert_eq!(entries[5].0.link, b"ocaml");
}

#[test]
fn a_hard_link_that_sorts_first_carries_the_content() {
    let dir = tempfile::tempdir().unwrap();
    let raw = raw_tar(
        dir.path(),
        "raw.tar",
        &[
            E("z/", Kind::Dir, "", 5),
            E("z/file", Kind::File, "hello", 5),
            E("a/", Kind::Dir, "", 5),
            E("a/link", Kind::HardLink, "z/file", 5),
            E("m/link", Kind::HardLink, "z/file", 5),
        ],
    );
    let out = dir.path().join("out.tar.gz");
    normalize(&raw, &out, SDE).unwrap();
    let entries = read_layer(&out);
    assert_eq!(names(&entries), ["a/", "a/link", "m/link", "z/", "z/file"]);
    assert_eq!(entries[1].0.kind, Kind::File);
    assert_eq!(entries[1].1, b"hello");
    for i in [2, 4] {
        assert_eq!(entries[i].0.kind, Kind::HardLink);
        assert_eq!(entries[i].0.link, b"a/link");
        assert_eq!(entries[i].0.mode, entries[1].0.mode);
    }
    // What an engine unpacks: every name holds the content.
    let root = dir.path().join("root");
    let gz = flate2::read::GzDecoder::new(File::open(&out).unwrap());
    tar::Archive::new(gz).unpack(&root).unwrap();
    for p in ["a/link", "m/link", "z/file"] {
        assert_eq!(std::fs::read(root.join(p)).unwrap(), b"hello", "{p}");
    }
}

#[test]
fn one_tree_in_two_orders_with_two_clocks_gives_one_blob() {
    let dir = tempfile::tempdir().unwrap();
    let a = raw_tar(
        dir.path(),
        "a.tar",
        &[
            E("bin/", Kind::Dir, "", 1_700_000_000),
            E("bin/sh", Kind::File, "shell", 1_700_000_000),
            E("bin/ash", Kind::HardLink, "bin/sh", 1_700_000_000),
        ],
    );
    let b = raw_tar(
        dir.path(),
        "b.tar",
        &[
            E("bin/ash", Kind::File, "shell", 1_800_000_000),
            E("bin/sh", Kind::HardLink, "bin/ash", 1_800_000_000),
            E("bin/", Kind::Dir, "", 1_800_000_000),
        ],
    );
    let (oa, ob) = (dir.path().join("a.tar.gz"), dir.path().join("b.tar.gz"));
    let la = normalize(&a, &oa, SDE).unwrap();
    let lb = normalize(&b, &ob, SDE).unwrap();
    assert_eq!((&la.digest, &la.diff_id), (&lb.digest, &lb.diff_id));
    let bytes = std::fs::read(&oa).unwrap();
    assert_eq!(bytes, std::fs::read(&ob).unwrap());
    assert_eq!(la.digest, crate::registry::sha256_digest(&bytes));
    assert_eq!(la.size, bytes.len() as u64);
    // gzip header: no name (FLG 0), mtime 0, OS unknown.
    assert_eq!(bytes[3], 0);
    assert_eq!(&bytes[4..8], &[0, 0, 0, 0]);
    assert_eq!(bytes[9], 255);
    // Normalizing again gives the same bytes.
    let again = normalize(&a, &dir.path().join("again.tar.gz"), SDE).unwrap();
    assert_eq!(again.digest, la.digest);
}

#[test]
fn long_names_xattrs_and_devices_survive() {
    let dir = tempfile::tempdir().unwrap();
    let long = format!("opt/{}/file", "x".repeat(150));
    let file = Meta {
        path: long.clone().into_bytes(),
        kind: Kind::File,
        mode: 0o4755,
        uid: 3_000_000,
        gid: 7,
        size: 4,
        mtime: 2_000_000_000,
        link: vec![],
        dev: (0, 0),
        xattrs: BTreeMap::from([("security.capability".to_string(), vec![1, 0, 2])]),
    };
    let dev = Meta {
        path: b"dev/null".to_vec(),
        kind: Kind::Char,
        mode: 0o666,
        uid: 0,
        gid: 0,
        size: 0,
        mtime: 5,
        link: vec![],
        dev: (1, 3),
        xattrs: BTreeMap::new(),
    };
    let mut raw = Vec::new();
    write_entry(&mut raw, &file, &b"data"[..]).unwrap();
    write_entry(&mut raw, &dev, io::empty()).unwrap();
    raw.extend_from_slice(&[0; 2 * BLOCK]);
    let p = dir.path().join("raw.tar");
    std::fs::write(&p, raw).unwrap();
    let out = dir.path().join("out.tar.gz");
    normalize(&p, &out, SDE).unwrap();
    let entries = read_layer(&out);
    assert_eq!(entries[0].0, dev);
    assert_eq!(entries[1].0, Meta { mtime: SDE, ..file });
    assert_eq!(entries[1].1, b"data");
}

#[test]
fn a_hard_link_to_nothing_in_the_layer_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let raw = raw_tar(
        dir.path(),
        "raw.tar",
        &[E("a/link", Kind::HardLink, "elsewhere", 5)],
    );
    let e = normalize(&raw, &dir.path().join("o.tar.gz"), SDE).unwrap_err();
    assert!(matches!(e, LayerError::Unsupported { .. }), "{e}");
    assert!(e.to_string().contains("a/link"), "{e}");
    assert_eq!(e.kind(), crate::model::FailureKind::Recipe);
}

#[test]
fn an_inherited_layer_keeps_its_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let raw = raw_tar(
        dir.path(),
        "raw.tar",
        &[E("etc/os-release", Kind::File, "busybox", 2_000_000_000)],
    );
    let a = compress(&raw, &dir.path().join("a.tar.gz")).unwrap();
    let b = compress(&raw, &dir.path().join("b.tar.gz")).unwrap();
    assert_eq!(a.digest, b.digest);
    assert_eq!(
        a.diff_id,
        crate::registry::sha256_digest(&std::fs::read(&raw).unwrap())
    );
}

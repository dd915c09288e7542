//! Layer tars made byte-stable, so that the same build gives the same
//! digest on any engine.
//!
//! Every entry is written again from its own fields: type, mode, uid, gid,
//! size, link target, device numbers and `SCHILY.xattr.*` records are
//! kept; the mtime is clamped to the SOURCE_DATE_EPOCH; atime, ctime, user
//! and group names are dropped. Entries go in byte order of their paths (a
//! directory precedes what it holds), and each set of hard-linked names
//! shares one carrier, the first name of the set in that order, so a link
//! always follows its target. Headers are ustar with PAX records only where
//! ustar cannot hold a field (long names, xattrs, large ids or sizes). The
//! tar is gzipped at a fixed level with an empty gzip header (no name,
//! mtime 0). [`Meta`] also reads an entry back, for the comparison of a
//! rebuild with a published image.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use flate2::write::GzEncoder;
use flate2::{Compression, GzBuilder};
use sha2::{Digest, Sha256};

/// The gzip level of every layer Kiln writes. Part of the output format:
/// changing it (or the deflate implementation, pinned in Cargo.lock)
/// changes layer digests, never layer contents (`diff_ids`).
const GZIP_LEVEL: u32 = 6;
/// Largest values the ustar octal fields hold (7 and 11 digits).
const MAX_ID: u64 = 0o7_777_777;
const MAX_SIZE: u64 = 0o77_777_777_777;
const BLOCK: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("layer {layer}: entry {entry}: {what}")]
    Unsupported {
        layer: PathBuf,
        entry: String,
        what: String,
    },
}

impl LayerError {
    /// A disk that fails is infrastructure; an entry that cannot be made
    /// reproducible fails the same way every time: the recipe's.
    pub fn kind(&self) -> crate::model::FailureKind {
        match self {
            LayerError::Io { .. } => crate::model::FailureKind::Infra,
            LayerError::Unsupported { .. } => crate::model::FailureKind::Recipe,
        }
    }
}

/// A compressed layer on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerBlob {
    pub path: PathBuf,
    /// `sha256:` of the gzip stream: the blob's digest.
    pub digest: String,
    pub size: u64,
    /// `sha256:` of the tar: the config's `rootfs.diff_ids` entry.
    pub diff_id: String,
    /// A parent's layer kept as its registry holds it: mounted from this
    /// repository (no file here).
    pub mount_from: Option<String>,
}

/// The types of entry a layer may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    File,
    HardLink,
    Symlink,
    Char,
    Block,
    Dir,
    Fifo,
}

impl Kind {
    fn flag(self) -> u8 {
        match self {
            Kind::File => b'0',
            Kind::HardLink => b'1',
            Kind::Symlink => b'2',
            Kind::Char => b'3',
            Kind::Block => b'4',
            Kind::Dir => b'5',
            Kind::Fifo => b'6',
        }
    }

    fn of(t: tar::EntryType) -> Option<Kind> {
        use tar::EntryType as T;
        Some(match t {
            T::Regular | T::Continuous => Kind::File,
            T::Link => Kind::HardLink,
            T::Symlink => Kind::Symlink,
            T::Char => Kind::Char,
            T::Block => Kind::Block,
            T::Directory => Kind::Dir,
            T::Fifo => Kind::Fifo,
            _ => return None,
        })
    }
}

/// One entry's fields, as a layer records them (PAX records applied).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    pub path: Vec<u8>,
    pub kind: Kind,
    /// Permission and set-id/sticky bits.
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    /// Bytes of content (regular files only).
    pub size: u64,
    pub mtime: u64,
    /// Target of a symlink or hard link.
    pub link: Vec<u8>,
    /// Device numbers (character and block devices only).
    pub dev: (u32, u32),
    /// Extended attributes, by name.
    pub xattrs: BTreeMap<String, Vec<u8>>,
}

fn unsupported(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::Unsupported, what)
}

impl Meta {
    /// The fields of `e`; `None` for a PAX global header, which names no
    /// file. Entry types a layer has no business holding are refused.
    pub fn read<R: Read>(e: &mut tar::Entry<'_, R>) -> io::Result<Option<Meta>> {
        let t = e.header().entry_type();
        if t == tar::EntryType::XGlobalHeader {
            return Ok(None);
        }
        let kind = Kind::of(t).ok_or_else(|| unsupported(format!("entry type {t:?}")))?;
        let h = e.header();
        let dev = match kind {
            Kind::Char | Kind::Block => (
                h.device_major()?.unwrap_or(0),
                h.device_minor()?.unwrap_or(0),
            ),
            _ => (0, 0),
        };
        let mut m = Meta {
            path: e.path_bytes().into_owned(),
            kind,
            mode: h.mode()? & 0o7777,
            uid: h.uid()?,
            gid: h.gid()?,
            size: if kind == Kind::File { e.size() } else { 0 },
            mtime: h.mtime()?,
            link: e
                .link_name_bytes()
                .map(|l| l.into_owned())
                .unwrap_or_default(),
            dev,
            xattrs: BTreeMap::new(),
        };
        if let Some(records) = e.pax_extensions()? {
            for r in records {
                let r = r?;
                let key = r
                    .key()
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                let number = || {
                    r.value()
                        .ok()
                        .and_then(|v| v.split('.').next())
                        .and_then(|v| v.parse::<u64>().ok())
                };
                if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                    m.xattrs.insert(name.to_string(), r.value_bytes().to_vec());
                } else if key == "uid" {
                    m.uid = number().unwrap_or(m.uid);
                } else if key == "gid" {
                    m.gid = number().unwrap_or(m.gid);
                } else if key == "mtime" {
                    m.mtime = number().unwrap_or(m.mtime);
                }
            }
        }
        Ok(Some(m))
    }

    /// The path as text, for messages.
    pub fn name(&self) -> String {
        String::from_utf8_lossy(&self.path).into_owned()
    }

    /// The first field that differs from `other`'s, as `mtime 5 != 7`
    /// (this entry's value first).
    pub fn differs(&self, other: &Meta) -> Option<String> {
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let fields = [
            (
                "type",
                format!("{:?}", self.kind),
                format!("{:?}", other.kind),
            ),
            (
                "mode",
                format!("{:04o}", self.mode),
                format!("{:04o}", other.mode),
            ),
            ("uid", self.uid.to_string(), other.uid.to_string()),
            ("gid", self.gid.to_string(), other.gid.to_string()),
            ("size", self.size.to_string(), other.size.to_string()),
            ("mtime", self.mtime.to_string(), other.mtime.to_string()),
            ("link", text(&self.link), text(&other.link)),
            (
                "device",
                format!("{:?}", self.dev),
                format!("{:?}", other.dev),
            ),
            (
                "xattrs",
                format!("{:?}", self.xattrs.keys().collect::<Vec<_>>()),
                format!("{:?}", other.xattrs.keys().collect::<Vec<_>>()),
            ),
        ];
        if let Some((name, a, b)) = fields.into_iter().find(|(_, a, b)| a != b) {
            return Some(format!("{name} {a} != {b}"));
        }
        (self.xattrs != other.xattrs).then(|| "xattr values differ".to_string())
    }
}

/// Writes a layer: hashes the tar, gzips it, hashes and counts the gzip
/// stream, and writes it to a file.
struct BlobWriter {
    gz: GzEncoder<Hashing<BufWriter<File>>>,
    tar: Sha256,
    path: PathBuf,
}

/// A writer that hashes and counts what it writes (the export's raw
/// layers use it too).
pub(super) struct Hashing<W> {
    pub(super) inner: W,
    pub(super) hash: Sha256,
    pub(super) n: u64,
}

impl<W> Hashing<W> {
    pub(super) fn new(inner: W) -> Hashing<W> {
        Hashing {
            inner,
            hash: Sha256::new(),
            n: 0,
        }
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.n += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl BlobWriter {
    fn create(path: &Path) -> io::Result<BlobWriter> {
        let file = Hashing {
            inner: BufWriter::with_capacity(1 << 20, File::create(path)?),
            hash: Sha256::new(),
            n: 0,
        };
        Ok(BlobWriter {
            gz: GzBuilder::new()
                .mtime(0)
                .operating_system(255)
                .write(file, Compression::new(GZIP_LEVEL)),
            tar: Sha256::new(),
            path: path.to_path_buf(),
        })
    }

    fn finish(self) -> io::Result<LayerBlob> {
        let mut file = self.gz.finish()?;
        file.flush()?;
        Ok(LayerBlob {
            path: self.path,
            digest: format!("sha256:{}", hex::encode(file.hash.finalize())),
            size: file.n,
            diff_id: format!("sha256:{}", hex::encode(self.tar.finalize())),
            mount_from: None,
        })
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.gz.write(buf)?;
        self.tar.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.gz.flush()
    }
}

/// Compress a layer as it is (one taken unchanged from the parent image,
/// whose bytes the parent's digest already fixes).
pub fn compress(raw: &Path, out: &Path) -> Result<LayerBlob, LayerError> {
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| LayerError::Io { path, source }
    };
    let mut w = BlobWriter::create(out).map_err(io_err(out))?;
    let mut r = File::open(raw).map_err(io_err(raw))?;
    io::copy(&mut r, &mut w).map_err(io_err(out))?;
    w.finish().map_err(io_err(out))
}

/// Write `raw`'s entries byte-stable to `out` (gzipped), every mtime
/// clamped to `sde`.
pub fn normalize(raw: &Path, out: &Path, sde: u64) -> Result<LayerBlob, LayerError> {
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| LayerError::Io { path, source }
    };
    let entries = index(raw)?;
    let entries = canonical(entries, sde).map_err(|(entry, what)| LayerError::Unsupported {
        layer: raw.to_path_buf(),
        entry,
        what,
    })?;
    let mut src = File::open(raw).map_err(io_err(raw))?;
    let mut w = BlobWriter::create(out).map_err(io_err(out))?;
    for (m, at) in &entries {
        if m.kind == Kind::File {
            src.seek(SeekFrom::Start(*at)).map_err(io_err(raw))?;
        }
        let data = Read::by_ref(&mut src).take(m.size);
        write_entry(&mut w, m, data).map_err(io_err(out))?;
    }
    w.write_all(&[0; 2 * BLOCK]).map_err(io_err(out))?;
    w.finish().map_err(io_err(out))
}

/// Every entry of a layer tar with the offset of its data.
fn index(raw: &Path) -> Result<Vec<(Meta, u64)>, LayerError> {
    let io_err = |source: io::Error| LayerError::Io {
        path: raw.to_path_buf(),
        source,
    };
    let mut ar = tar::Archive::new(File::open(raw).map_err(io_err)?);
    let mut out = Vec::new();
    for e in ar.entries_with_seek().map_err(io_err)? {
        let mut e = e.map_err(io_err)?;
        let name = String::from_utf8_lossy(&e.path_bytes()).into_owned();
        match Meta::read(&mut e) {
            Ok(Some(m)) => out.push((m, e.raw_file_position())),
            Ok(None) => {}
            Err(source) if source.kind() == io::ErrorKind::Unsupported => {
                return Err(LayerError::Unsupported {
                    layer: raw.to_path_buf(),
                    entry: name,
                    what: source.to_string(),
                });
            }
            Err(source) => return Err(io_err(source)),
        }
    }
    Ok(out)
}

/// The entries in their canonical form and order: mtimes clamped, each
/// hard-link set carried by its first name, sorted by path. A hard link
/// to something that is not a regular file of the layer is refused as
/// `(entry, why)`.
fn canonical(
    mut entries: Vec<(Meta, u64)>,
    sde: u64,
) -> Result<Vec<(Meta, u64)>, (String, String)> {
    let files: HashMap<Vec<u8>, usize> = entries
        .iter()
        .enumerate()
        .filter(|(_, (m, _))| m.kind == Kind::File)
        .map(|(i, (m, _))| (m.path.clone(), i))
        .collect();
    let mut sets: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, (m, _)) in entries.iter().enumerate() {
        if m.kind == Kind::HardLink {
            let Some(&target) = files.get(&m.link) else {
                return Err((
                    m.name(),
                    format!(
                        "hard link to {}, which is not a regular file of this layer",
                        String::from_utf8_lossy(&m.link)
                    ),
                ));
            };
            sets.entry(target).or_default().push(i);
        }
    }
    for (target, links) in sets {
        let (file, at) = entries[target].clone();
        let mut members: Vec<usize> = links;
        members.push(target);
        members.sort_by(|a, b| entries[*a].0.path.cmp(&entries[*b].0.path));
        let carrier = entries[members[0]].0.path.clone();
        for (k, i) in members.into_iter().enumerate() {
            let path = std::mem::take(&mut entries[i].0.path);
            entries[i] = if k == 0 {
                (
                    Meta {
                        path,
                        ..file.clone()
                    },
                    at,
                )
            } else {
                let link = Meta {
                    path,
                    kind: Kind::HardLink,
                    size: 0,
                    link: carrier.clone(),
                    ..file.clone()
                };
                (link, 0)
            };
        }
    }
    for (m, _) in &mut entries {
        m.mtime = m.mtime.min(sde);
    }
    entries.sort_by(|a, b| a.0.path.cmp(&b.0.path));
    Ok(entries)
}

/// Write one entry: PAX records if ustar cannot hold it, the ustar header,
/// the data padded to a block.
pub fn write_entry(w: &mut impl Write, m: &Meta, mut data: impl Read) -> io::Result<()> {
    let mut records: Vec<(String, Vec<u8>)> = m
        .xattrs
        .iter()
        .map(|(k, v)| (format!("SCHILY.xattr.{k}"), v.clone()))
        .collect();
    if m.path.len() > 100 {
        records.push(("path".into(), m.path.clone()));
    }
    if m.link.len() > 100 {
        records.push(("linkpath".into(), m.link.clone()));
    }
    for (key, v, max) in [
        ("uid", m.uid, MAX_ID),
        ("gid", m.gid, MAX_ID),
        ("size", m.size, MAX_SIZE),
    ] {
        if v > max {
            records.push((key.into(), v.to_string().into_bytes()));
        }
    }
    if !records.is_empty() {
        records.sort();
        let pax = pax_data(&records);
        let h = PaxHeader(pax.len() as u64).header();
        w.write_all(&h)?;
        write_padded(w, &pax)?;
    }
    w.write_all(&header(m))?;
    if m.kind == Kind::File {
        let n = io::copy(&mut data, w)?;
        if n != m.size {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{}: {n} of {} bytes", m.name(), m.size),
            ));
        }
        let pad = (BLOCK - (n as usize % BLOCK)) % BLOCK;
        w.write_all(&[0; BLOCK][..pad])?;
    }
    Ok(())
}

fn write_padded(w: &mut impl Write, data: &[u8]) -> io::Result<()> {
    w.write_all(data)?;
    w.write_all(&[0; BLOCK][..(BLOCK - data.len() % BLOCK) % BLOCK])
}

/// PAX records: `<len> <key>=<value>\n`, the length counting itself.
fn pax_data(records: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in records {
        let base = k.len() + v.len() + 3;
        let mut len = base + base.to_string().len();
        if len.to_string().len() > base.to_string().len() {
            len += 1;
        }
        out.extend_from_slice(format!("{len} {k}=").as_bytes());
        out.extend_from_slice(v);
        out.push(b'\n');
    }
    out
}

/// The header of a PAX extended-header entry of this many bytes.
struct PaxHeader(u64);

impl PaxHeader {
    fn header(&self) -> [u8; BLOCK] {
        let mut h = [0u8; BLOCK];
        put(&mut h[0..100], b"././@PaxHeader");
        octal(&mut h[100..108], 0o644);
        octal(&mut h[108..116], 0);
        octal(&mut h[116..124], 0);
        octal(&mut h[124..136], self.0);
        octal(&mut h[136..148], 0);
        h[156] = b'x';
        finish_header(&mut h);
        h
    }
}

/// The ustar header of `m` (fields too large for it are in PAX records).
fn header(m: &Meta) -> [u8; BLOCK] {
    let mut h = [0u8; BLOCK];
    put(&mut h[0..100], &m.path);
    octal(&mut h[100..108], u64::from(m.mode));
    octal(&mut h[108..116], m.uid.min(MAX_ID));
    octal(&mut h[116..124], m.gid.min(MAX_ID));
    octal(&mut h[124..136], m.size.min(MAX_SIZE));
    octal(&mut h[136..148], m.mtime.min(MAX_SIZE));
    h[156] = m.kind.flag();
    put(&mut h[157..257], &m.link);
    if matches!(m.kind, Kind::Char | Kind::Block) {
        octal(&mut h[329..337], u64::from(m.dev.0));
        octal(&mut h[337..345], u64::from(m.dev.1));
    }
    finish_header(&mut h);
    h
}

/// Magic, version and checksum.
fn finish_header(h: &mut [u8; BLOCK]) {
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
}

/// As much of `v` as the field holds (the rest is in a PAX record).
fn put(field: &mut [u8], v: &[u8]) {
    let n = v.len().min(field.len());
    field[..n].copy_from_slice(&v[..n]);
}

/// Zero-padded octal digits and a NUL.
fn octal(field: &mut [u8], v: u64) {
    let digits = format!("{v:0width$o}", width = field.len() - 1);
    put(field, digits.as_bytes());
    if let Some(last) = field.last_mut() {
        *last = 0;
    }
}

#[cfg(test)]
mod tests;

//! OCI image layers (tar changesets with whiteouts, OCI image spec
//! `image-layer.md`) applied to a root filesystem directory, as container
//! runtimes unpack an image; blobs checked first with [`verify_digest`] or,
//! while downloading, [`DigestWriter`].
//!
//! Paths are resolved inside the root as a `chroot` to it would: absolute
//! paths and symlink targets start at the root, `..` in a symlink target
//! stops there, `..` in an entry's own path is refused. Nothing outside the
//! root is ever created, changed or deleted.
//!
//! This file is long (about 710 lines of code, 1,160 with tests) because applying a layer
//! safely (digests, whiteouts, paths resolved inside the root, bounds) is one
//! concern; its tests are the other half.

use std::cell::Cell;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;

use flate2::read::MultiGzDecoder;
use sha2::{Digest, Sha256};
use tar::{Archive, Entries, Entry, EntryType};

/// Bytes read at a time from a blob: 64 KiB.
const BUF_BYTES: usize = 64 * 1024;
/// Symlinks followed while resolving one path before giving up (`ELOOP`).
const MAX_SYMLINKS: u32 = 40;

/// Why a blob could not be checked or a layer could not be applied.
///
/// After an error from [`apply_layer`] the root is partly applied: discard it.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// A file system operation failed.
    #[error("I/O error on `{}`: {source}", path.display())]
    Io {
        /// The file concerned: the blob, or a path inside the root.
        path: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },
    /// The media type names no layer format this module reads.
    #[error(
        "unsupported layer media type `{media_type}`: expected an OCI or Docker \
         layer, tar or tar+gzip (zstd is not supported)"
    )]
    UnsupportedMediaType {
        /// The media type as given.
        media_type: String,
    },
    /// The digest is not `sha256:` followed by 64 lowercase hex digits.
    #[error("malformed digest `{digest}`: expected `sha256:` and 64 lowercase hex digits")]
    BadDigest {
        /// The digest as given.
        digest: String,
    },
    /// The blob's content does not hash to the expected digest.
    #[error("digest mismatch: expected {expected}, content hashes to {actual}")]
    DigestMismatch {
        /// The digest the blob should have (`sha256:<hex>`).
        expected: String,
        /// The digest of the bytes read (`sha256:<hex>`).
        actual: String,
    },
    /// A layer entry's path, hard link target or whiteout would leave the
    /// root: it has a `..` component, or whites out `.` or `..`.
    #[error("unsafe path `{}` in layer: `..` components and whiteouts of `.`/`..` are refused", path.display())]
    UnsafePath {
        /// The path as written in the tar entry.
        path: PathBuf,
    },
    /// The layer's tar stream (uncompressed) is longer than the bytes
    /// left to the image (`--image-max-bytes`): a decompression bomb, or an
    /// image too big for this worker.
    #[error("the layer unpacks to more than the {limit_bytes} bytes left to the image (--image-max-bytes)")]
    TooLarge {
        /// The bytes the layer's tar stream was allowed.
        limit_bytes: u64,
    },
    /// The tar or gzip stream is unreadable: bad header, bad compressed
    /// data, or the stream ends early.
    #[error("corrupt layer: {message}")]
    Corrupt {
        /// The blob, the entry if known, and what was wrong.
        message: String,
    },
}

/// How a layer blob is compressed, as told by its media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerCompression {
    /// A plain tar stream.
    None,
    /// A gzip-compressed tar stream (concatenated gzip members accepted).
    Gzip,
}

impl LayerCompression {
    /// The compression of a layer with this media type (matched exactly):
    ///
    /// - `None`: `application/vnd.oci.image.layer.v1.tar`,
    ///   `application/vnd.oci.image.layer.nondistributable.v1.tar`,
    ///   `application/vnd.docker.image.rootfs.diff.tar`,
    ///   `application/vnd.docker.image.rootfs.foreign.diff.tar`;
    /// - `Gzip`: the same OCI types with `+gzip`, and the Docker ones with
    ///   `.gzip`.
    ///
    /// Errors: [`LayerError::UnsupportedMediaType`] for anything else,
    /// `+zstd` layers included.
    pub fn from_media_type(media_type: &str) -> Result<LayerCompression, LayerError> {
        match media_type {
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar"
            | "application/vnd.docker.image.rootfs.diff.tar"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar" => Ok(LayerCompression::None),
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => {
                Ok(LayerCompression::Gzip)
            }
            _ => Err(LayerError::UnsupportedMediaType {
                media_type: media_type.to_owned(),
            }),
        }
    }
}

/// Checks that the file at `path` hashes to `digest`
/// (`sha256:<64 lowercase hex>`), reading it once in 64 KiB pieces.
///
/// Returns the file's size in bytes. Errors: [`LayerError::BadDigest`]
/// (checked before the file is opened), [`LayerError::Io`] (with `path`),
/// [`LayerError::DigestMismatch`] naming both digests.
pub fn verify_digest(path: &Path, digest: &str) -> Result<u64, LayerError> {
    let valid = digest.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    });
    if !valid {
        return Err(LayerError::BadDigest {
            digest: digest.to_owned(),
        });
    }
    let mut hashed = DigestWriter::new(io::sink());
    // `io::copy` reads through the BufReader's own 64 KiB buffer.
    io::copy(&mut open_blob(path)?, &mut hashed).map_err(io_at(path))?;
    let (_, actual, size) = hashed.finish();
    if actual != digest {
        return Err(LayerError::DigestMismatch {
            expected: digest.to_owned(),
            actual,
        });
    }
    Ok(size)
}

/// A writer that passes everything to `inner` and hashes it (sha256) on the
/// way, so a blob downloaded to a file needs no second read for its digest.
///
/// Only the bytes `inner` accepted are hashed and counted.
#[derive(Debug)]
pub struct DigestWriter<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W> DigestWriter<W> {
    /// Wraps `inner`; nothing written yet.
    pub fn new(inner: W) -> DigestWriter<W> {
        DigestWriter {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    /// Returns `inner` (not flushed: flush first if it buffers), the digest
    /// of everything written (`sha256:<64 lowercase hex>`, comparable to a
    /// descriptor's digest) and its size in bytes.
    pub fn finish(self) -> (W, String, u64) {
        (self.inner, sha256_string(self.hasher), self.bytes)
    }
}

impl<W: Write> Write for DigestWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// What applying one layer did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LayerStats {
    /// Entries extracted or deliberately skipped (device nodes, fifos, the
    /// root directory itself); whiteouts and tar extension headers excluded.
    pub entries: u64,
    /// Whiteout entries applied (`.wh.<name>` and `.wh..wh..opq`), counted
    /// even when what they name was not there.
    pub whiteouts: u64,
    /// Bytes of regular file content written (uncompressed).
    pub size_bytes: u64,
    /// Bytes of the uncompressed tar stream (what `max_tar_bytes` bounds).
    pub tar_bytes: u64,
}

/// Applies one layer, the tar stream in the file `blob` compressed as
/// `compression`, on top of the directory `rootfs`.
///
/// Pass 1 applies the whiteouts: `.wh.<name>` removes `<name>` (file,
/// symlink or whole tree) from the same directory, `.wh..wh..opq` empties
/// its directory. Pass 2 extracts every other entry, so the layer's own
/// entries survive its whiteouts whatever the tar order. Whiteout entries
/// (and other `.wh..wh.*` names) are never written.
///
/// Extraction keeps modes (setuid included), mtimes (directories' too),
/// symlinks, hard links (targets resolved inside the root) and, when the
/// process runs as root, owners. An entry replaces whatever is at its path
/// unless both are directories (then the directory is kept and its metadata
/// updated). Missing parent directories are created (0755). Character and
/// block devices and fifos are skipped and counted. Extended attributes are
/// not applied. Paths go through symlinks in the root as in a chroot (see
/// the module docs), never out of it.
///
/// Blocking file I/O: from async code, call it in `spawn_blocking`.
///
/// Errors: [`LayerError::Io`] (the blob or the path inside the root),
/// [`LayerError::UnsafePath`], [`LayerError::Corrupt`],
/// [`LayerError::TooLarge`] once more than `max_tar_bytes` of uncompressed
/// tar stream were read (in either pass: a decompression bomb costs at
/// most that much reading and writing). The root is left partly applied
/// after an error.
pub fn apply_layer(
    blob: &Path,
    compression: LayerCompression,
    rootfs: &Path,
    max_tar_bytes: u64,
) -> Result<LayerStats, LayerError> {
    let over = Rc::new(Cell::new(false));
    apply_layer_within(blob, compression, rootfs, max_tar_bytes, &over).map_err(|e| {
        if over.get() {
            LayerError::TooLarge {
                limit_bytes: max_tar_bytes,
            }
        } else {
            e
        }
    })
}

fn apply_layer_within(
    blob: &Path,
    compression: LayerCompression,
    rootfs: &Path,
    max_tar_bytes: u64,
    over: &Rc<Cell<bool>>,
) -> Result<LayerStats, LayerError> {
    fs::read_dir(rootfs).map_err(io_at(rootfs))?; // a directory we can read
    let mut stats = LayerStats::default();
    let reader = open_blob(blob)?;
    let limited = |inner: Box<dyn Read>| Limit {
        inner,
        read: 0,
        limit: max_tar_bytes,
        over: Rc::clone(over),
    };
    stats.whiteouts = match compression {
        LayerCompression::None => {
            let size = reader.get_ref().metadata().map_err(io_at(blob))?.len();
            if size > max_tar_bytes {
                over.set(true);
                return Err(corrupt(blob)(io::Error::other("over the limit")));
            }
            stats.tar_bytes = size;
            let mut archive = Archive::new(reader);
            let entries = archive.entries_with_seek().map_err(corrupt(blob))?;
            whiteout_pass(entries, blob, rootfs)?
        }
        LayerCompression::Gzip => {
            let mut archive = Archive::new(limited(Box::new(MultiGzDecoder::new(reader))));
            let n = whiteout_pass(archive.entries().map_err(corrupt(blob))?, blob, rootfs)?;
            // Read to the end, so the gzip trailer (CRC, length) is checked.
            let mut rest = archive.into_inner();
            io::copy(&mut rest, &mut io::sink()).map_err(corrupt(blob))?;
            stats.tar_bytes = rest.read;
            n
        }
    };
    extract_pass(blob, compression, rootfs, &mut stats, &limited)?;
    Ok(stats)
}

/// Counts the bytes read through it; a read past `limit` fails (and sets
/// `over`, so the caller reports [`LayerError::TooLarge`]).
struct Limit<R> {
    inner: R,
    read: u64,
    limit: u64,
    over: Rc<Cell<bool>>,
}

impl<R: Read> Read for Limit<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        if self.read > self.limit {
            self.over.set(true);
            return Err(io::Error::other("the layer is larger than its limit"));
        }
        Ok(n)
    }
}

/// Pass 1: applies the whiteouts; checks every entry's path on the way.
fn whiteout_pass<R: Read>(
    entries: Entries<'_, R>,
    blob: &Path,
    rootfs: &Path,
) -> Result<u64, LayerError> {
    let mut whiteouts = 0;
    for entry in entries {
        let entry = entry.map_err(corrupt(blob))?;
        let rel = relative(&entry.path().map_err(corrupt(blob))?)?;
        if entry.header().entry_type().is_hard_link() {
            link_rel(&entry, blob)?;
        }
        let Some(name) = rel.file_name() else {
            continue;
        };
        match classify(name, &rel)? {
            Name::Plain | Name::Reserved => continue,
            Name::Opaque => {
                if let Some(dir) = resolve_parent(rootfs, &rel, false)? {
                    for child in fs::read_dir(&dir).map_err(io_at(&dir))? {
                        clear(&child.map_err(io_at(&dir))?.path(), false)?;
                    }
                }
            }
            Name::Whiteout(victim) => {
                if let Some(dir) = resolve_parent(rootfs, &rel, false)? {
                    clear(&dir.join(victim), false)?;
                }
            }
        }
        whiteouts += 1;
    }
    Ok(whiteouts)
}

/// Pass 2: extracts every entry that is not a whiteout.
fn extract_pass(
    blob: &Path,
    compression: LayerCompression,
    rootfs: &Path,
    stats: &mut LayerStats,
    limited: &dyn Fn(Box<dyn Read>) -> Limit<Box<dyn Read>>,
) -> Result<(), LayerError> {
    let reader = open_blob(blob)?;
    let stream: Box<dyn Read> = match compression {
        LayerCompression::None => Box::new(reader),
        LayerCompression::Gzip => Box::new(limited(Box::new(MultiGzDecoder::new(reader)))),
    };
    let failed = Rc::new(Cell::new(false));
    let mut archive = Archive::new(Watched {
        inner: stream,
        failed: Rc::clone(&failed),
    });
    archive.set_preserve_permissions(true);
    archive.set_preserve_mtime(true);
    // Only root may give files away; anyone else would fail every entry.
    // SAFETY: geteuid has no preconditions and cannot fail.
    archive.set_preserve_ownerships(unsafe { libc::geteuid() } == 0);
    archive.set_unpack_xattrs(false);
    archive.set_overwrite(true);
    let mut dirs = Vec::new();
    for entry in archive.entries().map_err(corrupt(blob))? {
        let mut entry = entry.map_err(corrupt(blob))?;
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() {
            continue; // other extension headers are merged by `entries()`
        }
        let rel = relative(&entry.path().map_err(corrupt(blob))?)?;
        let Some(name) = rel.file_name() else {
            stats.entries += 1; // the root itself: left as the caller made it
            continue;
        };
        if !matches!(classify(name, &rel)?, Name::Plain) {
            continue;
        }
        stats.entries += 1;
        if matches!(kind, EntryType::Char | EntryType::Block | EntryType::Fifo) {
            continue;
        }
        let Some(parent) = resolve_parent(rootfs, &rel, true)? else {
            continue;
        };
        let target = parent.join(name);
        if kind.is_hard_link() {
            hard_link(&entry, blob, rootfs, &target)?;
            continue;
        }
        clear(&target, kind.is_dir())?;
        if kind.is_file() || kind.is_contiguous() {
            stats.size_bytes += entry.size();
        }
        entry.unpack(&target).map_err(|e| {
            if failed.get() {
                corrupt(blob)(io::Error::new(
                    e.kind(),
                    format!("entry `{}`: {e}", rel.display()),
                ))
            } else {
                io_at(&target)(e)
            }
        })?;
        if kind.is_dir() {
            dirs.push((rel, entry.header().mtime().unwrap_or(0)));
        }
    }
    // Last, as every entry written into a directory changed its mtime.
    for (rel, mtime) in dirs {
        set_mtime(rootfs, &rel, mtime)?;
    }
    Ok(())
}

/// What an entry's base name makes of it: an entry to extract,
/// `.wh..wh..opq`, another `.wh..wh.*` name (ignored), `.wh.<name>`.
enum Name<'a> {
    Plain,
    Opaque,
    Reserved,
    Whiteout(&'a OsStr),
}

fn classify<'a>(name: &'a OsStr, rel: &Path) -> Result<Name<'a>, LayerError> {
    let bytes = name.as_bytes();
    if bytes == b".wh..wh..opq" {
        return Ok(Name::Opaque);
    }
    if bytes.starts_with(b".wh..wh.") {
        return Ok(Name::Reserved); // reserved by the spec
    }
    match bytes.strip_prefix(b".wh.") {
        None => Ok(Name::Plain),
        Some(b"" | b"." | b"..") => Err(LayerError::UnsafePath {
            path: rel.to_path_buf(),
        }),
        Some(victim) => Ok(Name::Whiteout(OsStr::from_bytes(victim))),
    }
}

/// A hard link entry's target relative to the root; `..` refused.
fn link_rel<R: Read>(entry: &Entry<'_, R>, blob: &Path) -> Result<PathBuf, LayerError> {
    match entry.link_name().map_err(corrupt(blob))? {
        Some(link) => relative(&link),
        None => Err(LayerError::Corrupt {
            message: format!("layer `{}`: hard link without a target", blob.display()),
        }),
    }
}

/// `raw` without its root and `.` components; `..` refused.
fn relative(raw: &Path) -> Result<PathBuf, LayerError> {
    let mut rel = PathBuf::new();
    for part in raw.components() {
        match part {
            Component::Normal(p) => rel.push(p),
            Component::ParentDir => {
                return Err(LayerError::UnsafePath {
                    path: raw.to_path_buf(),
                })
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    Ok(rel)
}

/// Resolves the directory holding `rel`'s last component, inside `root`, as
/// a chroot to `root` would: symlinks on the way are followed, absolute
/// targets from `root`, `..` never above `root`. The last component is not
/// looked at. The result is `root` joined with real directories only.
///
/// A missing directory is created (0755) when `create`, else gives `None`;
/// a non-directory on the way is `ENOTDIR` when `create`, else `None`.
fn resolve_parent(root: &Path, rel: &Path, create: bool) -> Result<Option<PathBuf>, LayerError> {
    // Components still to walk, the next one last; `None` is `..`.
    let mut todo: Vec<Option<OsString>> = Vec::new();
    push_steps(&mut todo, rel.parent().unwrap_or(Path::new("")));
    let mut dir = root.to_path_buf();
    let mut depth = 0usize;
    let mut links = 0u32;
    while let Some(step) = todo.pop() {
        let Some(name) = step else {
            if depth > 0 {
                dir.pop();
                depth -= 1;
            }
            continue;
        };
        let next = dir.join(&name);
        match fs::symlink_metadata(&next) {
            Ok(meta) if meta.is_dir() => {}
            Ok(meta) if meta.file_type().is_symlink() => {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(io_at(&next)(io::Error::from_raw_os_error(libc::ELOOP)));
                }
                let target = fs::read_link(&next).map_err(io_at(&next))?;
                if target.is_absolute() {
                    dir = root.to_path_buf();
                    depth = 0;
                }
                push_steps(&mut todo, &target);
                continue;
            }
            Ok(_) if create => {
                return Err(io_at(&next)(io::Error::from_raw_os_error(libc::ENOTDIR)));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                fs::DirBuilder::new()
                    .mode(0o755)
                    .create(&next)
                    .map_err(io_at(&next))?;
            }
            Ok(_) => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_at(&next)(e)),
        }
        dir = next;
        depth += 1;
    }
    Ok(Some(dir))
}

/// Reads the regular file at `rel` inside `root` as a process chrooted to
/// `root` would find it: every symlink on the way, the last one too, is
/// resolved inside `root` (at most [`MAX_SYMLINKS`]), so an image's
/// `/etc/passwd -> /host/secret` never reads the host's file.
///
/// `Ok(None)`: nothing there, or not a regular file. Errors:
/// [`LayerError::Io`] (with the path) for an unreadable file, a symlink
/// loop (`ELOOP`), or a file longer than `max_bytes` (`EFBIG`).
pub(crate) fn read_inside(
    root: &Path,
    rel: &Path,
    max_bytes: u64,
) -> Result<Option<Vec<u8>>, LayerError> {
    let mut rel = rel.to_path_buf();
    for _ in 0..=MAX_SYMLINKS {
        let Some(dir) = resolve_parent(root, &rel, false)? else {
            return Ok(None);
        };
        let Some(name) = rel.file_name() else {
            return Ok(None);
        };
        let path = dir.join(name);
        let meta = match fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_at(&path)(e)),
        };
        if meta.file_type().is_symlink() {
            let target = fs::read_link(&path).map_err(io_at(&path))?;
            // Relative targets start from the link's own directory.
            let base = dir.strip_prefix(root).unwrap_or(Path::new(""));
            rel = base.join(target);
            continue;
        }
        if !meta.is_file() {
            return Ok(None);
        }
        let file = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(io_at(&path))?;
        let mut bytes = Vec::new();
        file.take(max_bytes.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(io_at(&path))?;
        if bytes.len() as u64 > max_bytes {
            return Err(io_at(&path)(io::Error::from_raw_os_error(libc::EFBIG)));
        }
        return Ok(Some(bytes));
    }
    Err(io_at(root.join(&rel).as_path())(
        io::Error::from_raw_os_error(libc::ELOOP),
    ))
}

/// Pushes `path`'s steps on `todo` so that its first one is popped first.
fn push_steps(todo: &mut Vec<Option<OsString>>, path: &Path) {
    for part in path.components().rev() {
        match part {
            Component::Normal(name) => todo.push(Some(name.to_owned())),
            Component::ParentDir => todo.push(None),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
}

/// Removes whatever is at `path` (a directory with all it holds) without
/// following a symlink, unless it is a directory and `keep_dir`.
fn clear(path: &Path, keep_dir: bool) -> Result<(), LayerError> {
    let removed = match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() && keep_dir => Ok(()),
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    };
    removed.map_err(io_at(path))
}

/// Makes `target` a hard link to the entry's link target, resolved in the root.
fn hard_link<R: Read>(
    entry: &Entry<'_, R>,
    blob: &Path,
    rootfs: &Path,
    target: &Path,
) -> Result<(), LayerError> {
    let link = link_rel(entry, blob)?;
    let source = match (link.file_name(), resolve_parent(rootfs, &link, false)?) {
        (Some(name), Some(dir)) => dir.join(name),
        _ => rootfs.join(&link),
    };
    if source == target {
        return Ok(());
    }
    clear(target, false)?;
    fs::hard_link(&source, target).map_err(|e| {
        let message = format!("hard link to `{}`: {e}", source.display());
        io_at(target)(io::Error::new(e.kind(), message))
    })
}

/// Sets the mtime (and atime) of the directory extracted at `rel`, if it is
/// still there, without following a symlink.
fn set_mtime(rootfs: &Path, rel: &Path, mtime: u64) -> Result<(), LayerError> {
    use nix::sys::stat::{utimensat, UtimensatFlags};
    let (Some(name), Some(dir)) = (rel.file_name(), resolve_parent(rootfs, rel, false)?) else {
        return Ok(());
    };
    let path = dir.join(name);
    let time = nix::sys::time::TimeSpec::new(mtime.min(i64::MAX as u64) as libc::time_t, 0);
    let flag = UtimensatFlags::NoFollowSymlink;
    match utimensat(nix::fcntl::AT_FDCWD, &path, &time, &time, flag) {
        Ok(()) | Err(nix::errno::Errno::ENOENT) => Ok(()),
        Err(e) => Err(io_at(&path)(e.into())),
    }
}

/// Opens the blob for one pass.
fn open_blob(blob: &Path) -> Result<BufReader<File>, LayerError> {
    let file = File::open(blob).map_err(io_at(blob))?;
    Ok(BufReader::with_capacity(BUF_BYTES, file))
}

/// The blob's stream, noting a read error or an early end: an unpack that
/// fails after one is the layer's fault ([`LayerError::Corrupt`]), not the
/// root's.
struct Watched<R> {
    inner: R,
    failed: Rc<Cell<bool>>,
}

impl<R: Read> Read for Watched<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let result = self.inner.read(buf);
        match &result {
            Ok(0) if !buf.is_empty() => self.failed.set(true),
            Err(e) if e.kind() != io::ErrorKind::Interrupted => self.failed.set(true),
            _ => {}
        }
        result
    }
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> LayerError + '_ {
    move |source| LayerError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn corrupt(blob: &Path) -> impl FnOnce(io::Error) -> LayerError + '_ {
    move |e| LayerError::Corrupt {
        message: format!("layer `{}`: {e}", blob.display()),
    }
}

/// `sha256:` and the lowercase hex of the hash.
fn sha256_string(hasher: Sha256) -> String {
    use std::fmt::Write as _;
    let mut out = String::from("sha256:");
    for byte in hasher.finalize() {
        let _ = write!(out, "{byte:02x}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{write::GzEncoder, Compression};
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use tar::Header;
    use tempfile::TempDir;

    type Item = (Header, Vec<u8>);

    /// Entries from lines `<kind> <path> [<content or link target>]`, kind
    /// `d`ir, `f`ile, `s`ymlink, `h`ard link, `c`har/`b`lock device, fifo
    /// `p`. Paths are written raw: `..` and absolute paths stay as given.
    fn t(lines: &[&str]) -> Vec<Item> {
        let item = |line: &&str| {
            let mut parts = line.splitn(3, ' ');
            let (kind, path) = (parts.next().unwrap(), parts.next().unwrap());
            let arg = parts.next().unwrap_or("");
            let (kind, data, link) = match kind {
                "d" => (EntryType::Directory, "", ""),
                "f" => (EntryType::Regular, arg, ""),
                "s" => (EntryType::Symlink, "", arg),
                "h" => (EntryType::Link, "", arg),
                "c" => (EntryType::Char, "", ""),
                "b" => (EntryType::Block, "", ""),
                _ => (EntryType::Fifo, "", ""),
            };
            let mut h = Header::new_gnu();
            h.set_entry_type(kind);
            h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
            h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
            h.set_mode(if kind.is_dir() { 0o755 } else { 0o644 });
            h.set_size(data.len() as u64);
            h.set_mtime(1_600_000_000);
            h.set_uid(0);
            h.set_gid(0);
            (h, data.as_bytes().to_vec())
        };
        lines.iter().map(item).collect()
    }

    /// A root in a temporary directory; layers are written next to it.
    struct Fx {
        tmp: TempDir,
        root: PathBuf,
    }

    impl Fx {
        fn new() -> Fx {
            let tmp = TempDir::new().unwrap();
            let root = tmp.path().join("rootfs");
            fs::create_dir(&root).unwrap();
            Fx { tmp, root }
        }

        fn layer(&self, name: &str, gzip: bool, items: Vec<Item>) -> PathBuf {
            fn put<W: Write>(mut b: tar::Builder<W>, items: Vec<Item>) -> W {
                for (mut h, data) in items {
                    h.set_cksum();
                    b.append(&h, data.as_slice()).unwrap();
                }
                b.into_inner().unwrap()
            }
            let path = self.tmp.path().join(name);
            let out = File::create(&path).unwrap();
            if gzip {
                let gz = GzEncoder::new(out, Compression::default());
                put(tar::Builder::new(gz), items).finish().unwrap();
            } else {
                put(tar::Builder::new(out), items);
            }
            path
        }

        fn apply(&self, name: &str, items: Vec<Item>) -> Result<LayerStats, LayerError> {
            let blob = self.layer(name, false, items);
            // The stream's length is checked by its own test.
            apply_layer(&blob, LayerCompression::None, &self.root, u64::MAX)
                .map(|s| LayerStats { tar_bytes: 0, ..s })
        }

        fn at(&self, rel: &str) -> PathBuf {
            self.root.join(rel)
        }

        fn exists(&self, rel: &str) -> bool {
            fs::symlink_metadata(self.at(rel)).is_ok()
        }

        fn read(&self, rel: &str) -> String {
            fs::read_to_string(self.at(rel)).unwrap()
        }
    }

    fn stats(entries: u64, whiteouts: u64, size_bytes: u64) -> LayerStats {
        LayerStats {
            entries,
            whiteouts,
            size_bytes,
            tar_bytes: 0,
        }
    }

    #[test]
    fn a_layer_longer_than_its_budget_is_refused_before_it_fills_the_disk() {
        let fx = Fx::new();
        // 1 MiB of zeros: a few KiB gzipped, a "bomb" against a 64 KiB budget.
        let zeros = "0".repeat(1 << 20);
        let item = format!("f big {zeros}");
        let bomb = fx.layer("bomb.tar.gz", true, t(&[item.as_str()]));
        assert!(fs::metadata(&bomb).unwrap().len() < 64 << 10);
        for compression in [LayerCompression::Gzip, LayerCompression::None] {
            let blob = if compression == LayerCompression::Gzip {
                bomb.clone()
            } else {
                fx.layer("big.tar", false, t(&[item.as_str()]))
            };
            let err = apply_layer(&blob, compression, &fx.root, 64 << 10).unwrap_err();
            assert!(
                matches!(err, LayerError::TooLarge { limit_bytes } if limit_bytes == 64 << 10),
                "{err}"
            );
            let written = fs::metadata(fx.at("big")).map_or(0, |m| m.len());
            assert!(written <= 64 << 10, "{written} bytes written");
        }
        // Within its budget, the same layer applies.
        let got = apply_layer(&bomb, LayerCompression::Gzip, &fx.root, 2 << 20).unwrap();
        assert!(
            got.tar_bytes > 1 << 20 && got.size_bytes == 1 << 20,
            "{got:?}"
        );
    }

    #[test]
    fn plain_tar_keeps_modes_owners_and_mtimes() {
        let fx = Fx::new();
        let mut items = t(&[
            "d ./",
            "d usr/",
            "f usr/bin/tool #!/bin/sh",
            "f /etc/hostname box",
        ]);
        items[1].0.set_mtime(1_111_111_111);
        let tool = &mut items[2].0;
        tool.set_mode(0o4751);
        tool.set_uid(1000);
        tool.set_gid(1001);
        tool.set_mtime(1_234_567_890);
        assert_eq!(fx.apply("l1.tar", items).unwrap(), stats(4, 0, 12));
        let meta = fs::metadata(fx.at("usr/bin/tool")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o4751);
        assert_eq!(meta.mtime(), 1_234_567_890);
        if unsafe { libc::geteuid() } == 0 {
            assert_eq!((meta.uid(), meta.gid()), (1000, 1001));
        }
        // `usr/bin` (no entry of its own) was created in `usr` after `usr`.
        assert!(fs::metadata(fx.at("usr/bin")).unwrap().is_dir());
        assert_eq!(fs::metadata(fx.at("usr")).unwrap().mtime(), 1_111_111_111);
        assert_eq!(fx.read("etc/hostname"), "box");
    }

    #[test]
    fn gzip_layer_is_extracted() {
        let fx = Fx::new();
        let blob = fx.layer("l1.tar.gz", true, t(&["d app", "f app/main.py print(1)"]));
        let got = apply_layer(&blob, LayerCompression::Gzip, &fx.root, u64::MAX).unwrap();
        assert!(got.tar_bytes >= 2 * 512, "{got:?}");
        assert_eq!(
            LayerStats {
                tar_bytes: 0,
                ..got
            },
            stats(2, 0, 8)
        );
        assert_eq!(fx.read("app/main.py"), "print(1)");
    }

    #[test]
    fn whiteouts_remove_a_file_a_symlink_and_a_tree_from_a_lower_layer() {
        let fx = Fx::new();
        let lower = t(&[
            "f etc/keep k",
            "f etc/old o",
            "s etc/link keep",
            "f opt/app/lib/x.so x",
        ]);
        fx.apply("l1.tar", lower).unwrap();
        let upper = t(&[
            "f etc/.wh.old",
            "f etc/.wh.link",
            "f opt/.wh.app",
            "f no/.wh.such",
        ]);
        assert_eq!(fx.apply("l2.tar", upper).unwrap(), stats(0, 4, 0));
        for gone in [
            "etc/old",
            "etc/link",
            "opt/app",
            "etc/.wh.old",
            "opt/.wh.app",
            "no",
        ] {
            assert!(!fx.exists(gone), "{gone} should not exist");
        }
        assert!(fx.exists("etc/keep") && fx.exists("opt"));
    }

    #[test]
    fn opaque_whiteout_keeps_the_same_layers_entries_whatever_the_order() {
        let fx = Fx::new();
        let lower = t(&["f data/old 1", "f data/sub/old 2", "f other/keep 3"]);
        fx.apply("l1.tar", lower).unwrap();
        let upper = t(&[
            "d data",
            "f data/new 1st",
            "f data/.wh..wh..opq",
            "f data/later 2nd",
        ]);
        assert_eq!(fx.apply("l2.tar", upper).unwrap(), stats(3, 1, 6));
        let names = fs::read_dir(fx.at("data"))
            .unwrap()
            .map(|e| e.unwrap().file_name());
        let mut names: Vec<_> = names.collect();
        names.sort();
        assert_eq!(names, ["later", "new"]);
        assert!(fx.exists("other/keep"));
    }

    #[test]
    fn entries_replace_paths_of_another_type() {
        let fx = Fx::new();
        fx.apply(
            "l1.tar",
            t(&["f a/inner i", "f b file", "s c a", "f d file"]),
        )
        .unwrap();
        let upper = t(&["f a a-file", "d b", "f b/child c", "d c", "s d b"]);
        fx.apply("l2.tar", upper).unwrap();
        assert_eq!(fx.read("a"), "a-file");
        assert_eq!(fx.read("b/child"), "c");
        assert!(fs::symlink_metadata(fx.at("c")).unwrap().is_dir());
        assert_eq!(fs::read_link(fx.at("d")).unwrap(), Path::new("b"));
    }

    #[test]
    fn symlinks_and_hard_links_are_kept() {
        let fx = Fx::new();
        let lower = [
            "f bin/busybox ELF",
            "s bin/sh busybox",
            "s abs /bin/sh",
            "f bin/cat old",
        ];
        let mut lower = t(&lower);
        lower.extend(t(&["h bin/ls /bin/busybox"])); // absolute: from the root
        assert_eq!(fx.apply("l1.tar", lower).unwrap().entries, 5);
        fx.apply("l2.tar", t(&["h bin/cat bin/busybox"])).unwrap();
        assert_eq!(
            fs::read_link(fx.at("bin/sh")).unwrap(),
            Path::new("busybox")
        );
        assert_eq!(fs::read_link(fx.at("abs")).unwrap(), Path::new("/bin/sh"));
        let busybox = fs::metadata(fx.at("bin/busybox")).unwrap();
        assert_eq!(busybox.nlink(), 3);
        for link in ["bin/ls", "bin/cat"] {
            assert_eq!(fs::metadata(fx.at(link)).unwrap().ino(), busybox.ino());
        }
    }

    #[test]
    fn dot_dot_paths_are_refused() {
        let fx = Fx::new();
        let err = fx.apply("l1.tar", t(&["f a/../../escape x"])).unwrap_err();
        let want = Path::new("a/../../escape");
        assert!(matches!(&err, LayerError::UnsafePath { path } if path == want));
        assert!(err.to_string().contains("a/../../escape"), "{err}");
        for (i, bad) in ["h pw ../../etc/passwd", "f d/.wh...", "f .wh.."]
            .iter()
            .enumerate()
        {
            let err = fx.apply(&format!("bad{i}.tar"), t(&[bad])).unwrap_err();
            assert!(matches!(err, LayerError::UnsafePath { .. }), "{bad}: {err}");
        }
        assert!(!fx.tmp.path().join("escape").exists() && !fx.exists("pw"));
        assert!(fx.root.exists());
    }

    #[test]
    fn symlinked_parents_do_not_lead_out_of_the_root() {
        let fx = Fx::new();
        let outside = TempDir::new().unwrap();
        let target = outside.path().join("target");
        fs::create_dir(&target).unwrap();
        let evil = format!("s evil {}", target.display());
        let items = t(&[&evil, "f evil/x x", "s up ../../../../..", "f up/y y"]);
        fx.apply("l1.tar", items).unwrap();
        assert_eq!(fs::read_dir(&target).unwrap().count(), 0);
        assert!(!fx.tmp.path().join("y").exists());
        // Resolved as in a chroot: the absolute target starts at the root,
        // `..` stops there.
        let inside = fx.root.join(target.strip_prefix("/").unwrap());
        assert_eq!(fs::read_to_string(inside.join("x")).unwrap(), "x");
        assert_eq!(fx.read("y"), "y");
        assert_eq!(fs::read_link(fx.at("evil")).unwrap(), target);
    }

    #[test]
    fn whiteouts_do_not_follow_symlinks_out_of_the_root() {
        let fx = Fx::new();
        let outside = TempDir::new().unwrap();
        fs::write(outside.path().join("victim"), "v").unwrap();
        let out = outside.path().display();
        let lower = [format!("s esc {out}"), format!("s esc2 {out}")];
        fx.apply("l1.tar", t(&[&lower[0], &lower[1]])).unwrap();
        let upper = t(&["f esc/.wh.victim", "f esc/.wh..wh..opq", "f .wh.esc2"]);
        assert_eq!(fx.apply("l2.tar", upper).unwrap().whiteouts, 3);
        assert!(outside.path().join("victim").exists());
        assert!(fx.exists("esc") && !fx.exists("esc2"));
    }

    #[test]
    fn devices_and_fifos_are_skipped_and_counted() {
        let fx = Fx::new();
        let mut items = t(&["d dev", "c dev/null", "b dev/sda", "p dev/fifo"]);
        items[1].0.set_device_major(1).unwrap();
        items[1].0.set_device_minor(3).unwrap();
        assert_eq!(fx.apply("l1.tar", items).unwrap(), stats(4, 0, 0));
        assert_eq!(fs::read_dir(fx.at("dev")).unwrap().count(), 0);
    }

    #[test]
    fn corrupt_streams_are_reported() {
        let fx = Fx::new();
        let garbage = fx.tmp.path().join("garbage.tar.gz");
        fs::write(&garbage, b"this is not gzip at all").unwrap();
        let err = apply_layer(&garbage, LayerCompression::Gzip, &fx.root, u64::MAX).unwrap_err();
        assert!(matches!(&err, LayerError::Corrupt { message } if message.contains("garbage")));
        // A file whose data stops early.
        let big = format!("f big {}", "z".repeat(4000));
        let blob = fx.layer("short.tar", false, t(&[&big]));
        File::options()
            .write(true)
            .open(&blob)
            .unwrap()
            .set_len(1024)
            .unwrap();
        let err = apply_layer(&blob, LayerCompression::None, &fx.root, u64::MAX).unwrap_err();
        assert!(matches!(&err, LayerError::Corrupt { message } if message.contains("big")));
    }

    /// `sha256("hello")`.
    const HELLO: &str = "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

    fn blob(content: &str) -> (TempDir, PathBuf) {
        let tmp = TempDir::new().unwrap();
        let path = tmp.path().join("blob");
        fs::write(&path, content).unwrap();
        (tmp, path)
    }

    #[test]
    fn verify_digest_accepts_the_right_digest() {
        let (_tmp, path) = blob("hello");
        assert_eq!(verify_digest(&path, HELLO).unwrap(), 5);
    }

    #[test]
    fn verify_digest_mismatch_names_both_digests() {
        let (_tmp, path) = blob("hellO");
        let err = verify_digest(&path, HELLO).unwrap_err();
        let LayerError::DigestMismatch { expected, actual } = &err else {
            panic!("{err:?}");
        };
        assert_eq!(expected, HELLO);
        assert!(actual.starts_with("sha256:") && actual.len() == HELLO.len() && actual != HELLO);
        assert!(err.to_string().contains(HELLO) && err.to_string().contains(actual.as_str()));
    }

    #[test]
    fn verify_digest_rejects_malformed_digests() {
        let (tmp, path) = blob("hello");
        let upper = HELLO.to_uppercase().replace("SHA256", "sha256");
        for bad in [
            "",
            "sha256:abc",
            "md5:2cf24dba",
            &HELLO.replace("sha256", "sha512"),
            &upper,
        ] {
            let err = verify_digest(&path, bad).unwrap_err();
            assert!(
                matches!(&err, LayerError::BadDigest { digest } if digest == bad),
                "{err}"
            );
        }
        let missing = tmp.path().join("missing");
        let err = verify_digest(&missing, HELLO).unwrap_err();
        assert!(matches!(err, LayerError::Io { path, .. } if path == missing));
    }

    #[test]
    fn digest_writer_agrees_with_verify_digest() {
        let (_tmp, path) = blob("");
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let mut writer = DigestWriter::new(File::create(&path).unwrap());
        for chunk in data.chunks(7_000) {
            writer.write_all(chunk).unwrap();
        }
        let (_file, digest, bytes) = writer.finish();
        assert_eq!(bytes, 200_000);
        assert_eq!(verify_digest(&path, &digest).unwrap(), bytes);
        let mut hello = DigestWriter::new(Vec::new());
        hello.write_all(b"hello").unwrap();
        assert_eq!(hello.finish().1, HELLO);
    }

    #[test]
    fn media_types_map_to_compressions_and_zstd_is_refused_by_name() {
        let (oci, docker) = (
            "application/vnd.oci.image.layer",
            "application/vnd.docker.image",
        );
        for (suffix, want) in [
            (".v1.tar", LayerCompression::None),
            (".v1.tar+gzip", LayerCompression::Gzip),
            (".nondistributable.v1.tar+gzip", LayerCompression::Gzip),
        ] {
            assert_eq!(
                LayerCompression::from_media_type(&format!("{oci}{suffix}")).unwrap(),
                want
            );
        }
        for suffix in [".rootfs.diff.tar.gzip", ".rootfs.foreign.diff.tar.gzip"] {
            let got = LayerCompression::from_media_type(&format!("{docker}{suffix}")).unwrap();
            assert_eq!(got, LayerCompression::Gzip);
        }
        let zstd = "application/vnd.oci.image.layer.v1.tar+zstd";
        let err = LayerCompression::from_media_type(zstd).unwrap_err();
        assert!(
            matches!(&err, LayerError::UnsupportedMediaType { media_type } if media_type == zstd)
        );
        assert!(err.to_string().contains(zstd), "{err}");
    }
}

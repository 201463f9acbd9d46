//! Making the worker's directories (the data directory and the default
//! stores in it), with errors that name the path in the way and what to
//! do: "{path} is a file, not a directory: pass a directory to
//! --data-dir" rather than the OS's "File exists".

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

/// A directory that could not be made. Each variant names the directory
/// wanted (`path`) and the flag that chose it (`flag`, e.g. `--data-dir`).
#[derive(Debug, thiserror::Error)]
pub enum DirError {
    /// `blocker` (`path` itself or one of its parents) is a file.
    #[error("{}", not_a_directory(path, blocker, flag))]
    NotADirectory {
        /// The directory wanted.
        path: PathBuf,
        /// The file in the way.
        blocker: PathBuf,
        /// The flag that chose `path`.
        flag: &'static str,
    },
    /// This user may not write in `parent`, the closest existing parent.
    #[error(
        "permission denied creating {}: {} is not writable by this user (uid {uid}); pass a \
         directory it can write to {flag}, or give it that directory",
        path.display(),
        parent.display()
    )]
    PermissionDenied {
        /// The directory wanted.
        path: PathBuf,
        /// Its closest existing parent (or itself, when it exists).
        parent: PathBuf,
        /// The worker's effective user id.
        uid: u32,
        /// The flag that chose `path`.
        flag: &'static str,
    },
    /// The file system is mounted read-only.
    #[error(
        "cannot create {}: the file system is read-only; pass a directory on a writable one to {flag}",
        path.display()
    )]
    ReadOnly {
        /// The directory wanted.
        path: PathBuf,
        /// The flag that chose `path`.
        flag: &'static str,
    },
    /// Anything else (no space, too many links), with the OS's words.
    #[error("cannot create directory {} (for {flag}): {source}", path.display())]
    Other {
        /// The directory wanted.
        path: PathBuf,
        /// The flag that chose `path`.
        flag: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

fn not_a_directory(path: &Path, blocker: &Path, flag: &str) -> String {
    if path == blocker {
        format!(
            "{} is a file, not a directory: pass a directory to {flag}",
            path.display()
        )
    } else {
        format!(
            "{} is a file, not a directory, and {} cannot be made under it: remove the file or \
             pass another directory to {flag}",
            blocker.display(),
            path.display()
        )
    }
}

impl DirError {
    /// The directory that was wanted.
    pub fn path(&self) -> &Path {
        match self {
            DirError::NotADirectory { path, .. }
            | DirError::PermissionDenied { path, .. }
            | DirError::ReadOnly { path, .. }
            | DirError::Other { path, .. } => path,
        }
    }

    /// Why `path` could not be made, from the OS error of making it.
    pub fn from_io(path: &Path, flag: &'static str, source: std::io::Error) -> DirError {
        let path = path.to_owned();
        // The closest part of the path that exists (itself included).
        let existing = path
            .ancestors()
            .find(|a| !a.as_os_str().is_empty() && std::fs::symlink_metadata(a).is_ok())
            .map(Path::to_owned);
        if let Some(found) = &existing {
            if !std::fs::metadata(found).is_ok_and(|m| m.is_dir()) {
                return DirError::NotADirectory {
                    path,
                    blocker: found.clone(),
                    flag,
                };
            }
        }
        match source.kind() {
            ErrorKind::PermissionDenied => DirError::PermissionDenied {
                parent: existing.unwrap_or_else(|| path.clone()),
                path,
                uid: nix::unistd::geteuid().as_raw(),
                flag,
            },
            ErrorKind::ReadOnlyFilesystem => DirError::ReadOnly { path, flag },
            _ => DirError::Other { path, flag, source },
        }
    }
}

/// Makes `path` (and its parents) and returns it absolute.
///
/// # Errors
/// [`DirError`] naming the file in the way, the parent not writable, or
/// the OS's reason, and `flag`.
pub fn make_dir(path: &Path, flag: &'static str) -> Result<PathBuf, DirError> {
    let fail = |source| DirError::from_io(path, flag, source);
    std::fs::create_dir_all(path).map_err(fail)?;
    std::path::absolute(path).map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_where_the_directory_goes_is_named_with_the_flag() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("data");
        std::fs::write(&file, b"x").unwrap();
        let e = make_dir(&file, "--data-dir").unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "{} is a file, not a directory: pass a directory to --data-dir",
                file.display()
            )
        );
        let under = file.join("specs");
        let e = make_dir(&under, "--data-dir").unwrap_err();
        assert!(matches!(&e, DirError::NotADirectory { blocker, .. } if *blocker == file));
        assert!(e.to_string().contains("remove the file"), "{e}");
        assert_eq!(e.path(), under);
    }

    #[test]
    fn a_directory_not_writable_is_named_when_permission_is_denied() {
        // Root may write anywhere: the error is built from the OS's answer.
        let dir = tempfile::tempdir().unwrap();
        let wanted = dir.path().join("a/b");
        let e = DirError::from_io(
            &wanted,
            "--data-dir",
            std::io::Error::from(ErrorKind::PermissionDenied),
        );
        let text = e.to_string();
        assert!(
            text.starts_with(&format!("permission denied creating {}", wanted.display())),
            "{text}"
        );
        assert!(
            text.contains(&format!("{} is not writable", dir.path().display())),
            "{text}"
        );
        assert!(text.contains("--data-dir"), "{text}");
    }

    #[test]
    fn directories_are_made_and_returned_absolute() {
        let dir = tempfile::tempdir().unwrap();
        let made = make_dir(&dir.path().join("x/y"), "--data-dir").unwrap();
        assert!(made.is_absolute() && made.is_dir());
        // Existing: fine.
        assert_eq!(make_dir(&made, "--data-dir").unwrap(), made);
    }
}

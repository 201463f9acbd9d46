//! One worker per data directory: an exclusive `flock(2)` on the data
//! directory itself, held for the worker's life, and the holder's pid in
//! `{data_dir}/worker.lock` so that a refused worker can name it.
//!
//! The lock is on the directory, not on the pid file: deleting
//! `worker.lock` (as one deletes a stale pid file) lets no second worker
//! in. The kernel drops the lock when the holder exits, however it exits
//! (`kill -9` included), so nothing stale ever blocks a restart. The pid
//! file is never followed through a symlink, and must be a regular file.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// The pid file's name in a data directory.
pub const LOCK_FILE: &str = "worker.lock";

/// The exclusive lock on a data directory; released when dropped (or when
/// the process ends).
#[derive(Debug)]
pub struct DataDirLock {
    /// The data directory, locked.
    _dir: Flock<File>,
    /// The pid file.
    path: PathBuf,
}

/// Why a data directory could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another worker holds it.
    #[error(
        "data directory {} is in use by another worker{}; stop that worker or give this one another --data-dir",
        dir.display(),
        holder.map_or_else(String::new, |pid| format!(" (pid {pid})"))
    )]
    Held {
        /// The data directory.
        dir: PathBuf,
        /// The holder's pid, when its lock file names one.
        holder: Option<u32>,
    },
    /// The directory could not be locked, or the pid file could not be
    /// opened or written (a symlink, a directory or another non-regular
    /// file is refused).
    #[error("cannot lock data directory {}: {source}", dir.display())]
    Io {
        /// The data directory.
        dir: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl DataDirLock {
    /// Takes the exclusive lock on `data_dir` (which must exist) without
    /// waiting, and writes this process's pid into the lock file.
    ///
    /// # Errors
    /// [`LockError::Held`] when another worker (in this process or another)
    /// holds it; [`LockError::Io`] when the file cannot be used.
    pub fn acquire(data_dir: &Path) -> Result<DataDirLock, LockError> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = data_dir.join(LOCK_FILE);
        let io = |source| LockError::Io {
            dir: data_dir.to_owned(),
            source,
        };
        let dir = File::open(data_dir).map_err(io)?;
        let locked = match Flock::lock(dir, FlockArg::LockExclusiveNonblock) {
            Ok(locked) => locked,
            Err((_, Errno::EWOULDBLOCK)) => {
                // The holder's pid, if its file is a readable regular file.
                let holder = std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
                    .open(&path)
                    .ok()
                    .filter(|f| f.metadata().is_ok_and(|m| m.is_file()))
                    .and_then(|mut f| {
                        let mut text = String::new();
                        f.read_to_string(&mut text).ok()?;
                        text.trim().parse().ok()
                    });
                return Err(LockError::Held {
                    dir: data_dir.to_owned(),
                    holder,
                });
            }
            Err((_, errno)) => return Err(io(errno.into())),
        };
        let mut pid_file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&path)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ELOOP) => io(std::io::Error::other(format!(
                    "{} is a symlink; remove it",
                    path.display()
                ))),
                Some(libc::EISDIR) => io(std::io::Error::other(format!(
                    "{} is not a regular file; remove it",
                    path.display()
                ))),
                _ => io(e),
            })?;
        if !pid_file.metadata().map_err(io)?.is_file() {
            return Err(io(std::io::Error::other(format!(
                "{} is not a regular file; remove it",
                path.display()
            ))));
        }
        pid_file.set_len(0).map_err(io)?;
        pid_file.rewind().map_err(io)?;
        writeln!(pid_file, "{}", std::process::id()).map_err(io)?;
        Ok(DataDirLock { _dir: locked, path })
    }

    /// The pid file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_a_held_directory_is_refused_naming_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDirLock::acquire(dir.path()).unwrap();
        let err = DataDirLock::acquire(dir.path()).unwrap_err();
        match &err {
            LockError::Held { holder, .. } => assert_eq!(*holder, Some(std::process::id())),
            other => panic!("{other}"),
        }
        let message = err.to_string();
        assert!(
            message.contains(&dir.path().display().to_string()),
            "{message}"
        );
        assert!(
            message.contains(&format!("pid {}", std::process::id())),
            "{message}"
        );
        // Released with the first holder: a restart takes it.
        drop(first);
        let second = DataDirLock::acquire(dir.path()).unwrap();
        // Deleting the pid file lets no other worker in.
        std::fs::remove_file(second.path()).unwrap();
        assert!(matches!(
            DataDirLock::acquire(dir.path()),
            Err(LockError::Held { holder: None, .. })
        ));
    }

    #[test]
    fn a_pid_file_that_is_a_symlink_is_never_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim.txt");
        std::fs::write(&victim, "keep me").unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        std::os::unix::fs::symlink(&victim, data.join(LOCK_FILE)).unwrap();
        let err = DataDirLock::acquire(&data).unwrap_err();
        assert!(err.to_string().contains("is a symlink"), "{err}");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep me");
        // A directory in its place is refused too, and the lock released.
        std::fs::remove_file(data.join(LOCK_FILE)).unwrap();
        std::fs::create_dir(data.join(LOCK_FILE)).unwrap();
        let err = DataDirLock::acquire(&data).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
        std::fs::remove_dir(data.join(LOCK_FILE)).unwrap();
        DataDirLock::acquire(&data).unwrap();
    }
}

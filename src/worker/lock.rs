//! One worker per data directory: an exclusive `flock(2)` on
//! `{data_dir}/worker.lock`, held for the worker's life, with the holder's
//! pid written in the file so that a refused worker can name it.
//!
//! The kernel drops the lock when the holder exits, however it exits
//! (`kill -9` included), so a stale lock file never blocks a restart.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// The lock file's name in a data directory.
pub const LOCK_FILE: &str = "worker.lock";

/// The exclusive lock on a data directory; released when dropped (or when
/// the process ends).
#[derive(Debug)]
pub struct DataDirLock {
    _file: Flock<File>,
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
    /// The lock file could not be opened, locked or written.
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
        let path = data_dir.join(LOCK_FILE);
        let io = |source| LockError::Io {
            dir: data_dir.to_owned(),
            source,
        };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        let mut locked = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(locked) => locked,
            Err((mut file, Errno::EWOULDBLOCK)) => {
                let mut text = String::new();
                let holder = file
                    .read_to_string(&mut text)
                    .ok()
                    .and_then(|_| text.trim().parse().ok());
                return Err(LockError::Held {
                    dir: data_dir.to_owned(),
                    holder,
                });
            }
            Err((_, errno)) => return Err(io(errno.into())),
        };
        locked.set_len(0).map_err(io)?;
        locked.rewind().map_err(io)?;
        writeln!(locked, "{}", std::process::id()).map_err(io)?;
        Ok(DataDirLock {
            _file: locked,
            path,
        })
    }

    /// The lock file.
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
        DataDirLock::acquire(dir.path()).unwrap();
    }
}

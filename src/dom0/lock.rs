//! dom0: one `qvm-backup-borg` run at a time. An exclusive flock(2) on `RUN_DIR/lock`, which
//! holds the holder's pid: the kernel drops the lock when its holder dies, so a lock left by
//! a crashed run is recognised as stale (and said so), never waited on.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

pub struct Lock {
    _file: Flock<File>,
    /// The pid found in a lock file nobody held (a crashed run).
    pub stale_pid: Option<u32>,
}

impl Drop for Lock {
    /// A run that ends (even with an error) empties the file: a pid found there later was
    /// left by a run that crashed or was killed.
    fn drop(&mut self) {
        let _ = self._file.set_len(0);
    }
}

#[derive(Debug)]
pub enum LockError {
    Held { path: PathBuf, pid: Option<u32> },
    Io { path: PathBuf, err: String },
}

impl fmt::Display for LockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LockError::Held { path, pid: Some(p) } => write!(
                f,
                "another qvm-backup-borg is running (pid {p}, lock {}); wait for it to finish",
                path.display()
            ),
            LockError::Held { path, pid: None } => write!(
                f,
                "another qvm-backup-borg is running (lock {}); wait for it to finish",
                path.display()
            ),
            LockError::Io { path, err } => {
                write!(f, "cannot use the lock {}: {err}", path.display())
            }
        }
    }
}

fn read_pid(f: &mut File) -> Option<u32> {
    let mut s = String::new();
    f.rewind().ok()?;
    f.take(32).read_to_string(&mut s).ok()?;
    s.trim().parse().ok()
}

/// Takes the lock in DIR (created 0700 if missing) without waiting.
pub fn acquire(dir: &Path) -> Result<Lock, LockError> {
    let path = dir.join("lock");
    let io = |e: std::io::Error| LockError::Io {
        path: path.clone(),
        err: e.to_string(),
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(io)?;
    let before = read_pid(&mut file);
    let mut locked = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(l) => l,
        Err((mut f, Errno::EWOULDBLOCK)) => {
            return Err(LockError::Held {
                path: path.clone(),
                pid: read_pid(&mut f),
            })
        }
        Err((_, e)) => {
            return Err(LockError::Io {
                path: path.clone(),
                err: e.desc().into(),
            })
        }
    };
    locked.set_len(0).map_err(io)?;
    locked.rewind().map_err(io)?;
    writeln!(locked, "{}", std::process::id()).map_err(io)?;
    Ok(Lock {
        _file: locked,
        stale_pid: before.filter(|p| *p != std::process::id()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_is_refused_with_the_pid_and_a_stale_lock_is_recognised() {
        let dir = std::env::temp_dir().join(format!("qb-lock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("lock"), "999999\n").unwrap();
        let l = acquire(&dir).unwrap();
        assert_eq!(l.stale_pid, Some(999999));
        // flock locks belong to the open file description: a second open conflicts.
        match acquire(&dir) {
            Err(LockError::Held { pid: Some(p), .. }) => assert_eq!(p, std::process::id()),
            other => panic!("{:?}", other.err()),
        }
        let msg = acquire(&dir).err().unwrap().to_string();
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        drop(l);
        let again = acquire(&dir).unwrap();
        assert_eq!(
            again.stale_pid, None,
            "a run that ended normally leaves no stale pid"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

//! Every qube: is a configuration file, and the directory it is in with every directory above
//! it, safe to trust? `read_trusted` reads such a file; `check_dir_and_ancestors` checks a
//! directory.
//!
//! A root-owned file in a root-owned directory is still not trustworthy if someone else can
//! rename a directory above it (and put their own tree in its place). So every ancestor, up to
//! `/`, of the canonical path (symlinks resolved) must be a directory owned by one of the
//! allowed owners and not writable by group or others; a sticky directory (like `/tmp`) is
//! accepted as an ancestor, since others cannot rename or remove entries they do not own in
//! it. The directory itself must not be writable by group or others at all.

use std::fmt;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Why a directory is not safe.
#[derive(Debug)]
pub struct Unsafe {
    /// The directory that failed the check (the canonical path or one of its ancestors).
    pub path: PathBuf,
    pub why: String,
}

impl fmt::Display for Unsafe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.path.display(), self.why)
    }
}

impl std::error::Error for Unsafe {}

/// "is owned by uid 1000, not by root or uid 998".
fn wrong_owner(uid: u32, owners: &[u32]) -> String {
    let mut names: Vec<String> = Vec::new();
    for o in owners {
        let name = if *o == 0 {
            "root".to_string()
        } else {
            format!("uid {o}")
        };
        if !names.contains(&name) {
            names.push(name);
        }
    }
    format!("is owned by uid {uid}, not by {}", names.join(" or "))
}

fn check_one(p: &Path, owners: &[u32], allow_sticky: bool) -> Result<(), Unsafe> {
    let bad = |why: String| Unsafe {
        path: p.to_path_buf(),
        why,
    };
    let m = std::fs::symlink_metadata(p).map_err(|e| bad(format!("cannot be read: {e}")))?;
    if !m.file_type().is_dir() {
        return Err(bad("is not a directory".into()));
    }
    if !owners.contains(&m.uid()) {
        return Err(bad(wrong_owner(m.uid(), owners)));
    }
    let sticky = m.mode() & 0o1000 != 0;
    if m.mode() & 0o022 != 0 && !(allow_sticky && sticky) {
        return Err(bad("is writable by group or others (chmod go-w)".into()));
    }
    Ok(())
}

/// Check `dir` and all its ancestors (see the module documentation). Returns the canonical
/// path of `dir`.
pub fn check_dir_and_ancestors(dir: &Path, owners: &[u32]) -> Result<PathBuf, Unsafe> {
    let canon = dir.canonicalize().map_err(|e| Unsafe {
        path: dir.to_path_buf(),
        why: format!("cannot be resolved: {e}"),
    })?;
    check_one(&canon, owners, false)?;
    let mut up = canon.parent();
    while let Some(p) = up {
        check_one(p, owners, true)?;
        up = p.parent();
    }
    Ok(canon)
}

/// What a trusted file must be.
#[derive(Clone, Copy, Debug)]
pub struct Trusted<'a> {
    /// The uids that may own the file (and, with `check_dir`, its directory and ancestors).
    pub owners: &'a [u32],
    /// Mode bits that must be clear: `NOT_WRITABLE_BY_OTHERS` or `PRIVATE`.
    pub forbidden_mode: u32,
    /// The largest file accepted, in bytes.
    pub max_len: u64,
    /// Also check the file's directory and every directory above it
    /// (`check_dir_and_ancestors`).
    pub check_dir: bool,
}

/// Group and others may read but not write.
pub const NOT_WRITABLE_BY_OTHERS: u32 = 0o022;
/// Only the owner may read or write.
pub const PRIVATE: u32 = 0o077;

/// Why a trusted file could not be read.
#[derive(Debug)]
pub enum FileError {
    /// The file (or its directory) does not exist.
    NotFound(PathBuf),
    /// A symbolic link, not a regular file, a wrong owner or mode, too large, or an unsafe
    /// directory.
    Unsafe(Unsafe),
    /// Reading failed.
    Io { path: PathBuf, err: std::io::Error },
}

/// Reads the whole of `path`, which must be what `t` says: a regular file (a symbolic link is
/// refused, not followed), owned by one of `t.owners`, none of `t.forbidden_mode` set, at most
/// `t.max_len` bytes (a file that grows while it is read is refused, not cut). The checks are
/// made on the opened file, so the file read is the file checked.
pub fn read_trusted(path: &Path, t: &Trusted<'_>) -> Result<Vec<u8>, FileError> {
    let bad = |why: String| {
        FileError::Unsafe(Unsafe {
            path: path.to_path_buf(),
            why,
        })
    };
    let io = |err| FileError::Io {
        path: path.to_path_buf(),
        err,
    };
    if t.check_dir {
        let dir = path.parent().unwrap_or(Path::new("/"));
        if !dir.exists() {
            return Err(FileError::NotFound(path.to_path_buf()));
        }
        check_dir_and_ancestors(dir, t.owners).map_err(FileError::Unsafe)?;
    }
    let file = match std::fs::OpenOptions::new()
        .read(true)
        // O_NONBLOCK: a FIFO put in the file's place must not hang the reader.
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(FileError::NotFound(path.to_path_buf()))
        }
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(bad("is a symbolic link".into()))
        }
        Err(e) => return Err(io(e)),
    };
    let meta = file.metadata().map_err(io)?;
    if !meta.file_type().is_file() {
        return Err(bad("is not a regular file".into()));
    }
    if !t.owners.contains(&meta.uid()) {
        return Err(bad(wrong_owner(meta.uid(), t.owners)));
    }
    if meta.mode() & t.forbidden_mode != 0 {
        return Err(bad(if t.forbidden_mode & 0o044 != 0 {
            "is readable or writable by group or others (chmod go-rwx)".into()
        } else {
            "is writable by group or others (chmod go-w)".into()
        }));
    }
    if meta.len() > t.max_len {
        return Err(bad(format!("is larger than {} bytes", t.max_len)));
    }
    read_at_most(file, path, t.max_len)
}

/// The whole of `r`, refusing more than `max_len` bytes (a file that grew after its size was
/// checked is refused, not cut). `path` is for the messages.
fn read_at_most(r: impl Read, path: &Path, max_len: u64) -> Result<Vec<u8>, FileError> {
    let mut text = Vec::new();
    r.take(max_len + 1)
        .read_to_end(&mut text)
        .map_err(|err| FileError::Io {
            path: path.to_path_buf(),
            err,
        })?;
    if text.len() as u64 > max_len {
        return Err(FileError::Unsafe(Unsafe {
            path: path.to_path_buf(),
            why: format!("is larger than {max_len} bytes"),
        }));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path, m: u32) {
        fs::set_permissions(p, fs::Permissions::from_mode(m)).unwrap();
    }

    #[test]
    fn every_ancestor_is_checked() {
        let me = nix::unistd::geteuid().as_raw();
        let owners = [0, me];
        let base = std::env::temp_dir().join(format!("qb-safe-path-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        let dir = base.join("a/b/conf");
        fs::create_dir_all(&dir).unwrap();
        for p in [&base, &base.join("a"), &base.join("a/b"), &dir] {
            mode(p, 0o755);
        }
        // /tmp (sticky, world-writable) above is fine.
        assert_eq!(
            check_dir_and_ancestors(&dir, &owners).unwrap(),
            dir.canonicalize().unwrap()
        );
        // A group-writable ancestor is not.
        mode(&base.join("a"), 0o775);
        let e = check_dir_and_ancestors(&dir, &owners).unwrap_err();
        assert_eq!(e.path, base.join("a"));
        assert!(e.to_string().contains("writable by group or others"), "{e}");
        // ... unless it is sticky.
        mode(&base.join("a"), 0o1777);
        check_dir_and_ancestors(&dir, &owners).unwrap();
        // The directory itself may not be writable by others even when sticky.
        mode(&base.join("a"), 0o755);
        mode(&dir, 0o1777);
        assert_eq!(
            check_dir_and_ancestors(&dir, &owners).unwrap_err().path,
            dir
        );
        mode(&dir, 0o755);
        // An owner outside the list.
        let e = check_dir_and_ancestors(&dir, &[me.wrapping_add(4242)]).unwrap_err();
        assert!(e.to_string().contains("is owned by uid"), "{e}");
        // A symlink is resolved and the real chain checked.
        let link = base.join("link");
        std::os::unix::fs::symlink(base.join("a/b"), &link).unwrap();
        assert_eq!(
            check_dir_and_ancestors(&link.join("conf"), &owners).unwrap(),
            dir.canonicalize().unwrap()
        );
        mode(&base.join("a/b"), 0o777);
        assert_eq!(
            check_dir_and_ancestors(&link.join("conf"), &owners)
                .unwrap_err()
                .path,
            base.join("a/b")
        );
        // A missing directory.
        assert!(check_dir_and_ancestors(&base.join("nope"), &owners).is_err());
        fs::remove_dir_all(&base).unwrap();
    }

    fn trusted(owners: &[u32], forbidden_mode: u32, check_dir: bool) -> Trusted<'_> {
        Trusted {
            owners,
            forbidden_mode,
            max_len: 16,
            check_dir,
        }
    }

    fn unsafe_why(r: Result<Vec<u8>, FileError>) -> String {
        match r {
            Err(FileError::Unsafe(u)) => u.why,
            other => panic!("want Unsafe, got {other:?}"),
        }
    }

    #[test]
    fn a_trusted_file_is_read_whole_and_every_fault_is_named() {
        let me = nix::unistd::geteuid().as_raw();
        let owners = [0, me];
        let base = std::env::temp_dir().join(format!("qb-trusted-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        fs::create_dir_all(&base).unwrap();
        mode(&base, 0o755);
        let f = base.join("conf");
        fs::write(&f, b"sixteen bytes..\n").unwrap();
        mode(&f, 0o644);
        let t = trusted(&owners, NOT_WRITABLE_BY_OTHERS, true);
        assert_eq!(read_trusted(&f, &t).unwrap(), b"sixteen bytes..\n");
        // One byte more than max_len.
        fs::write(&f, b"seventeen bytes.\n").unwrap();
        assert_eq!(unsafe_why(read_trusted(&f, &t)), "is larger than 16 bytes");
        fs::write(&f, b"ok\n").unwrap();
        // Group-writable; readable by others is fine unless the file must be private.
        mode(&f, 0o664);
        assert!(unsafe_why(read_trusted(&f, &t)).contains("writable by group or others"));
        mode(&f, 0o002);
        assert!(unsafe_why(read_trusted(&f, &t)).contains("writable by group or others"));
        mode(&f, 0o644);
        let private = trusted(&owners, PRIVATE, false);
        assert!(unsafe_why(read_trusted(&f, &private)).contains("readable or writable"));
        mode(&f, 0o604);
        assert!(unsafe_why(read_trusted(&f, &private)).contains("readable or writable"));
        mode(&f, 0o600);
        assert_eq!(read_trusted(&f, &private).unwrap(), b"ok\n");
        // An owner outside the list.
        let stranger = [me.wrapping_add(4242)];
        let t_other = trusted(&stranger, NOT_WRITABLE_BY_OTHERS, false);
        assert!(unsafe_why(read_trusted(&f, &t_other)).starts_with("is owned by uid"));
        // A symbolic link to a good file is refused, not followed.
        let link = base.join("link");
        std::os::unix::fs::symlink(&f, &link).unwrap();
        assert_eq!(unsafe_why(read_trusted(&link, &t)), "is a symbolic link");
        // A directory, and a FIFO (which must not hang the reader).
        let sub = base.join("sub");
        fs::create_dir(&sub).unwrap();
        mode(&sub, 0o755);
        assert_eq!(unsafe_why(read_trusted(&sub, &t)), "is not a regular file");
        // (opened in a thread: a reader that blocks on the FIFO fails here instead of hanging)
        let fifo = base.join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let (fifo2, owners2) = (fifo.clone(), owners);
        std::thread::spawn(move || {
            let t = trusted(&owners2, NOT_WRITABLE_BY_OTHERS, true);
            let _ = tx.send(read_trusted(&fifo2, &t));
        });
        let r = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("reading a FIFO blocked");
        assert_eq!(unsafe_why(r), "is not a regular file");
        // Missing file, missing directory.
        assert!(
            matches!(read_trusted(&base.join("nope"), &t), Err(FileError::NotFound(p)) if p == base.join("nope"))
        );
        let deep = base.join("nodir/conf");
        assert!(matches!(read_trusted(&deep, &t), Err(FileError::NotFound(p)) if p == deep));
        // The directory is checked only when asked: group-writable directory.
        mode(&base, 0o775);
        match read_trusted(&f, &t) {
            Err(FileError::Unsafe(u)) => assert_eq!(u.path, base),
            other => panic!("want the directory refused, got {other:?}"),
        }
        assert_eq!(
            read_trusted(&f, &trusted(&owners, NOT_WRITABLE_BY_OTHERS, false)).unwrap(),
            b"ok\n"
        );
        fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn an_owner_named_twice_is_named_once() {
        assert_eq!(wrong_owner(7, &[0, 0]), "is owned by uid 7, not by root");
        assert_eq!(
            wrong_owner(7, &[0, 9, 9]),
            "is owned by uid 7, not by root or uid 9"
        );
    }

    #[test]
    fn a_file_that_grew_after_its_size_was_checked_is_refused_not_cut() {
        let p = Path::new("/t/conf");
        let at = vec![b'#'; 16];
        assert_eq!(read_at_most(&at[..], p, 16).unwrap(), at);
        let over = [b'#'; 17];
        assert_eq!(
            unsafe_why(read_at_most(&over[..], p, 16)),
            "is larger than 16 bytes"
        );
    }
}

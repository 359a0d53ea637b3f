//! Every qube: is a configuration directory safe to trust, including every directory above it?
//!
//! A root-owned file in a root-owned directory is still not trustworthy if someone else can
//! rename a directory above it (and put their own tree in its place). So every ancestor, up to
//! `/`, of the canonical path (symlinks resolved) must be a directory owned by one of the
//! allowed owners and not writable by group or others; a sticky directory (like `/tmp`) is
//! accepted as an ancestor, since others cannot rename or remove entries they do not own in
//! it. The directory itself must not be writable by group or others at all.

use std::fmt;
use std::os::unix::fs::MetadataExt;
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
        return Err(bad(format!(
            "is owned by uid {}, not by {}",
            m.uid(),
            owners
                .iter()
                .map(|o| if *o == 0 {
                    "root".to_string()
                } else {
                    format!("uid {o}")
                })
                .collect::<Vec<_>>()
                .join(" or ")
        )));
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
}

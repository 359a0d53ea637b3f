//! sys-backup-mnt: removes borg's local cache locks that a borg of an earlier disposable left
//! in the persistent state volume (killed, or its disposable stopped under it).
//!
//! borg 1.2 (`locking.py`, `platform/posix.pyx` `process_alive`) takes a lock held under its own
//! host id as stale only when `kill(pid, 0)` says no such process. In a fresh disposable pids
//! start again from 1, so the dead borg's pid may well belong to a live process here, and borg
//! would wait for a lock nobody holds. The job knows better: dom0 starts the disposable fresh
//! for each job and runs one job at a time (its own lock), so before the job's first borg runs,
//! no borg can hold a lock in the state volume. Only the local cache's lock is touched, never
//! the repository's (that one lives on the server).

use std::fs;
use std::path::Path;

/// Most cache directories looked at (one per repository).
const MAX_CACHES: usize = 64;
/// Most entries looked at in one lock directory.
const MAX_ENTRIES: usize = 64;

/// `HOST.PID-THREAD` as borg names a lock holder (`ExclusiveLock.unique_name`), for `host_id`.
fn holder_pid(name: &str, host_id: &str) -> Option<u64> {
    let rest = name.strip_prefix(host_id)?.strip_prefix('.')?;
    let (pid, thread) = rest.split_once('-')?;
    let digits = |s: &str, hex: bool| {
        !s.is_empty()
            && s.len() <= 16
            && s.bytes().all(|b| {
                if hex {
                    b.is_ascii_hexdigit()
                } else {
                    b.is_ascii_digit()
                }
            })
    };
    if !digits(pid, false) || !digits(thread, true) {
        return None;
    }
    pid.parse().ok()
}

fn is_dir(p: &Path) -> bool {
    fs::symlink_metadata(p).is_ok_and(|m| m.is_dir())
}

fn is_file(p: &Path) -> bool {
    fs::symlink_metadata(p).is_ok_and(|m| m.is_file())
}

/// Removes the cache locks under `base/.cache/borg/*/` held under `host_id`; returns one line
/// per removed lock for the log. Locks of another host id, symlinks and anything unexpected are
/// left alone (borg then decides). Errors are returned as text.
pub fn remove_stale(base: &Path, host_id: &str) -> Result<Vec<String>, String> {
    let caches = base.join(".cache").join("borg");
    if !is_dir(&caches) {
        return Ok(vec![]);
    }
    let mut removed = Vec::new();
    let rd = fs::read_dir(&caches).map_err(|e| format!("{}: {e}", caches.display()))?;
    for entry in rd.take(MAX_CACHES) {
        let dir = entry
            .map_err(|e| format!("{}: {e}", caches.display()))?
            .path();
        if !is_dir(&dir) {
            continue;
        }
        let lock = dir.join("lock.exclusive");
        let mut foreign = false;
        if is_dir(&lock) {
            let names = fs::read_dir(&lock).map_err(|e| format!("{}: {e}", lock.display()))?;
            for n in names.take(MAX_ENTRIES) {
                let n = n.map_err(|e| format!("{}: {e}", lock.display()))?;
                let name = n.file_name().to_string_lossy().to_string();
                match holder_pid(&name, host_id) {
                    Some(pid) if is_file(&n.path()) => {
                        fs::remove_file(n.path())
                            .map_err(|e| format!("{}: {e}", n.path().display()))?;
                        removed.push(format!(
                            "removed borg's cache lock left by an earlier run (borg pid {pid} of a disposable that is gone)"
                        ));
                    }
                    _ => foreign = true,
                }
            }
            if !foreign {
                fs::remove_dir(&lock).map_err(|e| format!("{}: {e}", lock.display()))?;
            }
        }
        let roster = dir.join("lock.roster");
        if !foreign && is_file(&roster) {
            // It lists the lock's holders (host, pid, thread); with the lock gone, all were ours.
            fs::remove_file(&roster).map_err(|e| format!("{}: {e}", roster.display()))?;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "qubes-borg@sys-backup-mnt";

    fn cache(name: &str) -> std::path::PathBuf {
        let base = std::env::temp_dir().join(format!("qb-cachelock-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        fs::create_dir_all(base.join(".cache/borg/abc123/lock.exclusive")).unwrap();
        base
    }

    #[test]
    fn a_lock_of_our_host_id_is_removed_even_when_its_pid_is_alive_here() {
        let base = cache("ours");
        let c = base.join(".cache/borg/abc123");
        // pid 1 is alive in every disposable: borg itself would wait for this lock forever
        fs::write(c.join("lock.exclusive").join(format!("{ID}.1-0")), b"").unwrap();
        fs::write(
            c.join("lock.roster"),
            format!("{{\"exclusive\": [[\"{ID}\", 1, 0]]}}"),
        )
        .unwrap();
        fs::write(c.join("files.work"), b"cache").unwrap();
        let r = remove_stale(&base, ID).unwrap();
        assert_eq!(r.len(), 1, "{r:?}");
        assert!(r[0].contains("pid 1 "), "{r:?}");
        assert!(!c.join("lock.exclusive").exists() && !c.join("lock.roster").exists());
        assert!(c.join("files.work").exists(), "the cache itself stays");
        fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn a_lock_of_another_host_or_a_strange_name_is_left_to_borg() {
        for name in [
            "other@host.12-0",
            "qubes-borg@sys-backup-mnt.12",
            "qubes-borg@sys-backup-mnt.x-0",
            "qubes-borg@sys-backup-mnt-evil.1-0",
        ] {
            let base = cache("foreign");
            let c = base.join(".cache/borg/abc123");
            fs::write(c.join("lock.exclusive").join(name), b"").unwrap();
            fs::write(c.join("lock.roster"), b"{}").unwrap();
            assert_eq!(
                remove_stale(&base, ID).unwrap(),
                Vec::<String>::new(),
                "{name}"
            );
            assert!(c.join("lock.exclusive").join(name).exists(), "{name}");
            assert!(c.join("lock.roster").exists(), "{name}");
            fs::remove_dir_all(&base).unwrap();
        }
    }

    #[test]
    fn symlinks_are_never_followed() {
        let base = cache("symlink");
        let outside = base.join("outside");
        fs::create_dir_all(&outside).unwrap();
        fs::write(outside.join(format!("{ID}.5-0")), b"").unwrap();
        let c = base.join(".cache/borg/abc123");
        fs::remove_dir(c.join("lock.exclusive")).unwrap();
        std::os::unix::fs::symlink(&outside, c.join("lock.exclusive")).unwrap();
        assert!(remove_stale(&base, ID).unwrap().is_empty());
        assert!(outside.join(format!("{ID}.5-0")).exists());
        fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn no_cache_yet_is_nothing_to_do() {
        let base = std::env::temp_dir().join(format!("qb-cachelock-none-{}", std::process::id()));
        assert!(remove_stale(&base, ID).unwrap().is_empty());
    }
}

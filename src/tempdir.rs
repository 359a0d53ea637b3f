//! Every qube: private per-process directories `BASE/PREFIX.PID.RANDOM` (mode 0700), removed on
//! drop, on SIGTERM/SIGINT/SIGHUP once [`cleanup_on_signals`] was called, and swept by the next
//! [`PrivateDir::create`] with the same prefix when their owner died without either (SIGKILL).

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::errno::Errno;
use nix::sys::signal::{kill, SigSet, Signal};
use nix::unistd::{geteuid, Pid};

/// Directories to remove if a terminating signal arrives.
static LIVE: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// The signals after which [`cleanup_on_signals`] removes the live directories.
const TERMINATING: [Signal; 3] = [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP];

/// A private directory of this process; removed (with its contents) on drop.
#[derive(Debug)]
pub struct PrivateDir {
    path: PathBuf,
}

fn random_hex() -> String {
    let mut b = [0u8; 8];
    // If getrandom fails, the pid in the name still keeps processes apart, and mkdir
    // refuses an existing name.
    let _ = getrandom::fill(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Is `p` a real directory (not a symlink) owned by us with no access for group or others?
pub fn is_private_dir(p: &Path) -> bool {
    fs::symlink_metadata(p)
        .map(|m| m.file_type().is_dir() && m.uid() == geteuid().as_raw() && m.mode() & 0o077 == 0)
        .unwrap_or(false)
}

impl PrivateDir {
    /// Sweep stale directories of `prefix` in `base`, then make `base/prefix.PID.RANDOM` with
    /// mode 0700 (failing if the name exists) and check it.
    pub fn create(base: &Path, prefix: &str) -> io::Result<PrivateDir> {
        sweep_stale(base, prefix);
        let path = base.join(format!("{prefix}.{}.{}", std::process::id(), random_hex()));
        fs::DirBuilder::new().mode(0o700).create(&path)?;
        let dir = PrivateDir { path };
        if !is_private_dir(&dir.path) {
            return Err(io::Error::other(format!(
                "{} is not a private directory of ours after mkdir",
                dir.path.display()
            )));
        }
        if let Ok(mut live) = LIVE.lock() {
            live.push(dir.path.clone());
        }
        Ok(dir)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Remove the directory and its contents now, reporting an error.
    pub fn remove(self) -> io::Result<()> {
        let r = fs::remove_dir_all(&self.path);
        match r {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
        // Drop unregisters (and finds nothing left to remove).
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
        if let Ok(mut live) = LIVE.lock() {
            live.retain(|p| p != &self.path);
        }
    }
}

/// The pid in `NAME = prefix.PID.HEX16`, if the name has exactly that form.
fn owner_pid(name: &str, prefix: &str) -> Option<i32> {
    let rest = name.strip_prefix(prefix)?.strip_prefix('.')?;
    let (pid, hex) = rest.split_once('.')?;
    if pid.is_empty() || !pid.bytes().all(|c| c.is_ascii_digit()) || pid.len() > 10 {
        return None;
    }
    if hex.len() != 16 || !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    pid.parse::<i32>().ok().filter(|&p| p > 0)
}

/// Remove `base/prefix.PID.RANDOM` directories whose process no longer runs, if they are
/// private directories of ours. Errors are ignored (another process may sweep at once).
pub fn sweep_stale(base: &Path, prefix: &str) {
    let Ok(entries) = fs::read_dir(base) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(|n| owner_pid(n, prefix)) else {
            continue;
        };
        if kill(Pid::from_raw(pid), None) != Err(Errno::ESRCH) {
            continue; // still running (or not ours to probe)
        }
        let dir = e.path();
        if is_private_dir(&dir) {
            let _ = fs::remove_dir_all(&dir);
        }
    }
}

/// Block SIGTERM, SIGINT and SIGHUP in the calling thread (and the threads it starts later)
/// and start a thread that, when one arrives, removes every live [`PrivateDir`] and then dies
/// of the signal as if it had not been caught. Call it first thing in `main`, before other
/// threads exist. Children started with `std::process::Command` get an empty signal mask.
pub fn cleanup_on_signals() -> io::Result<()> {
    let mut set = SigSet::empty();
    for s in TERMINATING {
        set.add(s);
    }
    set.thread_block().map_err(io::Error::from)?;
    std::thread::Builder::new()
        .name("cleanup-on-signal".into())
        .spawn(move || loop {
            let Ok(sig) = set.wait() else { continue };
            if let Ok(live) = LIVE.lock() {
                for p in live.iter() {
                    let _ = fs::remove_dir_all(p);
                }
            }
            // Die of it as if it had never been caught (no handler is installed): raise it
            // while blocked, then unblock it. If it is ignored, exit with 128+N instead.
            let mut one = SigSet::empty();
            one.add(sig);
            let _ = nix::sys::signal::raise(sig);
            let _ = one.thread_unblock();
            std::process::exit(128 + sig as i32);
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_stale_dirs_are_parsed_strictly() {
        let hex = "0123456789abcdef";
        assert_eq!(
            owner_pid(&format!("qubes-ssh.42.{hex}"), "qubes-ssh"),
            Some(42)
        );
        for bad in [
            format!("qubes-ssh.0.{hex}"),
            format!("qubes-ssh.-1.{hex}"),
            format!("qubes-ssh.+1.{hex}"),
            "qubes-ssh.42.0123".to_string(),
            format!("qubes-ssh.42.{hex}x"),
            format!("qubes-ssh.42.{hex}.x"),
            format!("qubes-sshx.42.{hex}"),
            format!("other.42.{hex}"),
            format!("qubes-ssh.99999999999.{hex}"),
        ] {
            assert_eq!(owner_pid(&bad, "qubes-ssh"), None, "{bad}");
        }
    }

    #[test]
    fn dirs_are_private_removed_on_drop_and_stale_ones_swept() {
        let base = std::env::temp_dir().join(format!("qb-tempdir-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        fs::create_dir(&base).unwrap();
        let d = PrivateDir::create(&base, "t").unwrap();
        assert!(is_private_dir(d.path()));
        fs::write(d.path().join("f"), "x").unwrap();
        let p = d.path().to_path_buf();
        assert!(LIVE.lock().unwrap().contains(&p));
        drop(d);
        assert!(!p.exists());
        assert!(!LIVE.lock().unwrap().contains(&p));

        // A dead owner's directory (pid of a reaped child) is swept; a live one's is kept,
        // and so is a dead owner's that is not private.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let hex = "00112233445566ff";
        let stale = base.join(format!("t.{dead}.{hex}"));
        let live = base.join(format!("t.{}.{hex}", std::process::id()));
        let open = base.join(format!("t.{dead}.{}", "ffeeddccbbaa9988"));
        for p in [&stale, &live, &open] {
            fs::DirBuilder::new().mode(0o700).create(p).unwrap();
            fs::write(p.join("known_hosts"), "x").unwrap();
        }
        fs::set_permissions(&open, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let d = PrivateDir::create(&base, "t").unwrap();
        assert!(!stale.exists(), "stale directory swept");
        assert!(live.exists(), "a running owner's directory is kept");
        assert!(
            open.exists(),
            "a directory that is not private is not touched"
        );
        drop(d);
        fs::remove_dir_all(&base).unwrap();
    }
}

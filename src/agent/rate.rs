//! ssh-backup: the login rate limit of a key set across all connections, and at most
//! one desktop notification per interval.
//!
//! Each `qubes-borg.SshAgent` connection is its own process, so the count lives in a small file
//! in the key set's agent runtime directory (`/run/qubes-borg-agent/NAME/logins`: tmpfs, 0700,
//! owned by the service user, gone at reboot), updated under an exclusive `flock`. Times are
//! seconds of `CLOCK_BOOTTIME`: monotonic, counting suspend, and not settable by anyone.
//!
//! File format (written only by this module): `login SECS` per signature in the window, and
//! at most one `notified SECS`. Unparsable lines are dropped; the file is cut to the window.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use nix::fcntl::{Flock, FlockArg};
use nix::time::{clock_gettime, ClockId};

/// Name of the state file in the agent runtime directory.
pub const FILE_NAME: &str = "logins";
/// The window of the login limit.
pub const WINDOW_SECS: u64 = 3600;
/// Shortest time between two desktop notifications of one key set.
pub const NOTIFY_INTERVAL_SECS: u64 = 60;
/// Largest state file read (3600 lines of `login SECS` fit comfortably).
const MAX_STATE: u64 = 128 * 1024;

/// Seconds since boot (`CLOCK_BOOTTIME`).
pub fn now() -> io::Result<u64> {
    let t = clock_gettime(ClockId::CLOCK_BOOTTIME).map_err(io::Error::from)?;
    Ok(t.tv_sec().max(0) as u64)
}

/// The answer for one login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The login may be signed (it was counted).
    pub allowed: bool,
    /// Logins in the window, this one included when allowed.
    pub count: usize,
    /// The caller should show a notification now (and it was recorded as shown).
    pub notify: bool,
}

/// The state: login times and the last notification.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct State {
    logins: Vec<u64>,
    notified: Option<u64>,
}

fn parse(text: &str) -> State {
    let mut s = State::default();
    for line in text.lines() {
        match line.split_once(' ') {
            Some(("login", t)) => {
                if let Ok(t) = t.parse() {
                    s.logins.push(t);
                }
            }
            Some(("notified", t)) => {
                if let Ok(t) = t.parse() {
                    s.notified = Some(t);
                }
            }
            _ => {}
        }
    }
    s
}

fn render(s: &State) -> String {
    let mut out = String::new();
    for t in &s.logins {
        out.push_str(&format!("login {t}\n"));
    }
    if let Some(t) = s.notified {
        out.push_str(&format!("notified {t}\n"));
    }
    out
}

/// Pure decision: drop logins outside the window (or from the future: a state file from
/// before a reboot), then allow if fewer than `limit` remain.
fn decide(s: &mut State, now: u64, limit: u32) -> Decision {
    s.logins.retain(|&t| t <= now && now - t < WINDOW_SECS);
    if s.notified.is_some_and(|t| t > now) {
        s.notified = None;
    }
    let allowed = s.logins.len() < limit as usize;
    if allowed {
        s.logins.push(now);
    }
    let notify = s.notified.map_or(true, |t| now - t >= NOTIFY_INTERVAL_SECS);
    if notify {
        s.notified = Some(now);
    }
    Decision {
        allowed,
        count: s.logins.len(),
        notify,
    }
}

/// Count one login of the key set whose runtime directory is `dir`, at time `now`, against
/// `limit` logins per [`WINDOW_SECS`]. Fails (and the caller refuses the login) if the state
/// file cannot be opened, locked, read or written, or is not a regular file of ours.
pub fn record_login(dir: &Path, limit: u32, now: u64) -> io::Result<Decision> {
    let path = dir.join(FILE_NAME);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)?;
    let meta = file.metadata()?;
    if !meta.file_type().is_file() || meta.uid() != nix::unistd::geteuid().as_raw() {
        return Err(io::Error::other(format!(
            "{} is not a regular file of the service user",
            path.display()
        )));
    }
    let mut file: Flock<File> =
        Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| io::Error::from(e))?;
    let mut text = String::new();
    (&mut *file).take(MAX_STATE).read_to_string(&mut text)?;
    let mut state = parse(&text);
    let d = decide(&mut state, now, limit);
    file.seek(SeekFrom::Start(0))?;
    file.set_len(0)?;
    file.write_all(render(&state).as_bytes())?;
    file.flush()?;
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_counts_a_sliding_window() {
        let mut s = State::default();
        assert!(decide(&mut s, 100, 2).allowed);
        assert!(decide(&mut s, 200, 2).allowed);
        let d = decide(&mut s, 300, 2);
        assert!(!d.allowed, "third within the hour");
        assert_eq!(d.count, 2);
        // One hour after the first, it has left the window.
        assert!(decide(&mut s, 100 + WINDOW_SECS, 2).allowed);
        assert!(!decide(&mut s, 100 + WINDOW_SECS, 2).allowed);
        // Times from the future (state written before a reboot) are dropped.
        let mut s = State {
            logins: vec![1_000_000, 1_000_001],
            notified: Some(1_000_000),
        };
        let d = decide(&mut s, 5, 2);
        assert!(d.allowed && d.notify, "{d:?}");
    }

    #[test]
    fn at_most_one_notification_per_interval() {
        let mut s = State::default();
        assert!(decide(&mut s, 10, 100).notify);
        assert!(!decide(&mut s, 11, 100).notify);
        assert!(!decide(&mut s, 10 + NOTIFY_INTERVAL_SECS - 1, 100).notify);
        assert!(decide(&mut s, 10 + NOTIFY_INTERVAL_SECS, 100).notify);
        // A refused login may notify too (the interval still applies).
        let mut s = State::default();
        decide(&mut s, 10, 1);
        let d = decide(&mut s, 10 + NOTIFY_INTERVAL_SECS, 1);
        assert!(!d.allowed && d.notify);
    }

    #[test]
    fn state_round_trips_and_ignores_junk() {
        let s = State {
            logins: vec![1, 2, 3],
            notified: Some(2),
        };
        assert_eq!(parse(&render(&s)), s);
        assert_eq!(
            parse("login x\nfoo 3\nlogin 4\nnotified\n"),
            State {
                logins: vec![4],
                notified: None
            }
        );
    }

    #[test]
    fn file_state_is_shared_between_calls_and_refuses_symlinks() {
        let d = std::env::temp_dir().join(format!("qb-rate-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir(&d).unwrap();
        let a = record_login(&d, 2, 50).unwrap();
        assert!(a.allowed && a.notify);
        let b = record_login(&d, 2, 51).unwrap();
        assert!(b.allowed && !b.notify && b.count == 2);
        assert!(!record_login(&d, 2, 52).unwrap().allowed);
        std::fs::remove_file(d.join(FILE_NAME)).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", d.join(FILE_NAME)).unwrap();
        assert!(record_login(&d, 2, 53).is_err());
        std::fs::remove_dir_all(&d).unwrap();
        assert!(now().unwrap() > 0);
    }
}

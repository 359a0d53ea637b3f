//! dom0: what `backup` does after a qube's job failed: whether to try again (only after a
//! transient failure: the link or a lock, as the job's `reason` category says), how long to
//! wait (bounded, doubling), and dom0's own words for each category, with what to do. The
//! category comes from the disposable: a lying job can at most be retried `retries` times.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::config::MAX_RETRY_DELAY;
use crate::job::progress::Reason;

/// Most time one qube spends waiting between attempts, whatever the configuration says.
pub const MAX_TOTAL_WAIT: Duration = Duration::from_secs(3600);
/// File in run_dir: when a job last lost its link to the server (seconds since the epoch).
const LINK_LOST: &str = "link-lost";
/// A lock seen this soon after one of our links was lost may be that session's.
const OWN_SESSION_WINDOW: u64 = 3600;

/// Wait before retry number `n` (1 = the first retry): `base` doubled n-1 times, at most
/// MAX_RETRY_DELAY seconds.
pub fn delay(base: u32, n: u32) -> Duration {
    let secs = (base as u64)
        .saturating_mul(1u64 << (n.saturating_sub(1)).min(20))
        .min(MAX_RETRY_DELAY as u64);
    Duration::from_secs(secs)
}

/// Whether another attempt is allowed: a transient category, retries left, and the waits so
/// far plus the next within MAX_TOTAL_WAIT.
pub fn should_retry(
    reason: Option<Reason>,
    retries_done: u32,
    retries: u32,
    waited: Duration,
    next: Duration,
) -> bool {
    reason.is_some_and(|r| r.is_transient())
        && retries_done < retries
        && waited + next <= MAX_TOTAL_WAIT
}

/// A short name for the category, for the log and the summary.
pub fn short(reason: Option<Reason>) -> &'static str {
    match reason {
        Some(Reason::Link) => "link to the borg server failed",
        Some(Reason::Lock) => "repository locked on the server",
        Some(Reason::CacheLock) => "borg's local cache lock held",
        Some(Reason::Passphrase) => "wrong passphrase or key file",
        Some(Reason::Repository) => "no repository there",
        Some(Reason::Space) => "server disk or quota full",
        Some(Reason::Mount) => "volume cannot be mounted",
        Some(Reason::Other) | None => "failed",
    }
}

/// What to do, in dom0's words, once a qube failed for good.
pub fn advice(
    reason: Option<Reason>,
    repo: &str,
    lock_wait: u32,
    link_lost_ago: Option<u64>,
) -> Option<String> {
    Some(match reason? {
        Reason::Link => "the link to the borg server (qube sys-backup, then the network) failed: check \
            sys-backup's network and that the server is up (journalctl in sys-backup names the cause); \
            the next run tries again"
            .to_string(),
        Reason::Lock => {
            let whose = match link_lost_ago {
                Some(s) if s < OWN_SESSION_WINDOW => format!(
                    "probably by our own earlier session, whose link was lost {s} s ago: the server \
                     keeps that lock until its sshd ends the dead session (ClientAliveInterval x \
                     ClientAliveCountMax): wait for it and run again; do not break the lock while \
                     that session may still be alive"
                ),
                _ => format!(
                    "by another borg client of this repository, or left behind by a borg serve that \
                     died with its server (a server restarted under another hostname cannot tell its \
                     old lock is stale). Only if you are sure no other client uses it: \
                     qvm-run --pass-io sys-backup-mnt 'BORG_RSH=qubes-ssh-client borg break-lock {repo}' \
                     (docs/USAGE.md)"
                ),
            };
            format!("the repository is still locked after borg waited {lock_wait} s (lock_wait), {whose}")
        }
        Reason::CacheLock => "borg's local cache lock in the state volume is held although the job \
            clears stale ones: run again; if it persists, set persistent_state = no for one run"
            .to_string(),
        Reason::Passphrase => "the passphrase (or key file) does not open the repository: check \
            passphrase_file and key_file in backup.conf"
            .to_string(),
        Reason::Repository => format!(
            "there is no borg repository at {repo}, or the server refuses that path: check \
             repository in backup.conf and the key's line in the server's authorized_keys"
        ),
        Reason::Space => "the server's disk or the repository's quota is full: free space on the \
            server (or prune and compact through admin_repository), then run again; borg rolls \
            back the unfinished archive"
            .to_string(),
        Reason::Mount => "the qube's private volume could not be mounted read-only (damaged \
            filesystem?): mode = image backs it up without mounting"
            .to_string(),
        Reason::Other => return None,
    })
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Notes that a job lost its link now (best effort: only advice depends on it).
pub fn record_link_lost(run_dir: &Path) {
    let _ = std::fs::write(run_dir.join(LINK_LOST), format!("{}\n", now()));
}

/// A job got through (and so got the repository's lock): no session of ours is left behind.
pub fn clear_link_lost(run_dir: &Path) {
    let _ = std::fs::remove_file(run_dir.join(LINK_LOST));
}

/// Seconds since a job last lost its link, if recorded (cleared by a later success).
pub fn link_lost_ago(run_dir: &Path) -> Option<u64> {
    let t: u64 = std::fs::read_to_string(run_dir.join(LINK_LOST))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    now().checked_sub(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_and_are_capped() {
        assert_eq!(delay(30, 1), Duration::from_secs(30));
        assert_eq!(delay(30, 2), Duration::from_secs(60));
        assert_eq!(delay(30, 3), Duration::from_secs(120));
        assert_eq!(delay(3600, 5), Duration::from_secs(MAX_RETRY_DELAY as u64));
        assert_eq!(delay(1, 64), Duration::from_secs(MAX_RETRY_DELAY as u64));
    }

    #[test]
    fn only_transient_failures_are_retried_and_only_within_bounds() {
        let s = Duration::from_secs;
        assert!(should_retry(Some(Reason::Link), 0, 2, s(0), s(30)));
        assert!(should_retry(Some(Reason::Lock), 1, 2, s(30), s(60)));
        assert!(
            !should_retry(Some(Reason::Link), 2, 2, s(90), s(120)),
            "count"
        );
        assert!(
            !should_retry(Some(Reason::Link), 0, 10, s(3000), s(601)),
            "total time"
        );
        for r in [
            Reason::Passphrase,
            Reason::Repository,
            Reason::Space,
            Reason::Mount,
            Reason::Other,
        ] {
            assert!(!should_retry(Some(r), 0, 2, s(0), s(1)), "{r:?}");
        }
        assert!(
            !should_retry(None, 0, 2, s(0), s(1)),
            "no category: not retried"
        );
    }

    #[test]
    fn a_lock_soon_after_our_lost_link_is_called_ours_else_break_lock_is_explained() {
        let ours = advice(Some(Reason::Lock), "ssh://b/./r", 60, Some(40)).unwrap();
        assert!(
            ours.contains("our own earlier session") && ours.contains("40 s ago"),
            "{ours}"
        );
        assert!(!ours.contains("break-lock ssh"), "{ours}");
        let other = advice(Some(Reason::Lock), "ssh://b/./r", 60, None).unwrap();
        assert!(
            other.contains("borg break-lock ssh://b/./r") && other.contains("another hostname"),
            "{other}"
        );
        assert!(advice(Some(Reason::Other), "r", 1, None).is_none());
    }
}

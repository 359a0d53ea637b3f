//! sys-backup-mnt: why borg failed, as one `progress::Reason` category, from its exit status,
//! the `msgid` of its `--log-json` error line and its messages (including the `Remote: ` lines
//! it relays from the ssh client's stderr).
//!
//! Taken from borg 1.2.4: exit codes (`helpers/errors.py`: 0 ok, 1 warning, 2 error, 128+N
//! signal N), msgids (`archiver.py` `main()` logs `type(e).__qualname__`, or the server's
//! exception class for a remote error) and the texts of `locking.py` (`LockTimeout`),
//! `crypto/key.py` (`PassphraseWrong`, `NoPassphraseFailure`, `KeyfileNotFoundError`,
//! `KeyfileInvalidError`), `repository.py` (`DoesNotExist`, `InvalidRepository`,
//! `InsufficientFreeSpaceError`, `StorageQuotaExceeded`), `remote.py` (`ConnectionClosed`,
//! `ConnectionClosedWithHint`, `PathNotAllowed`); the network texts are OpenSSH's and the
//! kernel's (`strerror`).

use super::progress::Reason;

/// `msgid`s (exact) and what they mean.
const MSGIDS: &[(&str, Reason)] = &[
    ("PassphraseWrong", Reason::Passphrase),
    ("NoPassphraseFailure", Reason::Passphrase),
    ("KeyfileNotFoundError", Reason::Passphrase),
    ("KeyfileInvalidError", Reason::Passphrase),
    ("KeyfileMismatchError", Reason::Passphrase),
    ("Repository.DoesNotExist", Reason::Repository),
    ("Repository.InvalidRepository", Reason::Repository),
    ("Repository.ParentPathDoesNotExist", Reason::Repository),
    ("PathNotAllowed", Reason::Repository),
    ("InsufficientFreeSpaceError", Reason::Space),
    ("Repository.InsufficientFreeSpaceError", Reason::Space),
    ("StorageQuotaExceeded", Reason::Space),
    ("Repository.StorageQuotaExceeded", Reason::Space),
    ("ConnectionClosed", Reason::Link),
    ("ConnectionClosedWithHint", Reason::Link),
];

/// Texts (case-insensitive substrings) that name the cause, checked in this order: a full
/// disk first (the server may close the link after it), then the link.
const TEXTS: &[(&str, Reason)] = &[
    ("no space left on device", Reason::Space),
    ("disk quota exceeded", Reason::Space),
    ("storage quota", Reason::Space),
    ("insufficient free space", Reason::Space),
    ("passphrase supplied in", Reason::Passphrase),
    // the server or the vault refused the login: not the link, and not better a minute later
    ("permission denied", Reason::Other),
    ("connection refused", Reason::Link),
    ("connection reset", Reason::Link),
    ("connection timed out", Reason::Link),
    ("operation timed out", Reason::Link),
    ("not responding", Reason::Link),
    ("no route to host", Reason::Link),
    ("network is unreachable", Reason::Link),
    ("connection closed by", Reason::Link),
    ("broken pipe", Reason::Link),
];

/// The category of a failed borg run. `code`: its exit status (None: killed by a signal);
/// `msgid`: of its last error line (empty if none); `messages`: its error and warning texts.
pub fn classify(code: Option<i32>, msgid: &str, messages: &[String]) -> Reason {
    if !matches!(code, Some(c) if c < 128) {
        // killed (by the OOM killer, a user, a shutdown): nothing says a retry would help
        return Reason::Other;
    }
    if msgid == "LockTimeout" || msgid == "LockFailed" {
        // the local cache's lock names a path under the state volume; the server's does not
        return if messages.iter().any(|m| m.contains("/.cache/borg/")) {
            Reason::CacheLock
        } else {
            Reason::Lock
        };
    }
    if let Some((_, r)) = MSGIDS.iter().find(|(id, _)| *id == msgid) {
        if *r != Reason::Link {
            return *r;
        }
    }
    for (text, r) in TEXTS {
        if messages
            .iter()
            .any(|m| m.to_ascii_lowercase().contains(text))
        {
            return *r;
        }
    }
    MSGIDS
        .iter()
        .find(|(id, _)| *id == msgid)
        .map(|(_, r)| *r)
        .unwrap_or(Reason::Other)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(code: Option<i32>, msgid: &str, msgs: &[&str]) -> Reason {
        let m: Vec<String> = msgs.iter().map(|s| s.to_string()).collect();
        classify(code, msgid, &m)
    }

    #[test]
    fn the_servers_lock_and_the_local_cache_lock_are_told_apart() {
        assert_eq!(
            c(
                Some(2),
                "LockTimeout",
                &["Failed to create/acquire the lock /home/borg/repo/lock.exclusive (timeout)."]
            ),
            Reason::Lock
        );
        assert_eq!(
            c(Some(2), "LockTimeout", &["Failed to create/acquire the lock /run/qubes-borg/state/.cache/borg/0a1b/lock.exclusive (timeout)."]),
            Reason::CacheLock
        );
    }

    #[test]
    fn network_failures_are_link_failures() {
        for m in [
            "Remote: ssh: connect to host 192.0.2.10 port 22: Connection refused",
            "Remote: Timeout, server 192.0.2.10 not responding.",
            "Remote: ssh: connect to host 192.0.2.10 port 22: Connection timed out",
            "Remote: Connection reset by 192.0.2.10 port 22",
            "Local Exception\nBrokenPipeError: [Errno 32] Broken pipe",
        ] {
            assert_eq!(c(Some(2), "Exception", &[m]), Reason::Link, "{m}");
        }
        assert_eq!(
            c(
                Some(2),
                "ConnectionClosed",
                &["Connection closed by remote host"]
            ),
            Reason::Link
        );
    }

    #[test]
    fn permanent_failures_are_named() {
        assert_eq!(c(Some(2), "PassphraseWrong", &["passphrase supplied in BORG_PASSPHRASE, by BORG_PASSCOMMAND or via BORG_PASSPHRASE_FD is incorrect."]), Reason::Passphrase);
        assert_eq!(
            c(
                Some(2),
                "Repository.DoesNotExist",
                &["Repository ssh://x/./r does not exist."]
            ),
            Reason::Repository
        );
        assert_eq!(
            c(
                Some(2),
                "PathNotAllowed",
                &["Repository path not allowed: /x"]
            ),
            Reason::Repository
        );
        // the server's disk fills, then the link closes: the disk is the cause
        assert_eq!(
            c(
                Some(2),
                "ConnectionClosed",
                &[
                    "Remote: OSError: [Errno 28] No space left on device",
                    "Connection closed by remote host"
                ]
            ),
            Reason::Space
        );
        assert_eq!(
            c(
                Some(2),
                "StorageQuotaExceeded",
                &["The storage quota (1G) has been exceeded"]
            ),
            Reason::Space
        );
        assert_eq!(
            c(Some(2), "Exception", &["something unheard of"]),
            Reason::Other
        );
    }

    #[test]
    fn a_killed_borg_is_not_called_transient() {
        assert_eq!(c(None, "", &["Connection reset"]), Reason::Other);
        assert_eq!(c(Some(137), "", &[]), Reason::Other);
    }
}

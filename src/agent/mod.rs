//! ssh-backup and sys-backup: split SSH for the backup key.
//!
//! - [`wire`]: agent protocol framing and fields, with hard bounds.
//! - [`filter`]: the policy (which requests may reach the agent).
//! - [`keyset`]: which server and user a key set may log in to (`server.conf`).
//! - [`rate`]: the login limit across connections and the notification interval.
//! - [`service`]: the `qubes-borg.SshAgent` service in ssh-backup, one client
//!   connection in front of the dedicated ssh-agent.
//! - [`forward`]: the per-connection agent socket in sys-backup.
//! - [`fault`]: vault failures as classes, from the filter's log lines to sys-backup, and the
//!   audit line of a signed login, which sys-backup does not pass on.
//!
//! See docs/SPLIT-SSH.md.

pub mod fault;
pub mod filter;
pub mod forward;
pub mod keyset;
pub mod rate;
pub mod service;
pub mod wire;

use crate::validate::{self, NameFault};
use std::fmt;

/// Longest key set name (the `NAME` of `qubes-borg.SshAgent+NAME`): the one name rule's.
pub const MAX_KEY_SET_NAME: usize = validate::MAX_NAME;

/// Why a key set name was refused: the fault of the one name rule (`validate::check_name`),
/// with a message that says what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameError {
    Empty,
    TooLong(usize),
    /// The first character must be a letter or digit (no `.`, `..`, `-x`).
    BadStart,
    /// A byte outside `[A-Za-z0-9_.-]`, at this offset.
    BadChar(usize),
}

impl From<NameFault> for NameError {
    fn from(f: NameFault) -> NameError {
        match f {
            NameFault::Empty => NameError::Empty,
            NameFault::TooLong(n) => NameError::TooLong(n),
            NameFault::BadStart => NameError::BadStart,
            NameFault::BadChar(i) => NameError::BadChar(i),
        }
    }
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NameError::Empty => f.write_str(
                "no key set name: call the service as qubes-borg.SshAgent+NAME (e.g. qubes-borg.SshAgent+default)",
            ),
            NameError::TooLong(n) => write!(
                f,
                "key set name is {n} bytes long, at most {MAX_KEY_SET_NAME} are allowed"
            ),
            NameError::BadStart => f.write_str("key set name must start with a letter or digit"),
            NameError::BadChar(i) => write!(
                f,
                "key set name has a character outside [A-Za-z0-9_.-] at offset {i}"
            ),
        }
    }
}

/// Validate an untrusted key set name with the one name rule (`validate::check_name`): 1 to 64
/// bytes of `[A-Za-z0-9_.-]`, starting with a letter or digit. Returns it unchanged when valid.
/// (Same idiom as QubesOS/qubes-app-linux-split-ssh:qubes-rpc/qubes.SshAgent.)
pub fn validate_key_set_name(untrusted: &str) -> Result<&str, NameError> {
    validate::check_name(untrusted)
        .map(|()| untrusted)
        .map_err(NameError::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_set_names_are_allowlisted() {
        for ok in ["default", "a", "borg.base-1_x", &"x".repeat(64)] {
            assert_eq!(validate_key_set_name(ok), Ok(ok));
        }
        assert_eq!(validate_key_set_name(""), Err(NameError::Empty));
        assert_eq!(
            validate_key_set_name(&"x".repeat(65)),
            Err(NameError::TooLong(65))
        );
        for bad in [".", "..", "-x", "_x", ".hidden"] {
            assert_eq!(
                validate_key_set_name(bad),
                Err(NameError::BadStart),
                "{bad}"
            );
        }
        for bad in ["a/b", "a b", "a\nb", "a\0b", "aé", "a+b", "a$b", "a*"] {
            assert!(
                matches!(validate_key_set_name(bad), Err(NameError::BadChar(1))),
                "{bad:?}"
            );
        }
    }
}

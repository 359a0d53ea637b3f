//! Split SSH for the backup key (the filter runs in the ssh-backup vault, [`forward`] in
//! sys-backup).
//!
//! - [`wire`]: agent protocol framing and fields, with hard bounds.
//! - [`filter`]: the policy (which requests may reach the agent).
//! - [`keyset`]: which server and user a key set may log in to (`server.conf`).
//! - [`rate`]: the login limit across connections and the notification interval.
//! - [`service`]: the `qubes-borg.SshAgent` service in ssh-backup, one client
//!   connection in front of the dedicated ssh-agent.
//! - [`forward`]: the per-connection agent socket in sys-backup.
//!
//! See docs/SPLIT-SSH.md.

pub mod filter;
pub mod forward;
pub mod keyset;
pub mod rate;
pub mod service;
pub mod wire;

use std::fmt;

/// Longest key set name (the `NAME` of `qubes-borg.SshAgent+NAME`).
pub const MAX_KEY_SET_NAME: usize = 64;

/// Why a key set name was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameError {
    Empty,
    TooLong(usize),
    /// The first character must be a letter or digit (no `.`, `..`, `-x`).
    BadStart,
    /// A byte outside `[A-Za-z0-9_.-]`, at this offset.
    BadChar(usize),
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

/// Validate an untrusted key set name: 1 to 64 bytes of `[A-Za-z0-9_.-]`,
/// starting with a letter or digit. Returns it unchanged when valid.
/// (Same idiom as QubesOS/qubes-app-linux-split-ssh:qubes-rpc/qubes-borg.SshAgent.)
pub fn validate_key_set_name(untrusted: &str) -> Result<&str, NameError> {
    let b = untrusted.as_bytes();
    if b.is_empty() {
        return Err(NameError::Empty);
    }
    if b.len() > MAX_KEY_SET_NAME {
        return Err(NameError::TooLong(b.len()));
    }
    if !b[0].is_ascii_alphanumeric() {
        return Err(NameError::BadStart);
    }
    if let Some(i) = b
        .iter()
        .position(|&c| !(c.is_ascii_alphanumeric() || c == b'_' || c == b'.' || c == b'-'))
    {
        return Err(NameError::BadChar(i));
    }
    Ok(untrusted)
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

//! ssh-backup and sys-backup: why the vault could not lend its key, as one of a few classes.
//!
//! The filter in ssh-backup (`service`) ends each log line about a vault-side failure with a
//! tag ` (vault-fault=WORD)`; qrexec hands those lines to sys-backup, where the agent socket's
//! listener (`forward`) reads them, together with `qubes-relay`'s line naming the exit status
//! of each `qrexec-client-vm` call to the vault (126: refused by dom0 policy, ...). The service
//! `qubes-borg.Ssh` then reports a failed login as the vault fault it was (status class
//! `vault`, docs/PROTOCOL.md), not as a key the server does not know.
//!
//! Only these fixed words are matched; the message shown is ours, never the vault's text (the
//! lines themselves pass on sanitized, see `forward`).
//!
//! The filter's line about a signed login is its audit line: it stays in the vault's journal
//! (qrexec logs a service's stderr there) and `forward` drops it on its way to the caller
//! ([`is_signed_login`]), so it does not reach borg's output on every backup; refusals and
//! faults still travel.

use std::fmt;

/// What went wrong in (or on the way to) the vault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VaultFault {
    /// The filter cannot connect to the key set's ssh-agent (not running).
    AgentDown,
    /// The ssh-agent runs but does not hold the backup key.
    NoKey,
    /// The ssh-agent did not answer in time (frozen).
    AgentTimeout,
    /// The filter refused to start: key set not set up (public key or server.conf).
    NotSetUp,
    /// qrexec refused the call to the vault (dom0 policy, or the vault could not start).
    Refused,
    /// The vault's qrexec agent could not start the service.
    StartFailed,
    /// The vault has no `qubes-borg.SshAgent` service.
    NoService,
    /// The qrexec connection to the vault closed before an exit status.
    Lost,
}

const TAGS: &[(VaultFault, &str)] = &[
    (VaultFault::AgentDown, "agent-down"),
    (VaultFault::NoKey, "no-key"),
    (VaultFault::AgentTimeout, "agent-timeout"),
    (VaultFault::NotSetUp, "not-set-up"),
];

/// What the filter puts before the tag word.
pub const TAG_PREFIX: &str = " (vault-fault=";
/// How `qubes-relay --listen` reports a connection's command that failed: this, then the
/// exit status.
pub const RELAY_EXIT_PREFIX: &str = crate::child::EXIT_REPORT_PREFIX;

/// What the filter's line about a signed login says after `SOURCE: key set NAME: `.
pub const SIGNED_LOGIN: &str = "signed an SSH login (";

/// Whether a line on the listener's stderr is the filter's audit line of a signed login:
/// `qubes-agent-filter: SOURCE: key set NAME: signed an SSH login (...`, with SOURCE and NAME
/// valid names. Only that shape counts; refusals, faults and anything else are not it.
pub fn is_signed_login(untrusted_line: &str) -> bool {
    let names_then_signed = |rest: &str| -> Option<bool> {
        let (source, rest) = rest.split_once(": key set ")?;
        let (name, rest) = rest.split_once(": ")?;
        Some(
            super::validate_key_set_name(source).is_ok()
                && super::validate_key_set_name(name).is_ok()
                && rest.starts_with(SIGNED_LOGIN),
        )
    };
    untrusted_line
        .strip_prefix(super::service::PROG)
        .and_then(|r| r.strip_prefix(": "))
        .and_then(names_then_signed)
        .unwrap_or(false)
}

impl VaultFault {
    /// The tag the filter appends to its log line: ` (vault-fault=WORD)`.
    pub fn tag(self) -> String {
        let word = TAGS
            .iter()
            .find(|(f, _)| *f == self)
            .map(|(_, w)| *w)
            .unwrap_or("other");
        format!("{TAG_PREFIX}{word})")
    }

    /// The fault a line on the listener's stderr reports, if any: a filter line ending in a
    /// tag, or qubes-relay's line with `qrexec-client-vm`'s exit status.
    pub fn of_line(untrusted_line: &str) -> Option<VaultFault> {
        if let Some(code) = untrusted_line.strip_prefix(RELAY_EXIT_PREFIX) {
            return match code {
                "126" => Some(VaultFault::Refused),
                "125" => Some(VaultFault::StartFailed),
                "127" => Some(VaultFault::NoService),
                "255" => Some(VaultFault::Lost),
                // The filter's own exit code 78: key set not set up.
                "78" => Some(VaultFault::NotSetUp),
                _ => None,
            };
        }
        let word = untrusted_line.strip_suffix(')')?.rsplit_once(TAG_PREFIX)?.1;
        TAGS.iter().find(|(_, w)| *w == word).map(|(f, _)| *f)
    }

    /// Which of two faults seen on one connection explains it better: the first cause
    /// (agent down, key missing, ...) over what follows from it (a lost connection).
    pub fn rank(self) -> u8 {
        match self {
            VaultFault::Lost => 0,
            _ => 1,
        }
    }

    /// The message for the user; `key_set` is a validated name.
    pub fn message(self, key_set: &str) -> String {
        let unit = format!("qubes-borg-agent@{key_set}");
        match self {
            VaultFault::AgentDown => format!(
                "the vault (ssh-backup) cannot reach the ssh-agent of key set '{key_set}': it is not running there; start it (systemctl start {unit}; the qube needs the qubes-borg-agent service enabled)"
            ),
            VaultFault::NoKey => format!(
                "the ssh-agent of key set '{key_set}' in the vault (ssh-backup) does not hold the backup key; load it there (systemctl restart {unit})"
            ),
            VaultFault::AgentTimeout => format!(
                "the ssh-agent of key set '{key_set}' in the vault (ssh-backup) did not answer (frozen?); restart it there (systemctl restart {unit})"
            ),
            VaultFault::NotSetUp => format!(
                "key set '{key_set}' is not set up in the vault (ssh-backup): its public key or server.conf is missing or malformed (qubes-borg-keygen {key_set}; the vault's journal says which)"
            ),
            VaultFault::Refused => format!(
                "qrexec refused the call to the vault (qubes-borg.SshAgent+{key_set}): the dom0 policy does not allow it from this qube, or the vault qube could not be started"
            ),
            VaultFault::StartFailed => format!(
                "the vault's qrexec agent could not start qubes-borg.SshAgent+{key_set} (service user, PAM or exec failure); see the vault's journal"
            ),
            VaultFault::NoService => "the vault qube has no qubes-borg.SshAgent service: install qubes-borg in its template".to_string(),
            VaultFault::Lost => format!(
                "the qrexec connection to the vault (qubes-borg.SshAgent+{key_set}) was lost: the vault qube stopped or its qrexec agent died"
            ),
        }
    }
}

impl fmt::Display for VaultFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.tag())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_written_by_the_filter_are_read_back() {
        for (fault, _) in TAGS {
            let line = format!(
                "qubes-agent-filter: sys-backup: key set default: x{}",
                fault.tag()
            );
            assert_eq!(VaultFault::of_line(&line), Some(*fault), "{line}");
        }
    }

    #[test]
    fn relay_exit_statuses_name_the_qrexec_failure() {
        let l = |c: &str| VaultFault::of_line(&format!("{RELAY_EXIT_PREFIX}{c}"));
        assert_eq!(l("126"), Some(VaultFault::Refused));
        assert_eq!(l("125"), Some(VaultFault::StartFailed));
        assert_eq!(l("127"), Some(VaultFault::NoService));
        assert_eq!(l("255"), Some(VaultFault::Lost));
        assert_eq!(l("78"), Some(VaultFault::NotSetUp));
        assert_eq!(l("1"), None);
        assert_eq!(l("126 "), None);
    }

    #[test]
    fn only_the_filters_signed_login_line_is_one() {
        let signed = "qubes-agent-filter: sys-backup: key set default: signed an SSH login (publickey-hostbound-v00@openssh.com) as user 'borg' with backup key SHA256:x in a session bound to server host key SHA256:y (session-bind verified by ssh-agent; login 3 of at most 60 this hour)";
        assert!(is_signed_login(signed));
        for line in [
            "qubes-agent-filter: sys-backup: key set default: refused: removing all keys is not allowed",
            "qubes-agent-filter: sys-backup: key set default: refused: user 'x: signed an SSH login (' is not the key set's user",
            "qubes-agent-filter: sys-backup: key set default: the ssh-agent refused to sign",
            "qubes-agent-filter: sys-backup: key set default: cannot reach the ssh-agent (vault-fault=agent-down)",
            "qubes-agent-filter: bad name: key set default: signed an SSH login (x)",
            "qubes-agent-filter: sys-backup: key set ../x: signed an SSH login (x)",
            "x qubes-agent-filter: sys-backup: key set default: signed an SSH login (x)",
            "split-SSH agent: qubes-agent-filter: sys-backup: key set default: signed an SSH login (x)",
            "qubes-agent-filter: sys-backup: key set default: signed an SSH login",
            "qubes-relay: connection: command exited with status 126",
            "",
        ] {
            assert!(!is_signed_login(line), "{line:?}");
        }
    }

    #[test]
    fn anything_else_is_no_fault() {
        for line in [
            "qubes-agent-filter: x: signed an SSH login",
            "(vault-fault=agent-down)",
            "x (vault-fault=agent-down) trailing",
            "x (vault-fault=unknown-word)",
            "x (vault-fault=no-key",
            "Request refused",
            "",
        ] {
            assert_eq!(VaultFault::of_line(line), None, "{line:?}");
        }
    }
}

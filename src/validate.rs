//! Every qube: the allowlists for values that come from another qube or from configuration, shared
//! by every component (`ssh`, `agent`, ...).
//!
//! Every check here is an allowlist with a length bound: a value is accepted only if every byte
//! is in the listed set, it is not empty, and it is not longer than the bound. Nothing is
//! "cleaned up": a value that does not pass is refused.

use std::fmt;

/// Longest destination name (the qrexec service argument of `qubes-borg.Ssh+NAME`).
/// qrexec finds `service+arg` files only up to NAME_MAX (255) bytes; 64 is plenty for a name.
pub const MAX_NAME: usize = 64;

/// Why a value was refused. `what` names the value for the message ("destination name", ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub what: &'static str,
    pub why: &'static str,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.what, self.why)
    }
}

impl std::error::Error for Invalid {}

fn invalid(what: &'static str, why: &'static str) -> Invalid {
    Invalid { what, why }
}

/// `[A-Za-z0-9_.-]`: the characters of a name (destination, key set, qube).
pub fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-'
}

/// Why a value failed the name rule of [`check_name`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameFault {
    Empty,
    /// This many bytes, more than `MAX_NAME`.
    TooLong(usize),
    /// The first byte is not a letter or digit (`.`, `..`, `-x`, `_x`).
    BadStart,
    /// A byte outside `[A-Za-z0-9_.-]`, at this offset.
    BadChar(usize),
}

/// The one rule for names that travel between qubes or become file names: destination names
/// (`qubes-borg.Ssh+NAME`), key-set names (`qubes-borg.SshAgent+NAME`, a destination's
/// `agent =`) and the qube names this project checks. 1..=`MAX_NAME` bytes of
/// `[A-Za-z0-9_.-]`, starting with a letter or digit: never empty, `.`, `..`, a hidden file
/// name or an option. Faults are reported in the order: empty, too long, bad start, bad byte.
pub fn check_name(untrusted: &str) -> Result<(), NameFault> {
    let b = untrusted.as_bytes();
    if b.is_empty() {
        return Err(NameFault::Empty);
    }
    if b.len() > MAX_NAME {
        return Err(NameFault::TooLong(b.len()));
    }
    if !b[0].is_ascii_alphanumeric() {
        return Err(NameFault::BadStart);
    }
    match b.iter().position(|&c| !is_name_byte(c)) {
        Some(i) => Err(NameFault::BadChar(i)),
        None => Ok(()),
    }
}

/// Generic allowlist check: non-empty, at most `max` bytes, every byte accepted by `ok`,
/// and not starting with `-` (so it can never be read as an option by any program).
pub fn check_word(
    what: &'static str,
    s: &str,
    max: usize,
    ok: impl Fn(u8) -> bool,
) -> Result<(), Invalid> {
    if s.is_empty() {
        return Err(invalid(what, "is empty"));
    }
    if s.len() > max {
        return Err(invalid(what, "is too long"));
    }
    if !s.bytes().all(ok) {
        return Err(invalid(what, "contains a character that is not allowed"));
    }
    if s.starts_with('-') {
        return Err(invalid(what, "starts with '-'"));
    }
    Ok(())
}

/// A name ([`check_name`]), refused with a message naming `what` ("destination name", ...).
pub fn name(what: &'static str, untrusted: &str) -> Result<(), Invalid> {
    match check_name(untrusted) {
        Ok(()) => Ok(()),
        Err(NameFault::Empty) => Err(invalid(what, "is empty")),
        Err(NameFault::TooLong(_)) => Err(invalid(what, "is too long")),
        // A bad byte anywhere is reported first, as for every other word (`check_word`).
        Err(NameFault::BadStart) if !untrusted.bytes().all(is_name_byte) => {
            Err(invalid(what, "contains a character that is not allowed"))
        }
        Err(NameFault::BadStart) => Err(invalid(
            what,
            match untrusted.as_bytes()[0] {
                b'-' => "starts with '-'",
                b'.' => "starts with '.'",
                _ => "does not start with a letter or digit",
            },
        )),
        Err(NameFault::BadChar(_)) => {
            Err(invalid(what, "contains a character that is not allowed"))
        }
    }
}

/// A remote user name: `[A-Za-z0-9_.-]`, 1..=32 bytes, not starting with `-`.
pub fn user(s: &str) -> Result<(), Invalid> {
    check_word("user", s, 32, is_name_byte)
}

/// A host name or IP address literal: `[A-Za-z0-9.:-]`, 1..=253 bytes, not starting with `-`.
/// (IPv6 literals are written bare, e.g. `fd00::1`; no brackets, no `%zone`.)
pub fn host(s: &str) -> Result<(), Invalid> {
    check_word("host", s, 253, |b| {
        b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b':'
    })
}

/// A TCP port: decimal digits only, 1..=65535, no sign, no leading zero.
pub fn port(s: &str) -> Result<u16, Invalid> {
    const WHAT: &str = "port";
    // An empty port passes these checks and fails to parse below, with the same message.
    if s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid(WHAT, "is not a number from 1 to 65535"));
    }
    if s.starts_with('0') {
        return Err(invalid(WHAT, "has a leading zero"));
    }
    match s.parse::<u32>() {
        Ok(n @ 1..=65535) => Ok(n as u16),
        _ => Err(invalid(WHAT, "is not a number from 1 to 65535")),
    }
}

/// A path word that is safe as a word of a remote shell command and as an absolute or relative
/// program path: `[A-Za-z0-9_./+-]`, 1..=255 bytes, not starting with `-`, no `..` component.
pub fn path_word(what: &'static str, s: &str) -> Result<(), Invalid> {
    check_word(what, s, 255, |b| {
        b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'/' | b'+' | b'-')
    })?;
    if s.split('/').any(|c| c == "..") {
        return Err(invalid(what, "contains a '..' component"));
    }
    Ok(())
}

/// Replace every byte that is not printable ASCII (0x20..=0x7e) with `?` and cut to `max`
/// bytes: for echoing untrusted text in a one-line message.
pub fn printable(bytes: &[u8], max: usize) -> String {
    let mut out: String = bytes
        .iter()
        .take(max)
        .map(|&b| {
            if (0x20..=0x7e).contains(&b) {
                b as char
            } else {
                '?'
            }
        })
        .collect();
    if bytes.len() > max {
        out.push_str("...");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_accept_the_allowlist_and_refuse_everything_else() {
        for ok in ["borgbase", "a", "my-server_2.example", &"x".repeat(64)] {
            assert!(name("n", ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "-oProxyCommand",
            "a/b",
            "a b",
            "a\nb",
            "a\0b",
            "caf\u{e9}",
            "a;b",
            "a$b",
            "a+b",
            "_x",
            &"x".repeat(65),
        ] {
            assert!(name("n", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_name_rule_reports_its_first_fault() {
        assert_eq!(check_name(""), Err(NameFault::Empty));
        assert_eq!(check_name(&"x".repeat(65)), Err(NameFault::TooLong(65)));
        for bad in [".", "..", "-x", "_x", ".hidden"] {
            assert_eq!(check_name(bad), Err(NameFault::BadStart), "{bad}");
        }
        for bad in ["a/b", "a b", "a\nb", "a\0b", "a\u{e9}", "a+b", "a$b", "a*"] {
            assert_eq!(check_name(bad), Err(NameFault::BadChar(1)), "{bad:?}");
        }
        assert_eq!(
            name("n", "-a b").unwrap_err().why,
            "contains a character that is not allowed"
        );
        assert_eq!(name("n", "-ab").unwrap_err().why, "starts with '-'");
        assert_eq!(name("n", ".ab").unwrap_err().why, "starts with '.'");
        assert_eq!(
            name("n", "_ab").unwrap_err().why,
            "does not start with a letter or digit"
        );
    }

    #[test]
    fn ports_are_plain_decimal_1_to_65535() {
        assert_eq!(port("22"), Ok(22));
        assert_eq!(port("65535"), Ok(65535));
        for bad in [
            "",
            "0",
            "022",
            "65536",
            "-1",
            "+22",
            "2 2",
            "99999999999",
            "0x16",
        ] {
            assert!(port(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn path_words_refuse_dotdot_shell_and_option_forms() {
        assert!(path_word("p", "borg").is_ok());
        assert!(path_word("p", "/usr/local/bin/borg-1.4").is_ok());
        assert!(path_word("p", "./venv/bin/borg").is_ok());
        for bad in [
            "../borg", "/a/../b", "borg;id", "$(id)", "-x", "a b", "`id`", "",
        ] {
            assert!(path_word("p", bad).is_err(), "{bad:?}");
        }
    }

    fn why<T: std::fmt::Debug>(r: Result<T, Invalid>) -> &'static str {
        r.unwrap_err().why
    }

    #[test]
    fn users_are_name_bytes_up_to_32_and_not_an_option() {
        assert_eq!(user("backup_1.x-y"), Ok(()));
        assert_eq!(user(&"u".repeat(32)), Ok(()));
        assert_eq!(why(user(&"u".repeat(33))), "is too long");
        assert_eq!(why(user("")), "is empty");
        assert_eq!(why(user("-oProxyCommand")), "starts with '-'");
        for bad in ["a b", "a:b", "a@b", "a/b", "a;b", "caf\u{e9}", "a\nb"] {
            assert_eq!(
                why(user(bad)),
                "contains a character that is not allowed",
                "{bad:?}"
            );
        }
        assert_eq!(user("").unwrap_err().what, "user");
    }

    #[test]
    fn hosts_are_dns_names_or_bare_ip_literals_up_to_253() {
        for ok in ["my-nas.example", "192.0.2.1", "fd00::1", "::1", "A9"] {
            assert_eq!(host(ok), Ok(()), "{ok}");
        }
        assert_eq!(host(&"h".repeat(253)), Ok(()));
        assert_eq!(why(host(&"h".repeat(254))), "is too long");
        assert_eq!(why(host("")), "is empty");
        assert_eq!(why(host("-oX")), "starts with '-'");
        for bad in [
            "a_b",
            "[fd00::1]",
            "fe80::1%eth0",
            "a/b",
            "a b",
            "a@b",
            "h\0",
        ] {
            assert_eq!(
                why(host(bad)),
                "contains a character that is not allowed",
                "{bad:?}"
            );
        }
        assert_eq!(host("").unwrap_err().what, "host");
    }

    #[test]
    fn the_generic_word_check_reports_each_fault_alone() {
        let digits = |b: u8| b.is_ascii_digit();
        assert_eq!(check_word("w", "123", 3, digits), Ok(()));
        assert_eq!(why(check_word("w", "1234", 3, digits)), "is too long");
        assert_eq!(why(check_word("w", "", 3, digits)), "is empty");
        assert_eq!(
            why(check_word("w", "1a", 3, digits)),
            "contains a character that is not allowed"
        );
        assert_eq!(
            why(check_word("w", "-1", 3, |b| b == b'-' || b.is_ascii_digit())),
            "starts with '-'"
        );
    }

    #[test]
    fn names_are_refused_with_a_message_for_each_fault() {
        assert_eq!(name("n", &"x".repeat(64)), Ok(()));
        assert_eq!(why(name("n", &"x".repeat(65))), "is too long");
        assert_eq!(why(name("n", "")), "is empty");
        assert_eq!(
            name("destination name", "a/b").unwrap_err().to_string(),
            "destination name contains a character that is not allowed"
        );
        for ok in ["0", "Z", "a", "9-_."] {
            assert_eq!(check_name(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn ports_have_their_own_message_for_a_leading_zero() {
        assert_eq!(port("1"), Ok(1));
        assert_eq!(port("10000"), Ok(10000));
        assert_eq!(why(port("022")), "has a leading zero");
        assert_eq!(why(port("0")), "has a leading zero");
        assert_eq!(why(port("65536")), "is not a number from 1 to 65535");
        assert_eq!(why(port("123456")), "is not a number from 1 to 65535");
        assert_eq!(why(port("")), "is not a number from 1 to 65535");
        assert_eq!(why(port("2a")), "is not a number from 1 to 65535");
    }

    #[test]
    fn path_words_are_bounded_at_255_and_name_the_dotdot_fault() {
        assert_eq!(path_word("p", &"b".repeat(255)), Ok(()));
        assert_eq!(why(path_word("p", &"b".repeat(256))), "is too long");
        assert_eq!(path_word("p", "/opt/borg+1/_x-y.z"), Ok(()));
        assert_eq!(path_word("p", "a..b/..c/d.."), Ok(()));
        for bad in ["..", "a/..", "../a", "a/../b"] {
            assert_eq!(
                why(path_word("p", bad)),
                "contains a '..' component",
                "{bad}"
            );
        }
        for bad in ["a:b", "a@b", "a\\b", "a=b", "a%b"] {
            assert_eq!(
                why(path_word("p", bad)),
                "contains a character that is not allowed",
                "{bad}"
            );
        }
    }

    #[test]
    fn printable_keeps_space_and_tilde_and_adds_dots_only_when_cut() {
        assert_eq!(printable(b" ~\x7f\x1f", 10), " ~??");
        assert_eq!(printable(b"abc", 3), "abc");
        assert_eq!(printable(b"", 0), "");
    }

    #[test]
    fn printable_replaces_control_bytes_and_bounds_length() {
        assert_eq!(printable(b"a\x1b[31mb\n", 100), "a?[31mb?");
        assert_eq!(printable(b"abcdef", 3), "abc...");
    }
}

//! ssh-backup: which logins a key set may sign, from
//! `~/.ssh/qubes-borg/NAME/server.conf`.
//!
//! ```text
//! # the borg server this key set logs in to
//! user = xyz123                        required: the remote user
//! host-key = ssh-ed25519 AAAAC3...     required, 1-16: the server's host keys
//! plain-publickey = no                 optional: yes also signs the plain "publickey"
//!                                      method, for a server older than OpenSSH 8.9
//! logins-per-hour = 60                 optional, 1-3600 (default 60), across all connections
//! ```
//!
//! `user` and `host-key` lines have the same form as in sys-backup's destination file, so they
//! can be copied from there. The file must be a regular file (not a symlink) owned by the
//! service user or root, not writable by group or others, at most 64 KiB; its directory and
//! every directory above it must be owned by them and not writable by others
//! (`crate::safe_path`). Everything else (unknown keys, repeats, bad values) is an error naming the
//! line: the filter then refuses to start (exit 78).

use std::fmt;
use std::path::{Path, PathBuf};

use crate::{codec, validate};

/// File name of the key set's login policy, next to `id_ed25519.pub`.
pub const FILE_NAME: &str = "server.conf";
/// Largest policy file.
pub const MAX_FILE: u64 = 64 * 1024;
/// Most host keys per key set.
pub const MAX_HOST_KEYS: usize = 16;
/// Default signatures per hour, across all connections of the key set.
pub const DEFAULT_LOGINS_PER_HOUR: u32 = 60;
/// Largest value of `logins-per-hour`.
pub const MAX_LOGINS_PER_HOUR: u32 = 3600;
/// Largest host key blob accepted (an RSA-16384 key is about 2 KiB).
pub const MAX_HOST_KEY_BLOB: usize = 16 * 1024;

/// Host key algorithms accepted in `host-key` lines (the types OpenSSH offers as host keys).
pub const HOST_KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-rsa",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

/// What a key set may sign.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginPolicy {
    /// The only remote user a login may name.
    pub user: String,
    /// Wire blobs of the server host keys a session may be bound to.
    pub host_keys: Vec<Vec<u8>>,
    /// Sign the plain `publickey` method too (the server lacks the hostbound one).
    pub plain_publickey: bool,
    /// Signatures per hour, across connections.
    pub logins_per_hour: u32,
}

impl LoginPolicy {
    /// Is `blob` one of the configured host keys?
    pub fn allows_host_key(&self, blob: &[u8]) -> bool {
        self.host_keys.iter().any(|k| k == blob)
    }
}

/// Why the policy could not be used.
#[derive(Debug)]
pub enum PolicyError {
    /// The file is missing.
    NotFound(PathBuf),
    /// Wrong type, owner or mode, or too large.
    Unsafe { path: PathBuf, why: String },
    /// Reading failed.
    Io { path: PathBuf, err: std::io::Error },
    /// A line is wrong (line 0: the file as a whole).
    Syntax {
        path: PathBuf,
        line: usize,
        why: String,
    },
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PolicyError::NotFound(p) => write!(
                f,
                "{} is missing: write the server's user and host keys there (user = ..., host-key = TYPE BASE64; docs/SPLIT-SSH.md)",
                p.display()
            ),
            PolicyError::Unsafe { path, why } => write!(f, "{} {why}", path.display()),
            PolicyError::Io { path, err } => write!(f, "cannot read {}: {err}", path.display()),
            PolicyError::Syntax { path, line: 0, why } => write!(f, "{}: {why}", path.display()),
            PolicyError::Syntax { path, line, why } => {
                write!(f, "{}, line {line}: {why}", path.display())
            }
        }
    }
}

impl std::error::Error for PolicyError {}

/// Load `dir/server.conf`, accepting files (and `dir` with every directory above it) owned by
/// a uid in `owners` and not writable by others (a sticky ancestor such as /tmp is fine).
pub fn load(dir: &Path, owners: &[u32]) -> Result<LoginPolicy, PolicyError> {
    use crate::safe_path::{read_trusted, FileError, Trusted, NOT_WRITABLE_BY_OTHERS};
    let path = dir.join(FILE_NAME);
    let trusted = Trusted {
        owners,
        forbidden_mode: NOT_WRITABLE_BY_OTHERS,
        max_len: MAX_FILE,
        check_dir: true,
    };
    let text = read_trusted(&path, &trusted).map_err(|e| match e {
        FileError::NotFound(_) => PolicyError::NotFound(path.clone()),
        FileError::Unsafe(u) => PolicyError::Unsafe {
            path: u.path,
            why: u.why,
        },
        FileError::Io { path, err } => PolicyError::Io { path, err },
    })?;
    parse(&path, &text)
}

/// Parse the text of a policy file; `path` is only used in messages.
pub fn parse(path: &Path, text: &[u8]) -> Result<LoginPolicy, PolicyError> {
    let syntax = |line: usize, why: String| PolicyError::Syntax {
        path: path.to_path_buf(),
        line,
        why,
    };
    let mut user: Option<String> = None;
    let mut host_keys = Vec::new();
    let mut plain = None;
    let mut rate = None;
    for (i, raw) in text.split(|&b| b == b'\n').enumerate() {
        let n = i + 1;
        if let Some(b) = raw
            .iter()
            .find(|&&b| !(b == b'\t' || (0x20..=0x7e).contains(&b)))
        {
            return Err(syntax(
                n,
                format!("byte 0x{b:02x} is not allowed (printable ASCII only)"),
            ));
        }
        let line = std::str::from_utf8(raw).expect("ASCII").trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| syntax(n, "expected 'key = value'".into()))?;
        let (key, value) = (key.trim(), value.trim());
        let twice = || syntax(n, format!("'{key}' given twice"));
        match key {
            "user" => {
                if user.is_some() {
                    return Err(twice());
                }
                validate::user(value).map_err(|e| syntax(n, e.to_string()))?;
                user = Some(value.to_string());
            }
            "host-key" => {
                if host_keys.len() >= MAX_HOST_KEYS {
                    return Err(syntax(n, format!("more than {MAX_HOST_KEYS} host keys")));
                }
                host_keys.push(host_key_blob(value).map_err(|why| syntax(n, why))?);
            }
            "plain-publickey" => {
                if plain.is_some() {
                    return Err(twice());
                }
                plain = Some(match value {
                    "yes" => true,
                    "no" => false,
                    _ => return Err(syntax(n, "plain-publickey must be 'yes' or 'no'".into())),
                });
            }
            "logins-per-hour" => {
                if rate.is_some() {
                    return Err(twice());
                }
                let ok = value.len() <= 4
                    && !value.starts_with('0')
                    && value.bytes().all(|b| b.is_ascii_digit());
                match value.parse::<u32>() {
                    Ok(r @ 1..=MAX_LOGINS_PER_HOUR) if ok => rate = Some(r),
                    _ => {
                        return Err(syntax(
                            n,
                            format!(
                                "logins-per-hour must be a number from 1 to {MAX_LOGINS_PER_HOUR}"
                            ),
                        ))
                    }
                }
            }
            _ => {
                return Err(syntax(
                    n,
                    format!(
                    "unknown key '{}' (known: user, host-key, plain-publickey, logins-per-hour)",
                    validate::printable(key.as_bytes(), 40)
                ),
                ))
            }
        }
    }
    let user = user.ok_or_else(|| syntax(0, "'user' is missing".into()))?;
    if host_keys.is_empty() {
        return Err(syntax(0, "no 'host-key' line".into()));
    }
    Ok(LoginPolicy {
        user,
        host_keys,
        plain_publickey: plain.unwrap_or(false),
        logins_per_hour: rate.unwrap_or(DEFAULT_LOGINS_PER_HOUR),
    })
}

/// `TYPE BASE64` (an ssh-keyscan line without host and comment) to the key's wire blob, whose
/// first field must name TYPE.
fn host_key_blob(value: &str) -> Result<Vec<u8>, String> {
    let fields: Vec<&str> = value.split_ascii_whitespace().collect();
    let [kind, b64] = fields[..] else {
        return Err("host-key must be 'TYPE BASE64' (as in sys-backup's destination file)".into());
    };
    if !HOST_KEY_TYPES.contains(&kind) {
        return Err(format!(
            "host-key type '{}' is not one of {}",
            validate::printable(kind.as_bytes(), 40),
            HOST_KEY_TYPES.join(", ")
        ));
    }
    let blob = codec::base64_decode(b64.as_bytes()).ok_or("host-key data is not valid base64")?;
    if blob.len() < 4 + kind.len() || blob.len() > MAX_HOST_KEY_BLOB {
        return Err("host-key data has an implausible length".into());
    }
    let n = u32::from_be_bytes([blob[0], blob[1], blob[2], blob[3]]) as usize;
    if blob.get(4..4 + n) != Some(kind.as_bytes()) {
        return Err(format!("host-key data is not a '{kind}' key"));
    }
    Ok(blob)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";

    fn p(text: &str) -> Result<LoginPolicy, PolicyError> {
        parse(Path::new("server.conf"), text.as_bytes())
    }

    #[test]
    fn full_policy_parses_with_defaults() {
        let pol = p(&format!("# c\nuser = borg\nhost-key = {ED}\n")).unwrap();
        assert_eq!(pol.user, "borg");
        assert_eq!(pol.host_keys.len(), 1);
        assert_eq!(&pol.host_keys[0][4..15], b"ssh-ed25519");
        assert!(!pol.plain_publickey);
        assert_eq!(pol.logins_per_hour, DEFAULT_LOGINS_PER_HOUR);
        assert!(pol.allows_host_key(&pol.host_keys[0].clone()));
        assert!(!pol.allows_host_key(b"other"));
        let pol = p(&format!(
            "user=u\nhost-key={ED}\nhost-key = {ED}\nplain-publickey = yes\nlogins-per-hour = 3600\n"
        ))
        .unwrap();
        assert!(pol.plain_publickey);
        assert_eq!(pol.logins_per_hour, 3600);
        assert_eq!(pol.host_keys.len(), 2);
    }

    #[test]
    fn policy_is_strict() {
        let hk = format!("host-key = {ED}\n");
        for (text, want) in [
            (hk.clone(), "'user' is missing"),
            ("user = borg\n".to_string(), "no 'host-key'"),
            (format!("user = a\nuser = b\n{hk}"), "given twice"),
            (format!("user = -x\n{hk}"), "user"),
            (format!("user = a b\n{hk}"), "user"),
            (format!("user = a\n{hk}colour = red\n"), "unknown key"),
            (format!("user = a\n{hk}plain-publickey = true\n"), "'yes' or 'no'"),
            (format!("user = a\n{hk}logins-per-hour = 0\n"), "from 1 to 3600"),
            (format!("user = a\n{hk}logins-per-hour = 3601\n"), "from 1 to 3600"),
            (format!("user = a\n{hk}logins-per-hour = 010\n"), "from 1 to 3600"),
            (format!("user = a\n{hk}logins-per-hour = +5\n"), "from 1 to 3600"),
            ("user = a\nhost-key = ssh-ed25519\n".into(), "TYPE BASE64"),
            ("user = a\nhost-key = ssh-dss AAAA\n".into(), "not one of"),
            ("user = a\nhost-key = ssh-ed25519 !!!\n".into(), "base64"),
            (
                "user = a\nhost-key = ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n".into(),
                "not a 'ssh-rsa' key",
            ),
            (format!("user = a\n{hk}x\n"), "key = value"),
            (format!("user = a\x1b\n{hk}"), "0x1b"),
        ] {
            let e = p(&text).expect_err(&text).to_string();
            assert!(e.contains(want), "{text:?}: {e}");
        }
        let many = format!("user = a\n{}", hk.repeat(MAX_HOST_KEYS + 1));
        assert!(p(&many).unwrap_err().to_string().contains("more than 16"));
    }

    #[test]
    fn load_checks_type_owner_and_mode() {
        use std::os::unix::fs::PermissionsExt;
        let me = nix::unistd::geteuid().as_raw();
        let d = std::env::temp_dir().join(format!("qb-keyset-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert!(matches!(load(&d, &[me]), Err(PolicyError::NotFound(_))));
        let f = d.join(FILE_NAME);
        std::fs::write(&f, format!("user = borg\nhost-key = {ED}\n")).unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(load(&d, &[me]).unwrap().user, "borg");
        // Another owner list: refused.
        let other = me.wrapping_add(4242);
        assert!(matches!(
            load(&d, &[other]),
            Err(PolicyError::Unsafe { .. })
        ));
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o664)).unwrap();
        let e = load(&d, &[me]).unwrap_err().to_string();
        assert!(e.contains("writable by group"), "{e}");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = load(&d, &[me]).unwrap_err().to_string();
        assert!(e.contains("writable by group"), "{e}");
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).unwrap();
        // A symlink instead of the file: refused, not followed.
        let real = d.join("real.conf");
        std::fs::rename(&f, &real).unwrap();
        std::os::unix::fs::symlink(&real, &f).unwrap();
        let e = load(&d, &[me]).unwrap_err().to_string();
        assert!(e.contains("symbolic link"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }
}

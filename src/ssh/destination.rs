//! sys-backup: destination configuration of the `qubes-borg.Ssh` service in sys-backup: where a
//! destination NAME goes, with which user, remote borg path, pinned host keys and key.
//!
//! One file per destination, `DIR/NAME.conf`, where DIR is `DEFAULT_DIR`
//! (`/etc/qubes-borg/destinations`; sys-backup is an AppVM, so `/etc/qubes-borg` is made
//! persistent by the bind-dirs drop-in `/usr/lib/qubes-bind-dirs.d/50_qubes-borg.conf`).
//! Format (documented in docs/PROTOCOL.md, "Destination configuration"):
//!
//! ```text
//! # comment
//! host = xyz123.repo.borgbase.com     required: DNS name or IP address literal
//! user = xyz123                       required
//! port = 22                           optional, default 22
//! remote-path = borg                  optional, default borg
//! host-key = ssh-ed25519 AAAAC3...    required, one or more (ssh-keyscan output minus host)
//! agent = borgbase                    optional: split-SSH key set (qubes-borg.SshAgent+borgbase)
//! identity-file = /home/user/.ssh/id  optional, instead of agent: a key file in sys-backup
//! ```
//!
//! The parser is strict: unknown keys, repeated single-valued keys, missing required keys,
//! values outside their allowlist, control characters and files that are not root-owned
//! regular files (or are writable by group or others) are errors, never ignored.

use super::argv::BorgArgv;
pub use crate::host_key::{parse_host_key, HostKey, HOST_KEY_TYPES, MAX_KEY_BLOB};
use crate::safe_path::{read_trusted, FileError, Trusted, NOT_WRITABLE_BY_OTHERS};
use crate::validate::{self, Invalid};
use std::fmt;
use std::path::{Path, PathBuf};

/// Where the destination files live in sys-backup.
pub const DEFAULT_DIR: &str = "/etc/qubes-borg/destinations";
/// Largest destination file.
pub const MAX_FILE: u64 = 64 * 1024;
/// Most pinned host keys per destination.
pub const MAX_HOST_KEYS: usize = 16;
/// The remote path borg sends when neither `--remote-path` nor `BORG_REMOTE_PATH` is set.
pub const BORG_DEFAULT_REMOTE_PATH: &str = "borg";

/// One destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub user: String,
    pub remote_path: String,
    pub host_keys: Vec<HostKey>,
    /// Split-SSH key set name (argument of `qubes-borg.SshAgent`).
    pub agent: Option<String>,
    /// A private key file in sys-backup (absolute path).
    pub identity_file: Option<String>,
}

/// What is wrong with the configuration.
#[derive(Debug)]
pub enum ConfigError {
    /// No file for this name: the destination is unknown.
    NotFound { name: String, path: PathBuf },
    /// The file could not be read.
    Io { path: PathBuf, err: std::io::Error },
    /// The file or its directory is not root-owned, not a regular file, writable by others,
    /// or too large.
    Unsafe { path: PathBuf, why: String },
    /// A line is wrong.
    Syntax {
        path: PathBuf,
        line: usize,
        why: String,
    },
    /// A required key is absent.
    Missing { path: PathBuf, key: &'static str },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::NotFound { name, path } => write!(
                f,
                "unknown destination '{name}': sys-backup has no {} (see docs/PROTOCOL.md)",
                path.display()
            ),
            ConfigError::Io { path, err } => write!(f, "cannot read {}: {err}", path.display()),
            ConfigError::Unsafe { path, why } => write!(f, "refusing {}: {why}", path.display()),
            ConfigError::Syntax { path, line, why } => {
                write!(f, "{} line {line}: {why}", path.display())
            }
            ConfigError::Missing { path, key } => {
                write!(f, "{}: required key '{key}' is missing", path.display())
            }
        }
    }
}

impl std::error::Error for ConfigError {}

/// The file that configures `name` in `dir`. `name` must already be validated.
pub fn path_for(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.conf"))
}

/// Load and parse the destination `name` from `dir`.
///
/// `name` is validated here again (it is the basis of a file name). The file must be a
/// regular file (symlinks are not followed), owned by root, not writable by group or others,
/// at most `MAX_FILE` bytes; its directory and every directory above it must be root-owned and
/// not writable by others (a sticky ancestor such as /tmp is accepted; `crate::safe_path`).
pub fn load(dir: &Path, name: &str) -> Result<Destination, ConfigError> {
    load_owned_by(dir, name, &[0])
}

/// `load`, accepting files and directories owned by any uid in `owners` (the service passes
/// `[0]` only).
pub fn load_owned_by(dir: &Path, name: &str, owners: &[u32]) -> Result<Destination, ConfigError> {
    let path = path_for(dir, name);
    if let Err(e) = validate::name("destination name", name) {
        return Err(ConfigError::Unsafe {
            path,
            why: e.to_string(),
        });
    }
    let trusted = Trusted {
        owners,
        forbidden_mode: NOT_WRITABLE_BY_OTHERS,
        max_len: MAX_FILE,
        check_dir: true,
    };
    let text = read_trusted(&path, &trusted).map_err(|e| match e {
        FileError::NotFound(_) => ConfigError::NotFound {
            name: name.to_string(),
            path: path.clone(),
        },
        FileError::Unsafe(u) => ConfigError::Unsafe {
            path: u.path,
            why: u.why,
        },
        FileError::Io { path, err } => ConfigError::Io { path, err },
    })?;
    parse(&path, name, &text)
}

/// Parse the text of a destination file. `path` is only used in messages.
pub fn parse(path: &Path, name: &str, text: &[u8]) -> Result<Destination, ConfigError> {
    let syntax = |line: usize, why: String| ConfigError::Syntax {
        path: path.to_path_buf(),
        line,
        why,
    };
    let mut host = None;
    let mut port = None;
    let mut user = None;
    let mut remote_path = None;
    let mut agent = None;
    let mut identity_file = None;
    let mut host_keys = Vec::new();

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
        // Every byte passed the check above, so this cannot fail; if the check were ever
        // weakened, a non-UTF-8 line is still refused here instead of panicking.
        let line = std::str::from_utf8(raw)
            .map_err(|_| syntax(n, "the line is not valid UTF-8".into()))?
            .trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| syntax(n, "expected 'key = value'".into()))?;
        let (key, value) = (key.trim(), value.trim());
        let bad = |e: Invalid| syntax(n, e.to_string());
        let once = |slot: &Option<String>, key: &str| -> Result<(), ConfigError> {
            if slot.is_some() {
                Err(syntax(n, format!("'{key}' given twice")))
            } else {
                Ok(())
            }
        };
        match key {
            "host" => {
                once(&host, key)?;
                validate::host(value).map_err(bad)?;
                host = Some(value.to_string());
            }
            "port" => {
                if port.is_some() {
                    return Err(syntax(n, "'port' given twice".into()));
                }
                port = Some(validate::port(value).map_err(bad)?);
            }
            "user" => {
                once(&user, key)?;
                validate::user(value).map_err(bad)?;
                user = Some(value.to_string());
            }
            "remote-path" => {
                once(&remote_path, key)?;
                validate::path_word("remote-path", value).map_err(bad)?;
                remote_path = Some(value.to_string());
            }
            "agent" => {
                once(&agent, key)?;
                validate::name("agent key set name", value).map_err(bad)?;
                agent = Some(value.to_string());
            }
            "identity-file" => {
                once(&identity_file, key)?;
                validate::path_word("identity-file", value).map_err(bad)?;
                if !value.starts_with('/') {
                    return Err(syntax(n, "identity-file must be an absolute path".into()));
                }
                identity_file = Some(value.to_string());
            }
            "host-key" => {
                if host_keys.len() >= MAX_HOST_KEYS {
                    return Err(syntax(n, format!("more than {MAX_HOST_KEYS} host keys")));
                }
                host_keys.push(parse_host_key(value).map_err(|why| syntax(n, why))?);
            }
            _ => {
                return Err(syntax(
                    n,
                    format!(
                        "unknown key '{}' (known: host, port, user, remote-path, host-key, agent, identity-file)",
                        validate::printable(key.as_bytes(), 40)
                    ),
                ))
            }
        }
    }

    let missing = |key| ConfigError::Missing {
        path: path.to_path_buf(),
        key,
    };
    if agent.is_some() && identity_file.is_some() {
        return Err(syntax(
            0,
            "give either 'agent' or 'identity-file', not both".into(),
        ));
    }
    if host_keys.is_empty() {
        return Err(missing("host-key"));
    }
    Ok(Destination {
        name: name.to_string(),
        host: host.ok_or_else(|| missing("host"))?,
        port: port.unwrap_or(22),
        user: user.ok_or_else(|| missing("user"))?,
        remote_path: remote_path.unwrap_or_else(|| BORG_DEFAULT_REMOTE_PATH.to_string()),
        host_keys,
        agent,
        identity_file,
    })
}

/// Why a request does not fit its destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal(pub String);

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Destination {
    /// Check a vetted request against this destination and return the remote command words
    /// (configured borg path, `serve`, vetted options).
    ///
    /// * NAME in the request must be this destination's name.
    /// * A port or user in the request (from `ssh://user@NAME:port/...`) must equal the
    ///   configured one; the configuration decides, the request can only agree.
    /// * The remote path must be `borg` (borg's default, meaning "the configured one") or
    ///   exactly the configured `remote-path`.
    pub fn remote_command(&self, req: &BorgArgv) -> Result<Vec<String>, Refusal> {
        if req.name != self.name {
            return Err(Refusal(format!(
                "request names destination '{}' but the qrexec call was for '{}'",
                req.name, self.name
            )));
        }
        if let Some(p) = req.port {
            if p != self.port {
                return Err(Refusal(format!(
                    "port {p} is not the configured port of '{}'; drop the port from the repository URL",
                    self.name
                )));
            }
        }
        if let Some(u) = &req.user {
            if *u != self.user {
                return Err(Refusal(format!(
                    "user '{u}' is not the configured user of '{}'; drop the user from the repository URL",
                    self.name
                )));
            }
        }
        if req.remote_path != BORG_DEFAULT_REMOTE_PATH && req.remote_path != self.remote_path {
            return Err(Refusal(format!(
                "remote path '{}' is not the configured one for '{}'; drop --remote-path/BORG_REMOTE_PATH (sys-backup's config sets it)",
                req.remote_path, self.name
            )));
        }
        let mut cmd = vec![self.remote_path.clone(), "serve".to_string()];
        cmd.extend(req.serve.to_args());
        Ok(cmd)
    }

    /// The known_hosts text pinning this destination's keys under `alias` (used with
    /// `HostKeyAlias`, so the host name and port do not appear in it).
    pub fn known_hosts(&self, alias: &str) -> String {
        self.host_keys
            .iter()
            .map(|k| format!("{alias} {} {}\n", k.kind, k.base64))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ssh::argv as borg_argv;

    pub(crate) const ED25519: &str =
        "AAAAC3NzaC1lZDI1NTE5AAAAIElAgMpNFIlM5mIbLeAMOBxSTltW3e1SaOrxGo1oMYIl";

    fn conf(text: &str) -> Result<Destination, ConfigError> {
        parse(Path::new("/t/nas.conf"), "nas", text.as_bytes())
    }

    #[test]
    fn config_directory_cases() {
        use std::os::unix::fs::PermissionsExt;
        let me = nix::unistd::geteuid().as_raw();
        let base = std::env::temp_dir().join(format!("qb-dest-dir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let dir = base.join("etc/qubes-borg/destinations");
        std::fs::create_dir_all(&dir).unwrap();
        let mode = |p: &Path, m: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
        };
        for p in [&base, &base.join("etc"), &base.join("etc/qubes-borg"), &dir] {
            mode(p, 0o755);
        }
        let file = dir.join("nas.conf");
        std::fs::write(
            &file,
            format!("host = nas.example\nuser = u\nhost-key = ssh-ed25519 {ED25519}\n"),
        )
        .unwrap();
        mode(&file, 0o644);
        let unsafe_at = |r: Result<Destination, ConfigError>| match r {
            Err(ConfigError::Unsafe { path, why }) => (path, why),
            other => panic!("want Unsafe, got {other:?}"),
        };
        assert_eq!(
            load_owned_by(&dir, "nas", &[me]).unwrap().host,
            "nas.example"
        );
        // A parent writable by others: refused, naming the parent.
        mode(&base.join("etc/qubes-borg"), 0o777);
        let (p, why) = unsafe_at(load_owned_by(&dir, "nas", &[me]));
        assert_eq!(p, base.join("etc/qubes-borg"));
        assert!(why.contains("writable by group or others"), "{why}");
        mode(&base.join("etc/qubes-borg"), 0o755);
        // The directory itself group-writable.
        mode(&dir, 0o775);
        assert_eq!(unsafe_at(load_owned_by(&dir, "nas", &[me])).0, dir);
        mode(&dir, 0o755);
        // Owned by someone not in the list (file, directory and parents alike).
        let (_, why) = unsafe_at(load_owned_by(&dir, "nas", &[me.wrapping_add(4242)]));
        assert!(why.contains("is owned by uid"), "{why}");
        // The file writable by group, a symlink, not a regular file.
        mode(&file, 0o664);
        assert_eq!(unsafe_at(load_owned_by(&dir, "nas", &[me])).0, file);
        mode(&file, 0o644);
        std::os::unix::fs::symlink(&file, dir.join("link.conf")).unwrap();
        let (_, why) = unsafe_at(load_owned_by(&dir, "link", &[me]));
        assert!(why.contains("symbolic link"), "{why}");
        std::fs::create_dir(dir.join("sub.conf")).unwrap();
        let (_, why) = unsafe_at(load_owned_by(&dir, "sub", &[me]));
        assert!(why.contains("not a regular file"), "{why}");
        // A directory reached through a symlink is checked where it really is.
        let link = base.join("dests");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        assert!(load_owned_by(&link, "nas", &[me]).is_ok());
        mode(&base.join("etc"), 0o757);
        assert_eq!(
            unsafe_at(load_owned_by(&link, "nas", &[me])).0,
            base.join("etc")
        );
        mode(&base.join("etc"), 0o755);
        // Missing file, missing directory.
        assert!(matches!(
            load_owned_by(&dir, "other", &[me]),
            Err(ConfigError::NotFound { .. })
        ));
        assert!(matches!(
            load_owned_by(&base.join("nope"), "nas", &[me]),
            Err(ConfigError::NotFound { .. })
        ));
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn full_file_parses() {
        let d = conf(&format!(
            "# c\nhost = nas.example\nport=2222\nuser = u\nremote-path = /opt/borg/bin/borg\nhost-key = ssh-ed25519 {ED25519}\nagent = backup\n"
        ))
        .unwrap();
        assert_eq!(d.host, "nas.example");
        assert_eq!(d.port, 2222);
        assert_eq!(d.remote_path, "/opt/borg/bin/borg");
        assert_eq!(d.agent.as_deref(), Some("backup"));
        assert_eq!(d.known_hosts("nas"), format!("nas ssh-ed25519 {ED25519}\n"));
    }

    #[test]
    fn strictness() {
        let base = format!("host = h\nuser = u\nhost-key = ssh-ed25519 {ED25519}\n");
        assert!(conf(&base).is_ok());
        for extra in [
            "ProxyCommand = x\n",
            "port = 0\n",
            "remote-path = borg; id\n",
            "remote-path = ../borg\n",
            "agent = a/b\n",
            "identity-file = relative\n",
            "host-key = ssh-ed25519\n",
            "host-key = ssh-dss AAAA\n",
            "host-key = ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIElAgMpNFIlM5mIbLeAMOBxSTltW3e1SaOrxGo1oMYIl\n",
            "host-key = ssh-ed25519 AAAA!!!!\n",
            "junk\n",
            "host\r\n",
        ] {
            assert!(conf(&format!("{base}{extra}")).is_err(), "{extra:?}");
        }
        assert!(matches!(
            conf("host = h\nuser = u\n"),
            Err(ConfigError::Missing {
                key: "host-key",
                ..
            })
        ));
        assert!(matches!(
            conf(&format!("user = u\nhost-key = ssh-ed25519 {ED25519}\n")),
            Err(ConfigError::Missing { key: "host", .. })
        ));
        assert!(conf(&format!("{base}agent = a\nidentity-file = /k\n")).is_err());
    }

    #[test]
    fn request_must_agree_with_config() {
        let d = conf(&format!(
            "host = h\nuser = u\nport = 2222\nremote-path = borg-1.4\nhost-key = ssh-ed25519 {ED25519}\n"
        ))
        .unwrap();
        let req = |s: &str| borg_argv::parse(&s.split(' ').collect::<Vec<_>>()).unwrap();
        assert_eq!(
            d.remote_command(&req("nas borg serve --info")).unwrap(),
            ["borg-1.4", "serve", "--info"]
        );
        assert!(d
            .remote_command(&req("-p 2222 u@nas borg-1.4 serve"))
            .is_ok());
        assert!(d.remote_command(&req("-p 22 nas borg serve")).is_err());
        assert!(d.remote_command(&req("root@nas borg serve")).is_err());
        assert!(d.remote_command(&req("nas /tmp/evil serve")).is_err());
        assert!(d.remote_command(&req("other borg serve")).is_err());
    }

    fn b64(data: &[u8]) -> String {
        let mut s = crate::codec::base64_encode_unpadded(data);
        while s.len() % 4 != 0 {
            s.push('=');
        }
        s
    }

    /// The key blob of an SSH string `kind` followed by `pad` bytes.
    fn blob(kind: &str, pad: usize) -> Vec<u8> {
        let mut b = (kind.len() as u32).to_be_bytes().to_vec();
        b.extend_from_slice(kind.as_bytes());
        b.resize(b.len() + pad, 7);
        b
    }

    /// A valid file whose `key = ...` line (if any) is replaced by `line`, as line 3.
    fn with_line(key: &str, line: &str) -> Result<Destination, ConfigError> {
        let lines = [
            "host = h".to_string(),
            "user = u".to_string(),
            format!("host-key = ssh-ed25519 {ED25519}"),
        ];
        let mut text: Vec<String> = lines
            .into_iter()
            .filter(|l| !l.starts_with(&format!("{key} ")))
            .collect();
        text.insert(2, line.to_string());
        conf(&(text.join("\n") + "\n"))
    }

    fn syntax_at(r: Result<Destination, ConfigError>) -> (usize, String) {
        match r {
            Err(ConfigError::Syntax { line, why, .. }) => (line, why),
            other => panic!("want Syntax, got {other:?}"),
        }
    }

    #[test]
    fn each_value_is_checked_by_its_allowlist() {
        let long_id = format!("/{}", "k".repeat(255));
        for (key, line, why) in [
            ("user", "user = -oX", "user starts with '-'"),
            ("user", "user = a b", "user contains a character that is not allowed"),
            ("user", &format!("user = {}", "u".repeat(33)), "user is too long"),
            ("host", "host = other_host", "host contains a character that is not allowed"),
            ("host", "host = -oX", "host starts with '-'"),
            ("host", &format!("host = {}", "h".repeat(254)), "host is too long"),
            ("port", "port = 0", "port has a leading zero"),
            ("port", "port = 65536", "port is not a number from 1 to 65535"),
            ("remote-path", "remote-path = ../borg", "remote-path contains a '..' component"),
            ("agent", "agent = a/b", "agent key set name contains a character that is not allowed"),
            ("identity-file", "identity-file = relative/k", "identity-file must be an absolute path"),
            ("identity-file", "identity-file = /a/../k", "identity-file contains a '..' component"),
            ("identity-file", &format!("identity-file = {long_id}"), "identity-file is too long"),
            ("x", "ProxyCommand = x", "unknown key 'ProxyCommand' (known: host, port, user, remote-path, host-key, agent, identity-file)"),
            ("x", "junk", "expected 'key = value'"),
        ] {
            assert_eq!(syntax_at(with_line(key, line)), (3, why.to_string()), "{line}");
        }
    }

    #[test]
    fn values_just_inside_each_limit_are_accepted() {
        let d = |key: &str, line: &str| with_line(key, line).unwrap();
        assert_eq!(
            d("user", &format!("user = {}", "u".repeat(32))).user.len(),
            32
        );
        assert_eq!(
            d("host", &format!("host = {}", "h".repeat(253))).host.len(),
            253
        );
        assert_eq!(d("host", "host = my-nas.example").host, "my-nas.example");
        assert_eq!(d("host", "host = fd00::1").host, "fd00::1");
        assert_eq!(d("port", "port = 65535").port, 65535);
        let id = format!("/{}", "k".repeat(254));
        assert_eq!(
            d("identity-file", &format!("identity-file = {id}")).identity_file,
            Some(id)
        );
        let tabbed = d("user", "user =\tu\t");
        assert_eq!(tabbed.user, "u");
        assert_eq!((tabbed.port, tabbed.remote_path.as_str()), (22, "borg"));
        assert_eq!((tabbed.agent, tabbed.identity_file), (None, None));
    }

    #[test]
    fn each_single_valued_key_given_twice_is_refused() {
        let base = format!("host = h\nuser = u\nhost-key = ssh-ed25519 {ED25519}\n");
        for line in ["host = h", "user = u"] {
            let key = line.split(' ').next().unwrap();
            assert_eq!(
                syntax_at(conf(&format!("{base}{line}\n"))),
                (4, format!("'{key}' given twice"))
            );
        }
        for line in [
            "port = 22",
            "remote-path = borg",
            "agent = a",
            "identity-file = /k",
        ] {
            let key = line.split(' ').next().unwrap();
            assert_eq!(
                syntax_at(conf(&format!("{base}{line}\n{line}\n"))),
                (5, format!("'{key}' given twice"))
            );
        }
        assert_eq!(
            syntax_at(conf(&format!("{base}agent = a\nidentity-file = /k\n"))),
            (0, "give either 'agent' or 'identity-file', not both".into())
        );
    }

    #[test]
    fn a_missing_user_is_named() {
        assert!(matches!(
            conf(&format!("host = h\nhost-key = ssh-ed25519 {ED25519}\n")),
            Err(ConfigError::Missing { key: "user", .. })
        ));
    }

    #[test]
    fn control_and_non_ascii_bytes_are_refused_with_the_byte_named() {
        let good = format!("host = h\nuser = u\nhost-key = ssh-ed25519 {ED25519}\n");
        for (bad, byte) in [
            (&b"# \x1b[31m"[..], 0x1bu8),
            (b"# caf\xc3\xa9", 0xc3),
            (b"# \xff", 0xff),
            (b"# \x7f", 0x7f),
            (b"# \x00", 0x00),
            (b"user = u\r", 0x0d),
            (b"# \x1f", 0x1f),
        ] {
            let mut text = good.as_bytes().to_vec();
            text.extend_from_slice(bad);
            let r = parse(Path::new("/t/nas.conf"), "nas", &text);
            assert_eq!(
                syntax_at(r),
                (
                    4,
                    format!("byte 0x{byte:02x} is not allowed (printable ASCII only)")
                ),
                "{bad:?}"
            );
        }
        let mut text = good.into_bytes();
        text.extend_from_slice(b"# ~ tab\t and space\n");
        assert!(parse(Path::new("/t/nas.conf"), "nas", &text).is_ok());
    }

    #[test]
    fn host_key_blobs_are_bounded_and_name_their_type() {
        let key = |kind: &str, data: &[u8]| {
            with_line("host-key", &format!("host-key = {kind} {}", b64(data)))
        };
        let why = |kind: &str, data: &[u8]| syntax_at(key(kind, data)).1;
        // The smallest blob that holds the type, and one byte less.
        let min = blob("ssh-ed25519", 0);
        assert_eq!(
            key("ssh-ed25519", &min).unwrap().host_keys[0].base64,
            b64(&min)
        );
        assert_eq!(
            why("ssh-ed25519", &min[..min.len() - 1]),
            "host-key data has an implausible length"
        );
        // Under 4 bytes: refused, never indexed.
        for short in [&[0u8; 3][..], &[0, 0], &[0]] {
            assert_eq!(
                why("ssh-ed25519", short),
                "host-key data has an implausible length"
            );
        }
        // The largest blob, and one byte more.
        // The largest blob is 16 KiB (an RSA-16384 key is about 2 KiB).
        let max = blob("ssh-rsa", 16 * 1024 - 4 - 7);
        assert_eq!(max.len(), 16384);
        assert!(key("ssh-rsa", &max).is_ok());
        assert_eq!(
            why("ssh-rsa", &blob("ssh-rsa", 16 * 1024 - 10)),
            "host-key data has an implausible length"
        );
        // The blob names another type, or a length that does not fit.
        assert_eq!(
            why("ssh-rsa", &blob("ssh-ed25519", 0)),
            "host-key data is not a 'ssh-rsa' key"
        );
        let mut long_len = blob("ssh-ed25519", 0);
        long_len[3] = 12;
        assert_eq!(
            why("ssh-ed25519", &long_len),
            "host-key data is not a 'ssh-ed25519' key"
        );
        let mut short_len = blob("ssh-ed25519", 4);
        short_len[3] = 10;
        assert_eq!(
            why("ssh-ed25519", &short_len),
            "host-key data is not a 'ssh-ed25519' key"
        );
        assert_eq!(
            why("ssh-ed25519", b"\xff\xff\xff\xffssh-ed25519"),
            "host-key data is not a 'ssh-ed25519' key"
        );
        assert_eq!(
            syntax_at(with_line("host-key", "host-key = ssh-ed25519 AAAA!!!!")).1,
            "host-key data is not valid base64"
        );
        assert_eq!(
            syntax_at(with_line(
                "host-key",
                &format!("host-key = ssh-dss {ED25519}")
            ))
            .1,
            format!(
                "host-key type 'ssh-dss' is not one of {}",
                HOST_KEY_TYPES.join(", ")
            )
        );
        assert_eq!(
            syntax_at(with_line("host-key", &format!("host-key = ssh-ed25519 {ED25519} comment"))).1,
            "host-key must be 'TYPE BASE64' (an ssh-keyscan line without the host name and without a comment)"
        );
        for kind in HOST_KEY_TYPES {
            assert!(key(kind, &blob(kind, 3)).is_ok(), "{kind}");
        }
    }

    #[test]
    fn at_most_16_host_keys() {
        let keys = |n: usize| format!("host-key = ssh-ed25519 {ED25519}\n").repeat(n);
        let d = conf(&format!("host = h\nuser = u\n{}", keys(MAX_HOST_KEYS))).unwrap();
        assert_eq!(d.host_keys.len(), MAX_HOST_KEYS);
        assert_eq!(d.known_hosts("a").lines().count(), MAX_HOST_KEYS);
        assert_eq!(
            syntax_at(conf(&format!(
                "host = h\nuser = u\n{}",
                keys(MAX_HOST_KEYS + 1)
            ))),
            (3 + MAX_HOST_KEYS, "more than 16 host keys".into())
        );
    }

    /// A directory safe for `load_owned_by(dir, _, &[me])`, removed on drop.
    struct SafeDir(PathBuf);
    impl SafeDir {
        fn new(tag: &str) -> SafeDir {
            use std::os::unix::fs::PermissionsExt;
            let base = std::env::temp_dir().join(format!("qb-dest-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&base);
            std::fs::create_dir_all(&base).unwrap();
            std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755)).unwrap();
            SafeDir(base)
        }
        fn write(&self, name: &str, text: &[u8]) -> PathBuf {
            use std::os::unix::fs::PermissionsExt;
            let f = self.0.join(name);
            std::fs::write(&f, text).unwrap();
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
            f
        }
    }
    impl Drop for SafeDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn a_file_of_64_kib_is_read_whole_and_one_byte_more_is_refused() {
        let me = nix::unistd::geteuid().as_raw();
        let dir = SafeDir::new("size");
        // The key line comes last and without a LF: a file cut short would not parse.
        let tail = format!("host = h\nuser = u\nhost-key = ssh-ed25519 {ED25519}");
        let padded = |n: usize| {
            let mut t = format!("#{}\n", "c".repeat(n - tail.len() - 2)).into_bytes();
            t.extend_from_slice(tail.as_bytes());
            assert_eq!(t.len(), n);
            t
        };
        dir.write("nas.conf", &padded(MAX_FILE as usize));
        assert_eq!(load_owned_by(&dir.0, "nas", &[me]).unwrap().host, "h");
        let f = dir.write("nas.conf", &padded(MAX_FILE as usize + 1));
        match load_owned_by(&dir.0, "nas", &[me]) {
            Err(ConfigError::Unsafe { path, why }) => {
                assert_eq!((path, why.as_str()), (f, "is larger than 65536 bytes"))
            }
            other => panic!("want Unsafe, got {other:?}"),
        }
    }

    #[test]
    fn a_fifo_is_refused_without_blocking_on_it() {
        let me = nix::unistd::geteuid().as_raw();
        let dir = SafeDir::new("fifo");
        let fifo = dir.0.join("nas.conf");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        let d = dir.0.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(load_owned_by(&d, "nas", &[me]));
        });
        match rx.recv_timeout(std::time::Duration::from_secs(10)) {
            Ok(Err(ConfigError::Unsafe { path, why })) => {
                assert_eq!((path, why.as_str()), (fifo, "is not a regular file"))
            }
            Ok(other) => panic!("want Unsafe, got {other:?}"),
            Err(_) => panic!("opening a FIFO destination file blocked"),
        }
    }

    #[test]
    fn a_socket_in_place_of_the_file_is_an_io_error_not_called_a_symlink() {
        let me = nix::unistd::geteuid().as_raw();
        let dir = SafeDir::new("sock");
        let _listener = std::os::unix::net::UnixListener::bind(dir.0.join("nas.conf")).unwrap();
        match load_owned_by(&dir.0, "nas", &[me]) {
            Err(ConfigError::Io { err, .. }) => {
                assert_eq!(err.raw_os_error(), Some(libc::ENXIO), "{err}")
            }
            other => panic!("want Io, got {other:?}"),
        }
    }

    #[test]
    fn a_file_or_directory_writable_by_others_or_owned_by_another_uid_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let me = nix::unistd::geteuid().as_raw();
        let dir = SafeDir::new("mode");
        let f = dir.write(
            "nas.conf",
            format!("host = h\nuser = u\nhost-key = ssh-ed25519 {ED25519}\n").as_bytes(),
        );
        let set = |p: &Path, m: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
        };
        let refused = |owners: &[u32]| match load_owned_by(&dir.0, "nas", owners) {
            Err(ConfigError::Unsafe { path, why }) => (path, why),
            other => panic!("want Unsafe, got {other:?}"),
        };
        let writable = "is writable by group or others (chmod go-w)".to_string();
        for m in [0o600, 0o640, 0o604, 0o755] {
            set(&f, m);
            assert!(load_owned_by(&dir.0, "nas", &[me]).is_ok(), "{m:o}");
        }
        for m in [0o646, 0o662, 0o666] {
            set(&f, m);
            assert_eq!(refused(&[me]), (f.clone(), writable.clone()), "{m:o}");
        }
        set(&f, 0o644);
        set(&dir.0, 0o775);
        assert_eq!(refused(&[me]), (dir.0.clone(), writable.clone()));
        set(&dir.0, 0o757);
        assert_eq!(refused(&[me]), (dir.0.clone(), writable.clone()));
        set(&dir.0, 0o755);
        let other = me.wrapping_add(4242);
        assert_eq!(
            refused(&[other]),
            (
                dir.0.clone(),
                format!("is owned by uid {me}, not by uid {other}")
            )
        );
        assert!(load_owned_by(&dir.0, "nas", &[other, me]).is_ok());
        // The directory owned by an accepted uid, the file not (needs root to chown).
        if me == 0 {
            nix::unistd::chown(&f, Some(nix::unistd::Uid::from_raw(4242)), None).unwrap();
            assert_eq!(
                refused(&[me]),
                (f.clone(), "is owned by uid 4242, not by root".into())
            );
        }
        let not_dir = dir.write("plain", b"");
        assert!(matches!(
            load_owned_by(&not_dir, "nas", &[me]),
            Err(ConfigError::Unsafe { why, .. }) if why == "is not a directory"
        ));
    }

    #[test]
    fn config_errors_tell_what_to_do() {
        let p = PathBuf::from("/d/nas.conf");
        assert_eq!(
            ConfigError::NotFound {
                name: "nas".into(),
                path: p.clone()
            }
            .to_string(),
            "unknown destination 'nas': sys-backup has no /d/nas.conf (see docs/PROTOCOL.md)"
        );
        assert_eq!(
            ConfigError::Unsafe {
                path: p.clone(),
                why: "is a symbolic link".into()
            }
            .to_string(),
            "refusing /d/nas.conf: is a symbolic link"
        );
        assert_eq!(
            ConfigError::Syntax {
                path: p.clone(),
                line: 3,
                why: "x".into()
            }
            .to_string(),
            "/d/nas.conf line 3: x"
        );
        assert_eq!(
            ConfigError::Missing {
                path: p.clone(),
                key: "host"
            }
            .to_string(),
            "/d/nas.conf: required key 'host' is missing"
        );
        let io = ConfigError::Io {
            path: p,
            err: std::io::Error::from_raw_os_error(libc::EACCES),
        };
        assert!(
            io.to_string().starts_with("cannot read /d/nas.conf: "),
            "{io}"
        );
    }

    #[test]
    fn an_invalid_destination_name_is_refused_before_any_file_is_opened() {
        let me = nix::unistd::geteuid().as_raw();
        match load_owned_by(Path::new("/nonexistent-qb"), "../etc/x", &[me]) {
            Err(ConfigError::Unsafe { why, .. }) => {
                assert_eq!(
                    why,
                    "destination name contains a character that is not allowed"
                )
            }
            other => panic!("want Unsafe, got {other:?}"),
        }
    }

    #[test]
    fn refusals_name_the_mismatch() {
        let d = conf(&format!(
            "host = h\nuser = u\nport = 2222\nremote-path = borg-1.4\nhost-key = ssh-ed25519 {ED25519}\n"
        ))
        .unwrap();
        let req = |s: &str| borg_argv::parse(&s.split(' ').collect::<Vec<_>>()).unwrap();
        let why = |s: &str| d.remote_command(&req(s)).unwrap_err().to_string();
        assert_eq!(
            why("-p 22 nas borg serve"),
            "port 22 is not the configured port of 'nas'; drop the port from the repository URL"
        );
        assert_eq!(why("root@nas borg serve"), "user 'root' is not the configured user of 'nas'; drop the user from the repository URL");
        assert_eq!(why("nas borg-1.2 serve"), "remote path 'borg-1.2' is not the configured one for 'nas'; drop --remote-path/BORG_REMOTE_PATH (sys-backup's config sets it)");
        assert_eq!(
            why("other borg serve"),
            "request names destination 'other' but the qrexec call was for 'nas'"
        );
        assert_eq!(
            d.remote_command(&req("-p 2222 u@nas borg serve --info --storage-quota=9"))
                .unwrap(),
            ["borg-1.4", "serve", "--info", "--storage-quota=9"]
        );
    }
}

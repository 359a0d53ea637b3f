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
pub use crate::host_key::{parse_host_key, HostKey, HOST_KEY_TYPES};
use crate::validate::{self, Invalid};
use std::fmt;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
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
    check_owner(dir, owners)?;
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(&path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ConfigError::NotFound {
                name: name.to_string(),
                path,
            })
        }
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(ConfigError::Unsafe {
                path,
                why: "is a symbolic link".into(),
            })
        }
        Err(err) => return Err(ConfigError::Io { path, err }),
    };
    let meta = file.metadata().map_err(|err| ConfigError::Io {
        path: path.clone(),
        err,
    })?;
    if !meta.file_type().is_file() {
        return Err(ConfigError::Unsafe {
            path,
            why: "is not a regular file".into(),
        });
    }
    check_meta(&path, &meta, owners)?;
    if meta.len() > MAX_FILE {
        return Err(ConfigError::Unsafe {
            path,
            why: format!("is larger than {MAX_FILE} bytes"),
        });
    }
    let mut text = Vec::new();
    file.take(MAX_FILE + 1)
        .read_to_end(&mut text)
        .map_err(|err| ConfigError::Io {
            path: path.clone(),
            err,
        })?;
    parse(&path, name, &text)
}

fn check_owner(path: &Path, owners: &[u32]) -> Result<(), ConfigError> {
    let meta = std::fs::metadata(path).map_err(|err| ConfigError::Io {
        path: path.to_path_buf(),
        err,
    })?;
    if !meta.is_dir() {
        return Err(ConfigError::Unsafe {
            path: path.to_path_buf(),
            why: "is not a directory".into(),
        });
    }
    check_meta(path, &meta, owners)?;
    crate::safe_path::check_dir_and_ancestors(path, owners).map_err(|e| ConfigError::Unsafe {
        path: e.path,
        why: e.why,
    })?;
    Ok(())
}

fn check_meta(path: &Path, meta: &std::fs::Metadata, owners: &[u32]) -> Result<(), ConfigError> {
    if !owners.contains(&meta.uid()) {
        return Err(ConfigError::Unsafe {
            path: path.to_path_buf(),
            why: format!("is owned by uid {}, not root", meta.uid()),
        });
    }
    if meta.mode() & 0o022 != 0 {
        return Err(ConfigError::Unsafe {
            path: path.to_path_buf(),
            why: "is writable by group or others (chmod go-w)".into(),
        });
    }
    Ok(())
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
        let line = std::str::from_utf8(raw).expect("ASCII").trim();
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
            Err(ConfigError::Io { .. })
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
            "host = other\n",
            "port = 0\n",
            "user = -oX\n",
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
}

//! dom0: `init`'s steps for the borg server: its host keys fetched through sys-backup
//! (`ssh-keyscan` there, parsed strictly) and pinned only after the user confirms their
//! fingerprints (or one given on the command line matches); the vault's key set made
//! (`qubes-borg-keygen` in ssh-backup) and the server's `authorized_keys` line built here; the
//! destination file of sys-backup and the key set's server.conf in the vault written (diff
//! shown, confirmed). Every command is built from constants and values checked in dom0; what a
//! qube prints is hostile: bounded, parsed against a fixed form, printed sanitized.

use super::session::Ctx;
use super::textdiff;
use crate::codec;
use crate::host_key::{self, HostKey};
use crate::job::progress::sanitize;

/// The networked qube that runs ssh (and ssh-keyscan).
pub const NET_QUBE: &str = "sys-backup";
/// The vault holding the key sets.
pub const VAULT: &str = "ssh-backup";
/// sys-backup's destination files.
pub const DESTINATIONS: &str = "/etc/qubes-borg/destinations";
/// Most bytes of ssh-keyscan output read (a few keys are ~2 KiB).
pub const MAX_KEYSCAN: usize = 64 * 1024;
/// Most host keys pinned (as sys-backup's destination parser allows).
pub const MAX_HOST_KEYS: usize = 16;
/// Most bytes of a current configuration file shown in a diff.
pub const MAX_CURRENT: usize = 64 * 1024;

/// The borg server as given on the command line (checked by `cli`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerOptions {
    pub host: String,
    pub user: String,
    pub port: u16,
    /// The vault's key set (`agent = ` in the destination).
    pub key_set: String,
    /// borg serve's `--storage-quota` in the printed line.
    pub quota: String,
    /// `SHA256:...`: pin the key with this fingerprint without asking.
    pub fingerprint: Option<String>,
    /// Also the `admin` key set (full access, each use confirmed in dom0) and its destination
    /// `NAME-admin`.
    pub admin: bool,
}

/// The full-access key set the shipped policy asks about at each use.
pub const ADMIN_KEY_SET: &str = "admin";

/// Why the host keys were not pinned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostKeyError {
    /// Not confirmed, or no key matches the given fingerprint: exit 77.
    Refused(String),
    /// Could not get the keys (keyscan failed or printed something malformed).
    Failed(String),
}

/// `qvm-run` of a plain command in `vm` as `user`, stdio passed (qvm_run.py: COMMAND ARG...
/// runs as qubes.VMExec, or VMShell with the words quoted).
pub fn qvm_run(user: &str, vm: &str, cmd: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = [
        "qvm-run",
        "--user",
        user,
        "--pass-io",
        "--no-gui",
        "--no-color-output",
        "--no-color-stderr",
        vm,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.extend(cmd.iter().map(|s| s.to_string()));
    v
}

/// The host field ssh-keyscan prints for `host` and `port`.
fn host_field(host: &str, port: u16) -> String {
    if port == 22 {
        host.to_string()
    } else {
        format!("[{host}]:{port}")
    }
}

/// ssh-keyscan's output: lines `HOST TYPE BASE64` (comments `#...` and blank lines skipped),
/// HOST exactly the one asked for, each key of an allowed type whose blob names that type.
/// Anything else refuses the whole.
pub fn parse_keyscan(untrusted: &[u8], host: &str, port: u16) -> Result<Vec<HostKey>, String> {
    if untrusted.len() > MAX_KEYSCAN {
        return Err(format!("ssh-keyscan printed more than {MAX_KEYSCAN} bytes"));
    }
    let want = host_field(host, port);
    let mut keys: Vec<HostKey> = Vec::new();
    for (i, line) in untrusted.split(|&b| b == b'\n').enumerate() {
        if line.is_empty() || line.starts_with(b"#") {
            continue;
        }
        let bad = || {
            format!(
                "ssh-keyscan line {} is not '{want} TYPE KEY': {}",
                i + 1,
                sanitize(line, 80)
            )
        };
        if !line.iter().all(|b| (0x20..0x7f).contains(b)) {
            return Err(bad());
        }
        let text = std::str::from_utf8(line).map_err(|_| bad())?;
        let f: Vec<&str> = text.split(' ').collect();
        if f.len() != 3 || f[0] != want {
            return Err(bad());
        }
        let k = host_key::parse_host_key(&format!("{} {}", f[1], f[2]))
            .map_err(|e| format!("{}: {e}", bad()))?;
        if !keys.contains(&k) {
            keys.push(k);
        }
        if keys.len() > MAX_HOST_KEYS {
            return Err(format!(
                "ssh-keyscan printed more than {MAX_HOST_KEYS} keys"
            ));
        }
    }
    if keys.is_empty() {
        return Err(format!("ssh-keyscan found no host key for {want}"));
    }
    Ok(keys)
}

/// `SHA256:...` of a host key, as `ssh-keygen -l` prints it.
pub fn fingerprint(k: &HostKey) -> String {
    codec::fingerprint(&codec::base64_decode(k.base64.as_bytes()).unwrap_or_default())
}

/// A fingerprint as the user gives it: `SHA256:` and 43 unpadded base64 characters.
pub fn check_fingerprint(s: &str) -> Result<(), &'static str> {
    let b = s
        .strip_prefix("SHA256:")
        .ok_or("must start with SHA256: (ssh-keygen -l -E sha256)")?;
    if b.len() != 43
        || !b
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'+' || c == b'/')
    {
        return Err("must be SHA256: and 43 base64 characters");
    }
    Ok(())
}

/// Fetches the server's host keys through sys-backup and decides which to pin: the one
/// matching `--host-key-fingerprint`, or all of them once the user confirmed.
pub(super) fn host_keys(
    ctx: &mut Ctx,
    s: &ServerOptions,
    confirm: &mut dyn FnMut(&str) -> bool,
) -> Result<Vec<HostKey>, HostKeyError> {
    let port = s.port.to_string();
    let argv = qvm_run(
        "user",
        NET_QUBE,
        &["ssh-keyscan", "-T", "10", "-p", &port, &s.host],
    );
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let out = ctx
        .call(&argv)
        .map_err(|e| HostKeyError::Failed(format!("cannot fetch the host keys: {e}")))?;
    let keys = parse_keyscan(&out, &s.host, s.port).map_err(HostKeyError::Failed)?;
    let mut shown = format!(
        "host keys of {} (fetched through {NET_QUBE}):",
        host_field(&s.host, s.port)
    );
    for k in &keys {
        shown += &format!("\n  {} {}", k.kind, fingerprint(k));
    }
    ctx.note(&shown);
    match &s.fingerprint {
        Some(want) => {
            let hit: Vec<HostKey> = keys
                .into_iter()
                .filter(|k| &fingerprint(k) == want)
                .collect();
            if hit.is_empty() {
                return Err(HostKeyError::Refused(format!(
                    "no host key of {} has the fingerprint {want}: not pinned (is it the right server? \
                     compare with the fingerprints your provider publishes)",
                    s.host
                )));
            }
            ctx.note(&format!("pinning the key with fingerprint {want}"));
            Ok(hit)
        }
        None => {
            if confirm("Are these the server's host keys (compare with what your provider shows)? Pin them?") {
                Ok(keys)
            } else {
                Err(HostKeyError::Refused(
                    "host keys not confirmed: nothing pinned (--host-key-fingerprint SHA256:... to give the one you expect)".into(),
                ))
            }
        }
    }
}

/// sys-backup's destination file for `name` (docs/PROTOCOL.md), from values checked in dom0
/// (tests/it/dom0/init.rs reads it back with sys-backup's parser).
pub fn destination_text(name: &str, s: &ServerOptions, keys: &[HostKey]) -> Result<String, String> {
    let mut t = format!(
        "# written by qvm-backup-borg init (docs/PROTOCOL.md)\nhost = {}\nuser = {}\n",
        s.host, s.user
    );
    if s.port != 22 {
        t += &format!("port = {}\n", s.port);
    }
    for k in keys {
        t += &format!("host-key = {} {}\n", k.kind, k.base64);
    }
    t += &format!("agent = {}\n", s.key_set);
    if keys.is_empty() || keys.len() > MAX_HOST_KEYS {
        return Err(format!("{name}: 1 to {MAX_HOST_KEYS} host keys are needed"));
    }
    Ok(t)
}

/// The key set's login policy in the vault (docs/SPLIT-SSH.md): the same user and host keys.
pub fn server_conf_text(s: &ServerOptions, keys: &[HostKey]) -> String {
    let mut t = format!(
        "# written by qvm-backup-borg init (docs/SPLIT-SSH.md)\nuser = {}\n",
        s.user
    );
    for k in keys {
        t += &format!("host-key = {} {}\n", k.kind, k.base64);
    }
    t
}

/// A file in a qube: read (for the diff), and written when it changes after confirmation.
pub struct QubeFile<'a> {
    pub vm: &'a str,
    pub user: &'a str,
    /// `sh -c` script printing the file (nothing when missing); `$1` = `arg`.
    pub read: &'a str,
    /// `sh -c` script writing stdin to the file; `$1` = `arg`.
    pub write: &'a str,
    pub arg: &'a str,
    /// How the user knows it (`sys-backup:/etc/...`).
    pub label: String,
}

/// Shows the diff between the file in the qube and `new`, asks, and writes it; unchanged
/// files are left alone. Returns whether it was written.
pub(super) fn update_file(
    ctx: &mut Ctx,
    f: &QubeFile,
    new: &str,
    yes: bool,
    confirm: &mut dyn FnMut(&str) -> bool,
) -> Result<bool, String> {
    let argv = qvm_run(f.user, f.vm, &["sh", "-c", f.read, "sh", f.arg]);
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let untrusted_current = ctx.call(&argv)?;
    if untrusted_current.len() > MAX_CURRENT {
        return Err(format!("{}: larger than {MAX_CURRENT} bytes", f.label));
    }
    if untrusted_current == new.as_bytes() {
        ctx.note(&format!("{}: unchanged", f.label));
        return Ok(false);
    }
    // Shown sanitized, line by line.
    let current: String = untrusted_current
        .split(|&b| b == b'\n')
        .map(|l| sanitize(l, 300))
        .collect::<Vec<_>>()
        .join("\n");
    ctx.note(&format!(
        "{} {}:\n{}",
        f.label,
        if untrusted_current.is_empty() {
            "is new"
        } else {
            "changes"
        },
        textdiff::unified(&f.label, &current, new)
    ));
    if !untrusted_current.is_empty() && !yes && !confirm(&format!("Change {}?", f.label)) {
        return Err(format!(
            "{} left unchanged: not confirmed (--yes to change it without asking)",
            f.label
        ));
    }
    let argv = qvm_run(f.user, f.vm, &["sh", "-c", f.write, "sh", f.arg]);
    let mut sink = |_: &[u8]| {};
    let o = ctx
        .q
        .job(&argv, new.as_bytes(), &mut sink)
        .map_err(|e| e.to_string())?;
    if o.code != 0 {
        return Err(format!(
            "cannot write {} (exit {}): {}",
            f.label,
            o.code,
            sanitize(o.stderr.trim_ascii(), 300)
        ));
    }
    Ok(true)
}

/// sys-backup's destination file `name`.
pub fn destination_file(name: &str) -> QubeFile<'_> {
    QubeFile {
        vm: NET_QUBE,
        user: "root",
        read: "f=/etc/qubes-borg/destinations/$1.conf; if [ -e \"$f\" ]; then cat -- \"$f\"; fi",
        write: "umask 022 && mkdir -p /etc/qubes-borg/destinations && f=/etc/qubes-borg/destinations/$1.conf && cat > \"$f.new\" && mv -f -- \"$f.new\" \"$f\"",
        arg: name,
        label: format!("{NET_QUBE}:{DESTINATIONS}/{name}.conf"),
    }
}

/// The vault's server.conf of key set `key_set` (its user's ~/.ssh/qubes-borg/NAME/).
pub fn server_conf_file(key_set: &str) -> QubeFile<'_> {
    QubeFile {
        vm: VAULT,
        user: "user",
        read: "f=$HOME/.ssh/qubes-borg/$1/server.conf; if [ -e \"$f\" ]; then cat -- \"$f\"; fi",
        write: "umask 077 && mkdir -p \"$HOME/.ssh/qubes-borg/$1\" && f=$HOME/.ssh/qubes-borg/$1/server.conf && cat > \"$f.new\" && mv -f -- \"$f.new\" \"$f\"",
        arg: key_set,
        label: format!("{VAULT}:~/.ssh/qubes-borg/{key_set}/server.conf"),
    }
}

/// The repository's path at the server from the URL's path (`/./repo` and `/~/repo` are
/// relative to the account's home, which is borg serve's working directory).
pub fn server_path(url_path: &str) -> &str {
    url_path
        .strip_prefix("/./")
        .or_else(|| url_path.strip_prefix("/~/"))
        .unwrap_or(url_path)
}

/// Makes the key set in the vault (if missing) and returns the `authorized_keys` line for the
/// server, built here from the vault's public key (checked) and constants: the routine key set
/// append-only with a quota, the admin key set (`admin`) with full access.
pub(super) fn key_set_line(
    ctx: &mut Ctx,
    key_set: &str,
    admin: bool,
    repo_path: &str,
    quota: &str,
) -> Result<String, String> {
    let argv = if admin {
        qvm_run(
            "user",
            VAULT,
            &[
                "qubes-borg-keygen",
                "--admin-server-line",
                key_set,
                repo_path,
            ],
        )
    } else {
        qvm_run(
            "user",
            VAULT,
            &[
                "qubes-borg-keygen",
                "--server-line",
                key_set,
                repo_path,
                quota,
            ],
        )
    };
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let out = ctx.call(&argv)?;
    let untrusted =
        std::str::from_utf8(&out).map_err(|_| "qubes-borg-keygen: output is not text")?;
    let expect = |key: &str| {
        if admin {
            admin_keys_line(key, key_set, repo_path)
        } else {
            authorized_keys_line(key, key_set, repo_path, quota)
        }
    };
    let key = parse_keygen_line(untrusted, &expect)?;
    Ok(expect(&key))
}

/// The routine key set's line: append-only, one repository, a quota, `restrict`.
pub fn authorized_keys_line(key_b64: &str, key_set: &str, repo_path: &str, quota: &str) -> String {
    format!(
        "command=\"borg serve --append-only --restrict-to-repository {repo_path} --storage-quota {quota}\",restrict ssh-ed25519 {key_b64} qubes-borg-{key_set}"
    )
}

/// The admin key set's line: one repository, full access (prune, delete, compact), `restrict`.
pub fn admin_keys_line(key_b64: &str, key_set: &str, repo_path: &str) -> String {
    format!(
        "command=\"borg serve --restrict-to-repository {repo_path}\",restrict ssh-ed25519 {key_b64} qubes-borg-{key_set}"
    )
}

/// The public key from `qubes-borg-keygen`'s one line, which must be exactly `expect(KEY)`
/// (the line dom0 builds), KEY an ed25519 public key.
pub fn parse_keygen_line(
    untrusted: &str,
    expect: &dyn Fn(&str) -> String,
) -> Result<String, String> {
    let bad = || {
        format!(
            "qubes-borg-keygen printed an unexpected line: {}",
            sanitize(untrusted.as_bytes(), 120)
        )
    };
    let line = untrusted.strip_suffix('\n').ok_or_else(bad)?;
    let (prefix, suffix) = expect("\n")
        .split_once('\n')
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .ok_or_else(bad)?;
    let key = line
        .strip_prefix(&prefix)
        .and_then(|r| r.strip_suffix(&suffix))
        .ok_or_else(bad)?;
    host_key::parse_host_key(&format!("ssh-ed25519 {key}"))
        .map_err(|e| format!("{}: {e}", bad()))?;
    if expect(key) != line {
        return Err(bad());
    }
    Ok(key.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    // ssh-ed25519 public key blob (type + 32 bytes)
    const ED: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";

    #[test]
    fn keyscan_lines_are_parsed_strictly() {
        let out = format!("# h:22 SSH-2.0-OpenSSH_9.2\nnas.example ssh-ed25519 {ED}\n\nnas.example ssh-ed25519 {ED}\n");
        let k = parse_keyscan(out.as_bytes(), "nas.example", 22).unwrap();
        assert_eq!(k.len(), 1);
        assert_eq!(k[0].kind, "ssh-ed25519");
        assert!(fingerprint(&k[0]).starts_with("SHA256:"));
        assert_eq!(fingerprint(&k[0]).len(), 7 + 43);
        let k = parse_keyscan(
            format!("[nas.example]:23 ssh-ed25519 {ED}\n").as_bytes(),
            "nas.example",
            23,
        )
        .unwrap();
        assert_eq!(k.len(), 1);
        for bad in [
            format!("other.example ssh-ed25519 {ED}\n"),
            format!("nas.example ssh-ed25519 {ED} comment\n"),
            format!("nas.example ssh-rsa {ED}\n"),
            format!("nas.example ssh-ed25519 {ED}\r\n"),
            "nas.example ssh-ed25519 \x1b[2J\n".to_string(),
            "\n# only comments\n".to_string(),
            "x".repeat(MAX_KEYSCAN + 1),
        ] {
            let e = parse_keyscan(bad.as_bytes(), "nas.example", 22).unwrap_err();
            assert!(!e.contains('\x1b'), "{e}");
        }
    }

    #[test]
    fn fingerprints_are_checked_in_ssh_keygen_form() {
        assert!(check_fingerprint(&format!("SHA256:{}", "a".repeat(43))).is_ok());
        assert!(check_fingerprint(&format!("MD5:{}", "a".repeat(43))).is_err());
        assert!(check_fingerprint("SHA256:abc").is_err());
    }

    #[test]
    fn the_keygen_line_must_be_exactly_the_expected_one() {
        let line = authorized_keys_line(ED, "default", "repo", "1T");
        let expect = |k: &str| authorized_keys_line(k, "default", "repo", "1T");
        assert_eq!(
            parse_keygen_line(&format!("{line}\n"), &expect).unwrap(),
            ED
        );
        let admin = |k: &str| admin_keys_line(k, "admin", "repo");
        assert_eq!(
            parse_keygen_line(&format!("{}\n", admin(ED)), &admin).unwrap(),
            ED
        );
        assert!(parse_keygen_line(&format!("{line}\n"), &admin).is_err());
        for bad in [
            line.clone(),
            format!("{line}\nmore\n"),
            format!("{}\n", line.replace("--append-only ", "")),
            format!("{}\n", line.replace(ED, "AAAA")),
            format!("{}\n", authorized_keys_line(ED, "admin", "repo", "1T")),
        ] {
            assert!(parse_keygen_line(&bad, &expect).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_destination_text_has_the_port_and_key_set() {
        let s = ServerOptions {
            host: "nas.example".into(),
            user: "borg".into(),
            port: 23,
            key_set: "default".into(),
            quota: "1T".into(),
            fingerprint: None,
            admin: false,
        };
        let keys = vec![HostKey {
            kind: "ssh-ed25519".into(),
            base64: ED.into(),
        }];
        let t = destination_text("offsite", &s, &keys).unwrap();
        assert!(
            t.contains("port = 23\n") && t.contains("agent = default\n"),
            "{t}"
        );
        assert_eq!(server_path("/./repo"), "repo");
        assert_eq!(server_path("/home/borg/repo"), "/home/borg/repo");
    }
}

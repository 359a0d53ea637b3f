//! dom0: `qvm-backup-borg init`, the first setup of the repository: a fresh disposable runs
//! `borg init` (job op `init`; a repository already there is left alone), the key comes back
//! (keyfile mode: the key file itself) and is written root-only in dom0 with its exports
//! (`borg key export`, `--paper`), and backup.conf gets `key_file` (its diff shown and
//! confirmed first). The passphrase is made here when there is no passphrase file.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::dom0::config::Config;
use crate::dom0::job_call::repository_data;
use crate::dom0::qubes::Qubes;
use crate::dom0::secrets;
use crate::dom0::server::{self, HostKeyError, ServerOptions};
use crate::dom0::session::{Ctx, Outcome, Secrets};
use crate::dom0::textdiff;
use crate::job::progress::InitResult;
use crate::job::spec::{Encryption, Init, Op};

/// Where the key file goes when backup.conf names none: next to backup.conf
/// (`/etc/qubes-borg/key`), like the exports.
pub const KEY_NAME: &str = "key";
pub const EXPORT_NAME: &str = "repository-key.export";
pub const PAPER_NAME: &str = "repository-key.paper.txt";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitOptions {
    pub encryption: Encryption,
    /// Change files without asking.
    pub yes: bool,
    /// Set up the server's side too: key set, host key, destination (`--host ...`).
    pub server: Option<ServerOptions>,
    /// `--repository`: written to backup.conf (made if missing).
    pub repository: Option<String>,
}

/// How `init` ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitOutcome {
    Done(Outcome),
    /// The host keys were not confirmed, or none matched `--host-key-fingerprint`.
    HostKeyRefused,
}

/// Why `init` stopped.
enum Stop {
    Failed(String),
    HostKeyRefused(String),
}

impl From<String> for Stop {
    fn from(s: String) -> Stop {
        Stop::Failed(s)
    }
}

impl From<&str> for Stop {
    fn from(s: &str) -> Stop {
        Stop::Failed(s.to_string())
    }
}

/// How `init` asks the user (the terminal in the program, a script in tests): the question,
/// answered yes or no.
pub type Confirm<'a> = &'a mut dyn FnMut(&str) -> bool;

/// A new passphrase: 32 random bytes as 43 base64 characters (URL-safe alphabet, no padding).
pub fn new_passphrase() -> Result<Vec<u8>, String> {
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw).map_err(|e| format!("no randomness for a passphrase: {e}"))?;
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = Vec::with_capacity(43);
    for b in raw {
        bits = (bits << 8) | u32::from(b);
        n += 8;
        while n >= 6 {
            n -= 6;
            out.push(A[((bits >> n) & 63) as usize]);
        }
    }
    if n > 0 {
        out.push(A[((bits << (6 - n)) & 63) as usize]);
    }
    Ok(out)
}

/// Writes `bytes` to `path` root-only (0600) through a temporary file and a rename; a
/// different file already there is kept as `PATH.old-EPOCH` (never lost). Returns that name.
pub fn install_secret(path: &Path, bytes: &[u8], now: u64) -> Result<Option<PathBuf>, String> {
    let name = path
        .file_name()
        .ok_or_else(|| format!("{}: not a file name", path.display()))?
        .to_string_lossy()
        .to_string();
    let dir = path.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let mut kept = None;
    match std::fs::read(path) {
        Ok(old) if old == bytes => return Ok(None),
        Ok(_) => {
            let old = dir.join(format!("{name}.old-{now}"));
            std::fs::rename(path, &old)
                .map_err(|e| format!("cannot move {} aside: {e}", path.display()))?;
            kept = Some(old);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("{}: {e}", path.display())),
    }
    let tmp = dir.join(format!(".{name}.new"));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(kept)
}

/// backup.conf with `key_file = PATH` among the global keys (before the first `[qube]`
/// section), or None when it already says so.
pub fn with_key_file(text: &str, key_file: &Path) -> Option<String> {
    with_global(text, "key_file", &key_file.to_string_lossy())
}

/// backup.conf with `KEY = VALUE` among the global keys (the first such line replaced, else
/// added before the first `[qube]` section), or None when it already says so.
pub fn with_global(text: &str, key: &str, value: &str) -> Option<String> {
    let line = format!("{key} = {value}");
    let mut out = String::new();
    let mut added = false;
    for l in text.lines() {
        let t = l.trim();
        let is_key = t
            .strip_prefix(key)
            .map(|r| r.trim_start().starts_with('='))
            .unwrap_or(false);
        if is_key && !added {
            if t == line {
                return None;
            }
            out += &format!("{line}\n");
            added = true;
            continue;
        }
        if t.starts_with('[') && !added {
            out += &format!("{line}\n");
            added = true;
        }
        out += l;
        out.push('\n');
    }
    if !added {
        out += &format!("{line}\n");
    }
    Some(out)
}

/// backup.conf with `repository = URL` (the first such line replaced, else added first).
pub fn with_repository(text: &str, url: &str) -> Option<String> {
    let line = format!("repository = {url}");
    let mut out = String::new();
    let mut done = false;
    for l in text.lines() {
        let t = l.trim();
        let is_key = t
            .strip_prefix("repository")
            .map(|r| r.trim_start().starts_with('='))
            .unwrap_or(false);
        if is_key && !done {
            if t == line {
                return None;
            }
            out += &format!("{line}\n");
            done = true;
            continue;
        }
        out += l;
        out.push('\n');
    }
    if !done {
        out = format!("{line}\n{out}");
    }
    Some(out)
}

/// Why `prepare_config` stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrepareError {
    /// The change was not confirmed: nothing written (exit 1, like every change `init` was
    /// not allowed to make).
    NotConfirmed(String),
    /// backup.conf cannot be read or written (exit 78).
    Failed(String),
}

impl std::fmt::Display for PrepareError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PrepareError::NotConfirmed(m) | PrepareError::Failed(m) => f.write_str(m),
        }
    }
}

/// Before `init` runs: backup.conf at `path` made (`--repository` given, no file yet) or its
/// repository changed (diff shown, confirmed); returns the text to load.
pub fn prepare_config(
    path: &Path,
    repository: Option<&str>,
    yes: bool,
    confirm: Confirm,
    err: &mut dyn Write,
    now: u64,
) -> Result<(), PrepareError> {
    let Some(url) = repository else {
        return Ok(());
    };
    let old = match std::fs::read_to_string(path) {
        Ok(t) => Some(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(PrepareError::Failed(format!("{}: {e}", path.display()))),
    };
    let new = match &old {
        None => format!("# written by qvm-backup-borg init (docs/USAGE.md)\nrepository = {url}\n"),
        Some(t) => match with_repository(t, url) {
            Some(n) => n,
            None => return Ok(()),
        },
    };
    let label = path.to_string_lossy();
    let _ = writeln!(
        err,
        "qvm-backup-borg: {} {}:\n{}",
        label,
        if old.is_some() { "changes" } else { "is new" },
        textdiff::unified(&label, old.as_deref().unwrap_or(""), &new)
    );
    if old.is_some() && !yes && !confirm(&format!("Change {label}?")) {
        return Err(PrepareError::NotConfirmed(format!(
            "{label} left unchanged: not confirmed (--yes to change it without asking)"
        )));
    }
    install_secret(path, new.as_bytes(), now).map_err(PrepareError::Failed)?;
    Ok(())
}

/// backup.conf's directory (`/etc/qubes-borg`).
fn config_dir(cfg: &Config) -> PathBuf {
    match cfg.path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// The files `init` writes, decided before anything runs.
struct Plan {
    passphrase: Vec<u8>,
    /// The passphrase is new: write it to passphrase_file once the repository exists.
    new_passphrase: bool,
    key_file: Option<PathBuf>,
    /// backup.conf's new text, if it changes.
    config_text: Option<String>,
}

fn plan(cfg: &Config, opts: &InitOptions, ctx: &mut Ctx, confirm: Confirm) -> Result<Plan, String> {
    let (passphrase, new_passphrase) = if cfg.passphrase_file.exists() {
        let s = secrets::load(&Config {
            key_file: None,
            ..cfg.clone()
        })?;
        (s.passphrase, false)
    } else {
        (new_passphrase()?, true)
    };
    let keyfile = opts.encryption == Encryption::KeyfileBlake2;
    let key_file = keyfile.then(|| {
        cfg.key_file
            .clone()
            .unwrap_or_else(|| config_dir(cfg).join(KEY_NAME))
    });
    let mut config_text = None;
    let old =
        std::fs::read_to_string(&cfg.path).map_err(|e| format!("{}: {e}", cfg.path.display()))?;
    let mut new = old.clone();
    if let (Some(k), None) = (&key_file, &cfg.key_file) {
        new = with_key_file(&new, k).unwrap_or(new);
    }
    let admin = opts.server.as_ref().is_some_and(|s| s.admin);
    if let (true, None) = (admin, &cfg.admin_repository) {
        let (name, path) = repository_parts(cfg)?;
        let url = format!("ssh://{name}-admin{path}");
        new = with_global(&new, "admin_repository", &url).unwrap_or(new);
    }
    if new != old {
        ctx.note(&format!(
            "{} changes:\n{}",
            cfg.path.display(),
            textdiff::unified(&cfg.path.to_string_lossy(), &old, &new)
        ));
        if !opts.yes && !confirm(&format!("Change {}?", cfg.path.display())) {
            return Err(format!(
                "{} left unchanged: not confirmed (--yes to change it without asking)",
                cfg.path.display()
            ));
        }
        config_text = Some(new);
    }
    Ok(Plan {
        passphrase,
        new_passphrase,
        key_file,
        config_text,
    })
}

/// Runs the job `init`; returns what it sent, checked.
fn run_init(ctx: &mut Ctx, opts: &InitOptions, passphrase: &[u8]) -> Result<InitResult, String> {
    let op = Op::Init(Init {
        encryption: opts.encryption,
    });
    let secrets = Secrets {
        passphrase: passphrase.to_vec(),
        key_file: None,
    };
    let data = repository_data(ctx, &secrets, op, "init")?;
    InitResult::parse(&data, opts.encryption == Encryption::KeyfileBlake2)
}

fn write_secret(ctx: &mut Ctx, path: &Path, bytes: &[u8], now: u64) -> Result<(), String> {
    if let Some(old) = install_secret(path, bytes, now)? {
        ctx.note(&format!(
            "{} held something else: kept as {}",
            path.display(),
            old.display()
        ));
    }
    Ok(())
}

/// The server's side (`--host`): the key set's line, the pinned host keys, sys-backup's
/// destination and the vault's server.conf. Returns the line to register.
fn server_steps(
    ctx: &mut Ctx,
    s: &ServerOptions,
    yes: bool,
    confirm: Confirm,
) -> Result<String, Stop> {
    let (name, path) = repository_parts(ctx.cfg)?;
    let repo_path = server::server_path(path);
    let mut lines = vec![server::key_set_line(
        ctx, &s.key_set, false, repo_path, &s.quota,
    )?];
    if s.admin {
        lines.push(server::key_set_line(
            ctx,
            server::ADMIN_KEY_SET,
            true,
            repo_path,
            &s.quota,
        )?);
    }
    let keys = server::host_keys(ctx, s, confirm).map_err(|e| match e {
        HostKeyError::Refused(m) => Stop::HostKeyRefused(m),
        HostKeyError::Failed(m) => Stop::Failed(m),
    })?;
    let mut sets = vec![(name.to_string(), s.clone())];
    if s.admin {
        let mut a = s.clone();
        a.key_set = server::ADMIN_KEY_SET.into();
        let admin_name = format!("{name}-admin");
        crate::validate::name("destination", &admin_name)
            .map_err(|e| format!("admin destination {admin_name}: {}", e.why))?;
        sets.push((admin_name, a));
    }
    for (dest_name, o) in &sets {
        let dest = server::destination_text(dest_name, o, &keys)?;
        server::update_file(
            ctx,
            &server::destination_file(dest_name),
            &dest,
            yes,
            confirm,
        )?;
        let conf = server::server_conf_text(o, &keys);
        server::update_file(
            ctx,
            &server::server_conf_file(&o.key_set),
            &conf,
            yes,
            confirm,
        )?;
    }
    Ok(lines.join("\n"))
}

/// backup.conf's repository as destination NAME and path (checked when loaded).
fn repository_parts(cfg: &Config) -> Result<(&str, &str), String> {
    let rest = cfg
        .repository
        .strip_prefix("ssh://")
        .ok_or("repository is not ssh://NAME/PATH")?;
    let at = rest.find('/').ok_or("repository has no path")?;
    Ok(rest.split_at(at))
}

fn steps(
    ctx: &mut Ctx,
    opts: &InitOptions,
    confirm: Confirm,
    out: &mut dyn Write,
    now: u64,
) -> Result<(), Stop> {
    let cfg = ctx.cfg;
    let p = plan(cfg, opts, ctx, confirm)?;
    if let Some(s) = &opts.server {
        let line = server_steps(ctx, s, opts.yes, confirm)?;
        let _ = writeln!(
            out,
            "Register this line in the server account's ~/.ssh/authorized_keys (append-only: docs/USAGE.md has the BorgBase, rsync.net and Hetzner ways):
{line}"
        );
        let _ = out.flush();
        if !opts.yes
            && !confirm("Is the line registered at the server? Initialise the repository now?")
        {
            return Err(Stop::Failed(
                "repository not initialised: run init again once the line is registered".into(),
            ));
        }
    }
    let r = run_init(ctx, opts, &p.passphrase)?;
    if !r.created {
        let _ = writeln!(
            out,
            "A repository already exists at {}: left alone (not initialised again).",
            cfg.repository
        );
        if p.new_passphrase {
            ctx.note(&format!(
                "no passphrase file: put the repository's passphrase in {} (root-only, 0600)",
                cfg.passphrase_file.display()
            ));
        }
        if let Some(k) = &p.key_file {
            if !k.exists() {
                ctx.note(&format!("keyfile mode: put the repository's key file at {} (root-only, 0600), e.g. from your offline copy (borg key import)", k.display()));
            }
        }
        if let Some(t) = &p.config_text {
            write_secret(ctx, &cfg.path, t.as_bytes(), now)?;
        }
        return Ok(());
    }
    if p.new_passphrase {
        let mut pass = p.passphrase.clone();
        pass.push(b'\n');
        write_secret(ctx, &cfg.passphrase_file, &pass, now)?;
    }
    if let (Some(k), Some(bytes)) = (&p.key_file, &r.key_file) {
        write_secret(ctx, k, bytes, now)?;
    }
    if let Some(t) = &p.config_text {
        write_secret(ctx, &cfg.path, t.as_bytes(), now)?;
    }
    let dir = config_dir(cfg);
    let (export, paper) = (dir.join(EXPORT_NAME), dir.join(PAPER_NAME));
    write_secret(ctx, &export, &r.export, now)?;
    write_secret(ctx, &paper, &r.paper, now)?;
    let _ = writeln!(
        out,
        "Initialised the repository {} ({}).",
        cfg.repository,
        opts.encryption.as_str()
    );
    if p.new_passphrase {
        let _ = writeln!(
            out,
            "A new random passphrase is in {} (root-only).",
            cfg.passphrase_file.display()
        );
    }
    if let Some(k) = &p.key_file {
        let _ = writeln!(
            out,
            "The key file is in {} (root-only); it exists nowhere else: not in the repository, not in any qube.",
            k.display()
        );
    }
    let _ = writeln!(
        out,
        "The key is exported to {} and, printable, {} (root-only).\n\
         KEEP A COPY OFFLINE (printed, or on a USB stick in a safe), with the passphrase ({}):\n\
         without both, nobody can read the archives, you included (a new machine needs them to restore).",
        export.display(),
        paper.display(),
        cfg.passphrase_file.display()
    );
    Ok(())
}

/// Runs `init`: messages on `out`, notes on `err`.
pub fn init(
    cfg: &Config,
    opts: &InitOptions,
    q: &mut dyn Qubes,
    confirm: Confirm,
    out: &mut dyn Write,
    err: &mut dyn Write,
    now: u64,
) -> InitOutcome {
    let mut ctx = Ctx::begin(cfg, q, err, false);
    match steps(&mut ctx, opts, confirm, out, now) {
        Ok(()) => InitOutcome::Done(Outcome::Ok),
        Err(Stop::HostKeyRefused(e)) => {
            ctx.note(&format!("init REFUSED: {e}"));
            InitOutcome::HostKeyRefused
        }
        Err(Stop::Failed(e)) => InitOutcome::Done(ctx.failed("init", &e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_repository_goes_among_the_global_keys() {
        let t = "repository = ssh://a/./r\n[qube work]\n";
        assert_eq!(
            with_global(t, "admin_repository", "ssh://a-admin/./r").unwrap(),
            "repository = ssh://a/./r\nadmin_repository = ssh://a-admin/./r\n[qube work]\n"
        );
    }

    #[test]
    fn key_file_goes_among_the_global_keys_once() {
        let t = "repository = ssh://a/./r\n[qube work]\nmode = image\n";
        assert_eq!(
            with_key_file(t, Path::new("/etc/qubes-borg/key")).unwrap(),
            "repository = ssh://a/./r\nkey_file = /etc/qubes-borg/key\n[qube work]\nmode = image\n"
        );
        let t2 = "repository = ssh://a/./r\nkey_file = /etc/qubes-borg/key\n";
        assert_eq!(with_key_file(t2, Path::new("/etc/qubes-borg/key")), None);
        assert_eq!(
            with_key_file(t2, Path::new("/root/k")).unwrap(),
            "repository = ssh://a/./r\nkey_file = /root/k\n"
        );
        assert_eq!(
            with_key_file("repository = x", Path::new("/k")).unwrap(),
            "repository = x\nkey_file = /k\n"
        );
    }

    #[test]
    fn the_repository_line_is_replaced_or_added_first() {
        let t = "# c\nrepository = ssh://a/./r\nmode = image\n";
        assert_eq!(
            with_repository(t, "ssh://b/./r").unwrap(),
            "# c\nrepository = ssh://b/./r\nmode = image\n"
        );
        assert_eq!(with_repository(t, "ssh://a/./r"), None);
        assert_eq!(
            with_repository("mode = image\n", "ssh://b/./r").unwrap(),
            "repository = ssh://b/./r\nmode = image\n"
        );
    }

    #[test]
    fn new_passphrases_are_long_random_and_printable() {
        let a = new_passphrase().unwrap();
        let b = new_passphrase().unwrap();
        assert_eq!(a.len(), 43);
        assert_ne!(a, b);
        assert!(a
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'_'));
    }
}

//! dom0: the repository's secrets for `qvm-backup-borg`: the passphrase (a root-only file, else
//! asked on the terminal without echo) and the key file; both reach the job only on its stdin.

use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::config::Config;
use super::session::Secrets;

/// A root-only secret file: regular, owned by root (or us), not readable by group or others.
pub fn read_secret(path: &Path) -> Result<Vec<u8>, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if !meta.is_file()
        || meta.mode() & 0o077 != 0
        || (meta.uid() != 0 && meta.uid() != nix::unistd::geteuid().as_raw())
    {
        return Err(format!(
            "{}: must be a regular file owned by root with mode 0600 or 0400",
            path.display()
        ));
    }
    let mut v = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(64 * 1024 + 1).read_to_end(&mut v))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if v.len() > 64 * 1024 {
        return Err(format!("{}: larger than 64 KiB", path.display()));
    }
    Ok(v)
}

pub fn ask_passphrase() -> Result<Vec<u8>, String> {
    use nix::sys::termios::{tcgetattr, tcsetattr, LocalFlags, SetArg};
    let mut tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .map_err(|e| format!("no passphrase file and no terminal to ask on: {e}"))?;
    let old = tcgetattr(&tty).map_err(|e| format!("terminal: {e}"))?;
    let mut quiet = old.clone();
    quiet.local_flags.remove(LocalFlags::ECHO);
    write!(tty, "Passphrase of the borg repository: ").map_err(|e| e.to_string())?;
    tcsetattr(&tty, SetArg::TCSAFLUSH, &quiet).map_err(|e| format!("terminal: {e}"))?;
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while tty.read(&mut b).map_err(|e| e.to_string())? == 1
        && b[0] != b'\n'
        && line.len() <= 64 * 1024
    {
        line.push(b[0]);
    }
    let _ = tcsetattr(&tty, SetArg::TCSAFLUSH, &old);
    let _ = writeln!(tty);
    Ok(line)
}

/// The repository passphrase (the file, else asked on the terminal) and the key file.
pub fn load(cfg: &Config) -> Result<Secrets, String> {
    let mut passphrase = if cfg.passphrase_file.exists() {
        read_secret(&cfg.passphrase_file)?
    } else {
        ask_passphrase()?
    };
    // A trailing newline of an edited file is not part of the passphrase (as borg's --passphrase-fd reads a line).
    if passphrase.last() == Some(&b'\n') {
        passphrase.pop();
    }
    let key_file = match &cfg.key_file {
        Some(p) => Some(read_secret(p)?),
        None => None,
    };
    Ok(Secrets {
        passphrase,
        key_file,
    })
}

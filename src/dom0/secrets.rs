//! dom0: the repository's secrets for `qvm-backup-borg`: the passphrase (a root-only file, else
//! asked on the terminal without echo) and the key file; both reach the job only on its stdin.

use std::io::{Read, Write};
use std::path::Path;

use super::config::Config;
use super::session::Secrets;

/// A root-only secret file: regular (not a symbolic link), owned by root (or the caller), not
/// readable or writable by group or others, at most 64 KiB.
pub fn read_secret(path: &Path) -> Result<Vec<u8>, String> {
    use crate::safe_path::{read_trusted, FileError, Trusted, PRIVATE};
    let me = nix::unistd::geteuid().as_raw();
    let owners = &[0, me];
    let trusted = Trusted {
        owners,
        forbidden_mode: PRIVATE,
        max_len: 64 * 1024,
        check_dir: false,
    };
    read_trusted(path, &trusted).map_err(|e| match e {
        FileError::NotFound(p) => format!("{}: does not exist", p.display()),
        FileError::Unsafe(u) => format!(
            "{}: {}; a secret must be a regular file owned by root with mode 0600 or 0400",
            u.path.display(),
            u.why
        ),
        FileError::Io { path, err } => format!("{}: {err}", path.display()),
    })
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_secret_file_others_may_read_or_a_link_to_one_is_refused() {
        let d = std::env::temp_dir().join(format!("qubes-borg-secret-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir(&d).unwrap();
        let f = d.join("passphrase");
        std::fs::write(&f, b"s3cret").unwrap();
        let set = |m| std::fs::set_permissions(&f, std::fs::Permissions::from_mode(m)).unwrap();
        for ok in [0o600, 0o400] {
            set(ok);
            assert_eq!(read_secret(&f).unwrap(), b"s3cret", "{ok:o}");
        }
        for bad in [0o640, 0o604, 0o620, 0o602] {
            set(bad);
            let e = read_secret(&f).unwrap_err();
            assert!(
                e.contains("is readable or writable by group or others"),
                "{bad:o}: {e}"
            );
        }
        set(0o600);
        let link = d.join("link");
        std::os::unix::fs::symlink(&f, &link).unwrap();
        assert!(read_secret(&link)
            .unwrap_err()
            .contains("is a symbolic link"));
        assert!(read_secret(&d.join("none"))
            .unwrap_err()
            .ends_with("does not exist"));
        std::fs::remove_dir_all(&d).unwrap();
    }
}

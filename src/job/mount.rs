//! sys-backup-mnt: mounting the qube's volume (read-only, `noload`, no devices, no set-uid, no
//! executables) and borg's state volume, through mount(8) with an argv, and unmounting them
//! when the guard is dropped.

use std::fs;
use std::io::Read;
use std::path::Path;
use std::process::Command;

use super::spec::check_device;

/// Where the qube's private volume is mounted. Fixed, so borg's files cache (keyed by path)
/// matches from one run to the next.
pub const PRIVATE_DIR: &str = "/run/qubes-borg/private";
/// Where borg's state volume is mounted (BORG_BASE_DIR).
pub const STATE_DIR: &str = "/run/qubes-borg/state";
/// BORG_BASE_DIR when no state volume is attached (tmpfs: gone with the disposable).
pub const EPHEMERAL_DIR: &str = "/run/qubes-borg/ephemeral";

/// Mount options for an untrusted filesystem: read-only, no journal replay (`noload`: the
/// volume is not written even to replay its journal), no device nodes, set-uid or executables.
pub const UNTRUSTED_OPTIONS: &str = "ro,noload,nodev,nosuid,noexec";
/// Mount options for borg's own state volume.
pub const STATE_OPTIONS: &str = "nodev,nosuid,noexec";

pub fn mount_argv(device: &str, dir: &str, options: &str) -> Vec<String> {
    ["mount", "-t", "ext4", "-o", options, device, dir]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// PATH for the programs the job starts (qrexec services may get one without the sbin dirs).
pub const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn run(argv: &[String]) -> Result<(), String> {
    let out = Command::new(&argv[0])
        .args(&argv[1..])
        .env("PATH", PATH)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", argv[0]))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{} failed ({}): {}",
            argv[0],
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A mount that is undone when dropped.
#[derive(Debug)]
pub struct Mounted {
    dir: String,
    active: bool,
}

impl Mounted {
    /// Unmounts now, reporting failure.
    pub fn unmount(mut self) -> Result<(), String> {
        self.active = false;
        run(&["umount".into(), self.dir.clone()])
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if self.active {
            let _ = run(&["umount".into(), "--lazy".into(), self.dir.clone()]);
        }
    }
}

/// Mounts DEVICE (exactly /dev/xvd[i-z]) at DIR with OPTIONS.
pub fn mount(device: &str, dir: &str, options: &str) -> Result<Mounted, String> {
    check_device(device).map_err(|w| format!("device {device}: {w}"))?;
    fs::create_dir_all(dir).map_err(|e| format!("cannot create {dir}: {e}"))?;
    run(&mount_argv(device, dir, options))?;
    Ok(Mounted {
        dir: dir.to_string(),
        active: true,
    })
}

/// True when the device holds an ext2/3/4 superblock (magic 0xEF53 at byte 1080).
pub fn has_ext4(device: &Path) -> Result<bool, String> {
    let mut f =
        fs::File::open(device).map_err(|e| format!("cannot open {}: {e}", device.display()))?;
    let mut buf = [0u8; 1082];
    f.read_exact(&mut buf)
        .map_err(|e| format!("cannot read {}: {e}", device.display()))?;
    Ok(buf[1080..1082] == [0x53, 0xef])
}

/// Where a restore mounts the fresh filesystem of the target volume.
pub const TARGET_DIR: &str = "/run/qubes-borg/target";
/// Options for it: borg extract restores owners and modes; nothing on it runs here.
pub const TARGET_OPTIONS: &str = "nodev,nosuid,noexec";

/// A fresh ext4 on the restore target (whatever was on it is gone: dom0 attached a new or
/// explicitly replaced qube's private volume).
pub fn make_target_fs(device: &str) -> Result<(), String> {
    check_device(device).map_err(|w| format!("device {device}: {w}"))?;
    run(&["mkfs.ext4".into(), "-q".into(), "-F".into(), device.into()])
}

/// Makes the state volume's filesystem on first use (a blank image from dom0).
pub fn ensure_state_fs(device: &str) -> Result<bool, String> {
    check_device(device).map_err(|w| format!("device {device}: {w}"))?;
    if has_ext4(Path::new(device))? {
        return Ok(false);
    }
    run(&[
        "mkfs.ext4".into(),
        "-q".into(),
        "-F".into(),
        "-L".into(),
        "qubes-borg".into(),
        device.into(),
    ])?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn untrusted_mount_is_read_only_without_journal_devices_setuid_or_exec() {
        let argv = mount_argv("/dev/xvdi", PRIVATE_DIR, UNTRUSTED_OPTIONS);
        assert_eq!(
            argv,
            [
                "mount",
                "-t",
                "ext4",
                "-o",
                "ro,noload,nodev,nosuid,noexec",
                "/dev/xvdi",
                PRIVATE_DIR
            ]
        );
    }

    #[test]
    fn only_xvdi_to_xvdz_can_be_mounted() {
        let e = mount("/dev/sda", "/nonexistent", UNTRUSTED_OPTIONS).unwrap_err();
        assert!(e.contains("must be /dev/xvdi"), "{e}");
    }

    #[test]
    fn ext4_magic_is_recognised() {
        let dir = std::env::temp_dir().join(format!("qb-mount-{}", std::process::id()));
        let mut img = vec![0u8; 4096];
        std::fs::write(&dir, &img).unwrap();
        assert!(!has_ext4(&dir).unwrap());
        img[1080] = 0x53;
        img[1081] = 0xef;
        std::fs::write(&dir, &img).unwrap();
        assert!(has_ext4(&dir).unwrap());
        std::fs::remove_file(&dir).unwrap();
    }
}

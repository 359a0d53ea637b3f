//! dom0: reading what the Qubes tools print (`qvm-ls --raw-data`, `qvm-pool info`) and where a
//! pool keeps a volume's committed image. Their output is trusted (dom0's own tools) but still
//! parsed strictly.

use super::plan::QubeInfo;
use crate::job::progress::sanitize;
use crate::job::spec;

/// `qvm-ls --raw-data` lines `NAME|CLASS|STATE|INCLUDE`.
pub fn parse_qvm_ls(out: &[u8]) -> Result<Vec<QubeInfo>, String> {
    let text = std::str::from_utf8(out).map_err(|_| "qvm-ls: output is not text".to_string())?;
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split('|').collect();
            if f.len() != 4 || spec::check_qube(f[0]).is_err() {
                return Err(format!(
                    "qvm-ls: unexpected line '{}'",
                    sanitize(l.as_bytes(), 100)
                ));
            }
            Ok(QubeInfo {
                name: f[0].into(),
                class: f[1].into(),
                state: f[2].into(),
                include_in_backups: f[3] == "True",
            })
        })
        .collect()
}

/// `qvm-pool info` rows `KEY  VALUE` (aligned by `column -t`).
pub fn pool_value(out: &[u8], key: &str) -> Option<String> {
    let text = std::str::from_utf8(out).ok()?;
    text.lines().find_map(|l| {
        let (k, v) = l.trim().split_once(char::is_whitespace)?;
        (k == key).then(|| v.trim().to_string())
    })
}

/// The committed (at-rest) image of a private volume, from its pool's driver.
pub fn committed_path(driver: &str, pool_info: &[u8], vid: &str) -> Result<(String, bool), String> {
    let vid_ok = !vid.is_empty()
        && !vid.contains("..")
        && vid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-/+".contains(&b));
    if !vid_ok {
        return Err(format!(
            "unexpected volume id '{}'",
            sanitize(vid.as_bytes(), 80)
        ));
    }
    match driver {
        // qubes/storage/lvm.py: vid is VG/LV; the running qube writes to LV-snap.
        "lvm_thin" => Ok((format!("/dev/{vid}"), true)),
        // qubes/storage/reflink.py and file.py: DIR/VID.img is the committed image.
        "file-reflink" | "file" => {
            let dir = pool_value(pool_info, "dir_path").ok_or("qvm-pool info: no dir_path")?;
            if !dir.starts_with('/') || dir.contains("..") || dir.chars().any(|c| c.is_control()) {
                return Err("qvm-pool info: unexpected dir_path".into());
            }
            Ok((format!("{}/{vid}.img", dir.trim_end_matches('/')), false))
        }
        other => Err(format!(
            "pool driver '{}' is not supported (lvm_thin, file-reflink, file)",
            sanitize(other.as_bytes(), 40)
        )),
    }
}

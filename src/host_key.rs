//! Every qube (shared): an OpenSSH public host key as `TYPE BASE64` (an ssh-keyscan line
//! without the host name), checked: an allowed type, and base64 that decodes to a key blob of
//! that type. sys-backup's destination files pin such keys; dom0's `init` reads them from
//! ssh-keyscan's output.

use crate::validate;

/// Host key algorithms accepted in `host-key` lines.
pub const HOST_KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-rsa",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

/// Largest decoded `host-key` blob (an RSA-16384 key is about 2 KiB).
pub const MAX_KEY_BLOB: usize = 16 * 1024;

/// A pinned host key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostKey {
    pub kind: String,
    pub base64: String,
}

/// `TYPE BASE64`, with TYPE from `HOST_KEY_TYPES` and the key blob naming the same type.
pub fn parse_host_key(value: &str) -> Result<HostKey, String> {
    let fields: Vec<&str> = value.split_ascii_whitespace().collect();
    let usage = "host-key must be 'TYPE BASE64' (an ssh-keyscan line without the host name and without a comment)";
    let [kind, b64] = fields[..] else {
        return Err(usage.into());
    };
    if !HOST_KEY_TYPES.contains(&kind) {
        return Err(format!(
            "host-key type '{}' is not one of {}",
            validate::printable(kind.as_bytes(), 40),
            HOST_KEY_TYPES.join(", ")
        ));
    }
    let blob =
        crate::codec::base64_decode(b64.as_bytes()).ok_or("host-key data is not valid base64")?;
    if blob.len() < 4 + kind.len() || blob.len() > MAX_KEY_BLOB {
        return Err("host-key data has an implausible length".into());
    }
    // The blob starts with the key type as an SSH string (u32 length, bytes). Read without
    // indexing, so that a short blob is refused here whatever the length check above says.
    let Some((len, rest)) = blob.split_first_chunk::<4>() else {
        return Err("host-key data has an implausible length".into());
    };
    let n = u32::from_be_bytes(*len) as usize;
    if rest.get(..n) != Some(kind.as_bytes()) {
        return Err(format!("host-key data is not a '{kind}' key"));
    }
    Ok(HostKey {
        kind: kind.to_string(),
        base64: b64.to_string(),
    })
}

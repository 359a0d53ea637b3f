//! ssh-backup: the agent policy of `qubes-borg.SshAgent`: which client requests may reach
//! the vault's ssh-agent, and what the client may see of its answers.
//!
//! Rules (allowlist; anything not listed is refused with SSH_AGENT_FAILURE
//! and never reaches the agent):
//! 1. `REQUEST_IDENTITIES` (11): answered with the backup key alone, and
//!    only if the agent really holds it (else an empty list).
//! 2. `SIGN_REQUEST` (13) whose key blob is exactly the backup key, whose
//!    flags are 0 (ed25519 has no signature variants), and whose data is a
//!    well-formed SSH user-authentication request (RFC 4252 section 7, or
//!    OpenSSH's `publickey-hostbound-v00@openssh.com`) for that same key and
//!    the `ssh-connection` service. So the key signs SSH logins only: no
//!    `SSHSIG` file/commit signatures, no arbitrary data.
//!
//! Modelled on: the message layout of draft-miller-ssh-agent; the
//! user-authentication blob as OpenSSH's agent checks it for
//! destination-constrained keys (`openssh-portable:ssh-agent.c`,
//! `parse_userauth_request`).

use std::fmt;

use super::wire::{self, ParseError, Reader};
use crate::codec;

/// `string "ssh-ed25519"` + `string` of 32 bytes.
const ED25519_BLOB_LEN: usize = 4 + 11 + 4 + 32;
/// Bounds for fields inside a sign request (generous for real clients).
const MAX_KEY_BLOB: usize = 16 * 1024;
const MAX_SESSION_ID: usize = 128;
const MAX_USER: usize = 512;
const MAX_NAME: usize = 256;
/// Most identities accepted in the agent's answer (OpenSSH's client bound,
/// `MAX_AGENT_IDENTITIES` in `authfd.c`).
const MAX_IDENTITIES: u32 = 2048;
/// SSH_MSG_USERAUTH_REQUEST (RFC 4250).
const SSH_MSG_USERAUTH_REQUEST: u8 = 50;

/// The one public key this key set may use, as a wire blob.
#[derive(Clone, PartialEq, Eq)]
pub struct BackupKey {
    blob: Vec<u8>,
}

/// Why a public key line was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyError {
    /// Not `ssh-ed25519 BASE64 [comment]`.
    Format(&'static str),
    /// A key type other than ssh-ed25519.
    WrongType(String),
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyError::Format(why) => write!(f, "not an OpenSSH ed25519 public key line: {why}"),
            KeyError::WrongType(t) => write!(
                f,
                "key type {t:?} is not supported: the backup key must be ssh-ed25519 (regenerate it with qubes-borg-keygen)"
            ),
        }
    }
}

impl BackupKey {
    /// Parse an OpenSSH public key line (`ssh-ed25519 AAAA... comment`).
    pub fn from_public_line(text: &str) -> Result<BackupKey, KeyError> {
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#'))
            .ok_or(KeyError::Format("no key line"))?;
        let mut fields = line.split_ascii_whitespace();
        let kind = fields.next().ok_or(KeyError::Format("empty line"))?;
        if kind != "ssh-ed25519" {
            return Err(KeyError::WrongType(kind.chars().take(64).collect()));
        }
        let b64 = fields.next().ok_or(KeyError::Format("no base64 key"))?;
        let blob = codec::base64_decode(b64.as_bytes()).ok_or(KeyError::Format("bad base64"))?;
        BackupKey::from_blob(blob)
    }

    /// Accept a wire blob if it is a well-formed ed25519 public key.
    pub fn from_blob(blob: Vec<u8>) -> Result<BackupKey, KeyError> {
        if blob.len() != ED25519_BLOB_LEN {
            return Err(KeyError::Format("ed25519 key blob of the wrong length"));
        }
        let mut r = Reader::new(&blob);
        let kind = r.string(32).map_err(|e| KeyError::Format(e.0))?;
        if kind != b"ssh-ed25519" {
            return Err(KeyError::Format(
                "key blob type differs from the line's type",
            ));
        }
        let pk = r.string(32).map_err(|e| KeyError::Format(e.0))?;
        if pk.len() != 32 || !r.is_empty() {
            return Err(KeyError::Format("ed25519 public key of the wrong size"));
        }
        Ok(BackupKey { blob })
    }

    pub fn blob(&self) -> &[u8] {
        &self.blob
    }

    pub fn fingerprint(&self) -> String {
        codec::fingerprint(&self.blob)
    }
}

impl fmt::Debug for BackupKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BackupKey({})", self.fingerprint())
    }
}

/// What the filter does with one client request.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Ask the agent for its identities and answer with the backup key.
    Identities,
    /// Forward this (fully validated) sign request to the agent unchanged.
    Sign(SignInfo),
    /// Answer SSH_AGENT_FAILURE; never reaches the agent.
    Refuse(Refusal),
}

/// What a permitted signature is for (for the log line).
#[derive(Debug, PartialEq, Eq)]
pub struct SignInfo {
    /// Remote user name in the authentication request, escaped for logs.
    pub user: String,
    /// Fingerprint of the server's host key, when the client sent it
    /// (`publickey-hostbound-v00@openssh.com`, OpenSSH 8.9+).
    pub host_key: Option<String>,
}

/// Why a request was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Adding, removing, locking, smartcards: never allowed.
    Forbidden(&'static str),
    /// An extension request (e.g. session-bind@openssh.com, query).
    Extension(String),
    /// A sign request for a key other than the backup key.
    OtherKey(String),
    /// A sign request for the backup key whose data is not an SSH
    /// user-authentication request for that key.
    NotUserAuth(&'static str),
    /// A message number we do not know.
    Unknown(u8),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Forbidden(what) => write!(f, "{what} is not allowed"),
            Refusal::Extension(name) => write!(f, "extension {name} is not allowed"),
            Refusal::OtherKey(fp) => write!(
                f,
                "sign request for a key that is not the backup key ({fp})"
            ),
            Refusal::NotUserAuth(why) => {
                write!(
                    f,
                    "sign request that is not an SSH login for the backup key: {why}"
                )
            }
            Refusal::Unknown(t) => write!(f, "unknown message type {t}"),
        }
    }
}

/// Make hostile bytes safe for a one-line log: printable ASCII kept,
/// everything else as `\xNN`, at most `max` input bytes (then `...`).
pub fn escape_for_log(bytes: &[u8], max: usize) -> String {
    let mut s = String::new();
    for &b in bytes.iter().take(max) {
        if (0x21..0x7f).contains(&b) && b != b'\\' {
            s.push(b as char);
        } else {
            s.push_str(&format!("\\x{b:02x}"));
        }
    }
    if bytes.len() > max {
        s.push_str("...");
    }
    s
}

/// Decide what to do with one request frame body (type byte + contents).
pub fn classify(body: &[u8], key: &BackupKey) -> Verdict {
    let Some((&kind, contents)) = body.split_first() else {
        return Verdict::Refuse(Refusal::Unknown(0));
    };
    match kind {
        wire::SSH_AGENTC_REQUEST_IDENTITIES if contents.is_empty() => Verdict::Identities,
        wire::SSH_AGENTC_REQUEST_IDENTITIES => {
            Verdict::Refuse(Refusal::Forbidden("request identities with trailing bytes"))
        }
        wire::SSH_AGENTC_SIGN_REQUEST => classify_sign(contents, key),
        wire::SSH_AGENTC_ADD_IDENTITY | wire::SSH_AGENTC_ADD_ID_CONSTRAINED => {
            Verdict::Refuse(Refusal::Forbidden("adding a key"))
        }
        wire::SSH_AGENTC_REMOVE_IDENTITY => Verdict::Refuse(Refusal::Forbidden("removing a key")),
        wire::SSH_AGENTC_REMOVE_ALL_IDENTITIES => {
            Verdict::Refuse(Refusal::Forbidden("removing all keys"))
        }
        wire::SSH_AGENTC_ADD_SMARTCARD_KEY
        | wire::SSH_AGENTC_ADD_SMARTCARD_KEY_CONSTRAINED
        | wire::SSH_AGENTC_REMOVE_SMARTCARD_KEY => {
            Verdict::Refuse(Refusal::Forbidden("adding or removing a smartcard key"))
        }
        wire::SSH_AGENTC_LOCK => Verdict::Refuse(Refusal::Forbidden("locking the agent")),
        wire::SSH_AGENTC_UNLOCK => Verdict::Refuse(Refusal::Forbidden("unlocking the agent")),
        wire::SSH_AGENTC_EXTENSION => {
            let mut r = Reader::new(contents);
            let name = r
                .string(MAX_NAME)
                .map(|n| escape_for_log(n, 64))
                .unwrap_or_else(|_| "(malformed)".into());
            Verdict::Refuse(Refusal::Extension(name))
        }
        other => Verdict::Refuse(Refusal::Unknown(other)),
    }
}

fn classify_sign(contents: &[u8], key: &BackupKey) -> Verdict {
    let mut r = Reader::new(contents);
    let blob = match r.string(MAX_KEY_BLOB) {
        Ok(b) => b,
        Err(e) => return Verdict::Refuse(Refusal::NotUserAuth(e.0)),
    };
    if blob != key.blob() {
        return Verdict::Refuse(Refusal::OtherKey(codec::fingerprint(blob)));
    }
    let data = match r.string(wire::MAX_MESSAGE_LEN) {
        Ok(d) => d,
        Err(e) => return Verdict::Refuse(Refusal::NotUserAuth(e.0)),
    };
    let flags = match r.u32().and_then(|f| r.finish().map(|_| f)) {
        Ok(f) => f,
        Err(e) => return Verdict::Refuse(Refusal::NotUserAuth(e.0)),
    };
    if flags != 0 {
        return Verdict::Refuse(Refusal::NotUserAuth(
            "signature flags set (ed25519 has none)",
        ));
    }
    match parse_userauth(data, key) {
        Ok(info) => Verdict::Sign(info),
        Err(e) => Verdict::Refuse(Refusal::NotUserAuth(e.0)),
    }
}

/// The data ssh signs for public key authentication (RFC 4252 section 7):
/// string session id, byte 50, string user, string "ssh-connection",
/// string method, boolean TRUE, string algorithm, string key blob
/// [, string host key for the hostbound method]; nothing after.
fn parse_userauth(data: &[u8], key: &BackupKey) -> Result<SignInfo, ParseError> {
    let mut r = Reader::new(data);
    let sid = r.string(MAX_SESSION_ID)?;
    if sid.is_empty() {
        return Err(ParseError("empty session identifier"));
    }
    if r.u8()? != SSH_MSG_USERAUTH_REQUEST {
        return Err(ParseError("not a user authentication request"));
    }
    let user = r.string(MAX_USER)?;
    if r.string(MAX_NAME)? != b"ssh-connection" {
        return Err(ParseError("service is not ssh-connection"));
    }
    let method = r.string(MAX_NAME)?;
    if !r.boolean()? {
        return Err(ParseError("signature flag in the request is false"));
    }
    if r.string(MAX_NAME)? != b"ssh-ed25519" {
        return Err(ParseError("algorithm is not ssh-ed25519"));
    }
    if r.string(MAX_KEY_BLOB)? != key.blob() {
        return Err(ParseError("the request names another key"));
    }
    let host_key = match method {
        b"publickey" => None,
        b"publickey-hostbound-v00@openssh.com" => {
            let hk = r.string(MAX_KEY_BLOB)?;
            if hk.is_empty() {
                return Err(ParseError("empty host key"));
            }
            Some(codec::fingerprint(hk))
        }
        _ => return Err(ParseError("method is not publickey")),
    };
    r.finish()?;
    Ok(SignInfo {
        user: escape_for_log(user, 64),
        host_key,
    })
}

/// Error in an answer from the agent (the agent is trusted, but the filter
/// still refuses to pass on anything it did not expect).
#[derive(Debug, PartialEq, Eq)]
pub struct AgentReplyError(pub &'static str);

impl fmt::Display for AgentReplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unexpected answer from ssh-agent: {}", self.0)
    }
}

/// From the agent's IDENTITIES_ANSWER, build ours: the backup key alone
/// (with a fixed comment) if the agent holds it, else an empty list.
/// Returns the answer body and whether the key was held.
pub fn filter_identities(
    reply: &[u8],
    key: &BackupKey,
    comment: &[u8],
) -> Result<(Vec<u8>, bool), AgentReplyError> {
    let mut r = Reader::new(reply);
    let kind = r.u8().map_err(|_| AgentReplyError("empty"))?;
    if kind == wire::SSH_AGENT_FAILURE {
        return Err(AgentReplyError(
            "it refused to list its keys (is it locked?)",
        ));
    }
    if kind != wire::SSH_AGENT_IDENTITIES_ANSWER {
        return Err(AgentReplyError("not an identities answer"));
    }
    let n = r.u32().map_err(|_| AgentReplyError("no key count"))?;
    if n > MAX_IDENTITIES {
        return Err(AgentReplyError("too many keys"));
    }
    let mut held = false;
    for _ in 0..n {
        let blob = r
            .string(wire::MAX_MESSAGE_LEN)
            .map_err(|_| AgentReplyError("malformed key"))?;
        r.string(wire::MAX_MESSAGE_LEN)
            .map_err(|_| AgentReplyError("malformed comment"))?;
        held |= blob == key.blob();
    }
    r.finish().map_err(|_| AgentReplyError("trailing bytes"))?;
    let mut out = vec![wire::SSH_AGENT_IDENTITIES_ANSWER];
    out.extend_from_slice(&u32::from(held).to_be_bytes());
    if held {
        wire::put_string(&mut out, key.blob());
        wire::put_string(&mut out, comment);
    }
    Ok((out, held))
}

/// The agent's answer to a sign request, checked.
#[derive(Debug, PartialEq, Eq)]
pub enum SignReply {
    /// A well-formed SIGN_RESPONSE: pass it on unchanged.
    Signed,
    /// The agent refused: pass SSH_AGENT_FAILURE on.
    Refused,
}

/// Check a reply to a forwarded sign request: `SIGN_RESPONSE` with one
/// ed25519 signature (`string "ssh-ed25519"`, `string` of 64 bytes), or
/// `FAILURE`.
pub fn check_sign_reply(reply: &[u8]) -> Result<SignReply, AgentReplyError> {
    let mut r = Reader::new(reply);
    match r.u8().map_err(|_| AgentReplyError("empty"))? {
        wire::SSH_AGENT_FAILURE => Ok(SignReply::Refused),
        wire::SSH_AGENT_SIGN_RESPONSE => {
            let sig = r
                .string(1024)
                .map_err(|_| AgentReplyError("malformed signature"))?;
            r.finish().map_err(|_| AgentReplyError("trailing bytes"))?;
            let mut s = Reader::new(sig);
            let ok = s.string(32).ok() == Some(&b"ssh-ed25519"[..])
                && s.string(64).map(|b| b.len() == 64).unwrap_or(false)
                && s.is_empty();
            if ok {
                Ok(SignReply::Signed)
            } else {
                Err(AgentReplyError("not an ed25519 signature"))
            }
        }
        _ => Err(AgentReplyError("not a sign response")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::wire::put_string;

    fn key(byte: u8) -> BackupKey {
        let mut blob = Vec::new();
        put_string(&mut blob, b"ssh-ed25519");
        put_string(&mut blob, &[byte; 32]);
        BackupKey::from_blob(blob).unwrap()
    }

    fn userauth(key: &BackupKey, method: &[u8], host: Option<&[u8]>) -> Vec<u8> {
        let mut d = Vec::new();
        put_string(&mut d, &[9; 32]);
        d.push(50);
        put_string(&mut d, b"borg");
        put_string(&mut d, b"ssh-connection");
        put_string(&mut d, method);
        d.push(1);
        put_string(&mut d, b"ssh-ed25519");
        put_string(&mut d, key.blob());
        if let Some(h) = host {
            put_string(&mut d, h);
        }
        d
    }

    fn sign(blob: &[u8], data: &[u8], flags: u32) -> Vec<u8> {
        let mut m = vec![13];
        put_string(&mut m, blob);
        put_string(&mut m, data);
        m.extend_from_slice(&flags.to_be_bytes());
        m
    }

    #[test]
    fn public_key_line_is_parsed_and_checked() {
        let k = key(7);
        let b64 = codec::base64_encode_unpadded(k.blob());
        assert_eq!(b64.len() % 4, 0, "51-byte blob needs no padding");
        let line = format!("ssh-ed25519 {b64} backup@ssh-backup\n");
        assert_eq!(BackupKey::from_public_line(&line).unwrap(), k);
        assert!(matches!(
            BackupKey::from_public_line("ssh-rsa AAAAB3NzaC1yc2E= x"),
            Err(KeyError::WrongType(_))
        ));
        assert!(BackupKey::from_public_line("ssh-ed25519 !!!!").is_err());
        assert!(BackupKey::from_public_line("").is_err());
    }

    #[test]
    fn identities_and_backup_key_logins_pass() {
        let k = key(1);
        assert_eq!(classify(&[11], &k), Verdict::Identities);
        let v = classify(&sign(k.blob(), &userauth(&k, b"publickey", None), 0), &k);
        assert_eq!(
            v,
            Verdict::Sign(SignInfo {
                user: "borg".into(),
                host_key: None
            })
        );
        let v = classify(
            &sign(
                k.blob(),
                &userauth(&k, b"publickey-hostbound-v00@openssh.com", Some(b"hostkey")),
                0,
            ),
            &k,
        );
        assert!(matches!(
            v,
            Verdict::Sign(SignInfo {
                host_key: Some(_),
                ..
            })
        ));
    }

    #[test]
    fn management_and_extensions_are_refused() {
        let k = key(1);
        for t in [17u8, 18, 19, 20, 21, 22, 23, 25, 26] {
            assert!(
                matches!(
                    classify(&[t, 0, 0, 0, 0], &k),
                    Verdict::Refuse(Refusal::Forbidden(_))
                ),
                "type {t}"
            );
        }
        let mut ext = vec![27];
        put_string(&mut ext, b"session-bind@openssh.com");
        assert_eq!(
            classify(&ext, &k),
            Verdict::Refuse(Refusal::Extension("session-bind@openssh.com".into()))
        );
        for t in [0u8, 1, 3, 7, 9, 12, 14, 28, 30, 255] {
            assert_eq!(classify(&[t], &k), Verdict::Refuse(Refusal::Unknown(t)));
        }
        assert!(matches!(classify(&[11, 0], &k), Verdict::Refuse(_)));
    }

    #[test]
    fn signing_anything_but_a_backup_key_login_is_refused() {
        let k = key(1);
        let other = key(2);
        let v = classify(
            &sign(other.blob(), &userauth(&other, b"publickey", None), 0),
            &k,
        );
        assert!(matches!(v, Verdict::Refuse(Refusal::OtherKey(_))));
        // Backup key, but the data names another key.
        let v = classify(
            &sign(k.blob(), &userauth(&other, b"publickey", None), 0),
            &k,
        );
        assert!(matches!(v, Verdict::Refuse(Refusal::NotUserAuth(_))));
        // Arbitrary data (e.g. an SSHSIG blob).
        let v = classify(&sign(k.blob(), b"SSHSIG\0\0\0\x03git", 0), &k);
        assert!(matches!(v, Verdict::Refuse(Refusal::NotUserAuth(_))));
        // Flags, trailing bytes, other method, truncated.
        let good = userauth(&k, b"publickey", None);
        assert!(matches!(
            classify(&sign(k.blob(), &good, 2), &k),
            Verdict::Refuse(_)
        ));
        let mut trailing = sign(k.blob(), &good, 0);
        trailing.push(0);
        assert!(matches!(classify(&trailing, &k), Verdict::Refuse(_)));
        let mut data_trailing = good.clone();
        data_trailing.push(0);
        assert!(matches!(
            classify(&sign(k.blob(), &data_trailing, 0), &k),
            Verdict::Refuse(_)
        ));
        let hb = userauth(&k, b"hostbased", None);
        assert!(matches!(
            classify(&sign(k.blob(), &hb, 0), &k),
            Verdict::Refuse(_)
        ));
        let full = sign(k.blob(), &good, 0);
        for cut in 1..full.len() {
            assert!(
                matches!(classify(&full[..cut], &k), Verdict::Refuse(_)),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn identities_answer_keeps_only_the_backup_key() {
        let k = key(1);
        let other = key(2);
        let mut reply = vec![12, 0, 0, 0, 2];
        put_string(&mut reply, other.blob());
        put_string(&mut reply, b"other");
        put_string(&mut reply, k.blob());
        put_string(&mut reply, b"secret comment");
        let (out, held) = filter_identities(&reply, &k, b"qubes-borg").unwrap();
        assert!(held);
        let mut want = vec![12, 0, 0, 0, 1];
        put_string(&mut want, k.blob());
        put_string(&mut want, b"qubes-borg");
        assert_eq!(out, want);

        let mut reply = vec![12, 0, 0, 0, 1];
        put_string(&mut reply, other.blob());
        put_string(&mut reply, b"other");
        let (out, held) = filter_identities(&reply, &k, b"c").unwrap();
        assert!(!held);
        assert_eq!(out, [12, 0, 0, 0, 0]);
        assert!(filter_identities(&[5], &k, b"c").is_err());
        assert!(filter_identities(&[12, 0, 0, 0, 1], &k, b"c").is_err());
    }

    #[test]
    fn sign_replies_are_checked() {
        let mut sig = Vec::new();
        put_string(&mut sig, b"ssh-ed25519");
        put_string(&mut sig, &[3; 64]);
        let mut reply = vec![14];
        put_string(&mut reply, &sig);
        assert_eq!(check_sign_reply(&reply), Ok(SignReply::Signed));
        assert_eq!(check_sign_reply(&[5]), Ok(SignReply::Refused));
        assert!(check_sign_reply(&[6]).is_err());
        reply.push(0);
        assert!(check_sign_reply(&reply).is_err());
    }

    #[test]
    fn log_escaping_neutralises_control_bytes() {
        assert_eq!(
            escape_for_log(b"a b\n\x1b[31m\\", 64),
            "a\\x20b\\x0a\\x1b[31m\\x5c"
        );
        assert_eq!(escape_for_log(b"abcdef", 3), "abc...");
    }
}

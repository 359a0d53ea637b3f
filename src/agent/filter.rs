//! ssh-backup: the agent policy of `qubes-borg.SshAgent`: which client requests may reach
//! the vault's ssh-agent, and what the client may see of its answers.
//!
//! Rules (allowlist; anything not listed is refused with SSH_AGENT_FAILURE
//! and never reaches the agent):
//! 1. `REQUEST_IDENTITIES` (11): answered with the backup key alone, and
//!    only if the agent really holds it (else an empty list).
//! 2. `session-bind@openssh.com` (extension, 27): passed to the agent, which
//!    verifies the server host key's signature over the session id, only if
//!    the host key is one of the key set's ([`LoginPolicy`]), the session id
//!    has the length of a key exchange hash, it is not a forwarding bind,
//!    and the connection is not bound yet.
//! 3. `SIGN_REQUEST` (13) whose key blob is exactly the backup key, whose
//!    flags are 0 (ed25519 has no signature variants), and whose data is a
//!    well-formed SSH user-authentication request (RFC 4252 section 7) for
//!    that key, the `ssh-connection` service and the key set's user, in the
//!    session bound on this connection: method
//!    `publickey-hostbound-v00@openssh.com` naming the bound host key (or
//!    plain `publickey` when the key set allows it). So the key signs logins
//!    to the configured server only: no `SSHSIG` file/commit signatures, no
//!    arbitrary data, no other server.
//!
//! Modelled on: the message layout of draft-miller-ssh-agent; the
//! session-bind message of `openssh-portable:PROTOCOL.agent`; what ssh
//! signs (`sshconnect2.c`, `sign_and_send_pubkey`) and sends the agent first
//! (`get_agent_identities`: session-bind, then the identities request); the
//! user-authentication blob as OpenSSH's agent checks it
//! (`ssh-agent.c`, `parse_userauth_request`, `process_ext_session_bind`),
//! all at tag V_9_2_P1.

use std::fmt;

use super::keyset::LoginPolicy;
use super::wire::{self, ParseError, Reader};
use crate::codec;

/// `string "ssh-ed25519"` + `string` of 32 bytes.
const ED25519_BLOB_LEN: usize = 4 + 11 + 4 + 32;
/// Bounds for fields inside a sign request (generous for real clients).
const MAX_KEY_BLOB: usize = 16 * 1024;
const MAX_USER: usize = 512;
const MAX_NAME: usize = 256;
/// Session id lengths accepted: the exchange hash of the key exchanges OpenSSH
/// offers by default (`myproposal.h`): SHA-256 (curve25519-sha256, ecdh-sha2-nistp256,
/// diffie-hellman-group14-sha256, group-exchange-sha256, mlkem768x25519-sha256),
/// SHA-384 (ecdh-sha2-nistp384), SHA-512 (sntrup761x25519-sha512, ecdh-sha2-nistp521,
/// diffie-hellman-group16/18-sha512). SHA-1 exchanges (20 bytes) are refused.
pub const SESSION_ID_LENS: [usize; 3] = [32, 48, 64];
/// Most identities accepted in the agent's answer (OpenSSH's client bound,
/// `MAX_AGENT_IDENTITIES` in `authfd.c`).
const MAX_IDENTITIES: u32 = 2048;
/// SSH_MSG_USERAUTH_REQUEST (RFC 4250).
const SSH_MSG_USERAUTH_REQUEST: u8 = 50;
/// The extension ssh sends before asking for identities (OpenSSH 8.9+).
pub const SESSION_BIND: &[u8] = b"session-bind@openssh.com";
/// The host-bound public key method (OpenSSH 8.9+).
pub const HOSTBOUND: &[u8] = b"publickey-hostbound-v00@openssh.com";

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

/// A connection's binding to one SSH session: the server host key the
/// client bound it to and the session id (the exchange hash). Recorded only
/// after the ssh-agent verified the host key's signature over the session id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub host_key: Vec<u8>,
    pub session_id: Vec<u8>,
}

impl Binding {
    pub fn host_fingerprint(&self) -> String {
        codec::fingerprint(&self.host_key)
    }
}

/// What the filter does with one client request.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Ask the agent for its identities and answer with the backup key.
    Identities,
    /// Forward this session-bind to the agent unchanged; on its SUCCESS the
    /// connection is bound to this session.
    Bind(Binding),
    /// Forward this (fully validated) sign request to the agent unchanged.
    Sign(SignInfo),
    /// Answer SSH_AGENT_FAILURE; never reaches the agent.
    Refuse(Refusal),
}

/// What a permitted signature is for (for the log line). Every field was
/// checked against the key set's policy and the connection's binding.
#[derive(Debug, PartialEq, Eq)]
pub struct SignInfo {
    /// Remote user (equal to the key set's `user`).
    pub user: String,
    /// `publickey-hostbound-v00@openssh.com` or `publickey`.
    pub method: &'static str,
    /// Fingerprint of the host key the session is bound to.
    pub host_key: String,
}

/// Why a request was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Adding, removing, locking, smartcards: never allowed.
    Forbidden(&'static str),
    /// An extension request other than session-bind (e.g. query).
    Extension(String),
    /// A session-bind the key set does not allow, or malformed.
    Bind(String),
    /// A sign request for a key other than the backup key.
    OtherKey(String),
    /// A sign request for the backup key whose data is not an SSH
    /// user-authentication request for that key.
    NotUserAuth(&'static str),
    /// A well-formed login the key set's policy does not allow.
    NotAllowed(String),
    /// A message number we do not know.
    Unknown(u8),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Forbidden(what) => write!(f, "{what} is not allowed"),
            Refusal::Extension(name) => write!(f, "extension {name} is not allowed"),
            Refusal::Bind(why) => write!(f, "session-bind refused: {why}"),
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
            Refusal::NotAllowed(why) => write!(f, "login not allowed for this key set: {why}"),
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

/// Decide what to do with one request frame body (type byte + contents),
/// given the key set's policy and the connection's binding so far.
pub fn classify(
    body: &[u8],
    key: &BackupKey,
    policy: &LoginPolicy,
    bound: Option<&Binding>,
) -> Verdict {
    let Some((&kind, contents)) = body.split_first() else {
        return Verdict::Refuse(Refusal::Unknown(0));
    };
    match kind {
        wire::SSH_AGENTC_REQUEST_IDENTITIES if contents.is_empty() => Verdict::Identities,
        wire::SSH_AGENTC_REQUEST_IDENTITIES => {
            Verdict::Refuse(Refusal::Forbidden("request identities with trailing bytes"))
        }
        wire::SSH_AGENTC_SIGN_REQUEST => classify_sign(contents, key, policy, bound),
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
            match r.string(MAX_NAME) {
                Ok(SESSION_BIND) => classify_bind(&mut r, policy, bound),
                Ok(n) => Verdict::Refuse(Refusal::Extension(escape_for_log(n, 64))),
                Err(_) => Verdict::Refuse(Refusal::Extension("(malformed)".into())),
            }
        }
        other => Verdict::Refuse(Refusal::Unknown(other)),
    }
}

/// `session-bind@openssh.com`: string hostkey, string session id, string
/// signature, bool is_forwarding (PROTOCOL.agent section 1).
fn classify_bind(r: &mut Reader, policy: &LoginPolicy, bound: Option<&Binding>) -> Verdict {
    let refuse = |why: String| Verdict::Refuse(Refusal::Bind(why));
    let parsed = (|| {
        let hk = r.string(MAX_KEY_BLOB)?;
        let sid = r.string(MAX_KEY_BLOB)?;
        let _sig = r.string(MAX_KEY_BLOB)?;
        let fwd = r.boolean()?;
        r.finish()?;
        Ok::<_, ParseError>((hk, sid, fwd))
    })();
    let (hk, sid, fwd) = match parsed {
        Ok(p) => p,
        Err(e) => return refuse(format!("malformed: {e}")),
    };
    if fwd {
        return refuse(
            "it binds a forwarded agent connection (agent forwarding is not used)".into(),
        );
    }
    if !SESSION_ID_LENS.contains(&sid.len()) {
        return refuse(format!(
            "session id of {} bytes is not a SHA-256/384/512 exchange hash",
            sid.len()
        ));
    }
    if bound.is_some() {
        return refuse("the connection is already bound to a session".into());
    }
    if !policy.allows_host_key(hk) {
        return refuse(format!(
            "server host key {} is not one of the key set's host keys",
            codec::fingerprint(hk)
        ));
    }
    Verdict::Bind(Binding {
        host_key: hk.to_vec(),
        session_id: sid.to_vec(),
    })
}

fn classify_sign(
    contents: &[u8],
    key: &BackupKey,
    policy: &LoginPolicy,
    bound: Option<&Binding>,
) -> Verdict {
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
    let login = match parse_userauth(data, key) {
        Ok(l) => l,
        Err(e) => return Verdict::Refuse(Refusal::NotUserAuth(e.0)),
    };
    match check_login(&login, policy, bound) {
        Ok(info) => Verdict::Sign(info),
        Err(why) => Verdict::Refuse(Refusal::NotAllowed(why)),
    }
}

/// The fields of a well-formed user-authentication request.
struct Login<'a> {
    session_id: &'a [u8],
    user: &'a [u8],
    /// The host key for the hostbound method, `None` for plain publickey.
    host_key: Option<&'a [u8]>,
}

/// The data ssh signs for public key authentication (RFC 4252 section 7):
/// string session id, byte 50, string user, string "ssh-connection",
/// string method, boolean TRUE, string algorithm, string key blob
/// [, string host key for the hostbound method]; nothing after.
fn parse_userauth<'a>(data: &'a [u8], key: &BackupKey) -> Result<Login<'a>, ParseError> {
    let mut r = Reader::new(data);
    let session_id = r.string(MAX_KEY_BLOB)?;
    if session_id.is_empty() {
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
        HOSTBOUND => {
            let hk = r.string(MAX_KEY_BLOB)?;
            if hk.is_empty() {
                return Err(ParseError("empty host key"));
            }
            Some(hk)
        }
        _ => return Err(ParseError("method is not publickey")),
    };
    r.finish()?;
    Ok(Login {
        session_id,
        user,
        host_key,
    })
}

/// A well-formed login against the key set's policy and the binding.
fn check_login(
    login: &Login,
    policy: &LoginPolicy,
    bound: Option<&Binding>,
) -> Result<SignInfo, String> {
    if !SESSION_ID_LENS.contains(&login.session_id.len()) {
        return Err(format!(
            "session id of {} bytes is not a SHA-256/384/512 exchange hash",
            login.session_id.len()
        ));
    }
    let Some(b) = bound else {
        return Err("the connection is not bound to a session (ssh older than OpenSSH 8.9, or it sent no session-bind)".into());
    };
    if login.session_id != b.session_id.as_slice() {
        return Err("the session id differs from the bound session's".into());
    }
    if login.user != policy.user.as_bytes() {
        return Err(format!(
            "remote user '{}' is not the key set's user '{}'",
            escape_for_log(login.user, 64),
            policy.user
        ));
    }
    let method = match login.host_key {
        Some(hk) if hk == b.host_key.as_slice() => "publickey-hostbound-v00@openssh.com",
        Some(hk) => {
            return Err(format!(
                "the login names server host key {}, the session is bound to {}",
                codec::fingerprint(hk),
                b.host_fingerprint()
            ))
        }
        None if policy.plain_publickey => "publickey",
        None => {
            return Err("method publickey without host binding (the server lacks publickey-hostbound-v00@openssh.com; set plain-publickey = yes for it)".into())
        }
    };
    Ok(SignInfo {
        user: policy.user.clone(),
        method,
        host_key: b.host_fingerprint(),
    })
}

/// Check the agent's answer to a forwarded session-bind: SUCCESS (it
/// verified the host key's signature over the session id) or FAILURE.
pub fn check_bind_reply(reply: &[u8]) -> Result<bool, AgentReplyError> {
    match reply {
        [wire::SSH_AGENT_SUCCESS] => Ok(true),
        [wire::SSH_AGENT_FAILURE] => Ok(false),
        _ => Err(AgentReplyError("not a success or failure answer")),
    }
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

    const HOST: &[u8] = b"\0\0\0\x0bssh-ed25519\0\0\0\x20host-key-bytes-host-key-bytes-12";
    const SID: [u8; 32] = [9; 32];

    fn policy(plain: bool) -> LoginPolicy {
        LoginPolicy {
            user: "borg".into(),
            host_keys: vec![HOST.to_vec()],
            plain_publickey: plain,
            logins_per_hour: 60,
        }
    }

    fn bound() -> Binding {
        Binding {
            host_key: HOST.to_vec(),
            session_id: SID.to_vec(),
        }
    }

    fn userauth_as(key: &BackupKey, sid: &[u8], user: &[u8], host: Option<&[u8]>) -> Vec<u8> {
        let mut d = Vec::new();
        put_string(&mut d, sid);
        d.push(50);
        put_string(&mut d, user);
        put_string(&mut d, b"ssh-connection");
        put_string(
            &mut d,
            if host.is_some() {
                HOSTBOUND
            } else {
                b"publickey"
            },
        );
        d.push(1);
        put_string(&mut d, b"ssh-ed25519");
        put_string(&mut d, key.blob());
        if let Some(h) = host {
            put_string(&mut d, h);
        }
        d
    }

    fn userauth(key: &BackupKey, host: Option<&[u8]>) -> Vec<u8> {
        userauth_as(key, &SID, b"borg", host)
    }

    fn sign(blob: &[u8], data: &[u8], flags: u32) -> Vec<u8> {
        let mut m = vec![13];
        put_string(&mut m, blob);
        put_string(&mut m, data);
        m.extend_from_slice(&flags.to_be_bytes());
        m
    }

    fn bind_msg(host: &[u8], sid: &[u8], fwd: u8) -> Vec<u8> {
        let mut m = vec![27];
        put_string(&mut m, SESSION_BIND);
        put_string(&mut m, host);
        put_string(&mut m, sid);
        put_string(&mut m, b"\0\0\0\x0bssh-ed25519\0\0\0\x40signature");
        m.push(fwd);
        m
    }

    fn c(body: &[u8], k: &BackupKey, b: Option<&Binding>) -> Verdict {
        classify(body, k, &policy(false), b)
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
    fn identities_and_hostbound_logins_in_the_bound_session_pass() {
        let k = key(1);
        assert_eq!(c(&[11], &k, None), Verdict::Identities);
        let v = c(
            &sign(k.blob(), &userauth(&k, Some(HOST)), 0),
            &k,
            Some(&bound()),
        );
        assert_eq!(
            v,
            Verdict::Sign(SignInfo {
                user: "borg".into(),
                method: "publickey-hostbound-v00@openssh.com",
                host_key: codec::fingerprint(HOST),
            })
        );
    }

    #[test]
    fn session_bind_is_checked_before_it_reaches_the_agent() {
        let k = key(1);
        for len in SESSION_ID_LENS {
            assert_eq!(
                c(&bind_msg(HOST, &vec![1; len], 0), &k, None),
                Verdict::Bind(Binding {
                    host_key: HOST.to_vec(),
                    session_id: vec![1; len]
                }),
                "{len}"
            );
        }
        for len in [0, 1, 20, 31, 33, 47, 63, 65, 128] {
            let v = c(&bind_msg(HOST, &vec![1; len], 0), &k, None);
            assert!(
                matches!(&v, Verdict::Refuse(Refusal::Bind(w)) if w.contains("exchange hash")),
                "{len}: {v:?}"
            );
        }
        let v = c(&bind_msg(HOST, &SID, 1), &k, None);
        assert!(
            matches!(&v, Verdict::Refuse(Refusal::Bind(w)) if w.contains("forwarded")),
            "{v:?}"
        );
        let v = c(&bind_msg(b"another host key", &SID, 0), &k, None);
        assert!(
            matches!(&v, Verdict::Refuse(Refusal::Bind(w)) if w.contains("not one of")),
            "{v:?}"
        );
        let v = c(&bind_msg(HOST, &SID, 0), &k, Some(&bound()));
        assert!(
            matches!(&v, Verdict::Refuse(Refusal::Bind(w)) if w.contains("already bound")),
            "{v:?}"
        );
        let mut trailing = bind_msg(HOST, &SID, 0);
        trailing.push(0);
        assert!(matches!(
            c(&trailing, &k, None),
            Verdict::Refuse(Refusal::Bind(_))
        ));
        let full = bind_msg(HOST, &SID, 0);
        for cut in 1..full.len() {
            assert!(
                matches!(c(&full[..cut], &k, None), Verdict::Refuse(_)),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn logins_outside_the_key_sets_policy_are_refused() {
        let k = key(1);
        let b = bound();
        let not_allowed = |v: Verdict, want: &str| match v {
            Verdict::Refuse(Refusal::NotAllowed(w)) => assert!(w.contains(want), "{w}"),
            v => panic!("want NotAllowed({want}), got {v:?}"),
        };
        let hb = sign(k.blob(), &userauth(&k, Some(HOST)), 0);
        not_allowed(c(&hb, &k, None), "not bound");
        let other_sid = sign(k.blob(), &userauth_as(&k, &[8; 32], b"borg", Some(HOST)), 0);
        not_allowed(c(&other_sid, &k, Some(&b)), "session id differs");
        for len in [1, 20, 31, 65] {
            let m = sign(
                k.blob(),
                &userauth_as(&k, &vec![9; len], b"borg", Some(HOST)),
                0,
            );
            not_allowed(c(&m, &k, Some(&b)), "exchange hash");
        }
        let root = sign(k.blob(), &userauth_as(&k, &SID, b"root", Some(HOST)), 0);
        not_allowed(
            c(&root, &k, Some(&b)),
            "'root' is not the key set's user 'borg'",
        );
        let esc = sign(k.blob(), &userauth_as(&k, &SID, b"b\x1b[0m", Some(HOST)), 0);
        not_allowed(c(&esc, &k, Some(&b)), "b\\x1b[0m");
        let other_host = sign(k.blob(), &userauth(&k, Some(b"other host key")), 0);
        not_allowed(c(&other_host, &k, Some(&b)), "the session is bound to");
        let plain = sign(k.blob(), &userauth(&k, None), 0);
        not_allowed(c(&plain, &k, Some(&b)), "plain-publickey = yes");
        // ... unless the key set allows plain publickey: then the bound host key is logged.
        assert_eq!(
            classify(&plain, &k, &policy(true), Some(&b)),
            Verdict::Sign(SignInfo {
                user: "borg".into(),
                method: "publickey",
                host_key: codec::fingerprint(HOST),
            })
        );
        not_allowed(classify(&plain, &k, &policy(true), None), "not bound");
    }

    #[test]
    fn management_and_other_extensions_are_refused() {
        let k = key(1);
        for t in [17u8, 18, 19, 20, 21, 22, 23, 25, 26] {
            assert!(
                matches!(
                    c(&[t, 0, 0, 0, 0], &k, None),
                    Verdict::Refuse(Refusal::Forbidden(_))
                ),
                "type {t}"
            );
        }
        let mut ext = vec![27];
        put_string(&mut ext, b"query");
        assert_eq!(
            c(&ext, &k, None),
            Verdict::Refuse(Refusal::Extension("query".into()))
        );
        for t in [0u8, 1, 3, 7, 9, 12, 14, 28, 30, 255] {
            assert_eq!(c(&[t], &k, None), Verdict::Refuse(Refusal::Unknown(t)));
        }
        assert!(matches!(c(&[11, 0], &k, None), Verdict::Refuse(_)));
    }

    #[test]
    fn signing_anything_but_a_backup_key_login_is_refused() {
        let k = key(1);
        let other = key(2);
        let b = Some(bound());
        let b = b.as_ref();
        let v = c(&sign(other.blob(), &userauth(&other, Some(HOST)), 0), &k, b);
        assert!(matches!(v, Verdict::Refuse(Refusal::OtherKey(_))));
        // Backup key, but the data names another key.
        let v = c(&sign(k.blob(), &userauth(&other, Some(HOST)), 0), &k, b);
        assert!(matches!(v, Verdict::Refuse(Refusal::NotUserAuth(_))));
        // Arbitrary data (e.g. an SSHSIG blob).
        let v = c(&sign(k.blob(), b"SSHSIG\0\0\0\x03git", 0), &k, b);
        assert!(matches!(v, Verdict::Refuse(Refusal::NotUserAuth(_))));
        // Flags, trailing bytes, other method, truncated.
        let good = userauth(&k, Some(HOST));
        assert!(matches!(
            c(&sign(k.blob(), &good, 0), &k, b),
            Verdict::Sign(_)
        ));
        assert!(matches!(
            c(&sign(k.blob(), &good, 2), &k, b),
            Verdict::Refuse(_)
        ));
        let mut trailing = sign(k.blob(), &good, 0);
        trailing.push(0);
        assert!(matches!(c(&trailing, &k, b), Verdict::Refuse(_)));
        let mut data_trailing = good.clone();
        data_trailing.push(0);
        assert!(matches!(
            c(&sign(k.blob(), &data_trailing, 0), &k, b),
            Verdict::Refuse(_)
        ));
        let mut hostbased = good.clone();
        let at = hostbased
            .windows(HOSTBOUND.len())
            .position(|w| w == HOSTBOUND)
            .unwrap();
        hostbased[at..at + 9].copy_from_slice(b"hostbased");
        assert!(matches!(
            c(&sign(k.blob(), &hostbased, 0), &k, b),
            Verdict::Refuse(Refusal::NotUserAuth(_))
        ));
        let full = sign(k.blob(), &good, 0);
        for cut in 1..full.len() {
            assert!(
                matches!(c(&full[..cut], &k, b), Verdict::Refuse(_)),
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
    fn sign_and_bind_replies_are_checked() {
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
        assert_eq!(check_bind_reply(&[6]), Ok(true));
        assert_eq!(check_bind_reply(&[5]), Ok(false));
        assert!(check_bind_reply(&[6, 0]).is_err());
        assert!(check_bind_reply(&[14]).is_err());
    }

    /// A SIGN_RESPONSE carrying `string kind` + `string sig` + `extra`, as the signature blob.
    fn sign_reply(kind: &[u8], sig: &[u8], extra: &[u8]) -> Vec<u8> {
        let mut blob = Vec::new();
        put_string(&mut blob, kind);
        put_string(&mut blob, sig);
        blob.extend_from_slice(extra);
        let mut reply = vec![14];
        put_string(&mut reply, &blob);
        reply
    }

    const NOT_ED25519: Result<SignReply, AgentReplyError> =
        Err(AgentReplyError("not an ed25519 signature"));

    #[test]
    fn sign_reply_with_a_signature_of_the_wrong_length_is_refused() {
        assert_eq!(
            check_sign_reply(&sign_reply(b"ssh-ed25519", &[3; 64], b"")),
            Ok(SignReply::Signed)
        );
        assert_eq!(
            check_sign_reply(&sign_reply(b"ssh-ed25519", &[3; 63], b"")),
            NOT_ED25519
        );
        assert_eq!(
            check_sign_reply(&sign_reply(b"ssh-ed25519", &[3; 65], b"")),
            NOT_ED25519
        );
    }

    #[test]
    fn sign_reply_with_bytes_after_the_signature_inside_its_blob_is_refused() {
        assert_eq!(
            check_sign_reply(&sign_reply(b"ssh-ed25519", &[3; 64], &[0])),
            NOT_ED25519
        );
    }

    #[test]
    fn sign_reply_with_a_signature_of_another_type_is_refused() {
        assert_eq!(
            check_sign_reply(&sign_reply(b"ssh-ed25518", &[3; 64], b"")),
            NOT_ED25519
        );
        assert_eq!(
            check_sign_reply(&sign_reply(b"rsa-sha2-512", &[3; 64], b"")),
            NOT_ED25519
        );
    }

    #[test]
    fn identities_answer_of_2048_keys_is_read_and_2049_refused() {
        let k = key(1);
        let answer = |n: u32| {
            let mut reply = vec![12];
            reply.extend_from_slice(&n.to_be_bytes());
            for _ in 1..n {
                put_string(&mut reply, key(2).blob());
                put_string(&mut reply, b"c");
            }
            put_string(&mut reply, k.blob());
            put_string(&mut reply, b"c");
            reply
        };
        let (_, held) = filter_identities(&answer(MAX_IDENTITIES), &k, b"c").unwrap();
        assert!(held);
        assert_eq!(
            filter_identities(&answer(MAX_IDENTITIES + 1), &k, b"c"),
            Err(AgentReplyError("too many keys"))
        );
    }

    #[test]
    fn key_blobs_up_to_16_kib_are_compared_and_longer_ones_refused_as_malformed() {
        let k = key(1);
        let b = Some(bound());
        let data = userauth(&k, Some(HOST));
        let v = c(&sign(&vec![7; 16 * 1024], &data, 0), &k, b.as_ref());
        assert!(matches!(v, Verdict::Refuse(Refusal::OtherKey(_))), "{v:?}");
        let v = c(&sign(&vec![7; 16 * 1024 + 1], &data, 0), &k, b.as_ref());
        assert_eq!(
            v,
            Verdict::Refuse(Refusal::NotUserAuth("string longer than allowed"))
        );
    }

    #[test]
    fn public_key_file_may_start_with_comments_and_blank_lines() {
        let k = key(7);
        let b64 = codec::base64_encode_unpadded(k.blob());
        let text = format!("# the backup key\n\n  \nssh-ed25519 {b64}\n");
        assert_eq!(BackupKey::from_public_line(&text).unwrap(), k);
        assert_eq!(
            BackupKey::from_public_line("# only a comment\n"),
            Err(KeyError::Format("no key line"))
        );
    }

    #[test]
    fn key_is_shown_by_its_fingerprint() {
        let k = key(7);
        let fp = codec::fingerprint(k.blob());
        assert!(fp.starts_with("SHA256:") && fp.len() > 40, "{fp}");
        assert_eq!(k.fingerprint(), fp);
        assert_eq!(format!("{k:?}"), format!("BackupKey({fp})"));
        assert_eq!(bound().host_fingerprint(), codec::fingerprint(HOST));
    }

    #[test]
    fn key_and_refusal_messages_say_what_was_wrong() {
        assert_eq!(
            KeyError::Format("bad base64").to_string(),
            "not an OpenSSH ed25519 public key line: bad base64"
        );
        assert!(KeyError::WrongType("ssh-rsa".into())
            .to_string()
            .starts_with("key type \"ssh-rsa\" is not supported"));
        for (r, want) in [
            (
                Refusal::Forbidden("adding a key"),
                "adding a key is not allowed",
            ),
            (
                Refusal::Extension("query".into()),
                "extension query is not allowed",
            ),
            (Refusal::Bind("x".into()), "session-bind refused: x"),
            (
                Refusal::OtherKey("SHA256:x".into()),
                "sign request for a key that is not the backup key (SHA256:x)",
            ),
            (
                Refusal::NotUserAuth("y"),
                "sign request that is not an SSH login for the backup key: y",
            ),
            (
                Refusal::NotAllowed("z".into()),
                "login not allowed for this key set: z",
            ),
            (Refusal::Unknown(9), "unknown message type 9"),
        ] {
            assert_eq!(r.to_string(), want);
        }
        assert_eq!(
            AgentReplyError("empty").to_string(),
            "unexpected answer from ssh-agent: empty"
        );
    }

    #[test]
    fn log_escaping_neutralises_control_bytes() {
        assert_eq!(escape_for_log(b"abc", 3), "abc", "exactly max: no ellipsis");
        assert_eq!(escape_for_log(b"!~\x7f\x20", 9), "!~\\x7f\\x20");
        assert_eq!(
            escape_for_log(b"a b\n\x1b[31m\\", 64),
            "a\\x20b\\x0a\\x1b[31m\\x5c"
        );
        assert_eq!(escape_for_log(b"abcdef", 3), "abc...");
    }
}

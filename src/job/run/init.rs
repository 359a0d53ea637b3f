//! sys-backup-mnt: the `init` op: `borg init`, then the new key and its exports to dom0.

use std::fs;
use std::io::{Read, Write};
use std::process::Stdio;

use super::child::borg_command;
use super::{send_data, Out, KEY_FILE};
use crate::job::borg;
use crate::job::progress::{Event, InitResult, Phase, MAX_KEY_TEXT};
use crate::job::spec::{self, Spec};

/// Where `init` has borg export the key (tmpfs, removed before the job ends).
const EXPORT_FILE: &str = "/run/qubes-borg/key-export";
const PAPER_FILE: &str = "/run/qubes-borg/key-export-paper";

/// `init`: `borg init` (a repository already there is left alone and reported so), then the
/// new key (keyfile mode: the file borg wrote, at KEY_FILE) and its two exports go to dom0 as
/// `data` (an `InitResult`). Nothing of the key stays in the disposable.
pub(super) fn init_repository<W: Write>(
    spec: &Spec,
    init: &spec::Init,
    env: &[(String, String)],
    out: &mut Out<W>,
) -> Result<(), String> {
    out.send(Event::Phase(Phase::Init));
    let keyfile = init.encryption == spec::Encryption::KeyfileBlake2;
    for f in [KEY_FILE, EXPORT_FILE, PAPER_FILE] {
        let _ = fs::remove_file(f);
    }
    let res = init_steps(spec, init, env, keyfile);
    for f in [EXPORT_FILE, PAPER_FILE] {
        let _ = fs::remove_file(f);
    }
    let r = res?;
    send_data(out, &r.encode());
    Ok(())
}

fn init_steps(
    spec: &Spec,
    init: &spec::Init,
    env: &[(String, String)],
    keyfile: bool,
) -> Result<InitResult, String> {
    let repo = &spec.repository;
    let q = run_borg_quiet(spec, &borg::init_argv(repo, init.encryption), env, keyfile)?;
    if q.msgid.as_deref() == Some("Repository.AlreadyExists") {
        return Ok(InitResult {
            created: false,
            key_file: None,
            export: vec![],
            paper: vec![],
        });
    }
    q.ok("init")?;
    run_borg_quiet(
        spec,
        &borg::key_export_argv(repo, false, EXPORT_FILE),
        env,
        keyfile,
    )?
    .ok("key export")?;
    run_borg_quiet(
        spec,
        &borg::key_export_argv(repo, true, PAPER_FILE),
        env,
        keyfile,
    )?
    .ok("key export --paper")?;
    let read = |p: &str| -> Result<Vec<u8>, String> {
        let mut v = Vec::new();
        fs::File::open(p)
            .and_then(|f| f.take(MAX_KEY_TEXT as u64 + 1).read_to_end(&mut v))
            .map_err(|e| format!("cannot read {p}: {e}"))?;
        if v.len() > MAX_KEY_TEXT {
            return Err(format!("{p} is larger than {MAX_KEY_TEXT} bytes"));
        }
        Ok(v)
    };
    Ok(InitResult {
        created: true,
        key_file: if keyfile { Some(read(KEY_FILE)?) } else { None },
        export: read(EXPORT_FILE)?,
        paper: read(PAPER_FILE)?,
    })
}

/// How a quiet borg run ended: exit code, last error message and its msgid.
struct Quiet {
    code: Option<i32>,
    error: Option<String>,
    msgid: Option<String>,
}

impl Quiet {
    fn ok(self, what: &str) -> Result<(), String> {
        match self.code {
            Some(0) => Ok(()),
            c => Err(format!(
                "borg {what} failed (exit {}){}",
                c.map(|c| c.to_string()).unwrap_or_else(|| "signal".into()),
                self.error.map(|e| format!(": {e}")).unwrap_or_default()
            )),
        }
    }
}

/// Runs borg (passphrase on an inherited pipe, `BORG_KEY_FILE` = KEY_FILE when `key_file`)
/// without forwarding its messages: borg init's notes are about what `init` does anyway.
fn run_borg_quiet(
    spec: &Spec,
    argv: &[String],
    env: &[(String, String)],
    key_file: bool,
) -> Result<Quiet, String> {
    let (mut cmd, pass_r) = borg_command(spec, argv, env, key_file)?;
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("cannot start borg: {e}"))?;
    drop(pass_r);
    let (mut error, mut msgid) = (None, None);
    for line in borg::log_lines(child.stderr.take().expect("piped")) {
        let borg::LogLine::Message {
            level,
            message,
            msgid: id,
        } = line
        else {
            continue;
        };
        if borg::is_error(&level) {
            error = Some(message);
            msgid = id;
        } else if level.is_empty() && !message.is_empty() {
            error = Some(message);
        }
    }
    let status = child.wait().map_err(|e| format!("borg: {e}"))?;
    Ok(Quiet {
        code: status.code(),
        error,
        msgid,
    })
}

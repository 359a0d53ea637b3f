//! sys-backup-mnt: one `qubes-borg.BackupJob` run: read the request from dom0 on stdin, mount,
//! run borg, unmount, and report on stdout in the `progress` line format.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::borg;
use super::mount::{self, EPHEMERAL_DIR, PRIVATE_DIR, STATE_DIR, STATE_OPTIONS, UNTRUSTED_OPTIONS};
use super::progress::{encode, Event, InitResult, Phase, Stats, MAX_KEY_TEXT};
use super::spec::{self, Mode, Op, Spec};
use crate::exit;

const RUN_DIR: &str = "/run/qubes-borg";
const KEY_FILE: &str = "/run/qubes-borg/key";
/// Most log lines from borg forwarded per run (the rest are counted).
const MAX_FORWARDED: usize = 64;
/// Largest `--json` output read from borg create.
const MAX_JSON: u64 = 1 << 20;

struct Out<'a, W: Write> {
    w: &'a mut W,
}

impl<W: Write> Out<'_, W> {
    fn send(&mut self, ev: Event) {
        // dom0 gone: nothing left to tell; the steps still clean up.
        let _ = self.w.write_all(&encode(&ev));
        let _ = self.w.flush();
    }
}

/// Runs one job; returns its exit status.
pub fn run<R: Read, W: Write>(input: &mut R, output: &mut W) -> u8 {
    let mut out = Out { w: output };
    let spec = match spec::decode(input) {
        Ok(s) => s,
        Err(e) => {
            out.send(Event::Error(e.to_string()));
            out.send(Event::Done(false));
            return exit::PROTOCOL;
        }
    };
    let ok = match steps(&spec, &mut out) {
        Ok(()) => true,
        Err(e) => {
            out.send(Event::Error(e));
            false
        }
    };
    let _ = fs::remove_file(KEY_FILE);
    out.send(Event::Done(ok));
    if ok {
        exit::OK
    } else {
        exit::FAILED
    }
}

fn private_dir(path: &str) -> Result<(), String> {
    fs::create_dir_all(path).map_err(|e| format!("cannot create {path}: {e}"))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o700))
        .map_err(|e| format!("cannot chmod {path}: {e}"))
}

fn steps<W: Write>(spec: &Spec, out: &mut Out<W>) -> Result<(), String> {
    private_dir(RUN_DIR)?;
    let _state;
    let base = match &spec.state_device {
        Some(dev) => {
            out.send(Event::Phase(Phase::State));
            if mount::ensure_state_fs(dev)? {
                out.send(Event::Warning(
                    "borg state volume was blank: made a new filesystem".into(),
                ));
            }
            _state = mount::mount(dev, STATE_DIR, STATE_OPTIONS)?;
            private_dir(STATE_DIR)?;
            STATE_DIR
        }
        None => {
            private_dir(EPHEMERAL_DIR)?;
            EPHEMERAL_DIR
        }
    };
    if let Some(k) = &spec.key_file {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(KEY_FILE)
            .map_err(|e| format!("cannot write the key file: {e}"))?;
        f.write_all(k)
            .map_err(|e| format!("cannot write the key file: {e}"))?;
    }
    match &spec.op {
        Op::Create(c) => {
            let env = borg::env(base, Some(&c.qube));
            let argv = borg::create_argv(&spec.repository, c);
            match c.mode {
                Mode::Files => {
                    out.send(Event::Phase(Phase::Mount));
                    let m = mount::mount(&c.device, PRIVATE_DIR, UNTRUSTED_OPTIONS)?;
                    out.send(Event::Phase(Phase::Create));
                    let r = run_borg(spec, &argv, &env, Some(PRIVATE_DIR), out, true);
                    out.send(Event::Phase(Phase::Unmount));
                    let u = m.unmount();
                    r?;
                    u?;
                }
                Mode::Image => {
                    out.send(Event::Phase(Phase::Create));
                    run_borg(spec, &argv, &env, None, out, true)?;
                }
            }
        }
        Op::Restore(r) => {
            let env = borg::env(base, None);
            out.send(Event::Phase(Phase::Restore));
            match r.mode {
                Mode::Files => {
                    mount::make_target_fs(&r.device)?;
                    let m = mount::mount(&r.device, mount::TARGET_DIR, mount::TARGET_OPTIONS)?;
                    let argv = borg::extract_argv(&spec.repository, &r.archive);
                    let res = run_borg_to(spec, &argv, &env, Some(mount::TARGET_DIR), out, None);
                    out.send(Event::Phase(Phase::Unmount));
                    let u = m.unmount();
                    res?;
                    u?;
                }
                Mode::Image => {
                    spec::check_device(&r.device)?;
                    let dev = fs::OpenOptions::new()
                        .write(true)
                        .open(&r.device)
                        .map_err(|e| format!("cannot open {}: {e}", r.device))?;
                    // The archive stored the device the image was read from: /dev/xvdi.
                    let argv = borg::extract_image_argv(
                        &spec.repository,
                        &r.archive,
                        &format!("/dev/{}", "xvdi"),
                    );
                    let res = run_borg_to(
                        spec,
                        &argv,
                        &env,
                        None,
                        out,
                        Some(dev.try_clone().map_err(|e| e.to_string())?),
                    );
                    res?;
                    dev.sync_all()
                        .map_err(|e| format!("cannot flush {}: {e}", r.device))?;
                }
            }
        }
        Op::Init(i) => init_repository(spec, i, &borg::env(base, None), out)?,
        Op::List(l) => {
            let env = borg::env(base, None);
            out.send(Event::Phase(Phase::List));
            let argv = borg::info_argv(&spec.repository, l.qube.as_deref());
            let json = run_borg(spec, &argv, &env, None, out, false)?;
            for piece in json.as_bytes().chunks(super::progress::MAX_DATA) {
                out.send(Event::Data(piece.to_vec()));
            }
        }
        Op::Prune(p) => {
            let env = borg::env(base, None);
            let mut failed = Vec::new();
            for q in &p.qubes {
                out.send(Event::Phase(Phase::Prune));
                if let Err(e) = run_borg(
                    spec,
                    &borg::prune_argv(&spec.repository, q, &p.keep),
                    &env,
                    None,
                    out,
                    false,
                ) {
                    out.send(Event::Error(format!("prune {q}: {e}")));
                    failed.push(q.as_str());
                }
            }
            out.send(Event::Phase(Phase::Compact));
            run_borg(
                spec,
                &borg::compact_argv(&spec.repository),
                &env,
                None,
                out,
                false,
            )?;
            if !failed.is_empty() {
                return Err(format!("prune failed for {}", failed.join(" ")));
            }
        }
    }
    Ok(())
}

/// Runs borg with the passphrase on an inherited pipe; forwards its progress and log lines;
/// sends `stats` from `--json` when `want_stats`.
fn run_borg<W: Write>(
    spec: &Spec,
    argv: &[String],
    env: &[(String, String)],
    cwd: Option<&str>,
    out: &mut Out<W>,
    want_stats: bool,
) -> Result<String, String> {
    run_borg_with(spec, argv, env, cwd, out, want_stats, None)
}

/// `run_borg` without statistics, borg's stdout going to `stdout_to` when given.
fn run_borg_to<W: Write>(
    spec: &Spec,
    argv: &[String],
    env: &[(String, String)],
    cwd: Option<&str>,
    out: &mut Out<W>,
    stdout_to: Option<fs::File>,
) -> Result<(), String> {
    run_borg_with(spec, argv, env, cwd, out, false, stdout_to).map(|_| ())
}

fn run_borg_with<W: Write>(
    spec: &Spec,
    argv: &[String],
    env: &[(String, String)],
    cwd: Option<&str>,
    out: &mut Out<W>,
    want_stats: bool,
    stdout_to: Option<fs::File>,
) -> Result<String, String> {
    // Not close-on-exec: borg inherits the read end, and reads the passphrase from it.
    let (pass_r, pass_w) = nix::unistd::pipe().map_err(|e| format!("pipe: {e}"))?;
    {
        let mut w = fs::File::from(pass_w);
        w.write_all(&spec.passphrase)
            .map_err(|e| format!("cannot pass the passphrase: {e}"))?;
    }
    let mut cmd = Command::new(&argv[0]);
    let to_file = stdout_to.is_some();
    cmd.args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(match stdout_to {
            Some(f) => Stdio::from(f),
            None => Stdio::piped(),
        })
        .stderr(Stdio::piped())
        .env_remove("BORG_PASSPHRASE")
        .env_remove("BORG_PASSCOMMAND")
        .env_remove("BORG_NEW_PASSPHRASE")
        .env("BORG_PASSPHRASE_FD", pass_r.as_raw_fd().to_string());
    for (k, v) in env {
        cmd.env(k, v);
    }
    if spec.key_file.is_some() {
        cmd.env("BORG_KEY_FILE", KEY_FILE);
    }
    if let Some(d) = cwd {
        cmd.current_dir(d);
    }
    let mut child = cmd.spawn().map_err(|e| format!("cannot start borg: {e}"))?;
    drop(pass_r);
    let stdout = child.stdout.take();
    debug_assert_eq!(stdout.is_none(), to_file);
    let json = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(o) = stdout {
            let _ = o.take(MAX_JSON).read_to_string(&mut s);
        }
        s
    });
    let stderr = child.stderr.take().expect("piped");
    let mut reader = BufReader::new(stderr);
    let mut line = Vec::new();
    let mut last = Instant::now() - Duration::from_secs(10);
    let mut forwarded = 0usize;
    let mut last_error = String::new();
    loop {
        line.clear();
        match (&mut reader).take(64 * 1024).read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let text = String::from_utf8_lossy(&line);
        if text.contains("\"archive_progress\"") {
            if let Some(n) = borg::json_number(&text, "original_size") {
                if last.elapsed() >= Duration::from_millis(500) {
                    out.send(Event::Progress(n));
                    last = Instant::now();
                }
            }
            continue;
        }
        if text.contains("\"progress_percent\"") || text.contains("\"progress_message\"") {
            continue;
        }
        let level = borg::json_string(&text, "levelname").unwrap_or_default();
        let msg = borg::json_string(&text, "message").unwrap_or_else(|| text.trim().to_string());
        if msg.is_empty() || level == "DEBUG" || level == "INFO" {
            continue;
        }
        if level == "ERROR" || level == "CRITICAL" {
            last_error = msg.clone();
        }
        forwarded += 1;
        if forwarded <= MAX_FORWARDED {
            out.send(Event::Warning(format!("borg: {msg}")));
        }
    }
    let status = child.wait().map_err(|e| format!("borg: {e}"))?;
    let json = json.join().unwrap_or_default();
    if forwarded > MAX_FORWARDED {
        out.send(Event::Warning(format!(
            "borg: {} more messages not shown",
            forwarded - MAX_FORWARDED
        )));
    }
    // borg: 0 success, 1 warnings (archive made), 2 error, >=128 killed.
    match status.code() {
        Some(0) | Some(1) => {}
        _ => {
            let what = if last_error.is_empty() {
                String::new()
            } else {
                format!(": {last_error}")
            };
            return Err(format!("borg {} failed ({status}){what}", argv[1]));
        }
    }
    if want_stats {
        let n = |k| borg::json_number(&json, k).unwrap_or(0);
        out.send(Event::Stats(Stats {
            original: n("original_size"),
            deduplicated: n("deduplicated_size"),
            compressed: n("compressed_size"),
            files: n("nfiles"),
        }));
    }
    Ok(json)
}

/// Where `init` has borg export the key (tmpfs, removed before the job ends).
const EXPORT_FILE: &str = "/run/qubes-borg/key-export";
const PAPER_FILE: &str = "/run/qubes-borg/key-export-paper";

/// `init`: `borg init` (a repository already there is left alone and reported so), then the
/// new key (keyfile mode: the file borg wrote, at KEY_FILE) and its two exports go to dom0 as
/// `data` (an `InitResult`). Nothing of the key stays in the disposable.
fn init_repository<W: Write>(
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
    for piece in r.encode().chunks(super::progress::MAX_DATA) {
        out.send(Event::Data(piece.to_vec()));
    }
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
    let (pass_r, pass_w) = nix::unistd::pipe().map_err(|e| format!("pipe: {e}"))?;
    {
        let mut w = fs::File::from(pass_w);
        w.write_all(&spec.passphrase)
            .map_err(|e| format!("cannot pass the passphrase: {e}"))?;
    }
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .env_remove("BORG_PASSPHRASE")
        .env_remove("BORG_PASSCOMMAND")
        .env_remove("BORG_NEW_PASSPHRASE")
        .env_remove("BORG_KEY_FILE")
        .env("BORG_PASSPHRASE_FD", pass_r.as_raw_fd().to_string());
    for (k, v) in env {
        cmd.env(k, v);
    }
    if key_file {
        cmd.env("BORG_KEY_FILE", KEY_FILE);
    }
    let mut child = cmd.spawn().map_err(|e| format!("cannot start borg: {e}"))?;
    drop(pass_r);
    let mut reader = BufReader::new(child.stderr.take().expect("piped"));
    let (mut error, mut msgid) = (None, None);
    let mut line = Vec::new();
    loop {
        line.clear();
        match (&mut reader).take(64 * 1024).read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let text = String::from_utf8_lossy(&line);
        let level = borg::json_string(&text, "levelname").unwrap_or_default();
        if level == "ERROR" || level == "CRITICAL" {
            error = borg::json_string(&text, "message");
            msgid = borg::json_string(&text, "msgid");
        } else if level.is_empty() && !text.trim().is_empty() {
            error = Some(text.trim().to_string());
        }
    }
    let status = child.wait().map_err(|e| format!("borg: {e}"))?;
    Ok(Quiet {
        code: status.code(),
        error,
        msgid,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::progress::read_all;

    #[test]
    fn a_refused_request_reports_error_and_failure() {
        let mut out = Vec::new();
        let code = run(&mut &b"qubes-borg-job/9\n"[..], &mut out);
        assert_eq!(code, exit::PROTOCOL);
        let evs: Vec<Event> = read_all(&mut &out[..])
            .unwrap()
            .into_iter()
            .map(|r| r.unwrap())
            .collect();
        assert!(matches!(&evs[0], Event::Error(t) if t.contains("not a qubes-borg-job/1")));
        assert_eq!(evs[1], Event::Done(false));
    }
}

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
use super::progress::{encode, Event, InitResult, Phase, Reason, Stats, MAX_KEY_TEXT};
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
            clear_stale_cache_locks(out);
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
                    let m = mount::mount(&c.device, PRIVATE_DIR, UNTRUSTED_OPTIONS)
                        .inspect_err(|_| out.send(Event::Reason(Reason::Mount)))?;
                    out.send(Event::Phase(Phase::Create));
                    let r = run_borg(spec, &argv, &env, Some(PRIVATE_DIR), out, Stdout::Stats);
                    out.send(Event::Phase(Phase::Unmount));
                    let u = m.unmount();
                    r?;
                    u?;
                }
                Mode::Image => {
                    out.send(Event::Phase(Phase::Create));
                    run_borg(spec, &argv, &env, None, out, Stdout::Stats)?;
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
                    let res = run_borg(
                        spec,
                        &argv,
                        &env,
                        Some(mount::TARGET_DIR),
                        out,
                        Stdout::Json,
                    );
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
                    let res = run_borg(
                        spec,
                        &argv,
                        &env,
                        None,
                        out,
                        Stdout::To(dev.try_clone().map_err(|e| e.to_string())?),
                    );
                    res?;
                    dev.sync_all()
                        .map_err(|e| format!("cannot flush {}: {e}", r.device))?;
                }
            }
        }
        Op::Export(e) => {
            let env = borg::env(base, None);
            out.send(Event::Phase(Phase::Restore));
            run_borg_export(spec, &borg::export_tar_argv(&spec.repository, e), &env, out)?;
        }
        Op::Init(i) => init_repository(spec, i, &borg::env(base, None), out)?,
        Op::List(l) => {
            let env = borg::env(base, None);
            out.send(Event::Phase(Phase::List));
            let argv = borg::info_argv(&spec.repository, l.qube.as_deref());
            let json = run_borg(spec, &argv, &env, None, out, Stdout::Json)?;
            for piece in json.as_bytes().chunks(super::progress::MAX_DATA) {
                out.send(Event::Data(piece.to_vec()));
            }
        }
        Op::Info(i) => {
            let env = borg::env(base, None);
            out.send(Event::Phase(Phase::List));
            let argv = borg::info_archive_argv(&spec.repository, &i.archive);
            let json = run_borg(spec, &argv, &env, None, out, Stdout::Json)?;
            send_data(out, json.as_bytes());
        }
        Op::Check(c) => check(spec, c, base, out)?,
        Op::Spot(s) => spot(spec, s, base, out)?,
        Op::Prune(p) => {
            let env = borg::env(base, None);
            let mut failed = Vec::new();
            for q in &p.qubes {
                out.send(Event::Phase(Phase::Prune));
                if let Err(e) = run_borg(
                    spec,
                    &borg::with_lock_wait(
                        borg::prune_argv(&spec.repository, q, &p.keep),
                        p.lock_wait,
                    ),
                    &env,
                    None,
                    out,
                    Stdout::Json,
                ) {
                    out.send(Event::Error(format!("prune {q}: {e}")));
                    failed.push(q.as_str());
                }
            }
            out.send(Event::Phase(Phase::Compact));
            run_borg(
                spec,
                &borg::with_lock_wait(borg::compact_argv(&spec.repository), p.lock_wait),
                &env,
                None,
                out,
                Stdout::Json,
            )?;
            if !failed.is_empty() {
                return Err(format!("prune failed for {}", failed.join(" ")));
            }
        }
    }
    Ok(())
}

/// Before any borg runs in this fresh disposable: borg's cache locks in the state volume can
/// only be left from an earlier run, whose disposable is gone (`cachelock`).
fn clear_stale_cache_locks<W: Write>(out: &mut Out<W>) {
    match super::cachelock::remove_stale(std::path::Path::new(STATE_DIR), borg::BORG_HOST_ID) {
        Ok(lines) => {
            for l in lines {
                out.send(Event::Warning(l));
            }
        }
        Err(e) => out.send(Event::Warning(format!(
            "cannot clear borg's stale cache lock: {e}"
        ))),
    }
}

/// Most borg messages kept for classifying a failure.
const MAX_KEPT: usize = 32;

/// Where borg's stdout goes.
enum Stdout {
    /// Read (at most MAX_JSON) and returned.
    Json,
    /// Read and returned, and `stats` sent from it (`borg create --json`).
    Stats,
    /// To this file (nothing returned).
    To(fs::File),
}

/// Runs borg with the passphrase on an inherited pipe; forwards its progress and log lines.
fn run_borg<W: Write>(
    spec: &Spec,
    argv: &[String],
    env: &[(String, String)],
    cwd: Option<&str>,
    out: &mut Out<W>,
    stdout: Stdout,
) -> Result<String, String> {
    let want_stats = matches!(stdout, Stdout::Stats);
    let stdout_to = match stdout {
        Stdout::To(f) => Some(f),
        Stdout::Json | Stdout::Stats => None,
    };
    let end = run_borg_logged(spec, argv, env, cwd, out, stdout_to, &mut |_, _| {})?;
    let status = end.status;
    // borg: 0 success, 1 warnings (archive made), 2 error, >=128 killed.
    match status.code() {
        Some(0) | Some(1) => {}
        _ => {
            out.send(Event::Reason(end.reason()));
            return Err(end.heard.failed(&argv[1], status));
        }
    }
    let json = end.json;
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

/// `borg export-tar ... -`: its stdout goes to dom0 as `chunk` frames (job::progress) as it
/// comes; its log lines are collected meanwhile and sent after the stream.
fn run_borg_export<W: Write>(
    spec: &Spec,
    argv: &[String],
    env: &[(String, String)],
    out: &mut Out<W>,
) -> Result<(), String> {
    let (mut cmd, pass_r) = borg_command(spec, argv, env, spec.key_file.is_some())?;
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("cannot start borg: {e}"))?;
    drop(pass_r);
    let stderr = child.stderr.take().expect("piped");
    let log = std::thread::spawn(move || {
        let (mut heard, mut notes) = (Heard::default(), Vec::new());
        for line in borg::log_lines(stderr) {
            if let borg::LogLine::Message {
                level,
                message,
                msgid,
            } = line
            {
                if heard.hear(&level, &message, msgid.as_deref()) {
                    notes.push(message);
                }
            }
        }
        (notes, heard)
    });
    let mut stdout = child.stdout.take().expect("piped");
    let mut buf = vec![0u8; super::progress::MAX_CHUNK];
    let mut gone = false;
    loop {
        let n = match stdout.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let frame = encode(&Event::Chunk(buf[..n].to_vec()));
        if out
            .w
            .write_all(&frame)
            .and_then(|()| out.w.flush())
            .is_err()
        {
            // dom0 stopped reading: nothing more can arrive, stop borg.
            gone = true;
            let _ = child.kill();
            break;
        }
    }
    drop(stdout);
    let status = child.wait().map_err(|e| format!("borg: {e}"))?;
    let (notes, heard) = log.join().unwrap_or_default();
    for n in notes {
        out.send(Event::Warning(format!("borg: {n}")));
    }
    heard.tell_not_shown(out);
    if gone {
        return Err("dom0 stopped reading the stream".into());
    }
    match status.code() {
        Some(0) | Some(1) => Ok(()),
        _ => Err(heard.failed("export-tar", status)),
    }
}

/// borg's command with the passphrase on an inherited pipe (the returned read end: drop it
/// once borg started), the environment, `BORG_KEY_FILE` = KEY_FILE when `key_file`; stdin
/// closed.
fn borg_command(
    spec: &Spec,
    argv: &[String],
    env: &[(String, String)],
    key_file: bool,
) -> Result<(Command, std::os::fd::OwnedFd), String> {
    // Not close-on-exec: borg inherits the read end, and reads the passphrase from it.
    let (pass_r, pass_w) = nix::unistd::pipe().map_err(|e| format!("pipe: {e}"))?;
    {
        let mut w = fs::File::from(pass_w);
        w.write_all(&spec.passphrase)
            .map_err(|e| format!("cannot pass the passphrase: {e}"))?;
    }
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .stdin(Stdio::null())
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
    Ok((cmd, pass_r))
}

/// What one borg run's warnings and errors left: how many there were (dom0 sees the first
/// MAX_FORWARDED), the last error and its msgid, and the last MAX_KEPT messages (bounded).
#[derive(Default)]
struct Heard {
    count: usize,
    last_error: String,
    msgid: String,
    kept: Vec<String>,
}

impl Heard {
    /// Takes one log message; true when it is one dom0 is to see (a warning or an error,
    /// among the first MAX_FORWARDED).
    fn hear(&mut self, level: &str, message: &str, msgid: Option<&str>) -> bool {
        if message.is_empty() || level == "DEBUG" || level == "INFO" {
            return false;
        }
        if borg::is_error(level) {
            self.last_error = message.to_string();
            if let Some(id) = msgid.filter(|i| !i.is_empty()) {
                self.msgid = id.chars().take(64).collect();
            }
        }
        if self.kept.len() >= MAX_KEPT {
            self.kept.remove(0);
        }
        self.kept.push(message.chars().take(1024).collect());
        self.count += 1;
        self.count <= MAX_FORWARDED
    }

    /// Tells dom0 how many messages it did not see.
    fn tell_not_shown<W: Write>(&self, out: &mut Out<W>) {
        if self.count > MAX_FORWARDED {
            out.send(Event::Warning(format!(
                "borg: {} more messages not shown",
                self.count - MAX_FORWARDED
            )));
        }
    }

    /// `borg WHAT failed (STATUS): LAST ERROR`.
    fn failed(&self, what: &str, status: std::process::ExitStatus) -> String {
        format!("borg {what} failed ({status}){}", self.error_suffix())
    }

    /// `": LAST ERROR"`, or nothing when borg logged no error.
    fn error_suffix(&self) -> String {
        if self.last_error.is_empty() {
            String::new()
        } else {
            format!(": {}", self.last_error)
        }
    }
}

/// How one borg run ended, with what its failure is classified from.
struct BorgEnd {
    status: std::process::ExitStatus,
    /// borg's stdout (bounded).
    json: String,
    heard: Heard,
}

impl BorgEnd {
    /// The bounded category of a failure, the only part of it dom0 acts on.
    fn reason(&self) -> super::progress::Reason {
        super::classify::classify(self.status.code(), &self.heard.msgid, &self.heard.kept)
    }
}

/// Runs borg and forwards its messages; `on_log(level, message)` sees every log message
/// (INFO too).
fn run_borg_logged<W: Write>(
    spec: &Spec,
    argv: &[String],
    env: &[(String, String)],
    cwd: Option<&str>,
    out: &mut Out<W>,
    stdout_to: Option<fs::File>,
    on_log: &mut dyn FnMut(&str, &str),
) -> Result<BorgEnd, String> {
    let (mut cmd, pass_r) = borg_command(spec, argv, env, spec.key_file.is_some())?;
    let to_file = stdout_to.is_some();
    cmd.stdout(match stdout_to {
        Some(f) => Stdio::from(f),
        None => Stdio::piped(),
    })
    .stderr(Stdio::piped());
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
    let mut last = Instant::now() - Duration::from_secs(10);
    let mut heard = Heard::default();
    for line in borg::log_lines(child.stderr.take().expect("piped")) {
        match line {
            borg::LogLine::Progress(Some(n)) => {
                if last.elapsed() >= Duration::from_millis(500) {
                    out.send(Event::Progress(n));
                    last = Instant::now();
                }
            }
            borg::LogLine::Progress(None) | borg::LogLine::Status => {}
            borg::LogLine::Message {
                level,
                message,
                msgid,
            } => {
                on_log(&level, &message);
                if heard.hear(&level, &message, msgid.as_deref()) {
                    out.send(Event::Warning(format!("borg: {message}")));
                }
            }
        }
    }
    let status = child.wait().map_err(|e| format!("borg: {e}"))?;
    let json = json.join().unwrap_or_default();
    heard.tell_not_shown(out);
    Ok(BorgEnd {
        status,
        json,
        heard,
    })
}

/// Sends `bytes` to dom0 in `data` lines.
fn send_data<W: Write>(out: &mut Out<W>, bytes: &[u8]) {
    for piece in bytes.chunks(super::progress::MAX_DATA) {
        out.send(Event::Data(piece.to_vec()));
    }
}

/// Most archive names a check result names.
const MAX_CHECK_ARCHIVES: usize = 200;

/// `borg check`: the job succeeds when borg ran to the end; what it found goes to dom0 as
/// data (`repository ok|errors`, then `archive NAME` for each archive borg was analyzing when
/// it logged an error).
fn check<W: Write>(
    spec: &Spec,
    c: &spec::Check,
    base: &str,
    out: &mut Out<W>,
) -> Result<(), String> {
    let env = borg::env(base, None);
    out.send(Event::Phase(Phase::Check));
    let argv = borg::check_argv(&spec.repository, c.verify_data);
    let mut current: Option<String> = None;
    let mut named: Vec<String> = Vec::new();
    let mut problems = false;
    let end = run_borg_logged(spec, &argv, &env, None, out, None, &mut |level, msg| {
        if let Some(rest) = msg.strip_prefix("Analyzing archive ") {
            current = rest
                .rsplit_once(" (")
                .map(|(n, _)| n.to_string())
                .filter(|n| spec::check_archive(n).is_ok());
            return;
        }
        if msg.contains("orphaned objects") || msg.starts_with("Archive consistency check") {
            current = None;
        }
        // Only errors: warnings include the remote side's notes (e.g. the agent's login
        // notice relayed as "Remote: ..."), which are no problem of the repository.
        if borg::is_error(level) {
            problems = true;
            if let Some(a) = &current {
                if !named.contains(a) && named.len() < MAX_CHECK_ARCHIVES {
                    named.push(a.clone());
                }
            }
        }
    })?;
    let status = end.status;
    // borg check: 0 no problems, 1 problems found, 2 could not check.
    let found = match status.code() {
        Some(0) => problems,
        Some(1) => true,
        _ => {
            out.send(Event::Reason(end.reason()));
            return Err(format!(
                "borg check could not run ({status}){}",
                end.heard.error_suffix()
            ));
        }
    };
    let mut text = format!("repository {}\n", if found { "errors" } else { "ok" });
    for a in &named {
        text += &format!("archive {a}\n");
    }
    send_data(out, text.as_bytes());
    Ok(())
}

/// The spot check: mount the volume read-only, sample `count` regular files of the archive's
/// listing, extract each to a pipe and compare it with the volume's file (`spot`).
fn spot<W: Write>(spec: &Spec, s: &spec::Spot, base: &str, out: &mut Out<W>) -> Result<(), String> {
    let mut env = borg::env(base, None);
    // borg prints times in local time: UTC here, as the comparison reads them.
    env.push(("TZ".into(), "UTC".into()));
    out.send(Event::Phase(Phase::Mount));
    let m = mount::mount(&s.device, PRIVATE_DIR, UNTRUSTED_OPTIONS)?;
    out.send(Event::Phase(Phase::Spot));
    let r = spot_files(spec, s, &env, out);
    out.send(Event::Phase(Phase::Unmount));
    let u = m.unmount();
    let tally = r?;
    u?;
    send_data(out, tally.text().as_bytes());
    Ok(())
}

fn spot_files<W: Write>(
    spec: &Spec,
    s: &spec::Spot,
    env: &[(String, String)],
    out: &mut Out<W>,
) -> Result<super::spot::Tally, String> {
    use super::spot::{self as sp, Reservoir, Tally, Verdict};
    let (rd, wr) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    let k = s.count as usize;
    let sampler = std::thread::spawn(move || {
        let mut res = Reservoir::new(k);
        let mut r = BufReader::new(fs::File::from(rd));
        let mut rec = Vec::new();
        let mut skipping = false;
        loop {
            rec.clear();
            match (&mut r)
                .take(sp::MAX_PATH as u64 + 128)
                .read_until(0, &mut rec)
            {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let ended = rec.last() == Some(&0);
            // A record longer than the bound is skipped up to its NUL.
            if skipping || !ended {
                skipping = !ended;
                continue;
            }
            rec.pop();
            if let Some(e) = sp::parse_record(&rec) {
                res.push(e);
            }
        }
        res.items
    });
    let listed = run_borg(
        spec,
        &borg::spot_list_argv(&spec.repository, &s.archive),
        env,
        None,
        out,
        Stdout::To(fs::File::from(wr)),
    );
    let mut files = sampler.join().map_err(|_| "the sampler failed")?;
    listed?;
    files.sort_by(|a, b| a.path.cmp(&b.path));
    let mut tally = Tally::default();
    for e in files {
        let path = e.path.clone();
        let volume_file = sp::open_beneath(PRIVATE_DIR, &path).ok();
        let (rd, wr) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
        let cmp = std::thread::spawn(move || sp::compare(&e, volume_file, &mut fs::File::from(rd)));
        let got = run_borg(
            spec,
            &borg::spot_extract_argv(&spec.repository, &s.archive, &path),
            env,
            None,
            out,
            Stdout::To(fs::File::from(wr)),
        );
        let v = cmp.join().map_err(|_| "the comparison failed")?;
        // The archive could not give the file back: as bad as a wrong file.
        tally.add(
            &path,
            if got.is_ok() {
                v
            } else {
                Verdict::Mismatch("unreadable")
            },
        );
    }
    Ok(tally)
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

    #[test]
    fn heard_forwards_the_first_64_warnings_and_keeps_the_last_32_and_the_last_error() {
        let mut h = Heard::default();
        assert!(!h.hear("INFO", "noted", None));
        assert!(!h.hear("DEBUG", "noted", None));
        assert!(!h.hear("WARNING", "", None));
        assert_eq!(h.count, 0);
        assert!(h.hear("ERROR", "first", Some("Lock.Timeout")));
        assert!(h.hear("CRITICAL", "second", Some("")));
        assert_eq!(
            (h.last_error.as_str(), h.msgid.as_str()),
            ("second", "Lock.Timeout")
        );
        for i in 2..MAX_FORWARDED {
            assert!(h.hear("WARNING", &format!("w{i}"), None));
        }
        assert!(!h.hear("", "not json", None));
        assert_eq!(h.count, MAX_FORWARDED + 1);
        assert_eq!(h.kept.len(), MAX_KEPT);
        assert_eq!(h.kept.last().unwrap(), "not json");
        assert_eq!(h.last_error, "second");
        let mut out = Vec::new();
        h.tell_not_shown(&mut Out { w: &mut out });
        let evs: Vec<Event> = read_all(&mut &out[..])
            .unwrap()
            .into_iter()
            .map(|r| r.unwrap())
            .collect();
        assert_eq!(
            evs,
            [Event::Warning("borg: 1 more messages not shown".into())]
        );
        assert_eq!(h.error_suffix(), ": second");
        assert_eq!(Heard::default().error_suffix(), "");
    }
}

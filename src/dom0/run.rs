//! dom0: `qvm-backup-borg backup`: for each planned qube, make its committed private volume
//! visible read-only to a fresh disposable, run the job there, undo everything, and record the
//! result; then prune and compact; print a summary; exit non-zero if anything failed.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::time::{Duration, Instant};

use super::config::Config;
use super::display::{human, Display};
use super::plan::{self, Item, QubeInfo};
use super::qubes::{CallError, Output, Qubes};
use super::volumes::{parse_loop, Cleanup, Undo};
use crate::job::progress::{sanitize, Event, LineSplitter, Stats};
use crate::job::spec::{self, Create, Mode, Op, Prune, Spec};

/// The qrexec service of the job in the disposable.
pub const JOB_SERVICE: &str = "qubes-borg.BackupJob";
/// Where the qube's volume appears in the disposable.
pub const PRIVATE_FRONTEND: &str = "xvdi";
/// Most warning/error lines of one job printed (the rest are counted).
pub const MAX_NOTES: usize = 100;
/// Where borg's state volume appears.
pub const STATE_FRONTEND: &str = "xvdj";

pub struct Options {
    pub dry_run: bool,
    pub shutdown: bool,
    pub qubes: Vec<String>,
}

pub struct Secrets {
    pub passphrase: Vec<u8>,
    pub key_file: Option<Vec<u8>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QubeResult {
    pub qube: String,
    pub archive: String,
    pub stats: Option<Stats>,
    pub duration: Duration,
    pub error: Option<String>,
}

/// How the run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// Some qube, the prune or a cleanup step failed.
    Failed,
    Interrupted,
    /// Nothing was backed up: the plan could not be made.
    NoPlan,
}

pub(super) struct Ctx<'a> {
    pub q: &'a mut dyn Qubes,
    pub cfg: &'a Config,
    pub err: &'a mut dyn Write,
    pub display: Display,
}

fn fail(argv: &[String], o: &Output) -> String {
    let text = sanitize(o.stderr.trim_ascii(), 300);
    format!(
        "{} failed (exit {}){}{}",
        argv.join(" "),
        o.code,
        if text.is_empty() { "" } else { ": " },
        text
    )
}

impl Ctx<'_> {
    pub(super) fn call(&mut self, argv: &[&str]) -> Result<Vec<u8>, String> {
        if self.q.interrupted() {
            return Err(CallError::Interrupted.to_string());
        }
        let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
        let o = self.q.run(&argv).map_err(|e| e.to_string())?;
        if o.code != 0 {
            return Err(fail(&argv, &o));
        }
        Ok(o.stdout)
    }

    pub(super) fn value(&mut self, argv: &[&str]) -> Result<String, String> {
        let out = self.call(argv)?;
        let s = String::from_utf8(out)
            .map_err(|_| format!("{}: output is not text", argv.join(" ")))?;
        let s = s.trim_end_matches('\n');
        if s.contains('\n') || s.len() > 4096 || s.chars().any(|c| c.is_control()) {
            return Err(format!("{}: unexpected output", argv.join(" ")));
        }
        Ok(s.to_string())
    }

    pub(super) fn note(&mut self, msg: &str) {
        self.display.clear_line(self.err);
        let _ = writeln!(self.err, "qvm-backup-borg: {msg}");
    }
}

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

fn job_argv(disposable: &str) -> Vec<String> {
    [
        "qvm-run",
        "--user",
        "root",
        "--pass-io",
        "--no-gui",
        "--no-color-output",
        "--no-color-stderr",
        "--service",
        disposable,
        JOB_SERVICE,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Starts the disposable and attaches borg's state volume (if persistent); pushes the undo steps.
pub(super) fn start_disposable(
    ctx: &mut Ctx,
    cleanup: &mut Cleanup,
) -> Result<Option<String>, String> {
    let disp = ctx.cfg.disposable.clone();
    ctx.call(&["qvm-start", &disp])?;
    cleanup.push(Undo::Shutdown {
        vm: disp.clone(),
        timeout: ctx.cfg.shutdown_timeout,
    });
    if !ctx.cfg.persistent_state {
        return Ok(None);
    }
    let img = ctx.cfg.state_image.clone();
    if !img.exists() {
        if let Some(d) = img.parent() {
            std::fs::create_dir_all(d)
                .map_err(|e| format!("cannot create {}: {e}", d.display()))?;
        }
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&img)
            .map_err(|e| format!("cannot create {}: {e}", img.display()))?;
        f.set_len(ctx.cfg.state_size_mib << 20)
            .map_err(|e| format!("cannot size {}: {e}", img.display()))?;
    }
    let img = img.to_string_lossy().to_string();
    let out = ctx.call(&["losetup", "--find", "--show", &img])?;
    let lp = parse_loop(&out).ok_or("losetup: unexpected output")?;
    cleanup.push(Undo::Loop {
        loop_name: lp.clone(),
    });
    ctx.call(&[
        "qvm-block",
        "attach",
        "--option",
        &format!("frontend-dev={STATE_FRONTEND}"),
        &disp,
        &format!("dom0:{lp}"),
    ])?;
    cleanup.push(Undo::Detach {
        vm: disp,
        loop_name: lp,
    });
    Ok(Some(format!("/dev/{STATE_FRONTEND}")))
}

/// Most bytes of `data` (borg's --json output) kept from one job.
pub const MAX_JOB_DATA: usize = 8 << 20;

#[derive(Default)]
pub(super) struct JobReport {
    pub stats: Option<Stats>,
    pub done: Option<bool>,
    pub last_error: Option<String>,
    /// `data` lines joined (bounded by MAX_JOB_DATA).
    pub data: Vec<u8>,
    pub data_overflow: bool,
}

pub(super) fn run_job(
    ctx: &mut Ctx,
    qube: &str,
    total: u64,
    spec: &Spec,
) -> Result<JobReport, String> {
    let argv = job_argv(&ctx.cfg.disposable);
    let request = spec::encode(spec);
    let mut report = JobReport::default();
    let mut splitter = LineSplitter::new();
    let mut bad = 0usize;
    let mut shown = 0usize;
    let mut notes: Vec<String> = Vec::new();
    let display = &mut ctx.display;
    let err = &mut *ctx.err;
    display.start(qube, total);
    let res = ctx.q.job(&argv, &request, &mut |bytes| {
        for line in splitter.push(bytes) {
            match line {
                Ok(Event::Progress(n)) => display.progress(err, n),
                Ok(Event::Phase(p)) => display.phase(err, p.as_str()),
                Ok(Event::Stats(s)) => report.stats = Some(s),
                Ok(Event::Done(ok)) => report.done = Some(ok),
                Ok(Event::Data(d)) => {
                    if report.data.len() + d.len() > MAX_JOB_DATA {
                        report.data_overflow = true;
                    } else {
                        report.data.extend_from_slice(&d);
                    }
                }
                Ok(Event::Warning(t)) => notes.push(format!("{qube}: {t}")),
                Ok(Event::Error(t)) => {
                    notes.push(format!("{qube}: error: {t}"));
                    report.last_error = Some(t);
                }
                Err(e) => {
                    bad += 1;
                    if bad <= 3 {
                        notes.push(format!("{qube}: {e}"));
                    }
                }
            }
            // Print notes as they come, at most MAX_NOTES per job (the job may flood).
            for n in notes.drain(..) {
                shown += 1;
                if shown <= MAX_NOTES {
                    display.clear_line(err);
                    let _ = writeln!(err, "qvm-backup-borg: {n}");
                }
            }
        }
    });
    display.finish(err);
    if shown > MAX_NOTES {
        ctx.note(&format!(
            "{qube}: {} more warnings from the job not shown",
            shown - MAX_NOTES
        ));
    }
    if bad > 3 {
        ctx.note(&format!(
            "{qube}: {} more malformed lines from the job ignored",
            bad - 3
        ));
    }
    let out = res.map_err(|e| e.to_string())?;
    if let Some(e) = splitter.finish() {
        ctx.note(&format!("{qube}: {e}"));
    }
    if out.code != 0 {
        let text = sanitize(out.stderr.trim_ascii(), 300);
        if !text.is_empty() {
            ctx.note(&format!("{qube}: job stderr: {text}"));
        }
        return Err(report
            .last_error
            .unwrap_or_else(|| format!("the backup job failed (exit {})", out.code)));
    }
    Ok(report)
}

fn back_up_one(
    ctx: &mut Ctx,
    item: &Item,
    opts: &Options,
    secrets: &Secrets,
    cleanup: &mut Cleanup,
) -> Result<Stats, String> {
    let q = item.qube.clone();
    let vol = format!("{q}:private");
    let pool = ctx.value(&["qvm-volume", "info", &vol, "pool"])?;
    let vid = ctx.value(&["qvm-volume", "info", &vol, "vid"])?;
    // Progress is measured against what borg reads: the used bytes (files) or the whole
    // volume (image).
    let measure = if item.mode == Mode::Image {
        "size"
    } else {
        "usage"
    };
    let usage: u64 = ctx
        .value(&["qvm-volume", "info", &vol, measure])?
        .parse()
        .unwrap_or(0);
    let size = if measure == "size" {
        Some(usage)
    } else {
        ctx.value(&["qvm-volume", "info", &vol, "size"])
            .ok()
            .and_then(|v| v.parse().ok())
    };
    let settings = super::metadata::gather(ctx, &q, item.mode, size);
    spec::check_qube(&pool).map_err(|w| format!("pool name {w}"))?;
    let pool_info = ctx.call(&["qvm-pool", "info", &pool])?;
    let driver = pool_value(&pool_info, "driver").ok_or("qvm-pool info: no driver")?;
    let (path, lvm) = committed_path(&driver, &pool_info, &vid)?;
    if item.running {
        if opts.shutdown {
            let t = ctx.cfg.shutdown_timeout.to_string();
            ctx.call(&["qvm-shutdown", "--wait", "--timeout", &t, &q])?;
            cleanup.push(Undo::Start { vm: q.clone() });
        } else {
            ctx.note(&format!("{q} is running: backing up its private volume as of its last start (--shutdown stops it first)"));
        }
    }
    if lvm {
        ctx.call(&["lvchange", "--activate=y", "--", &path])?;
    }
    let out = ctx.call(&["losetup", "--read-only", "--find", "--show", &path])?;
    let lp = parse_loop(&out).ok_or("losetup: unexpected output")?;
    cleanup.push(Undo::Loop {
        loop_name: lp.clone(),
    });
    let state = start_disposable(ctx, cleanup)?;
    let disp = ctx.cfg.disposable.clone();
    ctx.call(&[
        "qvm-block",
        "attach",
        "--ro",
        "--option",
        &format!("frontend-dev={PRIVATE_FRONTEND}"),
        &disp,
        &format!("dom0:{lp}"),
    ])?;
    cleanup.push(Undo::Detach {
        vm: disp,
        loop_name: lp,
    });
    let spec = Spec {
        repository: ctx.cfg.repository.clone(),
        state_device: state,
        passphrase: secrets.passphrase.clone(),
        key_file: secrets.key_file.clone(),
        op: Op::Create(Create {
            qube: q.clone(),
            archive: item.archive.clone(),
            mode: item.mode,
            device: format!("/dev/{PRIVATE_FRONTEND}"),
            compression: item.compression.clone(),
            excludes: item.excludes.clone(),
            settings,
        }),
    };
    let report = run_job(ctx, &q, usage, &spec)?;
    match (report.done, report.stats) {
        (Some(true), Some(s)) => Ok(s),
        (Some(true), None) => Err("the job said done but sent no statistics".into()),
        _ => Err(report
            .last_error
            .unwrap_or_else(|| "the job ended without reporting success".into())),
    }
}

/// Pruning needs the admin key set: the routine key is append-only on the server, where a
/// prune would only look done (docs/SECURITY.md).
const SKIP_PRUNE: &str = "prune skipped: keep_* is set but admin_repository is not (the routine \
key is append-only on the server; set admin_repository to a destination whose key set is admin, \
docs/SECURITY.md)";

fn prune(ctx: &mut Ctx, qubes: &[String], secrets: &Secrets) -> Result<(), String> {
    let mut cleanup = Cleanup::new(&ctx.cfg.run_dir);
    let res = (|| {
        let state = start_disposable(ctx, &mut cleanup)?;
        let spec = Spec {
            repository: ctx
                .cfg
                .admin_repository
                .clone()
                .ok_or_else(|| SKIP_PRUNE.to_string())?,
            state_device: state,
            passphrase: secrets.passphrase.clone(),
            key_file: secrets.key_file.clone(),
            op: Op::Prune(Prune {
                qubes: qubes.to_vec(),
                keep: ctx.cfg.keep.clone(),
            }),
        };
        let r = run_job(ctx, "prune", 0, &spec)?;
        if r.done != Some(true) {
            return Err(r
                .last_error
                .unwrap_or_else(|| "prune did not finish".into()));
        }
        Ok(())
    })();
    let undo = cleanup.undo_all(ctx.q);
    for u in &undo {
        ctx.note(&format!("cleanup: {u}"));
    }
    res.and(if undo.is_empty() {
        Ok(())
    } else {
        Err("cleanup failed".into())
    })
}

pub fn summary(results: &[QubeResult]) -> String {
    let mut s = format!(
        "{:<20} {:<42} {:>10} {:>12} {:>9}  {}\n",
        "QUBE", "ARCHIVE", "ORIGINAL", "DEDUPLICATED", "DURATION", "RESULT"
    );
    for r in results {
        let (o, d) = match &r.stats {
            Some(st) => (human(st.original), human(st.deduplicated)),
            None => ("-".into(), "-".into()),
        };
        let secs = r.duration.as_secs();
        let dur = format!("{}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60);
        let res = match &r.error {
            None => "ok".to_string(),
            Some(e) => format!("FAILED: {e}"),
        };
        s += &format!(
            "{:<20} {:<42} {:>10} {:>12} {:>9}  {}\n",
            r.qube, r.archive, o, d, dur, res
        );
    }
    s
}

/// Runs `backup`. `now` is seconds since the epoch (archive names, backup_timestamp).
#[allow(clippy::too_many_arguments)] // I/O passed in, as the programs' rule asks
pub fn backup(
    cfg: &Config,
    opts: &Options,
    secrets: &Secrets,
    q: &mut dyn Qubes,
    out: &mut dyn Write,
    err: &mut dyn Write,
    tty: bool,
    now: u64,
) -> Outcome {
    let mut ctx = Ctx {
        q,
        cfg,
        err,
        display: Display::new(tty),
    };
    // Only a run holding the lock may undo a ledger: a dry run (no lock) may be running next to
    // a real one whose ledger is live.
    if !opts.dry_run {
        for n in Cleanup::recover(&cfg.run_dir, ctx.q) {
            ctx.note(&n);
        }
    }
    let listed = match ctx
        .call(&[
            "qvm-ls",
            "--raw-data",
            "--fields",
            "NAME,CLASS,STATE,include_in_backups",
        ])
        .and_then(|o| parse_qvm_ls(&o))
    {
        Ok(l) => l,
        Err(e) => {
            ctx.note(&e);
            return Outcome::NoPlan;
        }
    };
    let mut tagged = Vec::new();
    for tag in &cfg.tags {
        match ctx.call(&["qvm-ls", "--raw-data", "--fields", "NAME", "--tags", tag]) {
            Ok(o) => tagged.extend(
                String::from_utf8_lossy(&o)
                    .lines()
                    .filter(|l| spec::check_qube(l).is_ok())
                    .map(String::from),
            ),
            Err(e) => {
                ctx.note(&e);
                return Outcome::NoPlan;
            }
        }
    }
    let items = match plan::plan(cfg, &listed, &tagged, &opts.qubes, now) {
        Ok(i) => i,
        Err(e) => {
            ctx.note(&e.to_string());
            return Outcome::NoPlan;
        }
    };
    if opts.dry_run {
        let _ = writeln!(
            out,
            "Plan (dry run, nothing is changed): repository {}",
            cfg.repository
        );
        for i in &items {
            let run = if !i.running {
                ""
            } else if opts.shutdown {
                "  (running: shut down, backed up, restarted)"
            } else {
                "  (running: as of its last start)"
            };
            let _ = writeln!(
                out,
                "  {:<20} {:<6} -> {}{run}",
                i.qube,
                i.mode.as_str(),
                i.archive
            );
            for e in &i.excludes {
                let _ = writeln!(out, "  {:<20}        exclude {e}", "");
            }
        }
        if !cfg.keep.is_empty() {
            match &cfg.admin_repository {
                Some(admin) => {
                    let _ = writeln!(
                        out,
                        "  then prune each qube's archives and compact ({admin})"
                    );
                }
                None => {
                    let _ = writeln!(out, "  then: {SKIP_PRUNE}");
                }
            }
        }
        return Outcome::Ok;
    }
    // The disposable must start fresh: a leftover one is shut down.
    if listed
        .iter()
        .any(|l| l.name == cfg.disposable && l.is_running())
    {
        let t = cfg.shutdown_timeout.to_string();
        if let Err(e) = ctx.call(&["qvm-shutdown", "--wait", "--timeout", &t, &cfg.disposable]) {
            ctx.note(&e);
        }
    }
    let mut results = Vec::new();
    let mut failed = false;
    for item in &items {
        if ctx.q.interrupted() {
            break;
        }
        let t0 = Instant::now();
        let mut cleanup = Cleanup::new(&cfg.run_dir);
        let r = back_up_one(&mut ctx, item, opts, secrets, &mut cleanup);
        let undo = cleanup.undo_all(ctx.q);
        for u in &undo {
            ctx.note(&format!("cleanup: {u}"));
        }
        let mut error = r.as_ref().err().cloned();
        if error.is_none() && !undo.is_empty() {
            error = Some("cleanup failed (see above)".into());
        }
        if error.is_none() {
            if let Err(e) = ctx.call(&[
                "qvm-prefs",
                &item.qube,
                "backup_timestamp",
                &now.to_string(),
            ]) {
                ctx.note(&format!("{}: cannot set backup_timestamp: {e}", item.qube));
            }
        }
        match &error {
            None => ctx.note(&format!("{}: archive {} done", item.qube, item.archive)),
            Some(e) => ctx.note(&format!("{}: FAILED: {e}", item.qube)),
        }
        failed |= error.is_some();
        results.push(QubeResult {
            qube: item.qube.clone(),
            archive: item.archive.clone(),
            stats: r.ok(),
            duration: t0.elapsed(),
            error,
        });
    }
    let interrupted = ctx.q.interrupted();
    let done: Vec<String> = results
        .iter()
        .filter(|r| r.error.is_none())
        .map(|r| r.qube.clone())
        .collect();
    if !interrupted && !cfg.keep.is_empty() && !done.is_empty() && cfg.admin_repository.is_none() {
        ctx.note(SKIP_PRUNE);
    } else if !interrupted && !cfg.keep.is_empty() && !done.is_empty() {
        match prune(&mut ctx, &done, secrets) {
            Ok(()) => ctx.note("prune and compact done"),
            Err(e) => {
                ctx.note(&format!("prune/compact FAILED: {e}"));
                failed = true;
            }
        }
    }
    let _ = write!(out, "{}", summary(&results));
    if interrupted {
        ctx.note(
            "interrupted: everything set up was undone; the remaining qubes were not backed up",
        );
        return Outcome::Interrupted;
    }
    if failed || results.len() < items.len() {
        Outcome::Failed
    } else {
        Outcome::Ok
    }
}

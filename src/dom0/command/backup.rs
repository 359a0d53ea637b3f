//! dom0: `qvm-backup-borg backup`: for each planned qube, make its committed private volume
//! visible read-only to a fresh disposable, run the job there, undo everything, and record the
//! result; then prune and compact; print a summary; exit non-zero if anything failed.

use std::io::Write;
use std::time::{Duration, Instant};

use crate::dom0::config::Config;
use crate::dom0::display::{human, Display};
use crate::dom0::job_call::{run_job, run_job_reason};
use crate::dom0::plan::{self, Item};
use crate::dom0::qubes::Qubes;
use crate::dom0::retry;
use crate::dom0::session::list_qubes;
use crate::dom0::session::{
    committed_image, start_disposable, stop_leftover_disposable, volume_ids, volume_in_disposable,
    with_cleanup, Ctx,
};
use crate::dom0::session::{Outcome, Secrets};
use crate::dom0::volumes::{Cleanup, Undo};
use crate::job::progress::{Reason, Stats};
use crate::job::spec::{self, Create, Mode, Op, Prune};

pub struct Options {
    pub dry_run: bool,
    pub shutdown: bool,
    pub qubes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QubeResult {
    pub qube: String,
    pub archive: String,
    pub stats: Option<Stats>,
    pub duration: Duration,
    pub error: Option<String>,
    /// How many times the qube's job ran (more than 1 after transient failures).
    pub attempts: u32,
}

fn back_up_one(
    ctx: &mut Ctx,
    item: &Item,
    opts: &Options,
    secrets: &Secrets,
    cleanup: &mut Cleanup,
    reason: &mut Option<Reason>,
) -> Result<Stats, String> {
    let q = item.qube.clone();
    let vol = format!("{q}:private");
    let (pool, vid) = volume_ids(ctx, &q)?;
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
    let settings = crate::dom0::metadata::gather(ctx, &q, item.mode, size);
    let volume = committed_image(ctx, &pool, &vid)?;
    if item.running {
        if opts.shutdown {
            let t = ctx.cfg.shutdown_timeout.to_string();
            ctx.call(&["qvm-shutdown", "--wait", "--timeout", &t, &q])?;
            cleanup.push(Undo::Start { vm: q.clone() });
        } else {
            ctx.note(&format!("{q} is running: backing up its private volume as of its last start (--shutdown stops it first)"));
        }
    }
    let (state, device) = volume_in_disposable(ctx, cleanup, &volume, false)?;
    let spec = secrets.request(
        &ctx.cfg.repository,
        state,
        Op::Create(Create {
            qube: q.clone(),
            archive: item.archive.clone(),
            mode: item.mode,
            device,
            compression: item.compression.clone(),
            excludes: item.excludes.clone(),
            settings,
            lock_wait: Some(ctx.cfg.lock_wait),
        }),
    );
    let (report, why) = run_job_reason(ctx, &q, usage, &spec);
    *reason = why;
    let report = report?;
    match (report.done, report.stats) {
        (Some(true), Some(s)) => Ok(s),
        (Some(true), None) => Err("the job said done but sent no statistics".into()),
        _ => Err(report
            .last_error
            .unwrap_or_else(|| "the job ended without reporting success".into())),
    }
}

/// One qube, tried again after a transient failure (`retry`): each attempt in a fresh
/// disposable with everything undone in between. Returns the last result and the attempts.
fn back_up_with_retries(
    ctx: &mut Ctx,
    item: &Item,
    opts: &Options,
    secrets: &Secrets,
) -> (Result<Stats, String>, u32) {
    let q = &item.qube;
    let (mut attempts, mut waited) = (0u32, Duration::ZERO);
    loop {
        attempts += 1;
        let mut reason = None;
        let r = with_cleanup(ctx, |ctx, cleanup| {
            back_up_one(ctx, item, opts, secrets, cleanup, &mut reason)
        });
        let Err(e) = r else {
            retry::clear_link_lost(&ctx.cfg.run_dir);
            return (r, attempts);
        };
        if reason == Some(Reason::Link) {
            retry::record_link_lost(&ctx.cfg.run_dir);
        }
        let next = retry::delay(ctx.cfg.retry_delay, attempts);
        if ctx.q.interrupted()
            || !retry::should_retry(reason, attempts - 1, ctx.cfg.retries, waited, next)
        {
            if let Some(a) = retry::advice(
                reason,
                &ctx.cfg.repository,
                ctx.cfg.lock_wait,
                retry::link_lost_ago(&ctx.cfg.run_dir),
            ) {
                ctx.note(&format!("{q}: {a}"));
            }
            let e = match reason {
                Some(Reason::Other) | None => e,
                r => format!("{}: {e}", retry::short(r)),
            };
            return (Err(e), attempts);
        }
        ctx.note(&format!(
            "{q}: attempt {attempts} failed ({}): {e}; trying again in {} s ({} of {} retries)",
            retry::short(reason),
            next.as_secs(),
            attempts,
            ctx.cfg.retries
        ));
        let until = Instant::now() + next;
        while Instant::now() < until && !ctx.q.interrupted() {
            std::thread::sleep(Duration::from_millis(100).min(until - Instant::now()));
        }
        waited += next;
        if ctx.q.interrupted() {
            return (Err(e), attempts);
        }
    }
}

/// Pruning needs the admin key set: the routine key is append-only on the server, where a
/// prune would only look done (docs/SECURITY.md).
const SKIP_PRUNE: &str = "prune skipped: keep_* is set but admin_repository is not (the routine \
key is append-only on the server; set admin_repository to a destination whose key set is admin, \
docs/SECURITY.md)";

fn prune(ctx: &mut Ctx, qubes: &[String], secrets: &Secrets) -> Result<(), String> {
    with_cleanup(ctx, |ctx, cleanup| {
        let state = start_disposable(ctx, cleanup)?;
        let admin = ctx.cfg.admin_repository.as_deref().ok_or(SKIP_PRUNE)?;
        let spec = secrets.request(
            admin,
            state,
            Op::Prune(Prune {
                qubes: qubes.to_vec(),
                keep: ctx.cfg.keep.clone(),
                lock_wait: Some(ctx.cfg.lock_wait),
            }),
        );
        run_job(ctx, "prune", 0, &spec)?.finished("prune")?;
        Ok(())
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
        let tries = if r.attempts > 1 {
            format!(" ({} attempts)", r.attempts)
        } else {
            String::new()
        };
        let res = match &r.error {
            None => format!("ok{tries}"),
            Some(e) => format!("FAILED{tries}: {e}"),
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
    let listed = match list_qubes(&mut ctx) {
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
        stop_leftover_disposable(&mut ctx);
    }
    let mut results = Vec::new();
    let mut failed = false;
    for item in &items {
        if ctx.q.interrupted() {
            break;
        }
        let t0 = Instant::now();
        let (r, attempts) = back_up_with_retries(&mut ctx, item, opts, secrets);
        let error = r.as_ref().err().cloned();
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
            attempts,
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

//! dom0: one run of the job in the disposable (`qvm-run --service ... qubes-borg.BackupJob`):
//! the request goes in on stdin, progress lines come back and are checked one by one, shown,
//! and summed up in a `JobReport`.

use super::session::{start_disposable, stop_leftover_disposable, with_cleanup, Ctx, Secrets};
use crate::job::progress::{sanitize, Event, LineSplitter, Reason, Stats};
use crate::job::spec::{self, Op, Spec};

/// The qrexec service of the job in the disposable.
pub const JOB_SERVICE: &str = "qubes-borg.BackupJob";
/// Most warning/error lines of one job printed (the rest are counted).
pub const MAX_NOTES: usize = 100;

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
    /// The category of the job's last failure (`reason` line), if it sent one.
    pub reason: Option<Reason>,
    /// Bytes of `chunk` frames passed on (export).
    pub streamed: u64,
}

pub(super) fn run_job(
    ctx: &mut Ctx,
    qube: &str,
    total: u64,
    spec: &Spec,
) -> Result<JobReport, String> {
    run_job_reason(ctx, qube, total, spec).0
}

/// `run_job`, also giving the failure category the job sent (also when the job failed).
pub(super) fn run_job_reason(
    ctx: &mut Ctx,
    qube: &str,
    total: u64,
    spec: &Spec,
) -> (Result<JobReport, String>, Option<Reason>) {
    let mut reason = None;
    let res = run_job_with(ctx, qube, total, spec, None, &mut reason);
    (res, reason)
}

/// `run_job` for the export op: the job's `chunk` frames go to `into` as they arrive (never
/// parsed), their byte count is the progress shown and `JobReport::streamed`.
pub(super) fn run_job_into(
    ctx: &mut Ctx,
    qube: &str,
    spec: &Spec,
    into: &mut dyn FnMut(&[u8]),
) -> Result<JobReport, String> {
    run_job_with(ctx, qube, 0, spec, Some(into), &mut None)
}

/// Where the export's stream goes.
type StreamSink<'a> = &'a mut dyn FnMut(&[u8]);

fn run_job_with(
    ctx: &mut Ctx,
    qube: &str,
    total: u64,
    spec: &Spec,
    mut into: Option<StreamSink>,
    reason: &mut Option<Reason>,
) -> Result<JobReport, String> {
    let argv = job_argv(&ctx.cfg.disposable);
    let request = spec::encode(spec);
    let mut report = JobReport::default();
    let mut splitter = if into.is_some() {
        LineSplitter::with_chunks()
    } else {
        LineSplitter::new()
    };
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
                Ok(Event::Reason(r)) => {
                    report.reason = Some(r);
                    *reason = Some(r);
                }
                Ok(Event::Chunk(d)) => {
                    report.streamed += d.len() as u64;
                    display.progress(err, report.streamed);
                    if let Some(f) = into.as_mut() {
                        f(&d);
                    }
                }
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

impl JobReport {
    /// The report of a job that said `done ok`, else the error it gave (or `what` did not finish).
    pub(super) fn finished(self, what: &str) -> Result<JobReport, String> {
        if self.done == Some(true) {
            Ok(self)
        } else {
            Err(self
                .last_error
                .unwrap_or_else(|| format!("{what} did not finish")))
        }
    }
}

/// Runs `op` against the repository in a fresh disposable that has nothing attached but
/// borg's state, undoes everything after, and returns the data the job sent (bounded), once
/// it said `done ok`. `what` names the job in messages.
pub(super) fn repository_data(
    ctx: &mut Ctx,
    secrets: &Secrets,
    op: Op,
    what: &str,
) -> Result<Vec<u8>, String> {
    stop_leftover_disposable(ctx);
    with_cleanup(ctx, |ctx, cleanup| {
        let state = start_disposable(ctx, cleanup)?;
        let spec = secrets.request(&ctx.cfg.repository, state, op);
        let r = run_job(ctx, "repository", 0, &spec)?.finished(&format!("the {what} job"))?;
        if r.data_overflow {
            return Err(format!("the {what} job sent more data than allowed"));
        }
        Ok(r.data)
    })
}

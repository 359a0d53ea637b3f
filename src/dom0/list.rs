//! dom0: `qvm-backup-borg list [QUBE]`: a fresh disposable runs `borg info --json` (job op
//! `list`), dom0 checks what comes back (`archives`) and prints a table of the archives with
//! their dates and sizes. Everything set up is undone, whatever happens.

use std::io::Write;

use super::archives::{self, Listing};
use super::config::Config;
use super::display::Display;
use super::metadata;
use super::qubes::Qubes;
use super::run::{run_job, start_disposable, Ctx, Outcome, Secrets};
use super::volumes::Cleanup;
use crate::job::spec::{List, Op, Spec};

/// Asks the repository for the archives of `qube` (or of every qube).
pub(super) fn fetch(
    ctx: &mut Ctx,
    qube: Option<&str>,
    secrets: &Secrets,
) -> Result<Listing, String> {
    // The disposable must start fresh: one left running (by hand, or by a crashed run) is shut
    // down (qvm-shutdown of a halted qube is no error).
    let t = ctx.cfg.shutdown_timeout.to_string();
    let disp = ctx.cfg.disposable.clone();
    if let Err(e) = ctx.call(&["qvm-shutdown", "--wait", "--timeout", &t, &disp]) {
        ctx.note(&e);
    }
    let mut cleanup = Cleanup::new(&ctx.cfg.run_dir);
    let res = (|| {
        let state = start_disposable(ctx, &mut cleanup)?;
        let spec = Spec {
            repository: ctx.cfg.repository.clone(),
            state_device: state,
            passphrase: secrets.passphrase.clone(),
            key_file: secrets.key_file.clone(),
            op: Op::List(List {
                qube: qube.map(String::from),
            }),
        };
        let r = run_job(ctx, "repository", 0, &spec)?;
        if r.done != Some(true) {
            return Err(r
                .last_error
                .unwrap_or_else(|| "the list job did not finish".into()));
        }
        if r.data_overflow {
            return Err("the list job sent more data than allowed".into());
        }
        archives::parse_info(&r.data, qube)
    })();
    let undo = cleanup.undo_all(ctx.q);
    for u in &undo {
        ctx.note(&format!("cleanup: {u}"));
    }
    if res.is_ok() && !undo.is_empty() {
        return Err("cleanup failed (see above)".into());
    }
    res
}

/// The checked settings of one archive, one `  KEY=VALUE` line each (warnings as notes).
fn settings_text(archive: &str, comment: &str, ctx: &mut Ctx) -> String {
    match metadata::parse(comment) {
        Ok((s, warnings)) => {
            for w in warnings {
                ctx.note(&format!("{archive}: {w}"));
            }
            let text = metadata::render(&s);
            let mut t = format!("Settings saved with {archive}:\n");
            for l in text.lines().skip(1) {
                t += &format!("  {l}\n");
            }
            t
        }
        Err(e) => format!("Settings saved with {archive}: none ({e})\n"),
    }
}

/// Runs `list`: prints the table on `out`, notes on `err`.
pub fn list(
    cfg: &Config,
    qube: Option<&str>,
    secrets: &Secrets,
    q: &mut dyn Qubes,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Outcome {
    let mut ctx = Ctx {
        q,
        cfg,
        err,
        display: Display::new(false),
    };
    for n in Cleanup::recover(&cfg.run_dir, ctx.q) {
        ctx.note(&n);
    }
    match fetch(&mut ctx, qube, secrets) {
        Ok(l) => {
            if l.ignored > 0 {
                ctx.note(&format!(
                    "{} archive entries did not pass the checks (name, numbers, size) and are not shown",
                    l.ignored
                ));
            }
            let _ = write!(out, "{}", archives::table(&l));
            // One qube: the settings saved with its newest archive, as restore would use them.
            if let Some(a) = qube.and(l.archives.last()) {
                let _ = write!(out, "{}", settings_text(&a.name, &a.comment, &mut ctx));
            }
            Outcome::Ok
        }
        Err(e) => {
            ctx.note(&format!("list FAILED: {e}"));
            if ctx.q.interrupted() {
                Outcome::Interrupted
            } else {
                Outcome::Failed
            }
        }
    }
}

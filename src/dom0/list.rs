//! dom0: `qvm-backup-borg list [QUBE]`: a fresh disposable runs `borg info --json` (job op
//! `list`), dom0 checks what comes back (`archives`) and prints a table of the archives with
//! their dates and sizes. Everything set up is undone, whatever happens.

use std::io::Write;

use super::archives::{self, Listing};
use super::config::Config;
use super::display::Display;
use super::job_call::run_job;
use super::metadata;
use super::qubes::Qubes;
use super::session::{
    start_disposable, stop_leftover_disposable, with_cleanup, Ctx, Outcome, Secrets,
};
use super::volumes::Cleanup;
use crate::job::spec::{List, Op, Spec};

/// Asks the repository for the archives of `qube` (or of every qube).
pub(super) fn fetch(
    ctx: &mut Ctx,
    qube: Option<&str>,
    secrets: &Secrets,
) -> Result<Listing, String> {
    stop_leftover_disposable(ctx);
    with_cleanup(ctx, |ctx, cleanup| {
        let state = start_disposable(ctx, cleanup)?;
        let spec = Spec {
            repository: ctx.cfg.repository.clone(),
            state_device: state,
            passphrase: secrets.passphrase.clone(),
            key_file: secrets.key_file.clone(),
            op: Op::List(List {
                qube: qube.map(String::from),
            }),
        };
        let r = run_job(ctx, "repository", 0, &spec)?.finished("the list job")?;
        if r.data_overflow {
            return Err("the list job sent more data than allowed".into());
        }
        archives::parse_info(&r.data, qube)
    })
}

/// The checked settings of one archive, one `  KEY=VALUE` line each (warnings as notes).
pub(super) fn settings_text(archive: &str, comment: &str, ctx: &mut Ctx) -> String {
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

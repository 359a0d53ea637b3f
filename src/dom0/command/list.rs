//! dom0: `qvm-backup-borg list [QUBE]`: a fresh disposable runs `borg info --json` (job op
//! `list`), dom0 checks what comes back (`archives`) and prints a table of the archives with
//! their dates and sizes. Everything set up is undone, whatever happens.

use std::io::Write;

use crate::dom0::archives::{self, Archive, Listing};
use crate::dom0::config::Config;
use crate::dom0::job_call::repository_data;
use crate::dom0::metadata;
use crate::dom0::qubes::Qubes;
use crate::dom0::session::{Ctx, Outcome, Secrets};
use crate::job::spec::{List, Op};

/// Asks the repository for the archives of `qube` (or of every qube).
pub(super) fn fetch(
    ctx: &mut Ctx,
    qube: Option<&str>,
    secrets: &Secrets,
) -> Result<Listing, String> {
    let op = Op::List(List {
        qube: qube.map(String::from),
    });
    let data = repository_data(ctx, secrets, op, "list")?;
    archives::parse_info(&data, qube)
}

/// The archive `archive` of `qube`, or its newest when none is named.
pub(super) fn fetch_archive(
    ctx: &mut Ctx,
    qube: &str,
    archive: Option<&str>,
    secrets: &Secrets,
) -> Result<Archive, String> {
    let mut archives = fetch(ctx, Some(qube), secrets)?.archives;
    match archive {
        Some(a) => archives
            .into_iter()
            .find(|x| x.name == a)
            .ok_or_else(|| format!("no archive {a} of {qube} in the repository")),
        None => archives
            .pop()
            .ok_or_else(|| format!("no archive of {qube} in the repository")),
    }
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
    let mut ctx = Ctx::begin(cfg, q, err, false);
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
        Err(e) => ctx.failed("list", &e),
    }
}

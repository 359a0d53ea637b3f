//! dom0: `qvm-backup-borg check [--verify-data] [--spot N] [QUBE...]`: borg's repository and
//! archive checks in a fresh disposable (job op `check`), then a spot check per qube: its
//! newest archive's random files compared in the disposable with the qube's committed private
//! volume, attached read-only (job op `spot`). What the job reports is hostile: parsed strictly,
//! bounded, printed as checked ASCII only.

use std::io::Write;

use super::list::fetch;
use crate::dom0::archives::{self, Archive, Listing};
use crate::dom0::check_result::{parse_repo_result, parse_spot_result, RepoResult, SpotResult};
use crate::dom0::config::Config;
use crate::dom0::job_call::{repository_data, run_job};
use crate::dom0::metadata;
use crate::dom0::qubes::Qubes;
use crate::dom0::session::list_qubes;
use crate::dom0::session::{
    private_volume, volume_in_disposable, with_cleanup, Ctx, Outcome, Secrets,
};
use crate::job::spec::{Check, Mode, Op, Spot};

/// Files compared per qube unless `--spot N` says otherwise.
pub const DEFAULT_SPOT: u32 = 20;
pub struct CheckOptions {
    pub verify_data: bool,
    /// Files per qube; 0: no spot check.
    pub spot: u32,
    /// Empty: every qube with archives in the repository that still exists.
    pub qubes: Vec<String>,
}

fn repository_check(
    ctx: &mut Ctx,
    opts: &CheckOptions,
    secrets: &Secrets,
) -> Result<RepoResult, String> {
    let op = Op::Check(Check {
        verify_data: opts.verify_data,
    });
    let data = repository_data(ctx, secrets, op, "check")?;
    parse_repo_result(&data)
}

fn spot_one(
    ctx: &mut Ctx,
    qube: &str,
    archive: &Archive,
    count: u32,
    secrets: &Secrets,
) -> Result<SpotResult, String> {
    let volume = private_volume(ctx, qube)?;
    with_cleanup(ctx, |ctx, cleanup| {
        let (state, device) = volume_in_disposable(ctx, cleanup, &volume, false)?;
        let spec = secrets.request(
            &ctx.cfg.repository,
            state,
            Op::Spot(Spot {
                archive: archive.name.clone(),
                device,
                count,
            }),
        );
        let r = run_job(ctx, qube, 0, &spec)?.finished("the spot check")?;
        if r.data_overflow {
            return Err("the spot check sent more data than allowed".into());
        }
        parse_spot_result(&r.data, count)
    })
}

/// The qubes to spot-check: those named, or every qube with archives that still exists.
fn spot_targets(
    ctx: &mut Ctx,
    opts: &CheckOptions,
    listing: &Listing,
) -> Result<Vec<String>, String> {
    if !opts.qubes.is_empty() {
        return Ok(opts.qubes.clone());
    }
    let listed = list_qubes(ctx)?;
    let mut with_archives: Vec<String> = listing.archives.iter().map(|a| a.qube.clone()).collect();
    with_archives.dedup();
    let mut v = Vec::new();
    for q in with_archives {
        if listed.iter().any(|l| l.name == q) {
            v.push(q);
        } else {
            ctx.note(&format!(
                "{q}: has archives but no longer exists: not spot-checked"
            ));
        }
    }
    Ok(v)
}

/// One qube's lines of the report; true when it found a problem.
fn report_qube(
    ctx: &mut Ctx,
    out: &mut dyn Write,
    qube: &str,
    repo: Option<&RepoResult>,
    listing: &Listing,
    count: u32,
    secrets: &Secrets,
) -> bool {
    let mut bad = false;
    if let Some(r) = repo {
        for a in r
            .archives
            .iter()
            .filter(|a| archives::split_name(a).map(|x| x.0) == Some(qube))
        {
            let _ = writeln!(out, "{qube}: borg check reported problems in archive {a}");
            bad = true;
        }
    }
    if count == 0 {
        return bad;
    }
    let Some(newest) = listing.archives.iter().rfind(|a| a.qube == qube) else {
        let _ = writeln!(out, "{qube}: FAILED: no archive in the repository");
        return true;
    };
    let mode = metadata::parse(&newest.comment)
        .ok()
        .and_then(|(s, _)| s.mode);
    if mode != Some(Mode::Files) {
        let _ = writeln!(
            out,
            "{qube}: {}: not spot-checked ({})",
            newest.name,
            if mode == Some(Mode::Image) {
                "image mode: the spot check compares files"
            } else {
                "its settings name no mode"
            }
        );
        return bad;
    }
    match spot_one(ctx, qube, newest, count, secrets) {
        Ok(r) => {
            let verdict = if r.mismatched > 0 { "MISMATCH" } else { "ok" };
            let _ = writeln!(
                out,
                "{qube}: {}: {} files checked, {} matched, {} changed since the archive, {} mismatched: {verdict}",
                newest.name, r.checked, r.matched, r.changed, r.mismatched
            );
            for p in &r.changed_paths {
                let _ = writeln!(out, "  changed since the archive: {p}");
            }
            for (why, p) in &r.mismatch_paths {
                let _ = writeln!(out, "  MISMATCH ({why}): {p}");
            }
            let more = (r.changed + r.mismatched)
                .saturating_sub((r.changed_paths.len() + r.mismatch_paths.len()) as u64);
            if more > 0 {
                let _ = writeln!(out, "  ({more} more not named)");
            }
            bad || r.mismatched > 0
        }
        Err(e) => {
            let _ = writeln!(out, "{qube}: {}: spot check FAILED: {e}", newest.name);
            true
        }
    }
}

/// Runs `check`: the report on `out`, notes on `err`. Failed when borg found problems, a spot
/// check found a mismatch, or a step could not run.
pub fn check(
    cfg: &Config,
    opts: &CheckOptions,
    secrets: &Secrets,
    q: &mut dyn Qubes,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Outcome {
    let mut ctx = Ctx::begin(cfg, q, err, false);
    let mut failed = false;
    let repo = match repository_check(&mut ctx, opts, secrets) {
        Ok(r) => {
            let what = if opts.verify_data {
                "borg check --verify-data"
            } else {
                "borg check"
            };
            let _ = writeln!(
                out,
                "repository ({what}): {}",
                if r.ok {
                    "ok"
                } else {
                    "PROBLEMS FOUND (see borg's messages above)"
                }
            );
            failed |= !r.ok;
            Some(r)
        }
        Err(e) => {
            let _ = writeln!(out, "repository (borg check): FAILED: {e}");
            failed = true;
            None
        }
    };
    if ctx.q.interrupted() {
        return Outcome::Interrupted;
    }
    let qubes = match fetch(&mut ctx, None, secrets)
        .and_then(|l| spot_targets(&mut ctx, opts, &l).map(|t| (l, t)))
    {
        Ok(x) => x,
        Err(e) => {
            let _ = writeln!(out, "spot check: FAILED: {e}");
            return if ctx.q.interrupted() {
                Outcome::Interrupted
            } else {
                Outcome::Failed
            };
        }
    };
    let (listing, targets) = qubes;
    // Archives borg named for qubes not spot-checked are reported too.
    if let Some(r) = &repo {
        for a in &r.archives {
            if !archives::split_name(a).is_some_and(|(q, _)| targets.iter().any(|t| t == q)) {
                let _ = writeln!(out, "borg check reported problems in archive {a}");
            }
        }
    }
    for qube in &targets {
        if ctx.q.interrupted() {
            return Outcome::Interrupted;
        }
        failed |= report_qube(
            &mut ctx,
            out,
            qube,
            repo.as_ref(),
            &listing,
            opts.spot,
            secrets,
        );
    }
    if ctx.q.interrupted() {
        Outcome::Interrupted
    } else if failed {
        Outcome::Failed
    } else {
        Outcome::Ok
    }
}

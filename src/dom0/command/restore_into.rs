//! dom0: `qvm-backup-borg restore QUBE --path P... --into TARGET [--archive A]`: files and
//! folders of an archive delivered into the running qube TARGET, under
//! `~/QubesIncoming/borg-restore/ARCHIVE/`. A fresh disposable runs `borg export-tar` of the
//! paths and sends the tar stream as `chunk` frames (job::progress); dom0 counts the bytes and
//! passes them on, unread, to `qvm-run --pass-io TARGET` where tar unpacks them as the qube's
//! default user. Nothing here interprets the stream.

use std::io::Write;

use super::list::fetch_archive;
use crate::dom0::config::Config;
use crate::dom0::display::human;
use crate::dom0::job_call::run_job_into;
use crate::dom0::metadata;
use crate::dom0::qubes::Qubes;
use crate::dom0::session::list_qubes;
use crate::dom0::session::{start_disposable, with_cleanup, Ctx, Outcome, Secrets};
use crate::job::progress::sanitize;
use crate::job::spec::{self, Export, Mode, Op};

/// Where the files land in TARGET, under the home of its default user (beside the
/// `QubesIncoming/SOURCE` folders of qvm-copy).
pub const INCOMING: &str = "QubesIncoming/borg-restore";

pub struct IntoOptions {
    pub qube: String,
    pub archive: Option<String>,
    pub paths: Vec<String>,
    pub target: String,
}

/// The command line TARGET's `qubes.VMShell` runs (qvm-run without `--service` hands it to
/// bash on stdin, followed by the stream, which tar then reads). Built only from constants and
/// `archive`, which `spec::check_archive` limited to `[A-Za-z0-9._:+-]` (quoted all the same).
/// Folders are made 0700 like qfile-unpacker's; tar runs as the user (never root), keeps the
/// archived modes but not owners, replaces nothing that exists (`--keep-old-files`: a second
/// restore into the same folder fails instead of overwriting; GNU tar refuses it together with
/// `--no-overwrite-dir`, which it makes moot), and GNU tar itself skips `..` members, strips a
/// leading `/`, and makes symlinks that point outside only after every file is in.
pub fn unpack_command(archive: &str) -> Result<String, String> {
    spec::check_archive(archive).map_err(|w| format!("archive name {w}"))?;
    let dir = format!("~/{INCOMING}/'{archive}'");
    Ok(format!(
        "umask 077 && mkdir -p -- {dir} && exec tar --extract --file=- --preserve-permissions --no-same-owner --keep-old-files --directory {dir}"
    ))
}

/// The `qvm-run` that unpacks in TARGET: never starts it, no GUI, no colours or filtering (the
/// stream is binary; nothing TARGET prints reaches the terminal unsanitized).
pub fn unpack_argv(target: &str, archive: &str) -> Result<Vec<String>, String> {
    let mut v: Vec<String> = [
        "qvm-run",
        "--pass-io",
        "--no-autostart",
        "--no-gui",
        "--no-color-output",
        "--no-color-stderr",
        "--no-filter-escape-chars",
        target,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.push(unpack_command(archive)?);
    Ok(v)
}

fn into_inner(
    ctx: &mut Ctx,
    opts: &IntoOptions,
    secrets: &Secrets,
    out: &mut dyn Write,
) -> Result<(), String> {
    let t = &opts.target;
    if t == "dom0" || *t == ctx.cfg.disposable {
        return Err(format!(
            "{t} cannot receive files: choose a running qube of yours (--into QUBE)"
        ));
    }
    let listed = list_qubes(ctx)?;
    match listed.iter().find(|l| &l.name == t) {
        None => return Err(format!("no qube {t}: nothing was restored")),
        Some(l) if l.class == "AdminVM" => {
            return Err(format!("{t} is dom0: files are never unpacked in dom0"))
        }
        Some(l) if l.state != "Running" => {
            return Err(format!(
                "qube {t} is {}: start it first (files are delivered only into a running qube; nothing was restored)",
                l.state.to_lowercase()
            ))
        }
        Some(_) => {}
    }
    let archive = &fetch_archive(ctx, &opts.qube, opts.archive.as_deref(), secrets)?;
    if let Ok((s, _)) = metadata::parse(&archive.comment) {
        if s.mode == Some(Mode::Image) {
            return Err(format!(
                "{} is an image-mode archive (one disk image, no files): restore it as a qube (restore {} --as NAME)",
                archive.name, opts.qube
            ));
        }
    }
    let argv = unpack_argv(t, &archive.name)?;
    let op = Op::Export(Export {
        archive: archive.name.clone(),
        paths: opts.paths.clone(),
    });
    let where_ = format!("{t}:~/{INCOMING}/{}/", archive.name);
    let streamed = with_cleanup(ctx, |ctx, cleanup| {
        let state = start_disposable(ctx, cleanup)?;
        let spec = secrets.request(&ctx.cfg.repository, state, op);
        if ctx.q.interrupted() {
            return Err("interrupted by a signal".into());
        }
        let mut sink = ctx.q.inflow(&argv).map_err(|e| e.to_string())?;
        let mut refused = false;
        let job = run_job_into(ctx, t, &spec, &mut |bytes| {
            if !refused && sink.write(bytes).is_err() {
                // TARGET stopped reading (tar failed): the rest is dropped; its message follows.
                refused = true;
            }
        });
        let unpack = sink.finish().map_err(|e| e.to_string());
        let unpacked = match unpack {
            Ok(o) if o.code == 0 && !refused => Ok(()),
            Ok(o) => {
                let text = sanitize(o.stderr.trim_ascii(), 300);
                Err(format!(
                    "unpacking in {t} failed (exit {}){}{text}",
                    o.code,
                    if text.is_empty() { "" } else { ": " }
                ))
            }
            Err(e) => Err(e),
        };
        let incomplete = |e: String| format!("{e}; what arrived is in {where_} (incomplete)");
        let report = job
            .and_then(|r| r.finished("the export job"))
            .map_err(incomplete)?;
        unpacked.map_err(incomplete)?;
        Ok(report.streamed)
    })?;
    let _ = writeln!(
        out,
        "restored {} path(s) of {} into {where_} ({})",
        opts.paths.len(),
        archive.name,
        human(streamed)
    );
    Ok(())
}

/// Runs `restore --into`.
pub fn restore_into(
    cfg: &Config,
    opts: &IntoOptions,
    secrets: &Secrets,
    q: &mut dyn Qubes,
    out: &mut dyn Write,
    err: &mut dyn Write,
    tty: bool,
) -> Outcome {
    let mut ctx = Ctx::begin(cfg, q, err, tty);
    match into_inner(&mut ctx, opts, secrets, out) {
        Ok(()) => Outcome::Ok,
        Err(e) => ctx.failed("restore", &e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_target_command_holds_only_constants_and_the_checked_archive_name() {
        let c = unpack_command("work-2026-11-29T18:00:00Z").unwrap();
        assert_eq!(
            c,
            "umask 077 && mkdir -p -- ~/QubesIncoming/borg-restore/'work-2026-11-29T18:00:00Z' && exec tar --extract --file=- --preserve-permissions --no-same-owner --keep-old-files --directory ~/QubesIncoming/borg-restore/'work-2026-11-29T18:00:00Z'"
        );
        for bad in ["a'b", "a b", "$(id)", "-x", "a;b", "a/b", "a`b`", ""] {
            assert!(unpack_command(bad).is_err(), "{bad}");
        }
    }
}

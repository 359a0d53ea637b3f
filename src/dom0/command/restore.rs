//! dom0: `qvm-backup-borg restore QUBE [--archive A] [--as NAME] [--replace]`: recreates a qube
//! from one of its archives. The archive list and the settings come from the disposable and are
//! checked (`archives`, `metadata`); the new qube is created with the real tools, tagged
//! `qubes-borg-restoring` until the data is in, and its private volume is attached read-write
//! to a fresh disposable where the job makes the filesystem and extracts (never in dom0).
//! `--replace` overwrites a halted qube's private volume and applies the saved settings to it
//! (what differs, with the checks of a new qube), printing each change.

use std::io::Write;

use super::list::fetch_archive;
use crate::dom0::config::Config;
use crate::dom0::job_call::run_job;
use crate::dom0::metadata::{self, Settings};
use crate::dom0::qubes::Qubes;
use crate::dom0::session::list_qubes;
use crate::dom0::session::{
    private_volume, volume_in_disposable, with_cleanup, Ctx, Outcome, Secrets,
};
use crate::job::spec::{self, Op, Restore};

/// Tag on a qube whose restore has not completed.
pub const RESTORING_TAG: &str = "qubes-borg-restoring";
/// Label when the archive names none.
pub const DEFAULT_LABEL: &str = "red";

pub struct RestoreOptions {
    pub qube: String,
    pub archive: Option<String>,
    pub as_name: Option<String>,
    pub replace: bool,
}

/// `QUBE-restored-YYYYMMDD`, the qube part shortened so the name stays within 31 bytes.
pub fn default_name(qube: &str, date: &str) -> String {
    let day: String = date
        .chars()
        .filter(|c| c.is_ascii_digit())
        .take(8)
        .collect();
    let suffix = format!("-restored-{day}");
    let keep = 31usize.saturating_sub(suffix.len()).min(qube.len());
    let base = qube[..keep].trim_end_matches(['-', '.', '_']);
    format!("{base}{suffix}")
}

fn restore_inner(
    ctx: &mut Ctx,
    opts: &RestoreOptions,
    secrets: &Secrets,
    out: &mut dyn Write,
    touched: &mut Option<String>,
) -> Result<(), String> {
    let archive = &fetch_archive(ctx, &opts.qube, opts.archive.as_deref(), secrets)?;
    let (settings, warnings) = match metadata::parse(&archive.comment) {
        Ok(x) => x,
        Err(e) => {
            return Err(format!(
                "{}: {e}; restore it by hand (docs/USAGE.md)",
                archive.name
            ))
        }
    };
    for w in warnings {
        ctx.note(&format!("{}: {w}", archive.name));
    }
    let mode = settings
        .mode
        .ok_or_else(|| format!("{}: the settings name no mode", archive.name))?;
    let target = match &opts.as_name {
        Some(n) => n.clone(),
        None => default_name(&opts.qube, &archive.date),
    };
    spec::check_qube(&target).map_err(|w| format!("qube name '{target}' {w}"))?;
    let listed = list_qubes(ctx)?;
    match listed.iter().find(|l| l.name == target) {
        Some(_) if !opts.replace => {
            return Err(format!(
                "qube {target} exists: nothing was changed (--as NAME for another name, or --replace to overwrite its private volume while it is halted)"
            ))
        }
        Some(l) if l.state != "Halted" => {
            return Err(format!(
                "qube {target} is {}: shut it down first (--replace overwrites only a halted qube)",
                l.state.to_lowercase()
            ))
        }
        Some(l) => {
            ctx.call(&["qvm-tags", &target, "add", RESTORING_TAG])?;
            *touched = Some(target.clone());
            let changes = apply_to_existing(ctx, &target, &l.class, &settings, &listed)?;
            if changes.is_empty() {
                let _ = writeln!(out, "settings of {target} already as saved: none changed");
            }
            for c in changes {
                let _ = writeln!(out, "changed {target}: {c}");
            }
        }
        None => {
            *touched = Some(target.clone());
            create(ctx, &target, &settings, &listed)?
        }
    }
    // From here on the qube exists and carries the tag until the data is in.
    let vol = format!("{target}:private");
    if let Some(want) = settings.private_size {
        let have: u64 = ctx
            .value(&["qvm-volume", "info", &vol, "size"])?
            .parse()
            .map_err(|_| "qvm-volume info: size is not a number".to_string())?;
        if want > have {
            ctx.call(&["qvm-volume", "resize", &vol, &want.to_string()])?;
        }
    }
    let volume = private_volume(ctx, &target)?;
    with_cleanup(ctx, |ctx, cleanup| {
        let (state, device) = volume_in_disposable(ctx, cleanup, &volume, true)?;
        let spec = secrets.request(
            &ctx.cfg.repository,
            state,
            Op::Restore(Restore {
                archive: archive.name.clone(),
                mode,
                device,
            }),
        );
        run_job(ctx, &target, 0, &spec)?.finished("the restore job")?;
        Ok(())
    })?;
    ctx.call(&["qvm-tags", &target, "del", RESTORING_TAG])?;
    let _ = writeln!(
        out,
        "restored {} ({} mode) as qube {target}",
        archive.name,
        mode.as_str()
    );
    Ok(())
}

/// `qvm-create` with the class, template and label saved, then the tag, then the other
/// settings. A template or netvm that no longer exists, or a setting Qubes refuses, gives a
/// warning and the Qubes default: never a failure halfway.
fn create(
    ctx: &mut Ctx,
    target: &str,
    s: &Settings,
    listed: &[crate::dom0::plan::QubeInfo],
) -> Result<(), String> {
    let class = s.class.clone().unwrap_or_else(|| "AppVM".into());
    let label = s.pref("label").unwrap_or(DEFAULT_LABEL).to_string();
    let mut argv: Vec<String> = vec!["qvm-create".into(), "--class".into(), class.clone()];
    let mut cloned = None;
    match s.pref("template") {
        // qubesd refuses a template for a class without one ("cannot be based on template")
        Some(t) if class == "TemplateVM" => ctx.note(&format!(
            "a TemplateVM is based on no template: template {t} in the settings ignored"
        )),
        Some(t)
            if listed
                .iter()
                .any(|l| l.name == t && l.class == "TemplateVM") =>
        {
            argv.extend(["--template".into(), t.to_string()]);
            cloned = Some(t.to_string());
        }
        Some(t) => ctx.note(&format!(
            "template {t} no longer exists: {target} gets the default template"
        )),
        None => {}
    }
    argv.extend(["--label".into(), label, target.into()]);
    let a: Vec<&str> = argv.iter().map(String::as_str).collect();
    ctx.call(&a)?;
    ctx.call(&["qvm-tags", target, "add", RESTORING_TAG])?;
    // The archive holds the private volume only: a qube with its own root gets an empty one
    // from qvm-create, except a StandaloneVM made from a template (qvm_create.py clones it).
    match (class.as_str(), &cloned) {
        ("StandaloneVM", Some(t)) => ctx.note(&format!(
            "{target}: StandaloneVM, its root volume cloned from template {t} (the archive holds the private volume only)"
        )),
        ("StandaloneVM", None) => ctx.note(&format!(
            "{target}: StandaloneVM with an EMPTY root volume (the archive holds the private volume only; it will not boot): make one from a template (qvm-create --class StandaloneVM --template T --label L NAME) and run this restore with --as NAME --replace, or import a root image (qvm-volume import {target}:root FILE)"
        )),
        ("TemplateVM", _) => ctx.note(&format!(
            "{target}: TemplateVM with an EMPTY root volume (the archive holds the private volume only; it will not boot): install the template again (qvm-template install) and run this restore with --as NAME --replace, or import a root image (qvm-volume import {target}:root FILE)"
        )),
        _ => {}
    }
    for (k, v) in &s.prefs {
        if k == "template" || k == "label" {
            continue;
        }
        if k == "netvm" && !v.is_empty() && !listed.iter().any(|l| &l.name == v) {
            ctx.note(&format!(
                "netvm {v} no longer exists: {target} keeps the default netvm"
            ));
            continue;
        }
        if let Err(e) = ctx.call(&["qvm-prefs", target, k, v]) {
            ctx.note(&format!("{target}: {k} not set: {e}"));
        }
    }
    for (k, v) in &s.features {
        if let Err(e) = ctx.call(&["qvm-features", target, k, v]) {
            ctx.note(&format!("{target}: feature {k} not set: {e}"));
        }
    }
    for t in &s.tags {
        if t == RESTORING_TAG {
            continue;
        }
        if let Err(e) = ctx.call(&["qvm-tags", target, "add", t]) {
            ctx.note(&format!("{target}: tag {t} not set: {e}"));
        }
    }
    Ok(())
}

fn shown(v: Option<&str>) -> String {
    match v {
        None => "(unset)".into(),
        Some("") => "(none)".into(),
        Some(v) => v.into(),
    }
}

/// `--replace`: the saved settings applied to the existing (halted) qube `target` of class
/// `class`, with the same allowlist and checks as a new qube's: only what differs is set, and
/// each change is returned as `WHAT OLD -> NEW`. Settings the archive does not name are left
/// as they are; a class cannot change (a note says so).
fn apply_to_existing(
    ctx: &mut Ctx,
    target: &str,
    class: &str,
    s: &Settings,
    listed: &[crate::dom0::plan::QubeInfo],
) -> Result<Vec<String>, String> {
    let mut changed = Vec::new();
    if let Some(c) = s.class.as_deref().filter(|c| *c != class) {
        ctx.note(&format!(
            "{target} is of class {class}, the archived qube of class {c}: the class stays (only qvm-create sets it)"
        ));
    }
    let cur = metadata::current_prefs(&String::from_utf8_lossy(&ctx.call(&["qvm-prefs", target])?));
    for (k, v) in &s.prefs {
        let have = cur.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        if have == Some(v.as_str()) {
            continue;
        }
        let exists = |class: Option<&str>| {
            listed
                .iter()
                .any(|l| &l.name == v && class.map(|c| l.class == c).unwrap_or(true))
        };
        if k == "template" && !exists(Some("TemplateVM")) {
            ctx.note(&format!(
                "template {v} does not exist: {target} keeps {}",
                shown(have)
            ));
            continue;
        }
        if k == "netvm" && !v.is_empty() && !exists(None) {
            ctx.note(&format!(
                "netvm {v} does not exist: {target} keeps {}",
                shown(have)
            ));
            continue;
        }
        match ctx.call(&["qvm-prefs", target, k, v]) {
            Ok(_) => changed.push(format!("{k} {} -> {v}", shown(have))),
            Err(e) => ctx.note(&format!("{target}: {k} not set: {e}")),
        }
    }
    let features = metadata::from_qvm_features(&String::from_utf8_lossy(
        &ctx.call(&["qvm-features", target])?,
    ));
    for (k, v) in &s.features {
        let have = features
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str());
        if have == Some(v.as_str()) {
            continue;
        }
        match ctx.call(&["qvm-features", target, k, v]) {
            Ok(_) => changed.push(format!("feature {k} {} -> {v}", shown(have))),
            Err(e) => ctx.note(&format!("{target}: feature {k} not set: {e}")),
        }
    }
    let tags = ctx.call(&["qvm-tags", target, "list"])?;
    let tags = String::from_utf8_lossy(&tags);
    for t in &s.tags {
        if t == RESTORING_TAG || tags.lines().any(|l| l == t) {
            continue;
        }
        match ctx.call(&["qvm-tags", target, "add", t]) {
            Ok(_) => changed.push(format!("tag {t} added")),
            Err(e) => ctx.note(&format!("{target}: tag {t} not set: {e}")),
        }
    }
    Ok(changed)
}

/// Runs `restore`.
pub fn restore(
    cfg: &Config,
    opts: &RestoreOptions,
    secrets: &Secrets,
    q: &mut dyn Qubes,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Outcome {
    let mut ctx = Ctx::begin(cfg, q, err, false);
    let mut touched = None;
    match restore_inner(&mut ctx, opts, secrets, out, &mut touched) {
        Ok(()) => Outcome::Ok,
        Err(e) => {
            let outcome = ctx.failed("restore", &e);
            if let Some(t) = touched {
                ctx.note(&format!(
                    "qube {t} carries the tag {RESTORING_TAG}: its restore did not complete and its data is incomplete (remove it with qvm-remove, or run the restore again with --as {t} --replace)"
                ));
            }
            outcome
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_names_are_valid_qube_names() {
        assert_eq!(
            default_name("work", "2026-11-29T18:00:00Z"),
            "work-restored-20261129"
        );
        let long = default_name("a-very-long-qube-name-x", "2026-11-29T18:00:00Z");
        assert!(long.len() <= 31, "{long}");
        assert!(spec::check_qube(&long).is_ok(), "{long}");
        assert_eq!(long, "a-very-long-q-restored-20261129");
        let trimmed = default_name("abcdefghijkl-b", "2026-11-29T18:00:00Z");
        assert_eq!(trimmed, "abcdefghijkl-restored-20261129");
    }
}

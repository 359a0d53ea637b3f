//! dom0: what every command shares: the context of a run (`Ctx`: the Qubes door, the
//! configuration, notes), how a run ends (`Outcome`), the secrets, and the steps around a job:
//! a fresh disposable with borg's state volume, a qube's private volume on a loop device,
//! attached to the disposable, and a cleanup stack that is always undone (`with_cleanup`).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;

use super::config::Config;
use super::display::Display;
use super::facts::{committed_path, pool_value};
use super::qubes::{CallError, Output, Qubes};
use super::volumes::{parse_loop, Cleanup, Undo};
use crate::job::progress::sanitize;
use crate::job::spec::{self, Op, Spec};

/// Where the qube's volume appears in the disposable.
pub const PRIVATE_FRONTEND: &str = "xvdi";
/// Where borg's state volume appears.
pub const STATE_FRONTEND: &str = "xvdj";

pub struct Secrets {
    pub passphrase: Vec<u8>,
    pub key_file: Option<Vec<u8>>,
}

impl Secrets {
    /// The request of a job that does `op` in `repository` with these secrets.
    pub(super) fn request(&self, repository: &str, state_device: Option<String>, op: Op) -> Spec {
        Spec {
            repository: repository.to_string(),
            state_device,
            passphrase: self.passphrase.clone(),
            key_file: self.key_file.clone(),
            op,
        }
    }
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

impl<'a> Ctx<'a> {
    /// The context of a command that changes something: first it undoes what a crashed run
    /// left behind (the cleanup ledger), noting each step. Only a run holding the lock may.
    pub(super) fn begin(
        cfg: &'a Config,
        q: &'a mut dyn Qubes,
        err: &'a mut dyn Write,
        tty: bool,
    ) -> Ctx<'a> {
        let mut ctx = Ctx {
            q,
            cfg,
            err,
            display: Display::new(tty),
        };
        for n in Cleanup::recover(&cfg.run_dir, ctx.q) {
            ctx.note(&n);
        }
        ctx
    }

    /// How a command that failed with `e` ends: `WHAT FAILED: e` noted; interrupted when a
    /// signal stopped it, else failed.
    pub(super) fn failed(&mut self, what: &str, e: &str) -> Outcome {
        self.note(&format!("{what} FAILED: {e}"));
        if self.q.interrupted() {
            Outcome::Interrupted
        } else {
            Outcome::Failed
        }
    }
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

/// Runs `f` with a fresh cleanup stack and undoes everything it pushed, whatever happened; a
/// failed undo step is noted and fails the whole (the next run's recovery retries it).
pub(super) fn with_cleanup<T>(
    ctx: &mut Ctx,
    f: impl FnOnce(&mut Ctx, &mut Cleanup) -> Result<T, String>,
) -> Result<T, String> {
    let mut cleanup = Cleanup::new(&ctx.cfg.run_dir);
    let res = f(ctx, &mut cleanup);
    let undone = undo(ctx, &mut cleanup);
    res.and_then(|v| undone.map(|()| v))
}

/// Undoes `cleanup` now, noting each step that failed.
pub(super) fn undo(ctx: &mut Ctx, cleanup: &mut Cleanup) -> Result<(), String> {
    let failed = cleanup.undo_all(ctx.q);
    for u in &failed {
        ctx.note(&format!("cleanup: {u}"));
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err("cleanup failed (see above)".into())
    }
}

/// The committed image of `qube`'s private volume: (path, is an LVM volume).
pub(super) fn private_volume(ctx: &mut Ctx, qube: &str) -> Result<(String, bool), String> {
    let (pool, vid) = volume_ids(ctx, qube)?;
    committed_image(ctx, &pool, &vid)
}

/// The pool and volume id of `qube`'s private volume.
pub(super) fn volume_ids(ctx: &mut Ctx, qube: &str) -> Result<(String, String), String> {
    let vol = format!("{qube}:private");
    let pool = ctx.value(&["qvm-volume", "info", &vol, "pool"])?;
    let vid = ctx.value(&["qvm-volume", "info", &vol, "vid"])?;
    Ok((pool, vid))
}

/// Where pool `pool` keeps volume `vid` at rest: (path, is an LVM volume).
pub(super) fn committed_image(
    ctx: &mut Ctx,
    pool: &str,
    vid: &str,
) -> Result<(String, bool), String> {
    spec::check_qube(pool).map_err(|w| format!("pool name {w}"))?;
    let pool_info = ctx.call(&["qvm-pool", "info", pool])?;
    let driver = pool_value(&pool_info, "driver").ok_or("qvm-pool info: no driver")?;
    committed_path(&driver, &pool_info, vid)
}

/// A loop device on `path` (read-only unless `writable`), detached by `cleanup`.
pub(super) fn loop_device(
    ctx: &mut Ctx,
    cleanup: &mut Cleanup,
    (path, lvm): &(String, bool),
    writable: bool,
) -> Result<String, String> {
    if *lvm {
        ctx.call(&["lvchange", "--activate=y", "--", path])?;
    }
    let mut argv = vec!["losetup"];
    if !writable {
        argv.push("--read-only");
    }
    argv.extend(["--find", "--show", path]);
    let out = ctx.call(&argv)?;
    let lp = parse_loop(&out).ok_or("losetup: unexpected output")?;
    cleanup.push(Undo::Loop {
        loop_name: lp.clone(),
    });
    Ok(lp)
}

/// Attaches dom0's `loop_name` to the disposable as `/dev/{PRIVATE_FRONTEND}` (read-only
/// unless `writable`); `cleanup` detaches it. Returns the device name in the disposable.
pub(super) fn attach_private(
    ctx: &mut Ctx,
    cleanup: &mut Cleanup,
    loop_name: &str,
    writable: bool,
) -> Result<String, String> {
    let disp = ctx.cfg.disposable.clone();
    let frontend = format!("frontend-dev={PRIVATE_FRONTEND}");
    let device = format!("dom0:{loop_name}");
    let mut argv = vec!["qvm-block", "attach"];
    if !writable {
        argv.push("--ro");
    }
    argv.extend(["--option", &frontend, &disp, &device]);
    ctx.call(&argv)?;
    cleanup.push(Undo::Detach {
        vm: disp,
        loop_name: loop_name.to_string(),
    });
    Ok(format!("/dev/{PRIVATE_FRONTEND}"))
}

/// `volume` on a loop device, a fresh disposable (`start_disposable`) and the loop device
/// attached to it, all read-only unless `writable`: (borg's state device, the volume's device)
/// in the disposable.
pub(super) fn volume_in_disposable(
    ctx: &mut Ctx,
    cleanup: &mut Cleanup,
    volume: &(String, bool),
    writable: bool,
) -> Result<(Option<String>, String), String> {
    let lp = loop_device(ctx, cleanup, volume, writable)?;
    let state = start_disposable(ctx, cleanup)?;
    let device = attach_private(ctx, cleanup, &lp, writable)?;
    Ok((state, device))
}

/// Shuts down a disposable left running (by hand, or by a crashed run) so the next start is
/// fresh; a halted one is no error.
pub(super) fn stop_leftover_disposable(ctx: &mut Ctx) {
    let t = ctx.cfg.shutdown_timeout.to_string();
    let disp = ctx.cfg.disposable.clone();
    if let Err(e) = ctx.call(&["qvm-shutdown", "--wait", "--timeout", &t, &disp]) {
        ctx.note(&e);
    }
}

/// Every qube with the fields the commands read (`qvm-ls --raw-data`), checked by
/// `facts::parse_qvm_ls`.
pub(super) fn list_qubes(ctx: &mut Ctx) -> Result<Vec<super::plan::QubeInfo>, String> {
    super::facts::parse_qvm_ls(&ctx.call(&[
        "qvm-ls",
        "--raw-data",
        "--fields",
        "NAME,CLASS,STATE,include_in_backups",
    ])?)
}

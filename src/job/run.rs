//! sys-backup-mnt: one `qubes-borg.BackupJob` run: read the request from dom0 on stdin, mount,
//! run borg, unmount, and report on stdout in the `progress` line format. How borg runs as a
//! child (its passphrase, log lines, failures): `child`; the ops with steps of their own:
//! `check`, `export`, `init`, `spot_check`.

mod check;
mod child;
mod export;
mod init;
mod spot_check;

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};

use super::borg;
use super::mount::{self, EPHEMERAL_DIR, PRIVATE_DIR, STATE_DIR, STATE_OPTIONS, UNTRUSTED_OPTIONS};
use super::progress::{encode, Event, Phase, Reason};
use super::spec::{self, Mode, Op, Spec};
use crate::exit;
use child::{run_borg, Stdout};

const RUN_DIR: &str = "/run/qubes-borg";
const KEY_FILE: &str = "/run/qubes-borg/key";

struct Out<'a, W: Write> {
    w: &'a mut W,
}

impl<W: Write> Out<'_, W> {
    fn send(&mut self, ev: Event) {
        // dom0 gone: nothing left to tell; the steps still clean up.
        let _ = self.w.write_all(&encode(&ev));
        let _ = self.w.flush();
    }
}

/// Runs one job; returns its exit status.
pub fn run<R: Read, W: Write>(input: &mut R, output: &mut W) -> u8 {
    let mut out = Out { w: output };
    let spec = match spec::decode(input) {
        Ok(s) => s,
        Err(e) => {
            out.send(Event::Error(e.to_string()));
            out.send(Event::Done(false));
            return exit::PROTOCOL;
        }
    };
    let ok = match steps(&spec, &mut out) {
        Ok(()) => true,
        Err(e) => {
            out.send(Event::Error(e));
            false
        }
    };
    let _ = fs::remove_file(KEY_FILE);
    out.send(Event::Done(ok));
    if ok {
        exit::OK
    } else {
        exit::FAILED
    }
}

fn private_dir(path: &str) -> Result<(), String> {
    fs::create_dir_all(path).map_err(|e| format!("cannot create {path}: {e}"))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o700))
        .map_err(|e| format!("cannot chmod {path}: {e}"))
}

fn steps<W: Write>(spec: &Spec, out: &mut Out<W>) -> Result<(), String> {
    private_dir(RUN_DIR)?;
    let _state;
    let base = match &spec.state_device {
        Some(dev) => {
            out.send(Event::Phase(Phase::State));
            if mount::ensure_state_fs(dev)? {
                out.send(Event::Warning(
                    "borg state volume was blank: made a new filesystem".into(),
                ));
            }
            _state = mount::mount(dev, STATE_DIR, STATE_OPTIONS)?;
            private_dir(STATE_DIR)?;
            clear_stale_cache_locks(out);
            STATE_DIR
        }
        None => {
            private_dir(EPHEMERAL_DIR)?;
            EPHEMERAL_DIR
        }
    };
    if let Some(k) = &spec.key_file {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(KEY_FILE)
            .map_err(|e| format!("cannot write the key file: {e}"))?;
        f.write_all(k)
            .map_err(|e| format!("cannot write the key file: {e}"))?;
    }
    match &spec.op {
        Op::Create(c) => {
            let env = borg::env(base, Some(&c.qube));
            let argv = borg::create_argv(&spec.repository, c);
            match c.mode {
                Mode::Files => {
                    out.send(Event::Phase(Phase::Mount));
                    let m = mount::mount(&c.device, PRIVATE_DIR, UNTRUSTED_OPTIONS)
                        .inspect_err(|_| out.send(Event::Reason(Reason::Mount)))?;
                    out.send(Event::Phase(Phase::Create));
                    let r = run_borg(spec, &argv, &env, Some(PRIVATE_DIR), out, Stdout::Stats);
                    out.send(Event::Phase(Phase::Unmount));
                    let u = m.unmount();
                    r?;
                    u?;
                }
                Mode::Image => {
                    out.send(Event::Phase(Phase::Create));
                    run_borg(spec, &argv, &env, None, out, Stdout::Stats)?;
                }
            }
        }
        Op::Restore(r) => {
            let env = borg::env(base, None);
            out.send(Event::Phase(Phase::Restore));
            match r.mode {
                Mode::Files => {
                    mount::make_target_fs(&r.device)?;
                    let m = mount::mount(&r.device, mount::TARGET_DIR, mount::TARGET_OPTIONS)?;
                    let argv = borg::extract_argv(&spec.repository, &r.archive);
                    let res = run_borg(
                        spec,
                        &argv,
                        &env,
                        Some(mount::TARGET_DIR),
                        out,
                        Stdout::Json,
                    );
                    out.send(Event::Phase(Phase::Unmount));
                    let u = m.unmount();
                    res?;
                    u?;
                }
                Mode::Image => {
                    spec::check_device(&r.device)?;
                    let dev = fs::OpenOptions::new()
                        .write(true)
                        .open(&r.device)
                        .map_err(|e| format!("cannot open {}: {e}", r.device))?;
                    // The archive stored the device the image was read from: /dev/xvdi.
                    let argv = borg::extract_image_argv(
                        &spec.repository,
                        &r.archive,
                        &format!("/dev/{}", "xvdi"),
                    );
                    let res = run_borg(
                        spec,
                        &argv,
                        &env,
                        None,
                        out,
                        Stdout::To(dev.try_clone().map_err(|e| e.to_string())?),
                    );
                    res?;
                    dev.sync_all()
                        .map_err(|e| format!("cannot flush {}: {e}", r.device))?;
                }
            }
        }
        Op::Export(e) => {
            let env = borg::env(base, None);
            out.send(Event::Phase(Phase::Restore));
            export::run_borg_export(spec, &borg::export_tar_argv(&spec.repository, e), &env, out)?;
        }
        Op::Init(i) => init::init_repository(spec, i, &borg::env(base, None), out)?,
        Op::List(l) => {
            let env = borg::env(base, None);
            out.send(Event::Phase(Phase::List));
            let argv = borg::info_argv(&spec.repository, l.qube.as_deref());
            let json = run_borg(spec, &argv, &env, None, out, Stdout::Json)?;
            send_data(out, json.as_bytes());
        }
        Op::Info(i) => {
            let env = borg::env(base, None);
            out.send(Event::Phase(Phase::List));
            let argv = borg::info_archive_argv(&spec.repository, &i.archive);
            let json = run_borg(spec, &argv, &env, None, out, Stdout::Json)?;
            send_data(out, json.as_bytes());
        }
        Op::Check(c) => check::check(spec, c, base, out)?,
        Op::Spot(s) => spot_check::spot(spec, s, base, out)?,
        Op::Prune(p) => {
            let env = borg::env(base, None);
            let mut failed = Vec::new();
            for q in &p.qubes {
                out.send(Event::Phase(Phase::Prune));
                if let Err(e) = run_borg(
                    spec,
                    &borg::with_lock_wait(
                        borg::prune_argv(&spec.repository, q, &p.keep),
                        p.lock_wait,
                    ),
                    &env,
                    None,
                    out,
                    Stdout::Json,
                ) {
                    out.send(Event::Error(format!("prune {q}: {e}")));
                    failed.push(q.as_str());
                }
            }
            out.send(Event::Phase(Phase::Compact));
            run_borg(
                spec,
                &borg::with_lock_wait(borg::compact_argv(&spec.repository), p.lock_wait),
                &env,
                None,
                out,
                Stdout::Json,
            )?;
            if !failed.is_empty() {
                return Err(format!("prune failed for {}", failed.join(" ")));
            }
        }
    }
    Ok(())
}

/// Before any borg runs in this fresh disposable: borg's cache locks in the state volume can
/// only be left from an earlier run, whose disposable is gone (`cachelock`).
fn clear_stale_cache_locks<W: Write>(out: &mut Out<W>) {
    match super::cachelock::remove_stale(std::path::Path::new(STATE_DIR), borg::BORG_HOST_ID) {
        Ok(lines) => {
            for l in lines {
                out.send(Event::Warning(l));
            }
        }
        Err(e) => out.send(Event::Warning(format!(
            "cannot clear borg's stale cache lock: {e}"
        ))),
    }
}

/// Sends `bytes` to dom0 in `data` lines.
fn send_data<W: Write>(out: &mut Out<W>, bytes: &[u8]) {
    for piece in bytes.chunks(super::progress::MAX_DATA) {
        out.send(Event::Data(piece.to_vec()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::progress::read_all;

    #[test]
    fn a_refused_request_reports_error_and_failure() {
        let mut out = Vec::new();
        let code = run(&mut &b"qubes-borg-job/9\n"[..], &mut out);
        assert_eq!(code, exit::PROTOCOL);
        let evs: Vec<Event> = read_all(&mut &out[..])
            .unwrap()
            .into_iter()
            .map(|r| r.unwrap())
            .collect();
        assert!(matches!(&evs[0], Event::Error(t) if t.contains("not a qubes-borg-job/1")));
        assert_eq!(evs[1], Event::Done(false));
    }
}

//! dom0: everything a backup step sets up (loop devices, attachments, the running disposable,
//! a qube stopped by --shutdown) is pushed on a cleanup stack as it is made, and written to a
//! ledger file (`RUN_DIR/cleanup`) so that even after a crash or SIGKILL the next run undoes it.
//! Undo runs in reverse order: detach, then loop devices and the disposable, then restart.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::qubes::Qubes;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Undo {
    /// `qvm-block detach VM dom0:LOOP`
    Detach { vm: String, loop_name: String },
    /// `losetup --detach /dev/LOOP`
    Loop { loop_name: String },
    /// `qvm-shutdown --wait --timeout T VM`
    Shutdown { vm: String, timeout: u32 },
    /// `qvm-start VM` (a qube stopped by --shutdown)
    Start { vm: String },
}

/// `loopN` (N up to 7 digits): what `losetup --show` printed, without `/dev/`.
pub fn parse_loop(untrusted_stdout: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(untrusted_stdout)
        .ok()?
        .trim_end_matches('\n');
    let n = s.strip_prefix("/dev/loop")?;
    if n.is_empty() || n.len() > 7 || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(format!("loop{n}"))
}

fn valid_vm(s: &str) -> bool {
    crate::job::spec::check_qube(s).is_ok()
}

impl Undo {
    pub fn argv(&self) -> Vec<String> {
        let v: Vec<&str> = match self {
            Undo::Detach { vm, loop_name } => {
                return vec![
                    "qvm-block".into(),
                    "detach".into(),
                    vm.clone(),
                    format!("dom0:{loop_name}"),
                ]
            }
            Undo::Loop { loop_name } => {
                return vec![
                    "losetup".into(),
                    "--detach".into(),
                    format!("/dev/{loop_name}"),
                ]
            }
            Undo::Shutdown { vm, timeout } => {
                return vec![
                    "qvm-shutdown".into(),
                    "--wait".into(),
                    "--timeout".into(),
                    timeout.to_string(),
                    vm.clone(),
                ]
            }
            Undo::Start { vm } => vec!["qvm-start", vm],
        };
        v.into_iter().map(String::from).collect()
    }

    fn line(&self) -> String {
        match self {
            Undo::Detach { vm, loop_name } => format!("detach {vm} {loop_name}"),
            Undo::Loop { loop_name } => format!("loop {loop_name}"),
            Undo::Shutdown { vm, timeout } => format!("shutdown {vm} {timeout}"),
            Undo::Start { vm } => format!("start {vm}"),
        }
    }

    fn parse(line: &str) -> Option<Undo> {
        let w: Vec<&str> = line.split(' ').collect();
        let lp = |s: &str| parse_loop(format!("/dev/{s}").as_bytes());
        match w.as_slice() {
            ["detach", vm, l] if valid_vm(vm) => Some(Undo::Detach {
                vm: vm.to_string(),
                loop_name: lp(l)?,
            }),
            ["loop", l] => Some(Undo::Loop { loop_name: lp(l)? }),
            ["shutdown", vm, t] if valid_vm(vm) => Some(Undo::Shutdown {
                vm: vm.to_string(),
                timeout: t.parse().ok().filter(|t| *t <= 3600)?,
            }),
            ["start", vm] if valid_vm(vm) => Some(Undo::Start { vm: vm.to_string() }),
            _ => None,
        }
    }
}

pub struct Cleanup {
    ledger: PathBuf,
    steps: Vec<Undo>,
}

impl Cleanup {
    pub fn new(run_dir: &Path) -> Cleanup {
        Cleanup {
            ledger: run_dir.join("cleanup"),
            steps: Vec::new(),
        }
    }

    fn save(&self) {
        let mut text = String::new();
        for s in &self.steps {
            text += &s.line();
            text.push('\n');
        }
        // Written in place before the next step runs; a failure to write is not fatal
        // (the in-memory stack still undoes everything unless we crash).
        let tmp = self.ledger.with_extension("tmp");
        if std::fs::File::create(&tmp)
            .and_then(|mut f| f.write_all(text.as_bytes()).and_then(|_| f.sync_all()))
            .is_ok()
        {
            let _ = std::fs::rename(&tmp, &self.ledger);
        }
    }

    pub fn push(&mut self, u: Undo) {
        self.steps.push(u);
        self.save();
    }

    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// Undoes everything, newest first; returns the messages of steps that failed (they stay
    /// in the ledger for the next run).
    pub fn undo_all(&mut self, q: &mut dyn Qubes) -> Vec<String> {
        let mut failed = Vec::new();
        let mut keep = Vec::new();
        while let Some(u) = self.steps.pop() {
            let argv = u.argv();
            match q.run(&argv) {
                Ok(o) if o.code == 0 => {}
                Ok(o) => {
                    failed.push(format!(
                        "{} failed ({}): {}",
                        argv.join(" "),
                        o.code,
                        crate::job::progress::sanitize(o.stderr.trim_ascii(), 200)
                    ));
                    keep.push(u);
                }
                Err(e) => {
                    failed.push(format!("{}: {e}", argv.join(" ")));
                    keep.push(u);
                }
            }
            self.save();
        }
        keep.reverse();
        self.steps = keep;
        self.save();
        self.steps.clear();
        failed
    }

    /// Reads the ledger a previous run left behind (crash, SIGKILL) and undoes it. Errors are
    /// returned as notes: a device may already be gone.
    pub fn recover(run_dir: &Path, q: &mut dyn Qubes) -> Vec<String> {
        let ledger = run_dir.join("cleanup");
        let Ok(text) = std::fs::read_to_string(&ledger) else {
            return vec![];
        };
        let steps: Vec<Undo> = text.lines().filter_map(Undo::parse).collect();
        let mut notes = Vec::new();
        if !steps.is_empty() {
            notes.push(format!(
                "undoing {} step(s) left by an interrupted run",
                steps.len()
            ));
        }
        for u in steps.iter().rev() {
            let argv = u.argv();
            match q.run(&argv) {
                Ok(o) if o.code == 0 => {}
                Ok(o) => notes.push(format!(
                    "{} ({}): {}",
                    argv.join(" "),
                    o.code,
                    crate::job::progress::sanitize(o.stderr.trim_ascii(), 200)
                )),
                Err(e) => notes.push(format!("{}: {e}", argv.join(" "))),
            }
        }
        let _ = std::fs::remove_file(&ledger);
        notes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dom0::qubes::{Fake, Reply};

    #[test]
    fn loop_names_are_parsed_strictly() {
        assert_eq!(parse_loop(b"/dev/loop12\n").as_deref(), Some("loop12"));
        for bad in [
            &b"/dev/loop"[..],
            b"/dev/loop1 ",
            b"/dev/sda",
            b"/dev/loop1/../sda",
            b"loop1",
            b"/dev/loop12345678",
        ] {
            assert_eq!(parse_loop(bad), None, "{:?}", bad);
        }
    }

    #[test]
    fn undo_runs_newest_first_and_survives_in_the_ledger() {
        let dir = std::env::temp_dir().join(format!("qb-vol-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut c = Cleanup::new(&dir);
        c.push(Undo::Loop {
            loop_name: "loop3".into(),
        });
        c.push(Undo::Shutdown {
            vm: "sys-backup-mnt".into(),
            timeout: 120,
        });
        c.push(Undo::Detach {
            vm: "sys-backup-mnt".into(),
            loop_name: "loop3".into(),
        });
        assert_eq!(
            std::fs::read_to_string(dir.join("cleanup")).unwrap(),
            "loop loop3\nshutdown sys-backup-mnt 120\ndetach sys-backup-mnt loop3\n"
        );
        // A crash now: the next run reads the ledger.
        let mut f = Fake::default();
        f.expect("qvm-block detach sys-backup-mnt dom0:loop3", Reply::ok(""))
            .expect(
                "qvm-shutdown --wait --timeout 120 sys-backup-mnt",
                Reply::ok(""),
            )
            .expect(
                "losetup --detach /dev/loop3",
                Reply::fail(1, "no such device"),
            );
        let notes = Cleanup::recover(&dir, &mut f);
        assert!(f.expected.is_empty());
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(!dir.join("cleanup").exists());
        // And the in-memory path does the same.
        let mut f = Fake::default();
        f.expect("qvm-block detach sys-backup-mnt dom0:loop3", Reply::ok(""))
            .expect(
                "qvm-shutdown --wait --timeout 120 sys-backup-mnt",
                Reply::ok(""),
            )
            .expect("losetup --detach /dev/loop3", Reply::ok(""));
        assert!(c.undo_all(&mut f).is_empty());
        assert!(f.expected.is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_tampered_ledger_runs_nothing_unexpected() {
        let dir = std::env::temp_dir().join(format!("qb-vol2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("cleanup"),
            "loop ../sda\ndetach -rf loop1\nstart $(reboot)\nrm -rf /\n",
        )
        .unwrap();
        let mut f = Fake::default();
        let notes = Cleanup::recover(&dir, &mut f);
        assert!(f.calls.is_empty() && notes.is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

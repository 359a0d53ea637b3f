//! sys-backup-mnt: borg as a child of the job: its passphrase on an inherited pipe, its
//! `--log-json` stderr read (`borg::log_lines`) and forwarded to dom0 within bounds, its exit
//! status and what its failure is classified from.

use std::fs;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{Out, KEY_FILE};
use crate::job::borg;
use crate::job::progress::{Event, Stats};
use crate::job::spec::Spec;

/// Most log lines from borg forwarded per run (the rest are counted).
const MAX_FORWARDED: usize = 64;
/// Largest `--json` output read from borg create.
const MAX_JSON: u64 = 1 << 20;

/// Most borg messages kept for classifying a failure.
const MAX_KEPT: usize = 32;

/// Where borg's stdout goes.
pub(super) enum Stdout {
    /// Read (at most MAX_JSON) and returned.
    Json,
    /// Read and returned, and `stats` sent from it (`borg create --json`).
    Stats,
    /// To this file (nothing returned).
    To(fs::File),
}

/// Runs borg with the passphrase on an inherited pipe; forwards its progress and log lines.
pub(super) fn run_borg<W: Write>(
    spec: &Spec,
    argv: &[String],
    env: &[(String, String)],
    cwd: Option<&str>,
    out: &mut Out<W>,
    stdout: Stdout,
) -> Result<String, String> {
    let want_stats = matches!(stdout, Stdout::Stats);
    let stdout_to = match stdout {
        Stdout::To(f) => Some(f),
        Stdout::Json | Stdout::Stats => None,
    };
    let end = run_borg_logged(spec, argv, env, cwd, out, stdout_to, &mut |_, _| {})?;
    let status = end.status;
    // borg: 0 success, 1 warnings (archive made), 2 error, >=128 killed.
    match status.code() {
        Some(0) | Some(1) => {}
        _ => {
            out.send(Event::Reason(end.reason()));
            return Err(end.heard.failed(&argv[1], status));
        }
    }
    let json = end.json;
    if want_stats {
        let n = |k| borg::json_number(&json, k).unwrap_or(0);
        out.send(Event::Stats(Stats {
            original: n("original_size"),
            deduplicated: n("deduplicated_size"),
            compressed: n("compressed_size"),
            files: n("nfiles"),
        }));
    }
    Ok(json)
}

/// borg's command with the passphrase on an inherited pipe (the returned read end: drop it
/// once borg started), the environment, `BORG_KEY_FILE` = KEY_FILE when `key_file`; stdin
/// closed.
pub(super) fn borg_command(
    spec: &Spec,
    argv: &[String],
    env: &[(String, String)],
    key_file: bool,
) -> Result<(Command, std::os::fd::OwnedFd), String> {
    // Not close-on-exec: borg inherits the read end, and reads the passphrase from it.
    let (pass_r, pass_w) = nix::unistd::pipe().map_err(|e| format!("pipe: {e}"))?;
    {
        let mut w = fs::File::from(pass_w);
        w.write_all(&spec.passphrase)
            .map_err(|e| format!("cannot pass the passphrase: {e}"))?;
    }
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .stdin(Stdio::null())
        .env_remove("BORG_PASSPHRASE")
        .env_remove("BORG_PASSCOMMAND")
        .env_remove("BORG_NEW_PASSPHRASE")
        .env_remove("BORG_KEY_FILE")
        .env("BORG_PASSPHRASE_FD", pass_r.as_raw_fd().to_string());
    for (k, v) in env {
        cmd.env(k, v);
    }
    if key_file {
        cmd.env("BORG_KEY_FILE", KEY_FILE);
    }
    Ok((cmd, pass_r))
}

/// What one borg run's warnings and errors left: how many there were (dom0 sees the first
/// MAX_FORWARDED), the last error and its msgid, and the last MAX_KEPT messages (bounded).
#[derive(Default)]
pub(super) struct Heard {
    count: usize,
    last_error: String,
    msgid: String,
    kept: Vec<String>,
}

impl Heard {
    /// Takes one log message; true when it is one dom0 is to see (a warning or an error,
    /// among the first MAX_FORWARDED).
    pub(super) fn hear(&mut self, level: &str, message: &str, msgid: Option<&str>) -> bool {
        if message.is_empty() || level == "DEBUG" || level == "INFO" {
            return false;
        }
        if borg::is_error(level) {
            self.last_error = message.to_string();
            if let Some(id) = msgid.filter(|i| !i.is_empty()) {
                self.msgid = id.chars().take(64).collect();
            }
        }
        if self.kept.len() >= MAX_KEPT {
            self.kept.remove(0);
        }
        self.kept.push(message.chars().take(1024).collect());
        self.count += 1;
        self.count <= MAX_FORWARDED
    }

    /// Tells dom0 how many messages it did not see.
    pub(super) fn tell_not_shown<W: Write>(&self, out: &mut Out<W>) {
        if self.count > MAX_FORWARDED {
            out.send(Event::Warning(format!(
                "borg: {} more messages not shown",
                self.count - MAX_FORWARDED
            )));
        }
    }

    /// `borg WHAT failed (STATUS): LAST ERROR`.
    pub(super) fn failed(&self, what: &str, status: std::process::ExitStatus) -> String {
        format!("borg {what} failed ({status}){}", self.error_suffix())
    }

    /// `": LAST ERROR"`, or nothing when borg logged no error.
    pub(super) fn error_suffix(&self) -> String {
        if self.last_error.is_empty() {
            String::new()
        } else {
            format!(": {}", self.last_error)
        }
    }
}

/// How one borg run ended, with what its failure is classified from.
pub(super) struct BorgEnd {
    pub(super) status: std::process::ExitStatus,
    /// borg's stdout (bounded).
    json: String,
    pub(super) heard: Heard,
}

impl BorgEnd {
    /// The bounded category of a failure, the only part of it dom0 acts on.
    pub(super) fn reason(&self) -> crate::job::progress::Reason {
        crate::job::classify::classify(self.status.code(), &self.heard.msgid, &self.heard.kept)
    }
}

/// Runs borg and forwards its messages; `on_log(level, message)` sees every log message
/// (INFO too).
pub(super) fn run_borg_logged<W: Write>(
    spec: &Spec,
    argv: &[String],
    env: &[(String, String)],
    cwd: Option<&str>,
    out: &mut Out<W>,
    stdout_to: Option<fs::File>,
    on_log: &mut dyn FnMut(&str, &str),
) -> Result<BorgEnd, String> {
    let (mut cmd, pass_r) = borg_command(spec, argv, env, spec.key_file.is_some())?;
    let to_file = stdout_to.is_some();
    cmd.stdout(match stdout_to {
        Some(f) => Stdio::from(f),
        None => Stdio::piped(),
    })
    .stderr(Stdio::piped());
    if let Some(d) = cwd {
        cmd.current_dir(d);
    }
    let mut child = cmd.spawn().map_err(|e| format!("cannot start borg: {e}"))?;
    drop(pass_r);
    let stdout = child.stdout.take();
    debug_assert_eq!(stdout.is_none(), to_file);
    let json = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(o) = stdout {
            let _ = o.take(MAX_JSON).read_to_string(&mut s);
        }
        s
    });
    let mut last = Instant::now() - Duration::from_secs(10);
    let mut heard = Heard::default();
    for line in borg::log_lines(child.stderr.take().expect("piped")) {
        match line {
            borg::LogLine::Progress(Some(n)) => {
                if last.elapsed() >= Duration::from_millis(500) {
                    out.send(Event::Progress(n));
                    last = Instant::now();
                }
            }
            borg::LogLine::Progress(None) | borg::LogLine::Status => {}
            borg::LogLine::Message {
                level,
                message,
                msgid,
            } => {
                on_log(&level, &message);
                if heard.hear(&level, &message, msgid.as_deref()) {
                    out.send(Event::Warning(format!("borg: {message}")));
                }
            }
        }
    }
    let status = child.wait().map_err(|e| format!("borg: {e}"))?;
    let json = json.join().unwrap_or_default();
    heard.tell_not_shown(out);
    Ok(BorgEnd {
        status,
        json,
        heard,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::progress::read_all;

    #[test]
    fn heard_forwards_the_first_64_warnings_and_keeps_the_last_32_and_the_last_error() {
        let mut h = Heard::default();
        assert!(!h.hear("INFO", "noted", None));
        assert!(!h.hear("DEBUG", "noted", None));
        assert!(!h.hear("WARNING", "", None));
        assert_eq!(h.count, 0);
        assert!(h.hear("ERROR", "first", Some("Lock.Timeout")));
        assert!(h.hear("CRITICAL", "second", Some("")));
        assert_eq!(
            (h.last_error.as_str(), h.msgid.as_str()),
            ("second", "Lock.Timeout")
        );
        for i in 2..MAX_FORWARDED {
            assert!(h.hear("WARNING", &format!("w{i}"), None));
        }
        assert!(!h.hear("", "not json", None));
        assert_eq!(h.count, MAX_FORWARDED + 1);
        assert_eq!(h.kept.len(), MAX_KEPT);
        assert_eq!(h.kept.last().unwrap(), "not json");
        assert_eq!(h.last_error, "second");
        let mut out = Vec::new();
        h.tell_not_shown(&mut Out { w: &mut out });
        let evs: Vec<Event> = read_all(&mut &out[..])
            .unwrap()
            .into_iter()
            .map(|r| r.unwrap())
            .collect();
        assert_eq!(
            evs,
            [Event::Warning("borg: 1 more messages not shown".into())]
        );
        assert_eq!(h.error_suffix(), ": second");
        assert_eq!(Heard::default().error_suffix(), "");
    }
}

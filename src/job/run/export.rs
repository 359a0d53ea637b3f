//! sys-backup-mnt: the `export` op: `borg export-tar` streamed to dom0 as `chunk` frames.

use std::io::{Read, Write};
use std::process::Stdio;

use super::child::{borg_command, Heard};
use super::Out;
use crate::job::borg;
use crate::job::progress::{encode, Event};
use crate::job::spec::Spec;

/// `borg export-tar ... -`: its stdout goes to dom0 as `chunk` frames (job::progress) as it
/// comes; its log lines are collected meanwhile and sent after the stream.
pub(super) fn run_borg_export<W: Write>(
    spec: &Spec,
    argv: &[String],
    env: &[(String, String)],
    out: &mut Out<W>,
) -> Result<(), String> {
    let (mut cmd, pass_r) = borg_command(spec, argv, env, spec.key_file.is_some())?;
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("cannot start borg: {e}"))?;
    drop(pass_r);
    let stderr = child.stderr.take().expect("piped");
    let log = std::thread::spawn(move || {
        let (mut heard, mut notes) = (Heard::default(), Vec::new());
        for line in borg::log_lines(stderr) {
            if let borg::LogLine::Message {
                level,
                message,
                msgid,
            } = line
            {
                if heard.hear(&level, &message, msgid.as_deref()) {
                    notes.push(message);
                }
            }
        }
        (notes, heard)
    });
    let mut stdout = child.stdout.take().expect("piped");
    let mut buf = vec![0u8; crate::job::progress::MAX_CHUNK];
    let mut gone = false;
    loop {
        let n = match stdout.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let frame = encode(&Event::Chunk(buf[..n].to_vec()));
        if out
            .w
            .write_all(&frame)
            .and_then(|()| out.w.flush())
            .is_err()
        {
            // dom0 stopped reading: nothing more can arrive, stop borg.
            gone = true;
            let _ = child.kill();
            break;
        }
    }
    drop(stdout);
    let status = child.wait().map_err(|e| format!("borg: {e}"))?;
    let (notes, heard) = log.join().unwrap_or_default();
    for n in notes {
        out.send(Event::Warning(format!("borg: {n}")));
    }
    heard.tell_not_shown(out);
    if gone {
        return Err("dom0 stopped reading the stream".into());
    }
    match status.code() {
        Some(0) | Some(1) => Ok(()),
        _ => Err(heard.failed("export-tar", status)),
    }
}

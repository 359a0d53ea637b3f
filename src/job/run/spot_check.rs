//! sys-backup-mnt: the `spot` op: sample files of an archive and compare them with the volume
//! (the records and the comparison: `job::spot`).

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};

use super::child::{run_borg, Stdout};
use super::{send_data, Out};
use crate::job::borg;
use crate::job::mount::{self, PRIVATE_DIR, UNTRUSTED_OPTIONS};
use crate::job::progress::{Event, Phase};
use crate::job::spec::{self, Spec};

/// The spot check: mount the volume read-only, sample `count` regular files of the archive's
/// listing, extract each to a pipe and compare it with the volume's file (`spot`).
pub(super) fn spot<W: Write>(
    spec: &Spec,
    s: &spec::Spot,
    base: &str,
    out: &mut Out<W>,
) -> Result<(), String> {
    let mut env = borg::env(base, None);
    // borg prints times in local time: UTC here, as the comparison reads them.
    env.push(("TZ".into(), "UTC".into()));
    out.send(Event::Phase(Phase::Mount));
    let m = mount::mount(&s.device, PRIVATE_DIR, UNTRUSTED_OPTIONS)?;
    out.send(Event::Phase(Phase::Spot));
    let r = spot_files(spec, s, &env, out);
    out.send(Event::Phase(Phase::Unmount));
    let u = m.unmount();
    let tally = r?;
    u?;
    send_data(out, tally.text().as_bytes());
    Ok(())
}

fn spot_files<W: Write>(
    spec: &Spec,
    s: &spec::Spot,
    env: &[(String, String)],
    out: &mut Out<W>,
) -> Result<crate::job::spot::Tally, String> {
    use crate::job::spot::{self as sp, Reservoir, Tally, Verdict};
    let (rd, wr) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    let k = s.count as usize;
    let sampler = std::thread::spawn(move || {
        let mut res = Reservoir::new(k);
        let mut r = BufReader::new(fs::File::from(rd));
        let mut rec = Vec::new();
        let mut skipping = false;
        loop {
            rec.clear();
            match (&mut r)
                .take(sp::MAX_PATH as u64 + 128)
                .read_until(0, &mut rec)
            {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let ended = rec.last() == Some(&0);
            // A record longer than the bound is skipped up to its NUL.
            if skipping || !ended {
                skipping = !ended;
                continue;
            }
            rec.pop();
            if let Some(e) = sp::parse_record(&rec) {
                res.push(e);
            }
        }
        res.items
    });
    let listed = run_borg(
        spec,
        &borg::spot_list_argv(&spec.repository, &s.archive),
        env,
        None,
        out,
        Stdout::To(fs::File::from(wr)),
    );
    let mut files = sampler.join().map_err(|_| "the sampler failed")?;
    listed?;
    files.sort_by(|a, b| a.path.cmp(&b.path));
    let mut tally = Tally::default();
    for e in files {
        let path = e.path.clone();
        let volume_file = sp::open_beneath(PRIVATE_DIR, &path).ok();
        let (rd, wr) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
        let cmp = std::thread::spawn(move || sp::compare(&e, volume_file, &mut fs::File::from(rd)));
        let got = run_borg(
            spec,
            &borg::spot_extract_argv(&spec.repository, &s.archive, &path),
            env,
            None,
            out,
            Stdout::To(fs::File::from(wr)),
        );
        let v = cmp.join().map_err(|_| "the comparison failed")?;
        // The archive could not give the file back: as bad as a wrong file.
        tally.add(
            &path,
            if got.is_ok() {
                v
            } else {
                Verdict::Mismatch("unreadable")
            },
        );
    }
    Ok(tally)
}

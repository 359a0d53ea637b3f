//! dom0: `qvm-backup-borg info ARCHIVE`: a fresh disposable runs `borg info --json` of that one
//! archive (job op `info`); dom0 reads the answer with the same checks as `list` (`archives`)
//! and prints the archive's details and the settings saved with it.

use std::io::Write;

use super::list::settings_text;
use crate::dom0::archives::{self, Archive};
use crate::dom0::config::Config;
use crate::dom0::display::human;
use crate::dom0::job_call::repository_data;
use crate::dom0::json::{self, Value};
use crate::dom0::qubes::Qubes;
use crate::dom0::session::{Ctx, Outcome, Secrets};
use crate::job::spec::{Info, Op};

/// Longest duration shown (seconds); anything above is not believed.
const MAX_DURATION: f64 = 10.0 * 365.0 * 86400.0;

/// The archive (checked as `list` checks it) and its duration in seconds, if borg gave one.
pub fn parse(untrusted_json: &[u8], archive: &str) -> Result<(Archive, Option<u64>), String> {
    let (qube, _) = archives::split_name(archive)
        .ok_or_else(|| format!("'{archive}' is not a qubes-borg archive name"))?;
    let listing = archives::parse_info(untrusted_json, Some(qube))?;
    let a = listing
        .archives
        .into_iter()
        .find(|a| a.name == archive)
        .ok_or_else(|| format!("borg info did not describe {archive} (or it failed the checks)"))?;
    // parse_info accepted the document, so it parses again.
    let doc = json::parse(untrusted_json).map_err(|e| e.to_string())?;
    let duration = doc
        .get("archives")
        .and_then(Value::as_array)
        .and_then(|l| {
            l.iter()
                .find(|v| v.get("name").and_then(Value::as_str) == Some(archive))
        })
        .and_then(|v| v.get("duration"))
        .and_then(|d| match d {
            Value::Number(n) => n.parse::<f64>().ok(),
            _ => None,
        })
        .filter(|d| d.is_finite() && (0.0..=MAX_DURATION).contains(d))
        .map(|d| d.round() as u64);
    Ok((a, duration))
}

/// The details as `info` prints them (checked values only).
pub fn render(a: &Archive, duration: Option<u64>) -> String {
    let mut s = format!(
        "Archive:       {}\nQube:          {}\nDate (UTC):    {}\nOriginal size: {} ({} bytes)\nCompressed:    {}\nDeduplicated:  {}\nFiles:         {}\n",
        a.name,
        a.qube,
        a.date,
        human(a.original),
        a.original,
        human(a.compressed),
        human(a.deduplicated),
        a.files
    );
    if let Some(d) = duration {
        s += &format!(
            "Duration:      {}:{:02}:{:02}\n",
            d / 3600,
            d / 60 % 60,
            d % 60
        );
    }
    s
}

fn fetch_one(
    ctx: &mut Ctx,
    archive: &str,
    secrets: &Secrets,
) -> Result<(Archive, Option<u64>), String> {
    let op = Op::Info(Info {
        archive: archive.to_string(),
    });
    let data = repository_data(ctx, secrets, op, "info")?;
    parse(&data, archive)
}

/// Runs `info`: the details on `out`, notes on `err`.
pub fn info(
    cfg: &Config,
    archive: &str,
    secrets: &Secrets,
    q: &mut dyn Qubes,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Outcome {
    let mut ctx = Ctx::begin(cfg, q, err, false);
    match fetch_one(&mut ctx, archive, secrets) {
        Ok((a, duration)) => {
            let _ = write!(out, "{}", render(&a, duration));
            let _ = write!(out, "{}", settings_text(&a.name, &a.comment, &mut ctx));
            Outcome::Ok
        }
        Err(e) => ctx.failed("info", &e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(duration: &str) -> Vec<u8> {
        format!(
            r#"{{"archives": [{{"name": "work-2026-11-29T18:00:00Z", "duration": {duration},
            "comment": "", "stats": {{"compressed_size": 1024, "deduplicated_size": 2048,
            "nfiles": 7, "original_size": 5242880}}}}]}}"#
        )
        .into_bytes()
    }

    #[test]
    fn details_and_duration_are_read_and_printed() {
        let (a, d) = parse(&doc("3725.4"), "work-2026-11-29T18:00:00Z").unwrap();
        assert_eq!(d, Some(3725));
        let t = render(&a, d);
        assert!(t.contains("Qube:          work\n"), "{t}");
        assert!(t.contains("Files:         7\n"), "{t}");
        assert!(t.contains("Duration:      1:02:05\n"), "{t}");
        assert!(t.contains("5.0 MiB (5242880 bytes)"), "{t}");
    }

    #[test]
    fn a_lying_duration_is_left_out_and_another_archive_is_refused() {
        for bad in ["-1", "1e300", "\"12\"", "null"] {
            let (_, d) = parse(&doc(bad), "work-2026-11-29T18:00:00Z").unwrap();
            assert_eq!(d, None, "{bad}");
        }
        let e = parse(&doc("1"), "work-2026-11-30T18:00:00Z").unwrap_err();
        assert!(e.contains("did not describe"), "{e}");
        assert!(parse(&doc("1"), "../x").is_err());
    }
}

//! sys-backup-mnt: the `check` op: `borg check`, and which archives its errors belong to.

use std::io::Write;

use super::child::run_borg_logged;
use super::{send_data, Out};
use crate::job::borg;
use crate::job::progress::{Event, Phase};
use crate::job::spec::{self, Spec};

/// Most archive names a check result names.
const MAX_CHECK_ARCHIVES: usize = 200;

/// `borg check`: the job succeeds when borg ran to the end; what it found goes to dom0 as
/// data (`repository ok|errors`, then `archive NAME` for each archive borg was analyzing when
/// it logged an error).
pub(super) fn check<W: Write>(
    spec: &Spec,
    c: &spec::Check,
    base: &str,
    out: &mut Out<W>,
) -> Result<(), String> {
    let env = borg::env(base, None);
    out.send(Event::Phase(Phase::Check));
    let argv = borg::check_argv(&spec.repository, c.verify_data);
    let mut current: Option<String> = None;
    let mut named: Vec<String> = Vec::new();
    let mut problems = false;
    let end = run_borg_logged(spec, &argv, &env, None, out, None, &mut |level, msg| {
        if let Some(rest) = msg.strip_prefix("Analyzing archive ") {
            current = rest
                .rsplit_once(" (")
                .map(|(n, _)| n.to_string())
                .filter(|n| spec::check_archive(n).is_ok());
            return;
        }
        if msg.contains("orphaned objects") || msg.starts_with("Archive consistency check") {
            current = None;
        }
        // Only errors: warnings include the remote side's notes (e.g. the agent's login
        // notice relayed as "Remote: ..."), which are no problem of the repository.
        if borg::is_error(level) {
            problems = true;
            if let Some(a) = &current {
                if !named.contains(a) && named.len() < MAX_CHECK_ARCHIVES {
                    named.push(a.clone());
                }
            }
        }
    })?;
    let status = end.status;
    // borg check: 0 no problems, 1 problems found, 2 could not check.
    let found = match status.code() {
        Some(0) => problems,
        Some(1) => true,
        _ => {
            out.send(Event::Reason(end.reason()));
            return Err(format!(
                "borg check could not run ({status}){}",
                end.heard.error_suffix()
            ));
        }
    };
    let mut text = format!("repository {}\n", if found { "errors" } else { "ok" });
    for a in &named {
        text += &format!("archive {a}\n");
    }
    send_data(out, text.as_bytes());
    Ok(())
}

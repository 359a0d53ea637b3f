//! dom0: the plan of one run, computed without side effects from the configuration, the qubes
//! as `qvm-ls` listed them, the command line and the time: which qubes, in which mode, with
//! which excludes, into which archive.

use std::fmt;

use super::config::{Config, DEFAULT_EXCLUDES};
use crate::job::spec::Mode;

/// One qube as `qvm-ls --raw-data --fields NAME,CLASS,STATE,include_in_backups` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QubeInfo {
    pub name: String,
    pub class: String,
    pub state: String,
    pub include_in_backups: bool,
}

impl QubeInfo {
    pub fn is_running(&self) -> bool {
        self.state != "Halted"
    }
    /// dom0 and disposables have no private volume worth keeping.
    pub fn can_back_up(&self) -> bool {
        self.class != "AdminVM" && self.class != "DispVM"
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub qube: String,
    pub mode: Mode,
    pub compression: String,
    pub excludes: Vec<String>,
    pub archive: String,
    pub running: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlanError {
    UnknownQube(String),
    CannotBackUp(String, String),
    Nothing,
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlanError::UnknownQube(q) => write!(f, "no qube named '{q}' (qvm-ls does not list it)"),
            PlanError::CannotBackUp(q, c) => write!(f, "'{q}' is a {c}: only qubes with a persistent private volume can be backed up"),
            PlanError::Nothing => f.write_str("no qube to back up: set include_in_backups on some qubes (qvm-prefs QUBE include_in_backups True), or `qubes`/`tag` in the configuration"),
        }
    }
}

impl std::error::Error for PlanError {}

/// `YYYY-MM-DDTHH:MM:SSZ` for seconds since the epoch (UTC).
pub fn utc(epoch: u64) -> String {
    let days = (epoch / 86400) as i64;
    let secs = epoch % 86400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// The archive name of QUBE at that time: `QUBE-YYYY-MM-DDTHH:MM:SSZ`.
pub fn archive_name(qube: &str, epoch: u64) -> String {
    format!("{qube}-{}", utc(epoch))
}

/// Which qubes: the command line's names if any; else `qubes` from the configuration, or
/// every qube with include_in_backups; plus qubes with a configured tag; minus
/// `exclude_qubes` and the disposable itself. Sorted by name, each once.
pub fn plan(
    config: &Config,
    listed: &[QubeInfo],
    tagged: &[String],
    cli: &[String],
    now: u64,
) -> Result<Vec<Item>, PlanError> {
    let find = |n: &str| listed.iter().find(|q| q.name == n);
    let mut names: Vec<String> = if !cli.is_empty() {
        cli.to_vec()
    } else {
        let mut v: Vec<String> = if config.qubes.is_empty() {
            listed
                .iter()
                .filter(|q| q.include_in_backups && q.can_back_up())
                .map(|q| q.name.clone())
                .collect()
        } else {
            config.qubes.clone()
        };
        v.extend(tagged.iter().cloned());
        v.retain(|n| !config.exclude_qubes.contains(n) && *n != config.disposable);
        v
    };
    names.sort();
    names.dedup();
    let mut items = Vec::new();
    for n in names {
        let q = find(&n).ok_or_else(|| PlanError::UnknownQube(n.clone()))?;
        if !q.can_back_up() {
            if !cli.is_empty() || !config.qubes.is_empty() {
                return Err(PlanError::CannotBackUp(n, q.class.clone()));
            }
            continue;
        }
        let qc = config.qube(&n).cloned().unwrap_or_default();
        let mode = qc.mode.unwrap_or(config.mode);
        let mut excludes = Vec::new();
        if mode == Mode::Files {
            if qc.default_excludes.unwrap_or(config.default_excludes) {
                excludes.extend(DEFAULT_EXCLUDES.iter().map(|s| s.to_string()));
            }
            excludes.extend(config.excludes.iter().cloned());
            excludes.extend(qc.excludes.iter().cloned());
        }
        items.push(Item {
            archive: archive_name(&n, now),
            running: q.is_running(),
            qube: n,
            mode,
            compression: qc.compression.unwrap_or_else(|| config.compression.clone()),
            excludes,
        });
    }
    if items.is_empty() {
        return Err(PlanError::Nothing);
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dom0::config::parse;
    use std::path::Path;

    fn q(name: &str, class: &str, state: &str, inc: bool) -> QubeInfo {
        QubeInfo {
            name: name.into(),
            class: class.into(),
            state: state.into(),
            include_in_backups: inc,
        }
    }

    fn listed() -> Vec<QubeInfo> {
        vec![
            q("dom0", "AdminVM", "Running", true),
            q("work", "AppVM", "Running", true),
            q("personal", "AppVM", "Halted", true),
            q("vault", "AppVM", "Halted", true),
            q("untrusted", "AppVM", "Halted", false),
            q("sys-backup-mnt", "DispVM", "Halted", true),
            q("disp12", "DispVM", "Running", true),
        ]
    }

    fn cfg(extra: &str) -> Config {
        parse(
            Path::new("t.conf"),
            format!("repository = ssh://b/./r\n{extra}").as_bytes(),
        )
        .unwrap()
    }

    fn names(items: &[Item]) -> Vec<&str> {
        items.iter().map(|i| i.qube.as_str()).collect()
    }

    #[test]
    fn default_is_include_in_backups_without_dom0_and_disposables() {
        let p = plan(&cfg(""), &listed(), &[], &[], 0).unwrap();
        assert_eq!(names(&p), ["personal", "vault", "work"]);
        assert!(p[2].running && !p[0].running);
    }

    #[test]
    fn list_tag_and_exclusions_combine() {
        let c = cfg("qubes = work\ntag = backup\nexclude_qubes = vault\n");
        let p = plan(&c, &listed(), &["untrusted".into(), "vault".into()], &[], 0).unwrap();
        assert_eq!(names(&p), ["untrusted", "work"]);
    }

    #[test]
    fn command_line_names_override_and_must_exist() {
        let p = plan(
            &cfg("exclude_qubes = vault\n"),
            &listed(),
            &[],
            &["vault".into()],
            0,
        )
        .unwrap();
        assert_eq!(names(&p), ["vault"]);
        assert_eq!(
            plan(&cfg(""), &listed(), &[], &["nope".into()], 0),
            Err(PlanError::UnknownQube("nope".into()))
        );
        assert!(matches!(
            plan(&cfg(""), &listed(), &[], &["dom0".into()], 0),
            Err(PlanError::CannotBackUp(..))
        ));
    }

    #[test]
    fn modes_and_excludes_per_qube() {
        let c = cfg("exclude = sh:home/*/Downloads\n[qube vault]\nmode = image\n[qube work]\ndefault_excludes = no\nexclude = pp:home/user/tmp\n");
        let p = plan(&c, &listed(), &[], &[], 0).unwrap();
        let by = |n: &str| p.iter().find(|i| i.qube == n).unwrap().clone();
        assert_eq!(by("vault").mode, Mode::Image);
        assert!(
            by("vault").excludes.is_empty(),
            "image mode has no excludes"
        );
        assert_eq!(
            by("work").excludes,
            ["sh:home/*/Downloads", "pp:home/user/tmp"]
        );
        assert!(by("personal")
            .excludes
            .contains(&"sh:home/*/.cache".to_string()));
    }

    #[test]
    fn archive_names_are_qube_and_utc_time() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_795_970_096), "2026-11-29T16:34:56Z");
        assert_eq!(
            archive_name("work", 1_795_970_096),
            "work-2026-11-29T16:34:56Z"
        );
        crate::job::spec::check_archive(&archive_name("a-b_c.d", u32::MAX as u64)).unwrap();
    }

    #[test]
    fn nothing_to_do_is_an_error() {
        assert_eq!(
            plan(
                &cfg("exclude_qubes = work personal vault\n"),
                &listed(),
                &[],
                &[],
                0
            ),
            Err(PlanError::Nothing)
        );
    }
}

//! dom0: `qvm-backup-borg`. `secrets` reads the passphrase and key file. `list` and `archives` (with `json`) list the repository. `config` reads backup.conf, `plan` decides (pure), `qubes` is the
//! only door to the Qubes tools, `volumes` undoes what was set up, `lock` keeps runs apart,
//! `run` drives it all, `display` shows progress. Meets the job only through `job::spec`
//! and `job::progress`.

pub mod archives;
pub mod config;
pub mod display;
pub mod json;
pub mod list;
pub mod lock;
pub mod metadata;
pub mod plan;
pub mod qubes;
pub mod restore;
pub mod run;
pub mod secrets;
pub mod signals;
pub mod volumes;

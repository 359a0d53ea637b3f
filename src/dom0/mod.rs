//! dom0: `qvm-backup-borg`. `config` reads backup.conf, `plan` decides (pure), `qubes` is the
//! only door to the Qubes tools, `volumes` undoes what was set up, `lock` keeps runs apart,
//! `run` drives it all, `display` shows progress. Meets the job only through `job::spec`
//! and `job::progress`.

pub mod config;
pub mod display;
pub mod lock;
pub mod plan;
pub mod qubes;
pub mod run;
pub mod signals;
pub mod volumes;

//! dom0: `qvm-backup-borg`. `cli` parses its command line; `config` reads backup.conf and
//! `secrets` the passphrase and key file; `plan` decides (pure); `qubes` is the only door to
//! the Qubes tools and `facts` reads what they print; `session` holds a run's context and the
//! steps around a job (disposable, loop devices, attach, always-undone `volumes` cleanup);
//! `job_call` runs the job and reads its progress; `run` (backup, with `retry` after transient
//! failures), `list` (with `archives`, `json`), `info`, `check`, `restore` (with `metadata`),
//! `restore_into` (files into a running qube) and `init` (first setup, with `server` and
//! `textdiff`) are the commands; `lock` keeps runs apart, `signals`
//! and `display` serve the terminal. Meets the job only through `job::spec` and `job::progress`.

pub mod archives;
pub mod check;
pub mod cli;
pub mod config;
pub mod display;
pub mod facts;
pub mod info;
pub mod init;
pub mod job_call;
pub mod json;
pub mod list;
pub mod lock;
pub mod metadata;
pub mod plan;
pub mod qubes;
pub mod restore;
pub mod restore_into;
pub mod retry;
pub mod run;
pub mod secrets;
pub mod server;
pub mod session;
pub mod signals;
pub mod textdiff;
pub mod volumes;

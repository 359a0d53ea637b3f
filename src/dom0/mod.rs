//! dom0: `qvm-backup-borg`. `cli` parses its command line and `program` sets up what a command
//! needs (`config` reads backup.conf, `secrets` the passphrase and key file, `lock` keeps runs
//! apart, `signals`) and turns its outcome into an exit status; the commands are in `command`.
//! What they share: `plan` decides which qubes (pure); `qubes` is the only door to the Qubes
//! tools and `facts` reads what they print; `session` holds a run's context and the steps
//! around a job (disposable, loop devices, attach, always-undone `volumes` cleanup); `job_call`
//! runs the job and reads its progress; `retry` (backup after transient failures), `archives`
//! and `json` (borg's archive list), `check_result` (what a check job reports), `metadata`
//! (settings saved with each archive), `server` and `textdiff` (init) and `display` (the
//! terminal). Meets the job only through `job::spec`
//! and `job::progress`.

pub mod archives;
pub mod check_result;
pub mod cli;
pub mod command;
pub mod config;
pub mod display;
pub mod facts;
pub mod job_call;
pub mod json;
pub mod lock;
pub mod metadata;
pub mod plan;
pub mod program;
pub mod qubes;
pub mod retry;
pub mod secrets;
pub mod server;
pub mod session;
pub mod signals;
pub mod textdiff;
pub mod volumes;

//! sys-backup-mnt (the disposable without network): the `qubes-borg.BackupJob` service. dom0
//! sends a request (`spec`) on stdin; the job mounts the attached volume read-only (`mount`),
//! runs borg (`borg`; stale local cache locks cleared by `cachelock`, failures sorted by
//! `classify`), compares files for the spot check (`spot`) and reports in `progress` lines on
//! stdout (`run`). dom0 and the job meet
//! only through `spec` and `progress`.

pub mod borg;
pub mod cachelock;
pub mod classify;
pub mod mount;
pub mod progress;
pub mod run;
pub mod spec;
pub mod spot;

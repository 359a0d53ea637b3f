//! Development machine: tests of `qvm-backup-borg` (dom0) against the fake Qubes door.

mod backup;
mod check;
mod init;
mod list;
mod restore;
mod retry;

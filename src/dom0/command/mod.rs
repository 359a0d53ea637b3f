//! dom0: the commands of `qvm-backup-borg`, one module each: `backup`, `list`, `info`, `check`,
//! `restore` (a whole qube), `restore_into` (files into a running qube) and `init` (first setup).
//! Each takes what `dom0::program` set up and returns an `Outcome`.

pub mod backup;
pub mod check;
pub mod info;
pub mod init;
pub mod list;
pub mod restore;
pub mod restore_into;

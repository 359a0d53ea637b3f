//! qubes-borg: BorgBackup for Qubes OS over qrexec.
//!
//! One library with small modules; the programs in `src/bin/` are thin
//! wrappers around it. See `docs/ARCHITECTURE.md` for the map.
#![forbid(unsafe_code)]

pub mod agent;
pub mod borg_argv;
pub mod child;
pub mod codec;
pub mod destination;
pub mod header;
pub mod relay;
pub mod ssh_command;
pub mod status;
pub mod stderr_line;
pub mod validate;

//! qubes-borg: BorgBackup for Qubes OS over qrexec.
//!
//! One library with small modules; the programs in `src/bin/` are thin
//! wrappers around it. See `docs/ARCHITECTURE.md` for the map.
#![forbid(unsafe_code)]

pub mod agent;
pub mod child;
pub mod relay;

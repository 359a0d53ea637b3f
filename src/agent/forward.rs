//! Per-connection agent socket in sys-backup (in progress).

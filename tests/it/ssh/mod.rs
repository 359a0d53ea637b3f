//! The qubes-borg.Ssh link (`src/ssh/`) through the qrexec stand-in, with the ssh and borg serve
//! doubles and real borg.

mod borg;
mod e2e;
mod hostile;

//! sys-backup: its side of split SSH, an agent socket that exists only while
//! one `qubes-borg.Ssh` connection runs.
//!
//! [`AgentSocket::start`] makes a private directory (0700) under a runtime
//! directory, and starts `qubes-relay --listen DIR/agent.sock
//! --die-with-parent -- qrexec-client-vm @default qubes-borg.SshAgent+NAME`
//! (the relay core's drop-in for `socat UNIX-LISTEN:...,fork EXEC:...`), so
//! each connection on the socket becomes one qrexec call to the filtering
//! agent service in ssh-backup. The socket is made 0600 before `start`
//! returns. Dropping the [`AgentSocket`] (or [`AgentSocket::close`]) stops
//! the listener (SIGTERM: it removes its socket and cuts open connections)
//! and removes the directory. If the owning process dies without dropping
//! it, the listener gets SIGTERM from the kernel (PR_SET_PDEATHSIG) and
//! removes the socket; the directory left behind is swept by the next
//! `start` in the same runtime directory (`crate::tempdir`), and removed at
//! once on SIGTERM/SIGINT/SIGHUP when the program called
//! `tempdir::cleanup_on_signals`.
//!
//! The listener and the `qrexec-client-vm` it runs per connection do not get
//! our stderr: under qrexec that is the service's stderr, and qrexec ends a
//! call only when every process holding it closed it (qubes-core-qrexec
//! `libqrexec/process_io.c`), so a leftover of ours would keep the caller's
//! call open. Their stderr is a pipe that a detached thread of ours copies,
//! one sanitized line at a time ([`crate::stderr_line`]), to our stderr; it
//! ends with our process. On the way it notes the vault faults those lines
//! report (`fault`: the filter's tagged lines, qubes-relay's exit status of
//! a refused or failed call), which [`AgentSocket::close_and_fault`] returns.
//! The filter's audit line of a signed login is not passed on
//! (`fault::is_signed_login`): qrexec keeps it in the vault's journal, and
//! borg would print it on every backup. Every other line is.

use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::{geteuid, Pid};

use super::fault::{self, VaultFault};
use super::{validate_key_set_name, NameError};
use crate::tempdir::PrivateDir;

/// Prefix of the private directories made under the runtime directory
/// (`PREFIX.PID.RANDOM`).
pub const DIR_PREFIX: &str = "qubes-borg-agent";
/// Name of the socket inside the private directory.
pub const SOCKET_NAME: &str = "agent.sock";
/// The qrexec service called for each connection (`+NAME` appended).
pub const SERVICE: &str = "qubes-borg.SshAgent";

/// Settings of [`AgentSocket::start`]. `Default` gives the installed
/// paths; no environment variable changes them (tests set the fields, or put
/// their programs at these paths in a mount namespace).
#[derive(Debug, Clone)]
pub struct AgentSocketOptions {
    /// Where the private directory is made. Default: `$XDG_RUNTIME_DIR`, else
    /// `/run/user/UID` if it exists, else `/tmp`.
    pub runtime_dir: Option<PathBuf>,
    /// `qrexec-client-vm` to run per connection. Default: `/usr/bin/qrexec-client-vm`.
    pub qrexec_client: PathBuf,
    /// qrexec target. Default `@default` (dom0 policy picks ssh-backup).
    pub target: String,
    /// The relay binary. Default: `/usr/bin/qubes-relay`.
    pub relay: PathBuf,
    /// How long to wait for the listener's socket to appear.
    pub ready_timeout: Duration,
}

impl Default for AgentSocketOptions {
    fn default() -> Self {
        AgentSocketOptions {
            runtime_dir: None,
            qrexec_client: PathBuf::from("/usr/bin/qrexec-client-vm"),
            target: "@default".into(),
            relay: PathBuf::from("/usr/bin/qubes-relay"),
            ready_timeout: Duration::from_secs(5),
        }
    }
}

/// Why the agent socket could not be set up or removed.
#[derive(Debug)]
pub enum AgentError {
    /// The key set name is not valid.
    Name(NameError),
    /// No usable runtime directory, or the private directory could not be made.
    Dir { path: PathBuf, err: io::Error },
    /// A directory or socket we made has the wrong type, owner or mode.
    Unsafe { path: PathBuf, why: &'static str },
    /// The relay could not be started.
    Spawn { program: PathBuf, err: io::Error },
    /// The relay exited before its socket appeared (it printed why).
    ListenerExited { status: String },
    /// The socket did not appear in time.
    NotReady { path: PathBuf, waited: Duration },
    /// Removing the socket or directory failed.
    Cleanup { path: PathBuf, err: io::Error },
}

impl fmt::Display for AgentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AgentError::Name(e) => write!(f, "agent key set: {e}"),
            AgentError::Dir { path, err } => write!(
                f,
                "cannot make a private agent directory in {}: {err} (XDG_RUNTIME_DIR names the directory)",
                path.display()
            ),
            AgentError::Unsafe { path, why } => {
                write!(f, "refusing agent socket path {}: {why}", path.display())
            }
            AgentError::Spawn { program, err } => write!(
                f,
                "cannot start the agent socket listener {}: {err} (is qubes-borg installed?)",
                program.display()
            ),
            AgentError::ListenerExited { status } => write!(
                f,
                "the agent socket listener (qubes-relay --listen) exited at start ({status}); see its message above"
            ),
            AgentError::NotReady { path, waited } => write!(
                f,
                "the agent socket {} did not appear within {:?}",
                path.display(),
                waited
            ),
            AgentError::Cleanup { path, err } => {
                write!(f, "cannot remove agent socket path {}: {err}", path.display())
            }
        }
    }
}

impl std::error::Error for AgentError {}

/// A per-connection agent socket; see the module documentation.
#[derive(Debug)]
pub struct AgentSocket {
    path: PathBuf,
    listener: Option<Child>,
    /// The first-cause vault fault reported on the listener's stderr so far.
    fault: Arc<Mutex<Option<VaultFault>>>,
    /// Receives once the listener's stderr reached EOF (every writer closed it).
    stderr_done: Option<mpsc::Receiver<()>>,
    /// Dropped after `shutdown` (field order): removes what is left.
    dir: PrivateDir,
}

fn is_dir_usable(p: &Path) -> bool {
    fs::metadata(p).map(|m| m.is_dir()).unwrap_or(false)
}

fn default_runtime_dir() -> PathBuf {
    if let Some(v) = std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        return PathBuf::from(v);
    }
    let run_user = PathBuf::from(format!("/run/user/{}", geteuid()));
    if is_dir_usable(&run_user) {
        return run_user;
    }
    PathBuf::from("/tmp")
}

impl AgentSocket {
    /// Create the private directory and socket for key set `key_set` and
    /// start forwarding its connections to `qubes-borg.SshAgent+key_set`.
    /// Returns once the socket exists with mode 0600.
    ///
    /// Call it from the thread that lives as long as the socket should
    /// (normally the main thread): the listener's parent-death signal fires
    /// when the *thread* that spawned it exits.
    pub fn start(key_set: &str, opts: &AgentSocketOptions) -> Result<AgentSocket, AgentError> {
        let key_set = validate_key_set_name(key_set).map_err(AgentError::Name)?;
        let runtime = opts.runtime_dir.clone().unwrap_or_else(default_runtime_dir);
        if !is_dir_usable(&runtime) {
            return Err(AgentError::Dir {
                path: runtime,
                err: io::Error::from(io::ErrorKind::NotFound),
            });
        }
        // DIR_PREFIX.PID.16HEX/agent.sock; sun_path holds 108 bytes including the NUL.
        let longest = runtime
            .join(format!("{DIR_PREFIX}.{}.{}", u32::MAX, "f".repeat(16)))
            .join(SOCKET_NAME);
        if longest.as_os_str().len() > 107 {
            return Err(AgentError::Unsafe {
                path: longest,
                why: "longer than a UNIX socket path may be (107 bytes); use a shorter runtime directory",
            });
        }
        // mkdir fails if the name exists (no symlink games in a shared /tmp); stale
        // directories of dead owners are swept first.
        let dir = PrivateDir::create(&runtime, DIR_PREFIX).map_err(|err| AgentError::Dir {
            path: runtime.clone(),
            err,
        })?;
        let mut me = AgentSocket {
            path: dir.path().join(SOCKET_NAME),
            listener: None,
            fault: Arc::new(Mutex::new(None)),
            stderr_done: None,
            dir,
        };

        let mut service = OsString::from(SERVICE);
        service.push("+");
        service.push(key_set);
        let child = Command::new(&opts.relay)
            .arg("--listen")
            .arg(&me.path)
            .arg("--die-with-parent")
            .arg("--")
            .arg(&opts.qrexec_client)
            .arg(&opts.target)
            .arg(service)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|err| AgentError::Spawn {
                program: opts.relay.clone(),
                err,
            })?;
        let mut child = child;
        if let Some(err) = child.stderr.take() {
            let seen = Arc::clone(&me.fault);
            let (done, stderr_done) = mpsc::channel();
            me.stderr_done = Some(stderr_done);
            std::thread::spawn(move || {
                crate::stderr_line::copy_lines(err, io::stderr(), |l| {
                    if fault::is_signed_login(&l) {
                        // The audit line of a signature: it is in the vault's journal.
                        return None;
                    }
                    if let Some(f) = VaultFault::of_line(&l) {
                        let mut kept = seen.lock().unwrap_or_else(|p| p.into_inner());
                        if kept.map_or(true, |k| f.rank() > k.rank()) {
                            *kept = Some(f);
                        }
                    }
                    Some(format!("split-SSH agent: {l}"))
                });
                let _ = done.send(());
            });
        }
        me.listener = Some(child);
        me.wait_ready(opts.ready_timeout)?;
        Ok(me)
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<(), AgentError> {
        let start = Instant::now();
        loop {
            if let Ok(m) = fs::symlink_metadata(&self.path) {
                if !m.file_type().is_socket() {
                    return Err(AgentError::Unsafe {
                        path: self.path.clone(),
                        why: "not a socket",
                    });
                }
                if m.uid() != geteuid().as_raw() {
                    return Err(AgentError::Unsafe {
                        path: self.path.clone(),
                        why: "owned by another user",
                    });
                }
                // The directory is 0700, so nobody else could reach the
                // socket before this chmod either.
                fs::set_permissions(&self.path, fs::Permissions::from_mode(0o600)).map_err(
                    |err| AgentError::Dir {
                        path: self.path.clone(),
                        err,
                    },
                )?;
                return Ok(());
            }
            if let Some(child) = self.listener.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.listener = None;
                    return Err(AgentError::ListenerExited {
                        status: status.to_string(),
                    });
                }
            }
            if start.elapsed() >= timeout {
                return Err(AgentError::NotReady {
                    path: self.path.clone(),
                    waited: timeout,
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The socket to give ssh (`-o IdentityAgent=PATH` or `SSH_AUTH_SOCK`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The private directory holding the socket.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Process id of the listener (`qubes-relay --listen`), while it runs.
    pub fn listener_pid(&self) -> Option<u32> {
        self.listener.as_ref().map(Child::id)
    }

    /// The vault fault reported so far on this socket's calls, if any.
    pub fn fault(&self) -> Option<VaultFault> {
        *self.fault.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stop forwarding and remove the socket (as `close`), then wait at most `wait` for the
    /// last lines of the calls to the vault (their end closes the listener's stderr), and
    /// return the vault fault they reported, if any. For explaining a failed login.
    pub fn close_and_fault(mut self, wait: Duration) -> Option<VaultFault> {
        let _ = self.shutdown();
        if let Some(done) = self.stderr_done.take() {
            let _ = done.recv_timeout(wait);
        }
        self.fault()
    }

    /// Stop forwarding and remove the socket and its directory, reporting
    /// the first failure. Drop does the same, silently.
    pub fn close(mut self) -> Result<(), AgentError> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<(), AgentError> {
        if let Some(mut child) = self.listener.take() {
            let pid = Pid::from_raw(child.id() as i32);
            let _ = kill(pid, Signal::SIGTERM);
            let start = Instant::now();
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if start.elapsed() > Duration::from_secs(2) => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        }
        let mut first_err = None;
        match fs::symlink_metadata(&self.path) {
            Ok(m) if m.file_type().is_socket() => {
                if let Err(err) = fs::remove_file(&self.path) {
                    first_err.get_or_insert(AgentError::Cleanup {
                        path: self.path.clone(),
                        err,
                    });
                }
            }
            _ => {}
        }
        match fs::remove_dir(self.dir.path()) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(err) => {
                first_err.get_or_insert(AgentError::Cleanup {
                    path: self.dir.path().to_path_buf(),
                    err,
                });
            }
        }
        match first_err {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }
}

impl Drop for AgentSocket {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_refuses_bad_names_before_touching_anything() {
        let opts = AgentSocketOptions {
            runtime_dir: Some(PathBuf::from("/nonexistent-qubes-borg")),
            ..Default::default()
        };
        assert!(matches!(
            AgentSocket::start("../x", &opts),
            Err(AgentError::Name(_))
        ));
        assert!(matches!(
            AgentSocket::start("default", &opts),
            Err(AgentError::Dir { .. })
        ));
        let long = std::env::temp_dir().join(format!(
            "qb-agent-{}-{}",
            std::process::id(),
            "x".repeat(90)
        ));
        let opts = AgentSocketOptions {
            runtime_dir: Some(long.clone()),
            ..Default::default()
        };
        std::fs::create_dir_all(&long).unwrap();
        let r = AgentSocket::start("default", &opts);
        let left = std::fs::read_dir(&long).unwrap().count();
        std::fs::remove_dir(&long).unwrap();
        assert!(matches!(r, Err(AgentError::Unsafe { .. })), "{r:?}");
        assert_eq!(left, 0, "nothing created");
    }
}

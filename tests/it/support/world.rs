//! Development machine (tests): the qubes-borg.Ssh harness, a throw-away "world" with the qube
//! roots of the qrexec stand-in (tests/sim, flat mode), a policy, the destination configuration,
//! the ssh double and the borg serve doubles (tests/doubles/).

use super::tmp::{write_exec, TempDir};
use super::{qrexec_client_vm, CLIENT, RELAY, REPO, SERVICE};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A real ed25519 public key (its private half was thrown away).
pub const HOST_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIElAgMpNFIlM5mIbLeAMOBxSTltW3e1SaOrxGo1oMYIl";

pub struct World {
    pub dir: PathBuf,
    _tmp: TempDir,
}

impl World {
    pub fn new(tag: &str) -> World {
        let tmp = TempDir::new(&format!("ssh-{tag}"));
        let dir = tmp.path().to_path_buf();
        for d in [
            "qubes/sys-backup-mnt",
            "qubes/sys-backup/etc/qubes-rpc",
            "qubes/ssh-backup/etc/qubes-rpc",
            "policy",
            "conf",
            "bin",
            "state",
            "home",
            "run",
        ] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        std::fs::set_permissions(dir.join("conf"), std::fs::Permissions::from_mode(0o755)).unwrap();
        write_exec(
            &dir.join("qubes/sys-backup/etc/qubes-rpc/qubes-borg.Ssh"),
            &format!("#!/bin/sh\nexec {SERVICE} \"$@\"\n"),
        );
        std::fs::write(
            dir.join("policy/50-test.policy"),
            "qubes-borg.Ssh * sys-backup-mnt @default allow target=sys-backup\n\
             qubes-borg.Ssh * @anyvm @anyvm deny\n\
             qubes-borg.SshAgent * sys-backup @default allow target=ssh-backup\n",
        )
        .unwrap();
        // A stand-in vault service: notes the key set asked for, answers nothing.
        write_exec(
            &dir.join("qubes/ssh-backup/etc/qubes-rpc/qubes-borg.SshAgent"),
            &format!(
                "#!/bin/sh\necho \"$1 from $QREXEC_REMOTE_DOMAIN\" >>{}\n",
                dir.join("state/agent-called").display()
            ),
        );
        symlink(
            Path::new(REPO).join("tests/doubles/ssh"),
            dir.join("bin/ssh"),
        )
        .unwrap();
        write_exec(
            &dir.join("bin/fake-borg"),
            &format!(
                "#!/bin/sh\nexec /usr/bin/python3 {REPO}/tests/doubles/borg_doubles.py serve {} \"$@\"\n",
                dir.join("state").display()
            ),
        );
        let w = World { dir, _tmp: tmp };
        w.destination("nas", "");
        w.plan("stream 0 0 0");
        w
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    /// Write conf/NAME.conf: the default destination plus `extra` lines.
    pub fn destination(&self, name: &str, extra: &str) {
        let text = format!(
            "host = {name}.example\nuser = u\nremote-path = {}\nhost-key = {HOST_KEY}\n{extra}",
            self.path("bin/fake-borg").display()
        );
        self.write_conf(name, &text);
    }

    pub fn write_conf(&self, name: &str, text: &str) {
        let p = self.path(&format!("conf/{name}.conf"));
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    }

    pub fn plan(&self, plan: &str) {
        std::fs::write(self.path("state/serve-plan"), plan).unwrap();
    }

    pub fn ssh_mode(&self, mode: &str) {
        std::fs::write(self.path("state/ssh-mode"), mode).unwrap();
    }

    /// The environment every program of the chain gets (the stand-in passes the caller's
    /// environment on to the service, as a login session in sys-backup would have its own).
    pub fn env(&self, cmd: &mut Command) {
        cmd.env("QUBES_SSH_CLIENT_QREXEC", qrexec_client_vm())
            .env("QREXEC_SIM_QUBES", self.path("qubes"))
            .env("QREXEC_SIM_SOURCE", "sys-backup-mnt")
            .env("QREXEC_SIM_POLICY_DIR", self.path("policy"))
            .env("QUBES_SSH_SERVICE_CONFIG_DIR", self.path("conf"))
            .env("QUBES_SSH_SERVICE_SSH", self.path("bin/ssh"))
            .env("QUBES_SSH_SERVICE_HEADER_TIMEOUT_MS", "3000")
            .env("XDG_RUNTIME_DIR", self.path("run"))
            .env("QUBES_BORG_QREXEC_CLIENT_VM", qrexec_client_vm())
            .env("QUBES_BORG_RELAY", RELAY)
            .env_remove("QUBES_BORG_RUNTIME_DIR")
            .env("HOME", self.path("home"))
            .env_remove("QUBES_SSH_CLIENT_TARGET")
            .env_remove("BORG_RSH")
            .env_remove("BORG_REMOTE_PATH");
    }

    pub fn client(&self, args: &[&str]) -> Command {
        let mut c = Command::new(CLIENT);
        c.args(args);
        self.env(&mut c);
        c
    }

    /// qrexec-client-vm @default qubes-borg.Ssh+ARG with nothing in front: what a compromised
    /// sys-backup-mnt can do without qubes-ssh-client.
    pub fn qrexec(&self, arg: &str) -> Command {
        let mut c = Command::new(qrexec_client_vm());
        c.arg("@default").arg(format!("qubes-borg.Ssh+{arg}"));
        self.env(&mut c);
        c
    }

    /// The service binary run directly, with `args` as qrexec would pass them.
    pub fn service(&self, args: &[&str]) -> Command {
        let mut c = Command::new(SERVICE);
        c.args(args);
        self.env(&mut c);
        c.env("QREXEC_REMOTE_DOMAIN", "sys-backup-mnt");
        c
    }

    /// argv of every ssh call so far (without argv[0]).
    pub fn ssh_calls(&self) -> Vec<Vec<String>> {
        numbered(&self.path("state"), "ssh-argv")
    }

    pub fn serve_calls(&self) -> Vec<Vec<String>> {
        numbered(&self.path("state"), "serve-argv")
    }

    pub fn serve_result(&self) -> String {
        std::fs::read_to_string(self.path("state/serve-result")).unwrap_or_default()
    }

    /// sys-backup's service log (the stand-in's journal).
    pub fn service_log(&self) -> String {
        std::fs::read_to_string(self.path("qubes/sys-backup/var/log/qubes/qrexec-services.log"))
            .unwrap_or_default()
    }

    pub fn assert_no_ssh(&self, what: &str) {
        assert!(
            self.ssh_calls().is_empty(),
            "{what}: ssh was started: {:?}",
            self.ssh_calls()
        );
    }
}

fn numbered(dir: &Path, stem: &str) -> Vec<Vec<String>> {
    let mut v = Vec::new();
    for n in 0.. {
        match std::fs::read(dir.join(format!("{stem}.{n}"))) {
            Ok(b) => v.push(
                b.split(|&c| c == 0)
                    .filter(|s| !s.is_empty())
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect(),
            ),
            Err(_) => break,
        }
    }
    v
}

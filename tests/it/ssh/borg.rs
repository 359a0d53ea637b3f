//! A real borg client (the installed borg, 1.2.4 here) in the "sys-backup-mnt" qube reaches
//! `borg serve` through qubes-ssh-client, the qrexec stand-in, qubes-ssh-service and the ssh
//! double. Recording proxies on both ends (tests/doubles/borg_doubles.py) prove that the
//! bytes borg sent and got are exactly the bytes borg serve got and sent.

use crate::support::*;
use std::path::Path;
use std::process::Command;

fn borg(w: &World, args: &[&str]) -> Out {
    borg_in(w, &w.dir, args)
}

fn borg_in(w: &World, cwd: &Path, args: &[&str]) -> Out {
    let mut c = Command::new("borg");
    c.args(args);
    w.env(&mut c);
    let rsh = format!(
        "/usr/bin/python3 {REPO}/tests/doubles/borg_doubles.py record {} {} {CLIENT}",
        w.path("state/client-up.bin").display(),
        w.path("state/client-down.bin").display()
    );
    c.env("BORG_RSH", rsh)
        .env("BORG_PASSPHRASE", "qubes-borg test passphrase")
        .env("BORG_BASE_DIR", w.path("home"))
        .env("BORG_RELOCATED_REPO_ACCESS_IS_OK", "yes")
        .env("BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK", "yes")
        .current_dir(cwd);
    run(&mut c, b"", LIMIT)
}

fn assert_byte_exact(w: &World, what: &str) {
    let read = |p: &str| std::fs::read(w.path(p)).unwrap_or_else(|e| panic!("{what}: {p}: {e}"));
    let (cu, su) = (read("state/client-up.bin"), read("state/serve-up.bin"));
    let (cd, sd) = (read("state/client-down.bin"), read("state/serve-down.bin"));
    assert!(!cu.is_empty() && !cd.is_empty(), "{what}: nothing recorded");
    assert!(
        cu == su,
        "{what}: upstream differs ({} vs {} bytes)",
        cu.len(),
        su.len()
    );
    assert!(
        cd == sd,
        "{what}: downstream differs ({} vs {} bytes)",
        cd.len(),
        sd.len()
    );
}

#[test]
fn borg_init_create_list_extract_through_qubes_ssh() {
    let w = World::new("borg");
    w.plan("proxy");
    // Some data: a few files, one of them larger than a chunk, not compressible.
    let data = w.path("data");
    std::fs::create_dir_all(data.join("sub")).unwrap();
    std::fs::write(data.join("big.bin"), stream(7, 3 * 1024 * 1024 + 5)).unwrap();
    std::fs::write(
        data.join("sub/small.txt"),
        b"hello from a network-less qube\n",
    )
    .unwrap();
    std::fs::write(data.join("empty"), b"").unwrap();

    let repo = "ssh://nas/./repo";
    let out = borg(&w, &["init", "--encryption=repokey-blake2", repo]);
    assert_eq!(out.code, Some(0), "init: {}", out.stderr);
    assert_byte_exact(&w, "init");
    assert!(
        w.path("qubes/sys-backup/repo/config").exists(),
        "repository created in sys-backup's cwd"
    );

    let out = borg(
        &w,
        &[
            "create",
            "--compression=none",
            &format!("{repo}::a1"),
            "data",
        ],
    );
    assert_eq!(out.code, Some(0), "create: {}", out.stderr);
    assert_byte_exact(&w, "create");
    let up = std::fs::metadata(w.path("state/client-up.bin"))
        .unwrap()
        .len();
    assert!(
        up > 3 * 1024 * 1024,
        "the data went up the stream ({up} bytes)"
    );

    // Each log level borg can pass on reaches borg serve.
    for (level, opt) in [
        ("--debug", Some("--debug")),
        ("--info", Some("--info")),
        ("--warning", None),
        ("--error", Some("--error")),
        ("--critical", Some("--critical")),
    ] {
        let out = borg(&w, &[level, "list", repo]);
        assert_eq!(out.code, Some(0), "list {level}: {}", out.stderr);
        if level != "--critical" && level != "--error" {
            assert!(
                String::from_utf8_lossy(&out.stdout).starts_with("a1 "),
                "list {level}"
            );
        }
        assert_byte_exact(&w, level);
        let last = w.serve_calls().pop().unwrap();
        let want: Vec<String> = std::iter::once("serve")
            .chain(opt)
            .map(String::from)
            .collect();
        assert_eq!(last, want, "{level}");
    }

    let restore = w.path("restore");
    std::fs::create_dir_all(&restore).unwrap();
    let out = borg_in(&w, &restore, &["extract", &format!("{repo}::a1")]);
    assert_eq!(out.code, Some(0), "extract: {}", out.stderr);
    assert_byte_exact(&w, "extract");
    for f in ["big.bin", "sub/small.txt", "empty"] {
        assert_eq!(
            std::fs::read(data.join(f)).unwrap(),
            std::fs::read(restore.join("data").join(f)).unwrap(),
            "{f}"
        );
    }
}

#[test]
fn borg_shows_the_one_line_error_from_sys_backup() {
    // borg reads ssh's stdout before its stderr when both are ready; the client keeps stdout
    // open until borg has had the error line on its own, so borg prints it.
    let w = World::new("borgerr");
    let out = borg(&w, &["list", "ssh://ghost/./repo"]);
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(
        out.stderr.contains(
            "Remote: qubes-ssh-client: ghost: unknown destination 'ghost': sys-backup has no "
        ),
        "{}",
        out.stderr
    );
    w.ssh_mode("host-key");
    let out = borg(&w, &["list", "ssh://nas/./repo"]);
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(
        out.stderr.contains("Remote: qubes-ssh-client: nas: host key of destination 'nas' (nas.example) does not match the pinned host-key lines"),
        "{}",
        out.stderr
    );
}

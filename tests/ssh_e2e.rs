//! End to end through qubes-ssh-client, the qrexec stand-in (tests/sim), qubes-ssh-service and
//! the ssh double, to the borg serve doubles.

mod ssh_common;
use ssh_common::*;

#[test]
fn stream_is_byte_exact_both_ways() {
    let w = World::new("exact");
    let (up, down) = (3 * 1024 * 1024 + 17, 5 * 1024 * 1024 + 3);
    w.plan(&format!("stream {up} {down} 0"));
    let out = run(
        &mut w.client(&["nas", "borg", "serve", "--info"]),
        &stream(1, up),
        LIMIT,
    );
    assert_eq!(out.code, Some(0), "stderr: {}", out.stderr);
    assert_eq!(w.serve_result(), format!("in={up} ok"));
    assert_eq!(out.stdout.len(), down);
    assert!(out.stdout == stream(2, down), "downstream bytes differ");
}

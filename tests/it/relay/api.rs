//! qubes_borg::relay as a library: preamble, first line, eof_to_dst, flow end
//! when dst's reader is gone, child::spawn.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::thread;

use crate::support::*;
use qubes_borg::child::{self, SpawnOptions};
use qubes_borg::relay::{relay, FirstLine, Flow, FlowEnd, LineVerdict, RelayError};

/// Two socketpairs standing for (our stdin, our stdout) with the far ends.
fn pairs() -> (UnixStream, UnixStream, UnixStream, UnixStream) {
    let (a_far, a) = UnixStream::pair().unwrap();
    let (b, b_far) = UnixStream::pair().unwrap();
    (a_far, a, b, b_far)
}

fn read_all(mut s: UnixStream) -> Vec<u8> {
    let mut v = Vec::new();
    s.read_to_end(&mut v).unwrap();
    v
}

#[test]
fn preamble_goes_first_and_only_once_data_flows() {
    // up: a -> b (with preamble); down: c -> d (src already at EOF, empty).
    let (mut a_far, a, b, b_far) = pairs();
    let (c_far, c, d, d_far) = pairs();
    drop(c_far);
    let data = pattern(3, 300_001);
    let d2 = data.clone();
    let w = thread::spawn(move || {
        a_far.write_all(&d2).unwrap();
    });
    let r = thread::spawn(move || read_all(b_far));
    let r2 = thread::spawn(move || read_all(d_far));
    let mut up = Flow::new(OwnedFd::from(a), OwnedFd::from(b));
    up.preamble = b"OK\n";
    let mut down = Flow::new(OwnedFd::from(c), OwnedFd::from(d));
    down.preamble = b"NEVER\n";
    // a_far is dropped by the writer thread: EOF after the data.
    let st = relay(up, down).unwrap();
    w.join().unwrap();
    let got = r.join().unwrap();
    assert_eq!(&got[..3], b"OK\n");
    assert_eq!(&got[3..], &data[..]);
    assert_eq!(st.up_bytes, data.len() as u64);
    // No byte from src: no preamble.
    assert_eq!(r2.join().unwrap(), b"");
    assert_eq!(st.down_end, FlowEnd::Eof);
}

#[test]
fn first_line_is_consumed_exactly_and_forwarding_goes_on() {
    let (a_far, a, b, b_far) = pairs();
    let (mut c_far, c, d, d_far) = pairs();
    drop(a_far);
    let mut payload = b"OK 1\n".to_vec();
    payload.extend_from_slice(&pattern(5, 100_000));
    let p2 = payload.clone();
    thread::spawn(move || c_far.write_all(&p2).unwrap());
    let r = thread::spawn(move || read_all(d_far));
    let _ = b_far;
    let mut seen = Vec::new();
    let mut on_line = |l: &[u8]| {
        seen = l.to_vec();
        LineVerdict::Forward
    };
    let mut down = Flow::new(OwnedFd::from(c), OwnedFd::from(d));
    down.first_line = Some(FirstLine {
        max: 16,
        on_line: &mut on_line,
    });
    let st = relay(Flow::new(OwnedFd::from(a), OwnedFd::from(b)), down).unwrap();
    assert_eq!(seen, b"OK 1\n");
    assert_eq!(r.join().unwrap(), &payload[5..]);
    assert!(!st.stopped_by_line);
}

#[test]
fn first_line_stop_ends_the_relay_without_reading_past_the_newline() {
    let (_a_far, a, b, _b_far) = pairs();
    let (mut c_far, c, d, d_far) = pairs();
    c_far.write_all(b"ERR nope\nrest-stays").unwrap();
    let mut stop = |_: &[u8]| LineVerdict::Stop;
    let mut down = Flow::new(c.as_fd(), OwnedFd::from(d));
    down.first_line = Some(FirstLine {
        max: 64,
        on_line: &mut stop,
    });
    let st = relay(Flow::new(OwnedFd::from(a), OwnedFd::from(b)), down).unwrap();
    assert!(st.stopped_by_line);
    // The bytes after the newline are still in the socket for the caller.
    c.set_nonblocking(true).unwrap();
    let mut rest = [0u8; 64];
    let n = (&c).read(&mut rest).unwrap();
    assert_eq!(&rest[..n], b"rest-stays");
    drop(d_far);
}

#[test]
fn first_line_too_long_or_cut_short_is_an_error() {
    for (input, want_long) in [(&b"aaaaaaaaaaaaaaaaaaaa\n"[..], true), (&b"abc"[..], false)] {
        let (_a_far, a, b, _b_far) = pairs();
        let (mut c_far, c, d, _d_far) = pairs();
        c_far.write_all(input).unwrap();
        drop(c_far);
        let mut fwd = |_: &[u8]| LineVerdict::Forward;
        let mut down = Flow::new(OwnedFd::from(c), OwnedFd::from(d));
        down.first_line = Some(FirstLine {
            max: 8,
            on_line: &mut fwd,
        });
        let err = relay(Flow::new(OwnedFd::from(a), OwnedFd::from(b)), down).unwrap_err();
        if want_long {
            assert!(
                matches!(err, RelayError::LineTooLong { max: 8, .. }),
                "{err:?}"
            );
        } else {
            assert!(matches!(err, RelayError::LineEof { got: 3, .. }), "{err:?}");
        }
    }
}

#[test]
fn eof_to_dst_false_leaves_dst_open_for_the_caller() {
    let (mut a_far, a, b, mut b_far) = pairs();
    let (c_far, c, d, _d_far) = pairs();
    drop(c_far);
    a_far.write_all(b"body").unwrap();
    drop(a_far);
    let mut up = Flow::new(OwnedFd::from(a), b.as_fd());
    up.eof_to_dst = false;
    relay(up, Flow::new(OwnedFd::from(c), OwnedFd::from(d))).unwrap();
    (&b).write_all(b"+trailer").unwrap();
    drop(b);
    let mut got = Vec::new();
    b_far.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"body+trailer");
}

#[test]
fn flow_ends_when_the_child_stops_reading_and_exit_code_is_its_own() {
    // The child exits at once without reading stdin; our stdin stays open
    // and idle. The relay must still end (dst's reader gone), not hang.
    let argv: Vec<OsString> = ["sh", "-c", "echo bye; exit 3"]
        .iter()
        .map(OsString::from)
        .collect();
    let mut ch = child::spawn(&argv, SpawnOptions::default()).unwrap();
    let (_a_far, a, b, b_far) = pairs();
    let r = thread::spawn(move || read_all(b_far));
    let st = relay(
        Flow::new(OwnedFd::from(a), ch.stdin.take().unwrap()),
        Flow::new(ch.stdout.take().unwrap(), OwnedFd::from(b)),
    )
    .unwrap();
    assert_eq!(st.up_end, FlowEnd::DstGone);
    assert_eq!(st.down_end, FlowEnd::Eof);
    assert_eq!(r.join().unwrap(), b"bye\n");
    assert_eq!(ch.wait_code().unwrap(), 3);
}

#[test]
fn child_gets_default_sigpipe_and_empty_signal_mask() {
    let argv: Vec<OsString> = ["sh", "-c", "grep -E '^Sig(Blk|Ign)' /proc/self/status"]
        .iter()
        .map(OsString::from)
        .collect();
    let mut ch = child::spawn(&argv, SpawnOptions::default()).unwrap();
    drop(ch.stdin.take());
    let mut out = String::new();
    std::fs::File::from(ch.stdout.take().unwrap())
        .read_to_string(&mut out)
        .unwrap();
    assert_eq!(ch.wait_code().unwrap(), 0);
    for line in out.lines() {
        let mask = u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap();
        assert_eq!(mask & (1 << (13 - 1)), 0, "SIGPIPE in {line}");
        if line.starts_with("SigBlk") {
            assert_eq!(mask, 0, "{line}");
        }
    }
}

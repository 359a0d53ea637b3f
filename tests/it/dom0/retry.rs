//! Development machine: `qvm-backup-borg backup` tries a qube again after a transient failure
//! (the job's `reason` says link or lock), each attempt in a fresh disposable, never after a
//! permanent one, and at most `retries` times; every try is logged and counted in the summary.

use qubes_borg::dom0::qubes::{Fake, Reply};
use qubes_borg::dom0::session::Outcome;
use qubes_borg::job::progress::{Event, Phase, Reason, Stats};
use qubes_borg::job::spec::{self, Op};

use super::backup::{opts, run, timestamp};
use crate::support::dom0::{backup_attempt, cfg, job, tmp, LS};

fn job_failing(reason: Option<Reason>, error: &str) -> Reply {
    let mut events = vec![Event::Phase(Phase::Create)];
    events.extend(reason.map(Event::Reason));
    events.push(Event::Error(error.into()));
    job(&events, false)
}

fn job_ok() -> Reply {
    job(
        &[
            Event::Phase(Phase::Create),
            Event::Stats(Stats {
                original: 5000,
                deduplicated: 10,
                compressed: 20,
                files: 3,
            }),
        ],
        true,
    )
}

/// The calls of one attempt at backing up work, the job answering `reply`.
fn attempt(f: &mut Fake, reply: Reply) {
    backup_attempt(f, "work", "loop7", "loop8", reply);
}

#[test]
fn a_lost_link_is_retried_in_a_fresh_disposable_and_the_summary_counts_the_attempts() {
    let d = tmp("retry-link");
    let c = cfg(&d, "retries = 2\nretry_delay = 1\nlock_wait = 7\n");
    let mut f = Fake::default();
    f.expect(LS, Reply::ok("work|AppVM|Halted|True\n"));
    attempt(
        &mut f,
        job_failing(Some(Reason::Link), "borg create failed: Connection reset"),
    );
    attempt(&mut f, job_ok());
    timestamp(&mut f, "work");
    let t0 = std::time::Instant::now();
    let (r, out, err) = run(&c, &opts(), &mut f);
    assert_eq!(r, Outcome::Ok, "{err}");
    assert!(f.expected.is_empty(), "calls not made: {:?}", f.expected);
    assert!(
        t0.elapsed() >= std::time::Duration::from_secs(1),
        "waited retry_delay"
    );
    assert!(
        err.contains("work: attempt 1 failed (link to the borg server failed)")
            && err.contains("trying again in 1 s (1 of 2 retries)"),
        "{err}"
    );
    assert!(out.contains("ok (2 attempts)"), "{out}");
    // borg waits lock_wait for the repository's lock
    let s = spec::decode(&mut &f.requests[0][..]).unwrap();
    let Op::Create(cr) = &s.op else { panic!() };
    assert_eq!(cr.lock_wait, Some(7));
}

#[test]
fn a_lock_that_stays_fails_after_the_configured_retries_with_advice() {
    let d = tmp("retry-lock");
    let c = cfg(&d, "retries = 1\nretry_delay = 1\n");
    let mut f = Fake::default();
    f.expect(LS, Reply::ok("work|AppVM|Halted|True\n"));
    for _ in 0..2 {
        attempt(
            &mut f,
            job_failing(
                Some(Reason::Lock),
                "borg create failed: Failed to create/acquire the lock /home/borg/repo/lock.exclusive (timeout).",
            ),
        );
    }
    let (r, out, err) = run(&c, &opts(), &mut f);
    assert_eq!(r, Outcome::Failed);
    assert!(f.expected.is_empty(), "calls not made: {:?}", f.expected);
    assert!(
        out.contains("FAILED (2 attempts): repository locked on the server"),
        "{out}"
    );
    // no link of ours was lost: someone else's lock, or a dead server's: say how to break it
    assert!(
        err.contains("borg break-lock ssh://borgbase/./repo"),
        "{err}"
    );
    assert!(
        !f.calls.iter().flatten().any(|a| a.contains("break-lock")),
        "never broken by the tool"
    );
}

#[test]
fn permanent_failures_and_failures_without_a_category_are_not_retried() {
    for (reason, shown) in [
        (Some(Reason::Passphrase), "wrong passphrase or key file"),
        (Some(Reason::Repository), "no repository there"),
        (Some(Reason::Space), "server disk or quota full"),
        (Some(Reason::Mount), "volume cannot be mounted"),
        (None, "borg create failed"),
    ] {
        let d = tmp("retry-permanent");
        let c = cfg(&d, "retries = 3\nretry_delay = 1\n");
        let mut f = Fake::default();
        f.expect(LS, Reply::ok("work|AppVM|Halted|True\n"));
        attempt(&mut f, job_failing(reason, "borg create failed"));
        let (r, out, err) = run(&c, &opts(), &mut f);
        assert_eq!(r, Outcome::Failed, "{reason:?}");
        assert!(f.expected.is_empty(), "{reason:?}: {:?}", f.expected);
        assert!(!err.contains("trying again"), "{reason:?}: {err}");
        assert!(
            out.contains(&format!("FAILED: {shown}")),
            "{reason:?}: {out}"
        );
    }
}

#[test]
fn zero_retries_means_one_attempt() {
    let d = tmp("retry-zero");
    let c = cfg(&d, "retries = 0\n");
    let mut f = Fake::default();
    f.expect(LS, Reply::ok("work|AppVM|Halted|True\n"));
    attempt(
        &mut f,
        job_failing(Some(Reason::Link), "borg create failed"),
    );
    let (r, _out, err) = run(&c, &opts(), &mut f);
    assert_eq!(r, Outcome::Failed);
    assert!(f.expected.is_empty());
    assert!(
        err.contains("the link to the borg server (qube sys-backup"),
        "{err}"
    );
}

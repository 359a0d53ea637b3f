#!/usr/bin/env bash
# Suite "backup": `qvm-backup-borg backup` in the simulated dom0 backs up app qubes through the
# whole chain (disposable sys-backup-mnt, qubes-borg.Ssh via sys-backup, split SSH, real borg and
# sshd). Archives are checked with borg directly, in a fresh sys-backup-mnt. Run by
# tests/e2e/run as root; each test_* function runs in its own process.
# shellcheck disable=SC2016  # commands in single quotes expand inside the qube
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# The dom0 tool as installed by `make install-dom0`; output in $S/last-run.log, exit status kept.
run_backup() {
    local rc=0
    d0 qvm-backup-borg backup "$@" >"$S/last-run.log" 2>&1 || rc=$?
    return "$rc"
}
last_archive() { newest_archive "$1"; }
pool() { echo "$S/dom0sim/var-lib-qubes/appvms/$1"; }

suite_setup() {
    setup_repository tests/e2e/backup.sh '[qube vault-data]
mode = image'
}

test_three_qubes_backed_up_and_extracted_byte_exact() {
    # work runs: what it writes after its start is only in its running copy
    in_qube work sh -c 'echo written-after-start > /home/user/after-start.txt'
    run_backup || fail "backup failed: $(cat "$S/last-run.log")"
    assert_nothing_left
    local q a
    for q in work personal; do
        a=$(last_archive "$q")
        [ -n "$a" ] || fail "no archive of $q"
        in_qube sys-backup-mnt sh -c 'rm -rf /root/x && mkdir /root/x && cd /root/x && exec env BORG_RSH=qubes-ssh-client BORG_PASSPHRASE="$1" borg extract --sparse "$2::$3"' sh "$(pass)" "$(repo)" "$a"
        [ ! -e "$S/roots/sys-backup-mnt/root/x/home/user/after-start.txt" ] ||
            fail "$q: a change made after the qube started is in the archive"
        python3 "$SIM_DIR/treedata.py" compare "$S/dom0sim/expected/$q" "$S/roots/sys-backup-mnt/root/x" ||
            fail "$q: extracted tree differs from the volume"
    done
    # image mode: the archive holds the committed volume itself
    a=$(last_archive vault-data)
    [ -n "$a" ] || fail "no archive of vault-data"
    assert_eq "$(sha256sum < "$(pool vault-data)/private.img")" \
        "$(mnt_borg extract --stdout "$(repo)::$a" dev/xvdi | sha256sum)" "vault-data image"
    [ -n "$(d0 qvm-prefs personal backup_timestamp)" ] || fail "backup_timestamp not set"
    d0 qvm-shutdown --wait sys-backup-mnt
}

test_second_run_is_incremental() {
    run_backup personal || fail "first run: $(cat "$S/last-run.log")"
    run_backup personal || fail "second run: $(cat "$S/last-run.log")"
    local stats
    stats=$(mnt_borg info --json "$(repo)::$(last_archive personal)")
    d0 qvm-shutdown --wait sys-backup-mnt
    # nothing changed: the second archive adds (almost) nothing to the repository
    python3 -c '
import json, sys
s = json.loads(sys.argv[1])["archives"][0]["stats"]
assert s["original_size"] > 1 << 20, s
assert s["deduplicated_size"] < s["original_size"] // 20, s' "$stats" || fail "not incremental: $stats"
}

test_one_qube_failing_while_the_others_succeed() {
    local img
    img=$(pool personal)/private.img
    cp --sparse=always "$img" "$S/personal.saved"
    # personal's filesystem is unreadable (superblock zeroed): its job fails, work's does not
    dd if=/dev/zero of="$img" bs=1024 seek=1 count=1 conv=notrunc status=none
    local rc=0
    run_backup personal work || rc=$?
    mv "$S/personal.saved" "$img"
    assert_eq 1 "$rc" "exit status with one qube failing ($(cat "$S/last-run.log"))"
    grep personal "$S/last-run.log" | grep -iE 'fail|error' >/dev/null || fail "personal's failure not reported"
    assert_nothing_left
    local before after
    before=$(last_archive work)
    [ -n "$before" ] || fail "work has no archive"
    run_backup work || fail "next run: $(cat "$S/last-run.log")"
    after=$(last_archive work)
    [ "$after" != "$before" ] || fail "no new archive of work"
    d0 qvm-shutdown --wait sys-backup-mnt
}

# Interrupt the tool at its N-th qvm-* call (tests/sim/qvm_sim.py inject_fault), for every N of
# a one-qube run; with SIGINT it must clean up itself, after SIGKILL the next run must.
interrupt_every_step() { # SIGNAL
    local sig=$1 n=1 total rc
    : > "$S/count.jsonl"
    QUBES_SIM_DOM0_CALLS=$S/count.jsonl run_backup personal || fail "clean run: $(cat "$S/last-run.log")"
    total=$(wc -l < "$S/count.jsonl")
    while [ "$n" -le "$total" ]; do
        echo "$n $sig" > "$S/dom0sim/fault"
        rc=0
        run_backup personal || rc=$?
        rm -f "$S/dom0sim/fault"
        case "$sig" in
            INT)
                [ "$rc" = 130 ] || [ "$rc" = 0 ] ||
                    fail "SIGINT at call $n: exit $rc: $(cat "$S/last-run.log")"
                assert_nothing_left ;;
            KILL)
                [ "$rc" = 137 ] || [ "$rc" = 0 ] || fail "SIGKILL at call $n: exit $rc"
                run_backup personal || fail "run after SIGKILL at call $n: $(cat "$S/last-run.log")"
                assert_nothing_left ;;
        esac
        n=$((n + 1))
    done
    echo "interrupted at each of $total calls"
}

test_sigint_at_every_step_leaves_nothing() { interrupt_every_step INT; }

test_sigkill_at_every_step_next_run_cleans_up_and_succeeds() { interrupt_every_step KILL; }

test_stale_lock_is_taken_over_a_held_one_is_not() {
    # a lock file left by a run that died (no one holds the flock)
    d0 sh -c 'mkdir -p /run/qubes-borg && echo 999999 > /run/qubes-borg/lock'
    run_backup personal || fail "stale lock: $(cat "$S/last-run.log")"
    # a lock held by a live process
    "$QEXEC" dom0 sh -c 'exec 9>>/run/qubes-borg/lock; flock -x 9; echo "$$" > /run/qubes-borg/lock; exec sleep 30' &
    local holder=$! rc=0
    sleep 1
    run_backup personal || rc=$?
    kill "$holder" 2>/dev/null || true
    wait "$holder" 2>/dev/null || true
    # 75 (EX_TEMPFAIL): docs/USAGE.md, src/exit.rs
    assert_eq 75 "$rc" "exit status while another run holds the lock ($(cat "$S/last-run.log"))"
    assert_nothing_left
}

test_passphrase_never_in_argv_or_environ() {
    local p scan
    p=$(pass)
    scan=$S/scan.out
    # scan every process (all qubes, dom0, the host) while a run goes on
    python3 - "$p" "$scan" <<'PY' &
import os, sys, time
secret, out = sys.argv[1].encode(), sys.argv[2]
seen, hits = set(), []
end = time.time() + 60
while time.time() < end and not os.path.exists(out + ".stop"):
    for pid in filter(str.isdigit, os.listdir("/proc")):
        if int(pid) == os.getpid():
            continue
        for what in ("cmdline", "environ"):
            try:
                with open(f"/proc/{pid}/{what}", "rb") as f:
                    data = f.read()
            except OSError:
                continue
            seen.add(pid)
            if secret in data:
                hits.append(f"{pid} {what}: {data[:200]!r}")
    time.sleep(0.02)
with open(out, "w") as f:
    f.write(f"hits {len(hits)} in {len(seen)} processes\n" + "".join(h + "\n" for h in hits))
PY
    local scanner=$!
    run_backup personal vault-data || fail "backup: $(cat "$S/last-run.log")"
    touch "$scan.stop"
    wait "$scanner"
    rm -f "$scan.stop"
    cat "$scan"
    case "$(head -n 1 "$scan")" in
        "hits 0 in "*) ;;
        *) fail "processes holding the passphrase in argv/environ: $(cat "$scan")" ;;
    esac
    # the scan saw the run's processes (borg in the disposable among them): it can fail
    [ "$(awk 'NR==1 {print $4}' "$scan")" -gt 50 ] || fail "the scan saw too few processes"
}

test_hostile_job_output_is_contained() {
    # the disposable's template gets a job that lies: escape sequences, a huge line, absurd
    # sizes, then a success it did not earn
    local svc=$S/roots/sys-backup-mnt/usr/local/etc/qubes-rpc/qubes-borg.BackupJob
    mkdir -p "${svc%/*}"
    cat > "$svc" <<'EOF'
#!/bin/sh
cat >/dev/null
printf '\033]0;pwned\007\033[2J\033[31mred\r\n'
head -c 3000000 /dev/zero | tr '\0' 'A'
printf '\nprogress 99999999999999999999999 -5\n'
printf 'done archive=../../etc/passwd original=18446744073709551616 deduplicated=-1\n'
exit 0
EOF
    chmod 0755 "$svc"
    local rc=0
    timeout 120 "$QEXEC" dom0 qvm-backup-borg backup personal >"$S/hostile.out" 2>&1 || rc=$?
    rm -f "$svc"
    [ "$rc" != 124 ] || fail "the tool hung on hostile output"
    assert_eq 1 "$rc" "exit status for a lying job ($(head -c 2000 "$S/hostile.out"))"
    if LC_ALL=C grep -q $'\033' "$S/hostile.out"; then fail "an escape sequence reached dom0's terminal"; fi
    local longest
    longest=$(awk '{ if (length($0) > m) m = length($0) } END { print m + 0 }' "$S/hostile.out")
    [ "$longest" -lt 4096 ] || fail "a line of $longest bytes reached dom0's terminal"
    assert_nothing_left
}

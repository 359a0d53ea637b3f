#!/usr/bin/env bash
# Suite "faults" (issue #15, dom0 side): what a user's bad night does to `qvm-backup-borg backup`
# in the simulated Qubes, each fault reported in bounded time, named for what it is and the qube
# it hit, and the next run succeeding without a human (or with the one documented command):
# borg killed mid-backup, a cache lock whose pid is alive again (pid reuse in a fresh disposable),
# the link refused briefly (retried), the link dropped and kept cut, the server's repository lock
# left by a server under another hostname, the server's disk full. After each: `borg check`
# clean, no attachment, loop device, mount or running disposable left. The repository lives on a
# small loop-mounted ext4 in the "internet" namespace; links are cut with nftables inside
# sys-backup's network namespace (this kernel has no netem). Timing is shortened through
# backup.conf (lock_wait, retries, retry_delay) and the server's sshd (ClientAlive*).
# FAULTS_FIGURES=FILE appends the measured times there. Run by tests/e2e/run as root.
# shellcheck disable=SC2016  # commands in single quotes expand inside the qube
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

figure() { echo "$1: $2" | tee -a "${FAULTS_FIGURES:-/dev/null}"; }
# qvm-backup-borg backup ARGS: output in $S/last-run.log, $took = seconds, exit status kept.
run_backup() {
    local rc=0 t0=$SECONDS
    d0 qvm-backup-borg backup "$@" >"$S/last-run.log" 2>&1 || rc=$?
    took=$((SECONDS - t0))
    return "$rc"
}
log() { cat "$S/last-run.log"; }
# The disposable must be halted after a check, as after a run.
borg_check_clean() {
    mnt_borg check "$(repo)" || fail "borg check found problems"
    d0 qvm-shutdown --wait sys-backup-mnt
}
after_each() { borg_check_clean; assert_nothing_left; }
in_net() { nsenter --target "$(sim_pid "$S" sys-backup)" --net -- "$@"; }
in_inet() { nsenter --target "$(sim_pid "$S" internet)" --mount --net --uts -- "$@"; }
# nftables: `refuse` closes the server's port (its namespace answers a connect with a reset:
# "Connection refused" at once), `drop` makes the server vanish in sys-backup's namespace
# (connects and keep-alives time out).
cut_link() { # refuse|drop
    if [ "$1" = refuse ]; then
        in_inet nft -f - <<NFT
table inet qubes_borg_fault {
    chain in { type filter hook input priority 0; tcp dport 22 reject with tcp reset; }
}
NFT
    else
        in_net nft -f - <<NFT
table inet qubes_borg_fault {
    chain out { type filter hook output priority 0; ip daddr $SIM_NET_SSHD drop; }
    chain in { type filter hook input priority 0; ip saddr $SIM_NET_SSHD drop; }
}
NFT
    fi
}
restore_link() {
    in_net nft delete table inet qubes_borg_fault 2>/dev/null || true
    in_inet nft delete table inet qubes_borg_fault 2>/dev/null || true
}
# Adds N MiB of random data to a halted qube's committed private volume (its /home/user).
add_data() { # QUBE MIB NAME
    local m
    m=$(mktemp -d)
    mount -o loop "$S/dom0sim/var-lib-qubes/appvms/$1/private.img" "$m"
    head -c "$(($2 << 20))" /dev/urandom > "$m/home/user/$3"
    umount "$m"
    rmdir "$m"
}
# pids of processes in QUBE's mount namespace whose command line matches PATTERN (the sim shares
# the host's pid namespace: never touch a process of another qube or of the host)
pids_in() { # QUBE PATTERN
    local ns p
    ns=$(readlink "/proc/$(sim_pid "$S" "$1" 2>/dev/null)/ns/mnt" 2>/dev/null) || return 0  # halted
    for p in $(pgrep -f -- "$2" || true); do
        [ "$(readlink "/proc/$p/ns/mnt" 2>/dev/null)" = "$ns" ] && echo "$p"
    done
    return 0
}

# Waits (600 polls at most) until borg create runs in the disposable and holds its cache lock
# (mid-backup: its session to the server open); prints its pids (none if it never did).
borg_create_pids() {
    local pids=""
    for _ in $(seq 1 600); do
        pids=$(pids_in sys-backup-mnt 'borg create')
        if [ -n "$pids" ] && in_qube sys-backup-mnt sh -c 'ls -d /run/qubes-borg/state/.cache/borg/*/lock.exclusive' >/dev/null 2>&1; then
            echo "$pids"
            return 0
        fi
        sleep 0.05
    done
    echo "$pids"
}

suite_setup() {
    # the repository on its own small filesystem (ENOSPC for the disk-full test): a loop device
    # made here, a node for it in the internet namespace's /dev; detached at once, so the kernel
    # frees it when that namespace's mount goes away (tests/sim/down)
    truncate -s 320M "$S/internet/repo-disk.img"
    mkfs.ext4 -q -F "$S/internet/repo-disk.img"
    local lp
    lp=$(losetup --find --show "$S/internet/repo-disk.img")
    local major minor
    read -r major minor < <(stat -c '%Hr %Lr' "$lp")   # decimal device numbers
    in_inet mknod /dev/qubes-borg-repo-disk b "$major" "$minor"
    in_inet sh -c 'mkdir -p /home/borg/disk && mount /dev/qubes-borg-repo-disk /home/borg/disk &&
        mkdir -p /home/borg/disk/repo /home/borg/repo && chown borg:borg /home/borg/disk/repo /home/borg/repo &&
        mount --bind /home/borg/disk/repo /home/borg/repo'
    losetup --detach "$lp"
    # the server ends a dead session after 3 x 5 s without an answer (docs/USAGE.md: server side)
    in_inet sed -i -e 's/^ClientAliveInterval .*/ClientAliveInterval 5/' \
        -e 's/^ClientAliveCountMax .*/ClientAliveCountMax 3/' /etc/ssh/qubes-sim-sshd_config
    kill -HUP "$(cat "$S/internet/sshd.pid")"
    setup_repository tests/e2e/faults.sh 'qubes = personal
lock_wait = 5
retry_delay = 3
retries = 2'
    # the same with no retry, and with one
    d0 sh -c 'cd /etc/qubes-borg && umask 077 &&
        sed "s/^retries = 2\$/retries = 0/" backup.conf > noretry.conf &&
        sed "s/^retries = 2\$/retries = 1/" backup.conf > oneretry.conf'
    # room for the data the tests add (qvm-volume resize, then the filesystem, as Qubes' own
    # qubes.ResizeDisk does inside the qube)
    d0 qvm-volume resize personal:private $((448 << 20))
    e2fsck -fp "$S/dom0sim/var-lib-qubes/appvms/personal/private.img" >/dev/null
    resize2fs -f "$S/dom0sim/var-lib-qubes/appvms/personal/private.img" >/dev/null 2>&1
    # enough new data that borg is still sending when it is killed
    add_data personal 96 big-1.bin
}

test_borg_killed_mid_backup_next_run_succeeds() {
    run_backup &
    local runner=$! pids
    # (killed at once: on an idle machine the whole create takes about a second)
    pids=$(borg_create_pids)
    [ -n "$pids" ] || fail "borg create never ran: $(log)"
    # pgrep may also list a process that ended since (a child of borg's between fork and exec):
    # at least one must be killed, the others may be gone
    local p killed=""
    for p in $pids; do kill -KILL "$p" 2>/dev/null && killed=1; done
    [ -n "$killed" ] || fail "borg create ended before it could be killed: $(log)"
    local rc=0
    wait "$runner" || rc=$?
    assert_eq 1 "$rc" "exit status after borg was killed ($(log))"
    grep 'personal' "$S/last-run.log" | grep -q 'FAILED' || fail "the failure does not name the qube: $(log)"
    assert_not_contains "$(log)" "trying again" "a killed borg is not a transient failure"
    figure "borg killed mid-backup: says" "$(grep 'personal: FAILED' "$S/last-run.log" | head -n 1)"
    assert_nothing_left
    run_backup || fail "the run after the kill: $(log)"
    assert_contains "$(log)" "removed borg's cache lock left by an earlier run" "stale cache lock"
    assert_not_contains "$(log)" "break-lock" "no manual step"
    figure "borg killed mid-backup: next run" "${took} s, ok"
    after_each
}

test_a_cache_lock_whose_pid_lives_again_does_not_block() {
    # In a fresh disposable pids start again from 1, so the pid of a borg killed in the last one
    # may belong to a live process now: borg (platform/posix.pyx process_alive) then waits for
    # a lock nobody holds. Plant such a lock (pid 1, alive in every qube) in borg's state image.
    local m id
    m=$(mktemp -d)
    mount -o loop "$S/dom0sim/var-lib-qubes-borg/state.img" "$m"
    id=$(basename "$(ls -d "$m"/.cache/borg/*/)")
    mkdir "$m/.cache/borg/$id/lock.exclusive"
    : > "$m/.cache/borg/$id/lock.exclusive/qubes-borg@sys-backup-mnt.1-0"
    printf '{"exclusive": [["qubes-borg@sys-backup-mnt", 1, 0]]}' > "$m/.cache/borg/$id/lock.roster"
    # borg alone cannot tell: with a copy of that state in the disposable, borg waits for the
    # lock and gives up
    d0 qvm-start sys-backup-mnt
    local base=$S/roots/sys-backup-mnt/root/borg-base
    mkdir -p "$base/.cache/borg"
    cp -a "$m/.cache/borg/$id" "$base/.cache/borg/"
    cp -a "$m/.config" "$base/"
    umount "$m"
    rmdir "$m"
    local rc=0 out
    out=$(in_qube sys-backup-mnt BORG_BASE_DIR=/root/borg-base BORG_RSH=qubes-ssh-client \
        BORG_PASSPHRASE="$(pass)" borg info --lock-wait 2 "$(repo)" 2>&1) || rc=$?
    d0 qvm-shutdown --wait sys-backup-mnt
    assert_eq 2 "$rc" "borg with a lock of its own host id and a live pid ($out)"
    assert_contains "$out" "/root/borg-base/.cache/borg/$id/lock.exclusive (timeout)" "borg's own verdict"
    run_backup || fail "a cache lock of a dead run with a live pid blocked the backup: $(log)"
    assert_contains "$(log)" "removed borg's cache lock left by an earlier run (borg pid 1 " "cleared"
    figure "cache lock of a gone disposable, pid alive again" "${took} s, ok (borg alone: exit $rc)"
    after_each
}

test_link_refused_briefly_the_retry_succeeds() {
    add_data personal 1 small-2.bin
    cut_link refuse
    : > "$S/last-run.log"
    # restored while the tool waits retry_delay (3 s) after the first, refused, attempt
    local t0=$SECONDS
    (
        for _ in $(seq 1 600); do
            grep -q 'attempt 1 failed' "$S/last-run.log" 2>/dev/null && break
            sleep 0.1
        done
        echo $((SECONDS - t0)) > "$S/first-failure"
        restore_link
    ) &
    local restorer=$!
    run_backup || { wait "$restorer"; fail "no successful retry: $(log)"; }
    wait "$restorer"
    assert_contains "$(log)" "personal: attempt 1 failed (link to the borg server failed)" "retry logged"
    grep -q 'ok (2 attempts)' "$S/last-run.log" || grep -q 'ok (3 attempts)' "$S/last-run.log" ||
        fail "summary does not count the attempts: $(log)"
    grep -E 'attempt 1 failed' "$S/last-run.log"
    figure "link refused: first attempt reported failed after" "$(cat "$S/first-failure") s (run incl. retry: ${took} s, ok)"
    after_each
}

test_link_kept_cut_fails_in_bounded_time_and_the_next_run_works() {
    cut_link drop
    local rc=0
    # (no retry here: each try ends at ssh's ConnectTimeout, 30 s; the retries are shown above)
    run_backup --config /etc/qubes-borg/noretry.conf || rc=$?
    restore_link
    assert_eq 1 "$rc" "exit status with the link cut ($(log))"
    [ "$took" -le 90 ] || fail "took $took s to give up"
    assert_contains "$(log)" "personal: the link to the borg server (qube sys-backup" "names the link and the qube"
    grep -q 'FAILED: link to the borg server failed' "$S/last-run.log" || fail "summary: $(log)"
    assert_nothing_left
    figure "link dropped and kept cut (retries = 0)" "${took} s to FAILED"
    run_backup || fail "run after the link came back: $(log)"
    figure "link dropped: next run after restore" "${took} s, ok"
    after_each
}

test_link_lost_mid_backup_is_named_retried_cleaned_up_and_the_next_run_works() {
    # the link goes while borg create runs (its ssh session to the server open, the cache
    # locked): borg is held stopped for the cut, so the cut lands mid-job whatever the speed
    add_data personal 24 lost-1.bin
    : > "$S/last-run.log"
    local t0=$SECONDS
    run_backup --config /etc/qubes-borg/oneretry.conf &
    local runner=$! pids p
    pids=$(borg_create_pids)
    [ -n "$pids" ] || { wait "$runner" || true; fail "borg create never ran: $(log)"; }
    for p in $pids; do kill -STOP "$p" 2>/dev/null || true; done
    cut_link drop
    for p in $pids; do kill -CONT "$p" 2>/dev/null || true; done
    local rc=0
    wait "$runner" || rc=$?
    local took=$((SECONDS - t0))
    # the server's side, link still cut: its sshd (ClientAliveInterval 15, CountMax 3, as
    # docs/PROTOCOL.md advises) ends the dead session and borg serve exits, freeing the lock
    local waited=0
    while [ -n "$(pids_in internet 'borg serve')" ]; do
        [ "$waited" -lt 60 ] || { restore_link; fail "borg serve still runs $took+$waited s after the run began"; }
        sleep 1
        waited=$((waited + 1))
    done
    in_inet grep -q 'Timeout, client not responding' /var/tmp/sshd.log || { restore_link; fail "sshd did not time the dead session out"; }
    restore_link
    assert_eq 1 "$rc" "exit status with the link lost and kept cut ($(log))"
    # the first attempt ends at ssh's keep-alive (the session was open), in words
    assert_contains "$(log)" "lost: no answer for 60 s (ssh keep-alive)" "the lost link named by qubes-ssh-client"
    assert_contains "$(log)" "personal: attempt 1 failed (link to the borg server failed)" "the first attempt's failure"
    assert_contains "$(log)" "trying again in 3 s (1 of 1 retries)" "retried per retries and retry_delay"
    assert_not_contains "$(log)" "attempt 2 failed" "retries = 1: no third attempt"
    assert_contains "$(log)" "personal: the link to the borg server (qube sys-backup" "the link and the qube named"
    grep -q 'FAILED (2 attempts): link to the borg server failed' "$S/last-run.log" || fail "summary: $(log)"
    assert_nothing_left
    assert_lock_free
    figure "link lost mid-backup, kept cut (retries = 1, retry_delay = 3)" "${took} s to FAILED"
    run_backup || fail "run after the link came back: $(log)"
    assert_contains "$(log)" "personal" "the next run backs up personal"
    figure "link lost mid-backup: next run after restore" "${took} s, ok"
    after_each
}

test_server_lock_of_a_dead_server_is_named_and_breaks_only_by_hand() {
    # a borg serve on a server whose hostname was different held the lock when it died: the
    # server's borg cannot tell it is stale (other host id), and waits lock_wait for it
    in_inet su -s /bin/sh borg -c 'BORG_HOST_ID=old-server@42 exec borg with-lock /home/borg/repo sleep 600' </dev/null >/dev/null 2>&1 &
    local holder=$!
    for _ in $(seq 1 100); do
        in_inet test -d /home/borg/repo/lock.exclusive && break
        sleep 0.1
    done
    sleep 0.5
    local pids
    pids=$(pids_in internet 'borg with-lock /home/borg/repo sleep 600'; pids_in internet '^sleep 600$')
    [ -n "$pids" ] || fail "the lock holder did not run"
    local p
    for p in $pids; do kill -KILL "$p" 2>/dev/null || true; done
    wait "$holder" 2>/dev/null || true
    in_inet sh -c 'ls /home/borg/repo/lock.exclusive' | grep -q '^old-server@42\.' || fail "no lock left"
    local rc=0
    run_backup || rc=$?
    assert_eq 1 "$rc" "exit status with the repository locked ($(log))"
    grep -q 'FAILED (3 attempts): repository locked on the server' "$S/last-run.log" || fail "summary: $(log)"
    assert_contains "$(log)" "another hostname" "says what it may be"
    assert_contains "$(log)" "borg break-lock $(repo)" "says how to break it"
    figure "server lock left by a server under another hostname (lock_wait 5, retries 2, retry_delay 3)" "${took} s to FAILED"
    in_inet test -d /home/borg/repo/lock.exclusive || fail "the tool broke the server's lock itself"
    assert_nothing_left
    # the documented command (docs/USAGE.md), as qvm-run runs it in the disposable
    d0 qvm-start sys-backup-mnt
    in_qube -u user sys-backup-mnt sh -c "BORG_RSH=qubes-ssh-client borg break-lock $(repo)"
    d0 qvm-shutdown --wait sys-backup-mnt
    run_backup || fail "run after break-lock: $(log)"
    after_each
}

test_server_disk_full_is_named_and_the_run_after_freeing_space_works() {
    add_data personal 40 big-3.bin
    local free
    free=$(in_inet df --output=avail -B1M /home/borg/disk | tail -n 1 | tr -d ' ')
    in_inet fallocate -l "$((free - 12))M" /home/borg/disk/filler
    local rc=0
    run_backup || rc=$?
    assert_eq 1 "$rc" "exit status with the server's disk full ($(log))"
    grep -q 'FAILED: server disk or quota full' "$S/last-run.log" || fail "summary: $(log)"
    assert_contains "$(log)" "free space on the server" "says what to do"
    assert_not_contains "$(log)" "trying again" "a full disk is not retried"
    figure "server disk full" "${took} s to FAILED"
    assert_nothing_left
    in_inet rm -f /home/borg/disk/filler
    run_backup || fail "run after freeing space: $(log)"
    figure "server disk full: next run after freeing space" "${took} s, ok"
    after_each
}

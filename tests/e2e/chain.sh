#!/usr/bin/env bash
# Suite "chain": real borg in sys-backup-mnt backs up through the project's whole chain:
#   borg (BORG_RSH=qubes-ssh-client) -> qrexec stand-in -> qubes-borg.Ssh in sys-backup -> ssh, key
#   from ssh-backup over the filtering qubes-borg.SshAgent -> sshd -> borg serve (restricted)
# Run by tests/e2e/run as root after tests/sim/up (project installed); suite_setup runs first,
# then the test_* functions in file order, each in its own process. Later tests use the archives
# of earlier ones where that is the point (incremental), and make what they need otherwise.
# Commands are single-quoted on purpose where they expand inside a qube.
# shellcheck disable=SC2016
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

if [ -n "${QUBES_SIM_STATE:-}" ] && [ -f "$QUBES_SIM_STATE/chain.env" ]; then
    # shellcheck disable=SC1091
    . "$QUBES_SIM_STATE/chain.env"
fi
MNT_ROOT=${QUBES_SIM_STATE:-}/roots/sys-backup-mnt/root     # /root of sys-backup-mnt, host view
PASS=e2e-passphrase-not-secret
TREEDATA=$SIM_DIR/treedata.py

# borg in sys-backup-mnt through the chain
mnt_borg() { in_qube sys-backup-mnt BORG_RSH=qubes-ssh-client BORG_PASSPHRASE=$PASS borg "$@"; }

# What the server's repository holds: every file with its checksum (host-side view, read-only).
repo_manifest() {
    in_qube internet sh -c 'cd /home/borg/repo && find . -type f ! -name "lock*" -exec sha256sum {} + | sort -k2'
}

# Pids of processes named COMM living in QUBE (by mount namespace identity).
qube_pids() { "$SIM_DIR/qube-pids" "$QUBES_SIM_STATE" "$@"; }

suite_setup() {
    "$SIM_DIR/chain-setup" "$QUBES_SIM_STATE"
    # shellcheck disable=SC1091
    . "$QUBES_SIM_STATE/chain.env"
    python3 "$TREEDATA" make "$MNT_ROOT/data" "${E2E_DATA_MIB:-48}"
    mnt_borg init --encryption=repokey-blake2 "$REPO_URL"
}

test_full_backup_through_the_chain_restores_exactly() {
    mnt_borg create --json "$REPO_URL::full" /root/data > "$QUBES_SIM_STATE/full.json"
    in_qube sys-backup-mnt sh -c 'rm -rf /root/restore-full && mkdir /root/restore-full'
    in_qube sys-backup-mnt sh -c 'cd /root/restore-full && exec env BORG_RSH=qubes-ssh-client BORG_PASSPHRASE="$1" borg extract --sparse "$2::full"' sh "$PASS" "$REPO_URL"
    python3 "$TREEDATA" compare "$MNT_ROOT/data" "$MNT_ROOT/restore-full/root/data"
}

test_every_hop_was_used() {
    # dom0 allowed exactly the two calls the chain makes; ssh-backup signed a login for it;
    # sshd accepted the backup key for borg.
    local dom0 vault sshd
    dom0=$(cat "$QUBES_SIM_STATE/dom0.log")
    assert_contains "$dom0" "qubes-borg.Ssh+$DEST from sys-backup-mnt to sys-backup" "dom0 log"
    assert_contains "$dom0" "qubes-borg.SshAgent+default from sys-backup to ssh-backup" "dom0 log"
    vault=$(qube_log ssh-backup)
    assert_contains "$vault" "signed an SSH login (publickey-hostbound-v00@openssh.com) as user 'borg'" "ssh-backup log"
    assert_contains "$vault" "in a session bound to server host key $(ssh-keygen -lf "$QUBES_SIM_STATE/internet/host_key.pub" | cut -d' ' -f2)" "ssh-backup log"
    sshd=$(in_qube internet cat /var/tmp/sshd.log)
    assert_contains "$sshd" "Accepted publickey for borg from $SIM_NET_SYSBACKUP" "sshd log"
    # and the key never left the vault: sys-backup holds no private key file
    ! in_qube sys-backup sh -c 'grep -rl "PRIVATE KEY" /root /home /etc/qubes-borg /tmp /run 2>/dev/null' ||
        fail "a private key is in sys-backup"
}

test_incremental_backup_is_mostly_deduplicated_and_restores_exactly() {
    python3 "$TREEDATA" change "$MNT_ROOT/data"
    local j orig dedup
    j=$(mnt_borg create --json "$REPO_URL::incr" /root/data)
    orig=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["archive"]["stats"]["original_size"])' <<<"$j")
    dedup=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["archive"]["stats"]["deduplicated_size"])' <<<"$j")
    echo "incremental: original $orig bytes, deduplicated $dedup bytes"
    [ "$dedup" -gt 0 ] || fail "nothing new stored, but files changed"
    # "mostly deduplicated": a changed file costs its changed chunks (about 2 MiB each in borg 1.2)
    [ $((dedup * 100)) -lt $((orig * 10)) ] || fail "incremental stored $dedup of $orig bytes (>10%)"
    in_qube sys-backup-mnt sh -c 'rm -rf /root/restore-incr && mkdir /root/restore-incr'
    in_qube sys-backup-mnt sh -c 'cd /root/restore-incr && exec env BORG_RSH=qubes-ssh-client BORG_PASSPHRASE="$1" borg extract --sparse "$2::incr"' sh "$PASS" "$REPO_URL"
    python3 "$TREEDATA" compare "$MNT_ROOT/data" "$MNT_ROOT/restore-incr/root/data"
    mnt_borg list --short "$REPO_URL" | sort | tr '\n' ' ' | grep -qx 'full incr ' ||
        fail "archives: $(mnt_borg list --short "$REPO_URL")"
}

test_no_tcp_from_sys_backup_mnt_and_ssh_backup() {
    local q
    for q in sys-backup-mnt ssh-backup; do
        expect_code 1 in_qube "$q" timeout 5 bash -c "exec 3<>/dev/tcp/$SIM_NET_SSHD/22"
        expect_code 255 in_qube "$q" timeout 10 ssh -F none -o BatchMode=yes -o ConnectTimeout=3 "borg@$SIM_NET_SSHD" true
    done
}

test_qube_not_allowed_by_policy_gets_126_and_repo_is_unchanged() {
    local before after
    before=$(repo_manifest)
    # ssh-backup (the vault) has the same programs but the policy does not let it use qubes-borg.Ssh
    expect_code 126 in_qube ssh-backup qrexec-client-vm @default "qubes-borg.Ssh+$DEST"
    expect_code 2 in_qube ssh-backup BORG_RSH=qubes-ssh-client BORG_PASSPHRASE=$PASS \
        borg create "$REPO_URL::from-vault" /etc/hostname
    assert_contains "$out" "refused" "borg's stderr in ssh-backup"
    # sys-backup-mnt may not talk to the vault directly
    expect_code 126 in_qube sys-backup-mnt qrexec-client-vm @default qubes-borg.SshAgent+default
    after=$(repo_manifest)
    assert_eq "$before" "$after" "repository after refused runs"
    mnt_borg check "$REPO_URL"
}

test_wrong_pinned_host_key_fails_with_a_clear_message() {
    local conf=/etc/qubes-borg/destinations/$DEST.conf before after wrong
    before=$(repo_manifest)
    in_qube sys-backup cp "$conf" /root/dest.conf.orig
    ssh-keygen -q -t ed25519 -N '' -C wrong -f "$QUBES_SIM_STATE/wrong-host-key" </dev/null >/dev/null
    wrong=$(cut -d' ' -f1,2 "$QUBES_SIM_STATE/wrong-host-key.pub")
    in_qube sys-backup sed -i "s|^host-key = .*|host-key = $wrong|" "$conf"
    local rc=0
    out=$(mnt_borg create "$REPO_URL::wrong-key" /root/data 2>&1) || rc=$?
    in_qube sys-backup cp /root/dest.conf.orig "$conf"
    [ "$rc" != 0 ] || fail "backup succeeded against an unpinned host key"
    echo "borg exit $rc, stderr: $out"
    assert_contains "$(tr '[:upper:]' '[:lower:]' <<<"$out")" "host key" "borg's stderr"
    after=$(repo_manifest)
    assert_eq "$before" "$after" "repository after the refused run"
    mnt_borg check "$REPO_URL"
}

# Start a backup that takes a while (new random data, upload rate-limited), kill one process of
# the chain by pid once data flows, then: borg failed, `borg check` passes, the next run works.
fault_kill() { # QUBE COMM [EXCLUDE-PID-FILE]
    local qube=$1 comm=$2 exclude=${3:-} pids p bpid rc=0
    in_qube sys-backup-mnt sh -c 'rm -rf /root/fault && mkdir /root/fault && head -c 40M /dev/urandom > /root/fault/blob'
    mnt_borg create --upload-ratelimit 2048 "$REPO_URL::fault-$comm" /root/fault \
        > "$QUBES_SIM_STATE/fault.out" 2>&1 &
    bpid=$!
    # wait until the chain is up and data has flowed for a while (upload is rate-limited)
    local start=$SECONDS
    while [ $((SECONDS - start)) -lt 20 ]; do
        pids=$(qube_pids "$qube" "$comm")
        if [ -n "$exclude" ]; then pids=$(grep -vxF "$(cat "$exclude")" <<<"$pids" || true); fi
        [ -n "$pids" ] && [ $((SECONDS - start)) -ge 3 ] && break
        sleep 0.2
    done
    [ -n "$pids" ] || fail "no $comm process in $qube during the backup"
    for p in $pids; do kill -KILL "$p"; done
    wait "$bpid" || rc=$?
    echo "borg exit after killing $comm: $rc; output:"
    cat "$QUBES_SIM_STATE/fault.out"
    [ "$rc" != 0 ] || fail "borg reported success although $comm was killed"
    mnt_borg check "$REPO_URL"
    mnt_borg create "$REPO_URL::after-fault-$comm" /root/fault
    mnt_borg list --short "$REPO_URL" | grep -qx "after-fault-$comm" || fail "next run did not store its archive"
}

test_fault_killing_ssh_mid_backup() { fault_kill sys-backup ssh; }

test_fault_killing_the_qubes_ssh_service_mid_backup() { fault_kill sys-backup qubes-ssh-service; }

test_fault_killing_sshd_mid_backup() {
    # the per-connection sshd processes, not the listener (the next run needs the server)
    fault_kill internet sshd "$QUBES_SIM_STATE/internet/sshd.pid"
}

test_fault_killing_sys_backups_qrexec_agent_mid_backup() {
    # the target qube's side of the call dies (as when sys-backup stops or crashes): qrexec
    # closes the connection without an exit status (255); the client must say so, not blame ssh
    fault_kill sys-backup qrexec-agent
    local out
    out=$(cat "$QUBES_SIM_STATE/fault.out")
    assert_contains "$out" "the qrexec connection to the target qube (@default) was lost" "borg's stderr"
    assert_not_contains "$out" "ssh failed" "borg's stderr"
}

test_unstartable_sys_backup_is_not_reported_as_a_policy_refusal_only() {
    # qrexec answers 126 both for a policy refusal and for a target it cannot start
    touch "$QUBES_SIM_STATE/roots/sys-backup/.qubes-sim/start-fails"
    local rc=0
    out=$(mnt_borg list --short "$REPO_URL" 2>&1) || rc=$?
    rm -f "$QUBES_SIM_STATE/roots/sys-backup/.qubes-sim/start-fails"
    echo "borg exit $rc, stderr: $out"
    [ "$rc" != 0 ] || fail "borg succeeded with an unstartable sys-backup"
    assert_contains "$out" "could not be started" "borg's stderr"
    assert_contains "$out" "policy" "borg's stderr"
}

test_noisy_login_profile_in_sys_backup_does_not_break_the_link() {
    # the service starts through a login shell: what ~/.profile prints comes first on stdout
    in_qube sys-backup cp /home/user/.profile /root/profile.orig
    in_qube sys-backup sh -c 'printf "%s\n" "echo Welcome to sys-backup" "echo OK" "printf no-newline" >> /home/user/.profile'
    local rc=0
    out=$(mnt_borg list --short "$REPO_URL" 2>&1) || rc=$?
    in_qube sys-backup cp /root/profile.orig /home/user/.profile
    echo "borg exit $rc, output: $out"
    [ "$rc" = 0 ] || fail "borg list failed behind a noisy login profile"
    # (a 4.3 session running qrexec-fork-server starts services without a login shell)
    [ "${QREXEC_SIM_FORK_SERVER:-}" = 1 ] ||
        assert_contains "$out" "Welcome to sys-backup" "the noise is shown, not taken for the status"
}

test_server_stderr_reaches_borg_sanitized() {
    # borg serve's log records and anything else the server writes to stderr reach the user as
    # borg's "Remote:" lines; escape sequences never reach sys-backup-mnt raw
    local keys=/home/borg/.ssh/authorized_keys
    in_qube internet cp "$keys" /root/authorized_keys.orig
    in_qube internet sh -c 'cat > /home/borg/noisy-serve && chmod 0755 /home/borg/noisy-serve' <<'SH'
#!/bin/sh
printf 'server says hi\n\033]0;pwned\007\n' >&2
printf '%s\n' '{"type": "log_message", "time": 0, "message": "json-record \u001b[2J", "levelname": "WARNING", "name": "borg.repository"}' >&2
exec "$@"
SH
    # the forced command, whatever it is, runs behind the noisy wrapper
    in_qube internet sed -i 's|command="\([^"]*\)"|command="/home/borg/noisy-serve \1"|' "$keys"
    local rc=0
    mnt_borg list --short "$REPO_URL" > "$QUBES_SIM_STATE/noisy.out" 2> "$QUBES_SIM_STATE/noisy.err" || rc=$?
    in_qube internet cp /root/authorized_keys.orig "$keys"
    echo "borg exit $rc, stderr:"
    cat -v "$QUBES_SIM_STATE/noisy.err"
    [ "$rc" = 0 ] || fail "borg list failed"
    out=$(cat "$QUBES_SIM_STATE/noisy.err")
    assert_contains "$out" "Remote: server says hi" "plain server line"
    assert_contains "$out" "Remote: json-record ?[2J" "borg's JSON log record, decoded by borg"
    ! LC_ALL=C grep -q "$(printf '[\001-\010\013-\037\177]')" "$QUBES_SIM_STATE/noisy.err" ||
        fail "a control character reached borg's stderr"
}

test_a_delete_through_the_routine_key_set_is_not_permanent() {
    # The routine key set is append-only at the server (chain-setup, qubes-borg-keygen
    # --server-line): borg serve keeps a transaction log, and a delete plus compact through the
    # chain (what a compromised sys-backup-mnt or sys-backup could do) removes no segment.
    local before after gone
    in_qube internet test -f /home/borg/repo/transactions || fail "no transaction log: borg serve is not append-only"
    mnt_borg create "$REPO_URL::doomed" /etc/hostname
    before=$(in_qube internet sh -c 'cd /home/borg/repo/data && find . -type f | sort')
    mnt_borg delete "$REPO_URL::doomed"
    mnt_borg compact "$REPO_URL"
    after=$(in_qube internet sh -c 'cd /home/borg/repo/data && find . -type f | sort')
    gone=$(comm -23 <(printf '%s\n' "$before") <(printf '%s\n' "$after"))
    [ -z "$gone" ] || fail "segments removed through the append-only key: $gone"
    ! mnt_borg list --short "$REPO_URL" | grep -qx doomed || fail "delete was not recorded"
}

# --- faults of the vault and of the link (#15): each reported within its bound, named for
# what it is, and the next run works without a human

AGENT_SOCK=/run/qubes-borg-agent/default/agent.sock

# Run `borg list` through the chain; $out = its stderr+stdout, $took = seconds, $rc = status.
timed_list() {
    local start=$SECONDS
    rc=0
    out=$(mnt_borg list --short "$REPO_URL" 2>&1) || rc=$?
    took=$((SECONDS - start))
    echo "borg exit $rc after $took s; output:"; printf '%s\n' "$out"
}

# The vault's agent as chain-setup starts it (the qubes-borg-agent@default unit's job).
start_vault_agent() {
    in_qube -u user ssh-backup ssh-agent -D -a "$AGENT_SOCK" </dev/null >/dev/null 2>&1 &
    for _ in $(seq 1 100); do in_qube ssh-backup test -S "$AGENT_SOCK" && break; sleep 0.05; done
    in_qube -u user ssh-backup qubes-borg-keygen --load default >/dev/null
}

# A vault fault: borg fails within BOUND seconds with the vault's message (ERR 69 vault) and not
# the server's authorized_keys hint; once repaired, the next run works.
expect_vault_fault() { # BOUND MESSAGE
    [ "$rc" = 2 ] || fail "borg exit $rc, expected 2"
    [ "$took" -le "$1" ] || fail "took $took s, more than $1 s"
    assert_contains "$out" "Remote: qubes-ssh-client: $DEST: $2" "borg's stderr"
    assert_not_contains "$out" "is its public key installed on the server" "borg's stderr"
}

test_vault_agent_not_running_is_reported_as_a_vault_fault_within_seconds() {
    kill "$(qube_pids ssh-backup ssh-agent)"
    in_qube ssh-backup rm -f "$AGENT_SOCK"
    timed_list
    start_vault_agent
    expect_vault_fault 10 "the vault (ssh-backup) cannot reach the ssh-agent of key set 'default': it is not running there"
    mnt_borg list --short "$REPO_URL" >/dev/null
}

test_vault_key_not_loaded_is_reported_as_a_vault_fault_within_seconds() {
    in_qube -u user ssh-backup env SSH_AUTH_SOCK="$AGENT_SOCK" ssh-add -D
    timed_list
    in_qube -u user ssh-backup qubes-borg-keygen --load default >/dev/null
    expect_vault_fault 10 "the ssh-agent of key set 'default' in the vault (ssh-backup) does not hold the backup key"
    mnt_borg list --short "$REPO_URL" >/dev/null
}

test_frozen_vault_agent_is_reported_as_a_vault_fault_after_the_filters_timeout() {
    local pid
    pid=$(qube_pids ssh-backup ssh-agent)
    kill -STOP "$pid"
    timed_list
    kill -CONT "$pid"
    # the filter waits 10 s for the agent once per connection (sshd's LoginGraceTime was the bound)
    expect_vault_fault 25 "the ssh-agent of key set 'default' in the vault (ssh-backup) did not answer (frozen?)"
    mnt_borg list --short "$REPO_URL" >/dev/null
}

test_vault_call_refused_by_policy_is_reported_as_a_vault_fault_within_seconds() {
    local deny=$QUBES_SIM_STATE/dom0/etc/qubes/policy.d/10-e2e-deny-vault.policy
    printf 'qubes-borg.SshAgent * @anyvm @anyvm deny\n' > "$deny"
    timed_list
    rm -f "$deny"
    expect_vault_fault 10 "qrexec refused the call to the vault (qubes-borg.SshAgent+default)"
    mnt_borg list --short "$REPO_URL" >/dev/null
}

test_a_signed_logins_audit_line_stays_in_the_vault_and_a_refusal_reaches_borg() {
    local signed="sys-backup: key set default: signed an SSH login" before after
    # a working run: the vault logs the signature, borg's output and sys-backup's log (the
    # stderr of qubes-borg.Ssh) do not carry it
    before=$(qube_log ssh-backup | grep -c "$signed" || true)
    timed_list
    [ "$rc" = 0 ] || fail "borg list exited $rc"
    after=$(qube_log ssh-backup | grep -c "$signed" || true)
    [ "$after" -gt "$before" ] || fail "no new signed login in ssh-backup's log ($before, then $after)"
    assert_not_contains "$out" "signed an SSH login" "borg's output"
    assert_not_contains "$(qube_log sys-backup)" "signed an SSH login" "sys-backup's log"
    # a refused login (the key set's user is not the one ssh logs in as) reaches borg
    in_qube -u user ssh-backup sh -c 'f=$HOME/.ssh/qubes-borg/default/server.conf &&
        cp -p "$f" "$f.orig" && sed -i "s/^user = borg\$/user = someone-else/" "$f"'
    timed_list
    in_qube -u user ssh-backup sh -c 'f=$HOME/.ssh/qubes-borg/default/server.conf && mv "$f.orig" "$f"'
    [ "$rc" = 2 ] || fail "borg exit $rc with a refused login, expected 2"
    assert_contains "$out" "Remote: split-SSH agent: qubes-agent-filter: sys-backup: key set default: refused: login not allowed for this key set: remote user 'borg' is not the key set's user 'someone-else'" "borg's output"
    assert_not_contains "$out" "signed an SSH login" "borg's output"
    mnt_borg list --short "$REPO_URL" >/dev/null
}

test_repository_consistent_at_the_end() {
    mnt_borg check --verify-data "$REPO_URL"
}

#!/usr/bin/env bash
# Suite "sim": the simulated Qubes itself (namespaces, qrexec in namespace mode, the internet's
# sshd and borg serve), without the project's binaries. Run by tests/e2e/run as root; each
# test_* function runs in its own process with QUBES_SIM_STATE set.
# Service bodies and qube commands are single-quoted on purpose: they expand inside the qube.
# shellcheck disable=SC2016
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# Tests share one simulation: start each qrexec test from no services at all.
clean_services() {
    local q
    for q in "${SIM_QUBES[@]}"; do
        in_qube "$q" sh -c 'rm -rf /run/qubes-rpc /usr/local/etc/qubes-rpc /etc/qubes-rpc'
    done
}

test_network_only_sys_backup_has_a_link() {
    local q links
    for q in sys-backup-mnt ssh-backup; do
        links=$(in_qube "$q" ip -o link show | awk -F': ' '{print $2}' | tr '\n' ' ')
        assert_eq "lo " "$links" "interfaces of $q"
        in_qube "$q" ip -o link show lo | grep -q 'state UNKNOWN\|UP' || fail "lo down in $q"
    done
    links=$(in_qube sys-backup ip -o link show | awk -F': ' '{print $2}' | sed 's/@.*//' | tr '\n' ' ')
    assert_eq "lo eth0 " "$links" "interfaces of sys-backup"
}

test_no_tcp_to_sshd_from_network_less_qubes() {
    local q
    for q in sys-backup-mnt ssh-backup; do
        expect_code 1 in_qube "$q" timeout 5 bash -c "exec 3<>/dev/tcp/$SIM_NET_SSHD/22"
        assert_contains "$out" "Network is unreachable" "connect from $q"
        expect_code 1 in_qube "$q" timeout 5 bash -c "exec 3<>/dev/tcp/127.0.0.1/22"
    done
    # the same connect works from sys-backup: the test above can fail
    in_qube sys-backup timeout 5 bash -c "exec 3<>/dev/tcp/$SIM_NET_SSHD/22; head -c 7 <&3" |
        grep -q '^SSH-2.0' || fail "sys-backup cannot reach sshd"
}

test_each_qube_has_its_own_filesystem_view() {
    local q
    for q in "${SIM_QUBES[@]}"; do
        assert_eq "$q" "$(in_qube "$q" hostname)" "hostname"
        in_qube "$q" sh -c "echo $q > /etc/qubes-sim-probe && echo $q > /root/probe && echo $q > /tmp/probe"
    done
    for q in "${SIM_QUBES[@]}"; do
        assert_eq "$q" "$(in_qube "$q" cat /etc/qubes-sim-probe /root/probe /tmp/probe | sort -u)" "private files of $q"
    done
    [ ! -e /etc/qubes-sim-probe ] || fail "a qube's write to /etc reached the host"
    # the root's files appear at the real paths, only in that qube
    mkdir -p "$QUBES_SIM_STATE/roots/ssh-backup/usr/libexec/qubes-borg"
    in_qube ssh-backup test -x /usr/bin/qrexec-client-vm || fail "stand-in not at /usr/bin"
    in_qube ssh-backup test -d /usr/libexec/qubes-borg || fail "root's /usr not visible"
    # dom0's policy is the project's, as installed by make install-dom0
    cmp "$QUBES_SIM_STATE/dom0/etc/qubes/policy.d/80-qubes-borg.policy" "$REPO_DIR/policy/80-qubes-borg.policy"
}

test_qrexec_runs_the_service_in_the_target_qube() {
    clean_services
    put_service sys-backup /etc/qubes-rpc/qubes-borg.Ssh 'hostname; ip -o link show | grep -c eth0; echo "$QREXEC_REMOTE_DOMAIN ${1-} $QREXEC_SERVICE_FULL_NAME"; pwd; id -un; echo "$HOME $XDG_RUNTIME_DIR"'
    expect_code 0 in_qube sys-backup-mnt qrexec-client-vm @default qubes-borg.Ssh+borgbase
    assert_eq "sys-backup
1
sys-backup-mnt borgbase qubes-borg.Ssh+borgbase
/home/user
user
/home/user /run/user/$(in_qube sys-backup id -u user)" "$out" "service output"
}

test_qrexec_source_comes_from_the_socket_not_the_caller() {
    clean_services
    put_service sys-backup /etc/qubes-rpc/qubes-borg.Ssh 'echo "$QREXEC_REMOTE_DOMAIN"'
    # ssh-backup pretending to be sys-backup-mnt in every way it can still is ssh-backup: refused
    expect_code 126 in_qube ssh-backup QREXEC_REMOTE_DOMAIN=sys-backup-mnt \
        QREXEC_SIM_SOURCE=sys-backup-mnt qrexec-client-vm @default qubes-borg.Ssh+x
    assert_eq "Request refused" "$out" "stderr of a refused call"
}

test_qrexec_policy_refusals_and_missing_service() {
    clean_services
    put_service ssh-backup /etc/qubes-rpc/qubes-borg.SshAgent 'touch /tmp/agent-ran'
    put_service sys-backup /etc/qubes-rpc/qubes-borg.Ssh 'touch /tmp/ssh-ran'
    # sys-backup-mnt may not talk to the vault; ssh-backup may not use qubes-borg.Ssh
    expect_code 126 in_qube sys-backup-mnt qrexec-client-vm @default qubes-borg.SshAgent+default
    expect_code 126 in_qube sys-backup-mnt qrexec-client-vm ssh-backup qubes-borg.SshAgent+default
    expect_code 126 in_qube ssh-backup qrexec-client-vm @default qubes-borg.Ssh+x
    expect_code 126 in_qube sys-backup-mnt qrexec-client-vm sys-backup qubes.VMShell
    ! in_qube ssh-backup test -e /tmp/agent-ran || fail "refused service ran"
    ! in_qube sys-backup test -e /tmp/ssh-ran || fail "refused service ran"
    grep -q "refused call from ssh-backup" "$QUBES_SIM_STATE/dom0.log" || fail "dom0 log has no refusal"
    # allowed but absent
    in_qube ssh-backup rm -f /etc/qubes-rpc/qubes-borg.SshAgent
    expect_code 127 in_qube sys-backup qrexec-client-vm @default qubes-borg.SshAgent+default
    assert_contains "$(qube_log ssh-backup)" "Service not found: qubes-borg.SshAgent+default" "ssh-backup log"
}

test_qrexec_lookup_order_at_the_real_paths() {
    clean_services
    put_service sys-backup /etc/qubes-rpc/qubes-borg.Ssh 'echo etc'
    expect_code 0 in_qube sys-backup-mnt qrexec-client-vm @default qubes-borg.Ssh+a
    assert_eq etc "$out" "only /etc"
    put_service sys-backup /usr/local/etc/qubes-rpc/qubes-borg.Ssh 'echo usr-local'
    expect_code 0 in_qube sys-backup-mnt qrexec-client-vm @default qubes-borg.Ssh+a
    assert_eq usr-local "$out" "/usr/local/etc before /etc"
    put_service sys-backup /run/qubes-rpc/qubes-borg.Ssh 'echo run'
    put_service sys-backup /etc/qubes-rpc/qubes-borg.Ssh+a 'echo etc-plus-arg'
    expect_code 0 in_qube sys-backup-mnt qrexec-client-vm @default qubes-borg.Ssh+a
    if [ "$SIM_QREXEC_VERSION" = 4.2 ]; then
        assert_eq usr-local "$out" "4.2: per directory, no /run"
    else
        assert_eq etc-plus-arg "$out" "4.3: service+arg in any directory before bare service"
        in_qube sys-backup rm /etc/qubes-rpc/qubes-borg.Ssh+a
        expect_code 0 in_qube sys-backup-mnt qrexec-client-vm @default qubes-borg.Ssh+a
        assert_eq run "$out" "4.3: /run before /usr/local/etc"
    fi
}

test_qrexec_service_stderr_goes_to_the_caller_and_the_target_log() {
    clean_services
    put_service sys-backup /etc/qubes-rpc/qubes-borg.Ssh 'echo "diag-$1" >&2; stat -L -c %F /proc/self/fd/0 /proc/self/fd/1; stat -L -c %F /proc/self/fd/2 >&2; exit 3'
    local err
    err=$(in_qube sys-backup-mnt qrexec-client-vm @default qubes-borg.Ssh+zz 2>&1 >/dev/null) && fail "exit 0"
    assert_eq "diag-zz
fifo" "$err" "caller's stderr"
    expect_code 3 in_qube sys-backup-mnt qrexec-client-vm @default qubes-borg.Ssh+zz 2>/dev/null
    out=$(in_qube sys-backup-mnt qrexec-client-vm @default qubes-borg.Ssh+zz 2>/dev/null) || true
    assert_eq "socket
socket" "$out" "service stdin/stdout types"
    assert_contains "$(qube_log sys-backup)" "qubes-borg.Ssh+zz-sys-backup-mnt: diag-zz" "sys-backup log"
    assert_contains "$(qube_log sys-backup)" "fifo" "service stderr type"
    assert_not_contains "$(qube_log sys-backup-mnt)" "diag-zz" "caller's log"
}

test_qrexec_half_close_and_byte_exact_64mib() {
    clean_services
    put_service sys-backup /etc/qubes-rpc/qubes-borg.Ssh 'n=$(sha256sum | cut -c1-64); sleep 0.5; echo "$n"; echo written-after-eof; exit 5'
    local want got
    want=$(head -c 64M /dev/urandom | tee "$QUBES_SIM_STATE/blob" | sha256sum | cut -c1-64)
    cp "$QUBES_SIM_STATE/blob" "$QUBES_SIM_STATE/roots/sys-backup-mnt/tmp/blob"
    rm -f "$QUBES_SIM_STATE/blob"
    expect_code 5 in_qube sys-backup-mnt sh -c 'qrexec-client-vm @default qubes-borg.Ssh+x < /tmp/blob'
    assert_eq "$want
written-after-eof" "$out" "service saw every byte and EOF, wrote after it"
    # the other direction: 64 MiB out of the service, caller's stdin left open and unused
    put_service sys-backup /etc/qubes-rpc/qubes-borg.Ssh 'head -c 64M /dev/zero'
    got=$(in_qube sys-backup-mnt sh -c 'mkfifo /tmp/in2; exec 3<>/tmp/in2; qrexec-client-vm @default qubes-borg.Ssh+x <&3 | sha256sum | cut -c1-64')
    assert_eq "$(head -c 64M /dev/zero | sha256sum | cut -c1-64)" "$got" "download"
}

test_qrexec_service_killed_gives_128_plus_signal() {
    clean_services
    put_service sys-backup /etc/qubes-rpc/qubes-borg.Ssh 'kill -TERM $$; sleep 5'
    expect_code 143 in_qube sys-backup-mnt qrexec-client-vm @default qubes-borg.Ssh+x
}

test_qrexec_service_starts_in_a_login_shell_and_its_own_session() {
    clean_services
    # the user's login files run first (4.3: /bin/sh -lc wrapper; 4.2: #!/bin/sh -l multiplexer)
    in_qube sys-backup sh -c 'echo "echo noisy-profile; export PROFILE_SEEN=yes" >> /home/user/.profile'
    put_service sys-backup /etc/qubes-rpc/qubes-borg.Ssh 'read -r _p _c _s _pp _pg sid _r < /proc/$$/stat; [ "$sid" = "$$" ] && echo leader; echo "${PROFILE_SEEN-no} $QREXEC_SERVICE_ARGUMENT"'
    expect_code 0 in_qube sys-backup-mnt qrexec-client-vm @default qubes-borg.Ssh+p
    in_qube sys-backup sed -i '/noisy-profile/d' /home/user/.profile
    assert_eq "noisy-profile
leader
yes p" "$out" "service output"
}

test_qrexec_exit_codes_125_126_255() {
    clean_services
    put_service sys-backup /etc/qubes-rpc/qubes-borg.Ssh 'echo started; sleep 30'
    # a target qubesd cannot start: refused, like a policy denial
    touch "$QUBES_SIM_STATE/roots/sys-backup/.qubes-sim/start-fails"
    expect_code 126 in_qube sys-backup-mnt qrexec-client-vm @default qubes-borg.Ssh+a
    rm "$QUBES_SIM_STATE/roots/sys-backup/.qubes-sim/start-fails"
    assert_eq "Request refused" "$out" "stderr"
    # the target's agent cannot become the service user: 125
    local pol=$QUBES_SIM_STATE/dom0/etc/qubes/policy.d/10-sim-test.policy
    echo 'qubes-borg.Ssh +u sys-backup-mnt @default allow target=sys-backup user=nobody-here' > "$pol"
    expect_code 125 in_qube sys-backup-mnt qrexec-client-vm @default qubes-borg.Ssh+u
    rm "$pol"
    assert_contains "$(qube_log sys-backup)" "user nobody-here does not exist" "sys-backup log"
    # the target's qrexec-agent dies mid-call: the connection closes without a status, 255
    in_qube sys-backup-mnt sh -c 'qrexec-client-vm @default qubes-borg.Ssh+a > /tmp/o255 2>&1 </dev/null; echo $? > /tmp/rc255' &
    local p
    for _ in $(seq 1 100); do
        in_qube sys-backup-mnt grep -q started /tmp/o255 2>/dev/null && break
        sleep 0.1
    done
    p=$("$SIM_DIR/qube-pids" "$QUBES_SIM_STATE" sys-backup qrexec-agent)
    [ -n "$p" ] || fail "no qrexec-agent process in sys-backup"
    kill -KILL "$p"
    wait
    assert_eq 255 "$(in_qube sys-backup-mnt cat /tmp/rc255)" "exit status after the agent died"
}

test_qrexec_caller_killed_closes_the_service_stderr_and_stdout() {
    clean_services
    put_service sys-backup /etc/qubes-rpc/qubes-borg.Ssh 'trap "" PIPE; echo started; while sleep 0.1; do echo tick >&2 || { echo stderr-closed > /tmp/err-closed; break; }; done; while sleep 0.1; do echo tick || { echo stdout-shut > /tmp/out-shut; exit 0; }; done'
    in_qube sys-backup rm -f /tmp/err-closed /tmp/out-shut
    in_qube sys-backup-mnt sh -c 'mkfifo /tmp/in3; exec 3<>/tmp/in3; qrexec-client-vm @default qubes-borg.Ssh+x <&3 >/tmp/o3 2>/dev/null & p=$!; while ! grep -q started /tmp/o3; do sleep 0.1; done; sleep 0.5; kill -KILL $p; wait $p' || true
    for _ in $(seq 1 50); do
        in_qube sys-backup test -e /tmp/out-shut && break
        sleep 0.1
    done
    in_qube sys-backup test -e /tmp/err-closed || fail "service's stderr still open after its caller died"
    in_qube sys-backup test -e /tmp/out-shut || fail "service's stdout still open after its caller died"
    assert_contains "$(qube_log sys-backup)" "the caller went away" "sys-backup log"
}

test_qrexec_caller_killed_service_sees_eof() {
    clean_services
    # (a file, not stderr: qrexec closes the service's stderr pipe when the caller dies)
    put_service sys-backup /etc/qubes-rpc/qubes-borg.Ssh 'cat > /dev/null; echo "service saw EOF" > /tmp/saw-eof'
    in_qube sys-backup rm -f /tmp/saw-eof
    # the caller's stdin stays open (a FIFO we also hold), so only the kill can end the call
    in_qube sys-backup-mnt sh -c 'mkfifo /tmp/in; exec 3<>/tmp/in; qrexec-client-vm @default qubes-borg.Ssh+x <&3 & p=$!; sleep 1; kill -KILL $p; wait $p' || true
    for _ in $(seq 1 50); do
        in_qube sys-backup test -e /tmp/saw-eof && return 0
        sleep 0.1
    done
    fail "service did not see EOF after its caller died (log: $(qube_log sys-backup))"
}

test_sshd_forces_borg_serve_and_pins_host_key() {
    # a test key in sys-backup (the real chain uses the split-SSH agent instead)
    in_qube sys-backup ssh-keygen -q -t ed25519 -N '' -f /root/.ssh/plain_key
    local pub
    pub=$(in_qube sys-backup cat /root/.ssh/plain_key.pub)
    in_qube internet sh -c 'cat >> /home/borg/.ssh/authorized_keys' <<<"command=\"borg serve --restrict-to-repository /home/borg/plainrepo\",restrict $pub"
    printf '%s %s\n' "$SIM_NET_SSHD" "$(cut -d' ' -f1,2 "$QUBES_SIM_STATE/internet/host_key.pub")" |
        in_qube sys-backup sh -c 'cat > /root/.ssh/pinned_hosts'
    local rsh=(ssh -F none -i /root/.ssh/plain_key -o IdentitiesOnly=yes -o BatchMode=yes
        -o StrictHostKeyChecking=yes -o UserKnownHostsFile=/root/.ssh/pinned_hosts)
    # forced command: asking for a shell command runs borg instead (borg parses the requested
    # command from SSH_ORIGINAL_COMMAND and prints its usage); `id` never runs
    out=$(in_qube sys-backup "${rsh[@]}" "borg@$SIM_NET_SSHD" id 2>&1) || true
    assert_not_contains "$out" "uid=" "remote command ran"
    assert_contains "$out" "usage: borg" "forced borg"
    # borg through plain ssh works, inside the restricted repository only
    in_qube sys-backup BORG_RSH="${rsh[*]}" BORG_PASSPHRASE=pw borg init -e repokey "ssh://borg@$SIM_NET_SSHD/./plainrepo"
    in_qube sys-backup BORG_RSH="${rsh[*]}" BORG_PASSPHRASE=pw borg create "ssh://borg@$SIM_NET_SSHD/./plainrepo::a1" /etc/hostname
    expect_code 2 in_qube sys-backup BORG_RSH="${rsh[*]}" BORG_PASSPHRASE=pw borg init -e repokey "ssh://borg@$SIM_NET_SSHD/./otherrepo"
    in_qube sys-backup BORG_RSH="${rsh[*]}" BORG_PASSPHRASE=pw borg list --short "ssh://borg@$SIM_NET_SSHD/./plainrepo" | grep -qx a1 || fail "archive missing"
    # a wrong pinned host key: refused before authentication
    ssh-keygen -q -t ed25519 -N '' -f "$QUBES_SIM_STATE/wrong" >/dev/null
    printf '%s %s\n' "$SIM_NET_SSHD" "$(cut -d' ' -f1,2 "$QUBES_SIM_STATE/wrong.pub")" |
        in_qube sys-backup sh -c 'cat > /root/.ssh/pinned_hosts'
    expect_code 255 in_qube sys-backup "${rsh[@]}" "borg@$SIM_NET_SSHD" x
    assert_contains "$out" "HOST IDENTIFICATION HAS CHANGED" "ssh's host key message"
}

test_teardown_removes_every_process_and_file() {
    local st ns pids
    st=$(SIM_QUIET=1 "$SIM_DIR/up" --no-install)
    ns=$(readlink "/proc/$(cat "$st/qubes/sys-backup/pid")/ns/mnt")
    # leave a background process running inside a qube
    "$SIM_DIR/qube-exec" -s "$st" sys-backup sh -c 'sleep 600 </dev/null >/dev/null 2>&1 &'
    "$SIM_DIR/down" "$st"
    [ ! -e "$st" ] || fail "state directory left: $st"
    pids=$(python3 -c 'import os, sys
for p in filter(str.isdigit, os.listdir("/proc")):
    try:
        if os.readlink("/proc/%s/ns/mnt" % p) == sys.argv[1]: print(p)
    except OSError: pass' "$ns")
    assert_eq "" "$pids" "processes left in the qube's namespace"
}

#!/usr/bin/env bash
# Suite "init": `qvm-backup-borg init` in the simulated dom0 sets up a fresh repository through
# the whole chain (disposable sys-backup-mnt, qubes-borg.Ssh via sys-backup, split SSH, real borg
# and sshd) in keyfile mode: the key stays in dom0, a backup works with what init wrote, and a
# second init leaves the repository alone. Run by tests/e2e/run as root; each test_* function
# runs in its own process, in file order, on the same simulation.
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

S=${QUBES_SIM_STATE:-}
d0() { in_qube dom0 "$@"; }
repo() { sed -n 's/^REPO_URL=//p' "$S/chain.env"; }
remote_repo() { sed -n 's/^REPO_DIR_REMOTE=//p' "$S/chain.env"; }
run_init() {
    local rc=0
    d0 qvm-backup-borg init "$@" >"$S/init.out" 2>"$S/init.err" || rc=$?
    return "$rc"
}
# what init wrote, and the server's repository config, as one digest
state_digest() {
    { d0 sh -c 'cat /etc/qubes-borg/backup.conf /etc/qubes-borg/passphrase /etc/qubes-borg/key'
      in_qube internet cat "$(remote_repo)/config"; } | sha256sum
}

suite_setup() {
    "$SIM_DIR/chain-setup" "$S" offsite
    # backup.conf as a user writes it before init: the repository only; no passphrase file yet
    d0 sh -c 'umask 077; mkdir -p /etc/qubes-borg; rm -f /etc/qubes-borg/passphrase; cat > /etc/qubes-borg/backup.conf' <<EOF2
# written by tests/e2e/init.sh
repository = $(repo)
compression = lz4
state_size_mib = 256
shutdown_timeout = 30
[qube vault-data]
mode = image
EOF2
}

test_init_makes_a_keyfile_repository_whose_key_stays_in_dom0_and_a_backup_works() {
    in_qube internet test ! -e "$(remote_repo)" || fail "the repository exists before init"
    run_init --yes || fail "init failed: $(cat "$S/init.out" "$S/init.err")"
    local out
    out=$(cat "$S/init.out")
    assert_contains "$out" "Initialised the repository $(repo) (keyfile-blake2)" "init message"
    assert_contains "$out" "KEEP A COPY OFFLINE" "offline copy advice"
    assert_contains "$(cat "$S/init.err")" "+key_file = /etc/qubes-borg/key" "backup.conf diff shown"
    local f
    for f in key passphrase repository-key.export repository-key.paper.txt backup.conf; do
        assert_eq "600 root" "$(d0 stat -c '%a %U' "/etc/qubes-borg/$f")" "mode of $f"
    done
    assert_eq "BORG_KEY" "$(d0 head -c 8 /etc/qubes-borg/key)" "key file"
    d0 cmp /etc/qubes-borg/key /etc/qubes-borg/repository-key.export || fail "export differs from the key file"
    d0 grep -q '^BORG PAPER KEY v1$' /etc/qubes-borg/repository-key.paper.txt || fail "no paper key"
    d0 grep -qx 'key_file = /etc/qubes-borg/key' /etc/qubes-borg/backup.conf || fail "key_file not set"
    # keyfile mode: the server's repository holds no key
    in_qube internet grep -q '^id = ' "$(remote_repo)/config" || fail "no repository at the server"
    if in_qube internet grep -q '^key = ' "$(remote_repo)/config"; then fail "the key is in the repository"; fi
    # nothing left in the disposable: it is halted (and the job removed its tmpfs copies)
    assert_eq "Halted" "$(d0 qvm-ls --raw-data --fields STATE sys-backup-mnt)" "disposable state"
    # a backup with what init wrote (passphrase file, key file)
    d0 qvm-backup-borg backup personal >"$S/backup.log" 2>&1 || fail "backup after init failed: $(cat "$S/backup.log")"
    out=$(d0 qvm-backup-borg list personal 2>&1) || fail "list failed: $out"
    echo "$out" | grep -qE '^personal +[0-9]{4}-' || fail "no archive of personal listed: $out"
}

test_init_again_leaves_the_existing_repository_and_the_files_alone() {
    local before
    before=$(state_digest)
    run_init --yes || fail "second init failed: $(cat "$S/init.out" "$S/init.err")"
    assert_contains "$(cat "$S/init.out")" "already exists" "message"
    assert_contains "$(cat "$S/init.out")" "left alone" "message"
    assert_eq "$before" "$(state_digest)" "backup.conf, passphrase, key and the repository's config"
    d0 qvm-backup-borg list personal >"$S/list.log" 2>&1 || fail "list after the second init: $(cat "$S/list.log")"
    grep -qE '^personal +[0-9]{4}-' "$S/list.log" || fail "archive gone: $(cat "$S/list.log")"
}

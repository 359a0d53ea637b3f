#!/usr/bin/env bash
# Suite "init": `qvm-backup-borg init --host` in the simulated dom0 sets up the server's side
# (key set line, host key pinned by fingerprint through sys-backup, sys-backup's destination and
# the vault's server.conf) and a fresh repository through the whole chain (disposable
# sys-backup-mnt, qubes-borg.Ssh via sys-backup, split SSH, real borg and sshd) in keyfile mode:
# the key stays in dom0, a backup works with what init wrote, a second init leaves everything
# alone, a wrong fingerprint is refused. Run by tests/e2e/run as root; each test_* function runs
# in its own process, in file order, on the same simulation.
# shellcheck disable=SC2016  # commands in single quotes expand inside the qube
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
      in_qube sys-backup cat /etc/qubes-borg/destinations/offsite.conf
      in_qube -u user ssh-backup sh -c 'cat "$HOME/.ssh/qubes-borg/default/server.conf"'
      in_qube internet cat "$(remote_repo)/config"; } | sha256sum
}
host_fp() { ssh-keygen -lf "$S/internet/host_key.pub" | cut -d' ' -f2; }
server_args() { echo --host "$SIM_NET_SSHD" --user borg --quota 10G; }

suite_setup() {
    # the vault's key and agent, and the server account, as chain-setup makes them; then the
    # line for `repo` (the URL's path) registered instead of chain-setup's, and sys-backup's
    # destination and the vault's server.conf removed: init writes them
    "$SIM_DIR/chain-setup" "$S" offsite
    in_qube -u user ssh-backup qubes-borg-keygen --server-line default repo 10G > "$S/registered-line"
    in_qube internet sh -c 'cat > /home/borg/.ssh/authorized_keys' < "$S/registered-line"
    in_qube sys-backup rm /etc/qubes-borg/destinations/offsite.conf
    in_qube -u user ssh-backup sh -c 'rm "$HOME/.ssh/qubes-borg/default/server.conf"'
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
    # shellcheck disable=SC2046 # words on purpose
    run_init $(server_args) --host-key-fingerprint "$(host_fp)" --yes ||
        fail "init failed: $(cat "$S/init.out" "$S/init.err")"
    local out
    out=$(cat "$S/init.out")
    # the printed line is the one registered (append-only, from the vault's key)
    assert_contains "$out" "$(cat "$S/registered-line")" "authorized_keys line"
    assert_contains "$(cat "$S/registered-line")" 'command="borg serve --append-only --restrict-to-repository repo --storage-quota 10G",restrict ssh-ed25519 ' "line"
    assert_contains "$(cat "$S/init.err")" "$(host_fp)" "fingerprint shown"
    # the pinned key is the server's; the vault's key set may sign for it
    assert_contains "$(in_qube sys-backup cat /etc/qubes-borg/destinations/offsite.conf)" \
        "host-key = $(cut -d' ' -f1,2 "$S/internet/host_key.pub")" "pinned host key"
    assert_contains "$(in_qube -u user ssh-backup sh -c 'cat "$HOME/.ssh/qubes-borg/default/server.conf"')" \
        "host-key = $(cut -d' ' -f1,2 "$S/internet/host_key.pub")" "vault's server.conf"
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
    # shellcheck disable=SC2046 # words on purpose
    run_init $(server_args) --host-key-fingerprint "$(host_fp)" --yes ||
        fail "second init failed: $(cat "$S/init.out" "$S/init.err")"
    assert_contains "$(cat "$S/init.out")" "already exists" "message"
    assert_contains "$(cat "$S/init.out")" "left alone" "message"
    assert_eq "$before" "$(state_digest)" "backup.conf, passphrase, key and the repository's config"
    d0 qvm-backup-borg list personal >"$S/list.log" 2>&1 || fail "list after the second init: $(cat "$S/list.log")"
    grep -qE '^personal +[0-9]{4}-' "$S/list.log" || fail "archive gone: $(cat "$S/list.log")"
}

test_a_wrong_host_key_fingerprint_is_refused_with_77_and_nothing_changes() {
    local before rc=0
    before=$(state_digest)
    # shellcheck disable=SC2046 # words on purpose
    run_init $(server_args) --host-key-fingerprint "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA" --yes || rc=$?
    assert_eq 77 "$rc" "exit status ($(cat "$S/init.err"))"
    assert_contains "$(cat "$S/init.err")" "has the fingerprint SHA256:AAAA" "message"
    assert_eq "$before" "$(state_digest)" "files after a refused init"
    assert_eq "Halted" "$(d0 qvm-ls --raw-data --fields STATE sys-backup-mnt)" "disposable not started"
}

# init run as from a script or a timer: no controlling terminal (setsid), no --yes
run_init_no_terminal() {
    local rc=0
    d0 setsid -w qvm-backup-borg init "$@" </dev/null >"$S/init.out" 2>"$S/init.err" || rc=$?
    return "$rc"
}

test_init_without_yes_and_without_a_terminal_asks_gets_no_and_changes_nothing() {
    local before rc=0 err
    before=$(state_digest)
    # another user at the server: were the host keys confirmed, sys-backup's destination and the
    # vault's server.conf would change
    run_init_no_terminal --host "$SIM_NET_SSHD" --user borg2 --quota 10G || rc=$?
    err=$(cat "$S/init.err")
    # docs/USAGE.md: host keys not confirmed, nothing written, exit 77
    assert_eq 77 "$rc" "exit status ($err)"
    assert_contains "$err" "$(host_fp)" "the fingerprint shown"
    assert_contains "$err" "Pin them? (no terminal to ask on: use --yes)" "the question, and why no answer"
    assert_contains "$err" "init REFUSED: host keys not confirmed: nothing pinned (--host-key-fingerprint SHA256:" "how to proceed"
    assert_eq "$before" "$(state_digest)" "backup.conf, secrets, destination, server.conf, repository"
    assert_not_contains "$(in_qube sys-backup cat /etc/qubes-borg/destinations/offsite.conf)" "borg2" "destination"
    assert_eq "Halted" "$(d0 qvm-ls --raw-data --fields STATE sys-backup-mnt)" "no disposable started"
    # another repository in backup.conf: the diff shown, asked, not confirmed, nothing written
    rc=0
    run_init_no_terminal --repository ssh://nas/./repo || rc=$?
    err=$(cat "$S/init.err")
    # exit 1 like every other change init may not make (not 78: backup.conf itself is fine)
    assert_eq 1 "$rc" "exit status of the declined --repository ($err)"
    assert_contains "$err" "+repository = ssh://nas/./repo" "the diff shown"
    assert_contains "$err" "(no terminal to ask on: use --yes)" "why no answer"
    assert_contains "$err" "left unchanged: not confirmed (--yes to change it without asking)" "how to proceed"
    assert_eq "$before" "$(state_digest)" "files after a declined --repository"
    # the line not confirmed as registered: init stops before the repository (nothing written)
    rc=0
    # shellcheck disable=SC2046 # words on purpose
    run_init_no_terminal $(server_args) --host-key-fingerprint "$(host_fp)" || rc=$?
    err=$(cat "$S/init.err")
    assert_eq 1 "$rc" "exit status ($err)"
    assert_contains "$(cat "$S/init.out")" "Register this line" "the line shown"
    assert_contains "$err" "Initialise the repository now? (no terminal to ask on: use --yes)" "the question"
    assert_contains "$err" "init FAILED: repository not initialised: run init again once the line is registered" "how to proceed"
    assert_eq "$before" "$(state_digest)" "files after the unconfirmed registration"
    assert_eq "Halted" "$(d0 qvm-ls --raw-data --fields STATE sys-backup-mnt)" "no disposable started"
}

test_init_admin_sets_up_the_full_access_key_set_and_its_destination() {
    # shellcheck disable=SC2046 # words on purpose
    run_init $(server_args) --admin --host-key-fingerprint "$(host_fp)" --yes ||
        fail "init --admin failed: $(cat "$S/init.out" "$S/init.err")"
    local out line hk
    out=$(cat "$S/init.out")
    hk=$(cut -d' ' -f1,2 "$S/internet/host_key.pub")
    # the vault's admin key, as qubes-borg-keygen prints its full-access line (no append-only)
    line=$(in_qube -u user ssh-backup qubes-borg-keygen --admin-server-line admin repo)
    case "$line" in 'command="borg serve --restrict-to-repository repo",restrict ssh-ed25519 '*) ;;
        *) fail "admin line: $line" ;; esac
    assert_contains "$out" "$line" "the admin line printed"
    assert_contains "$out" "$(cat "$S/registered-line")" "the routine line printed too"
    [ "${line##* ssh-ed25519 }" != "$(sed 's/.* ssh-ed25519 //' "$S/registered-line")" ] ||
        fail "the admin key set uses the routine key"
    # its destination in sys-backup (agent = admin, the pinned host key), its server.conf in the vault
    local dest
    dest=$(in_qube sys-backup cat /etc/qubes-borg/destinations/offsite-admin.conf) ||
        fail "no offsite-admin destination"
    assert_contains "$dest" "agent = admin" "admin destination's key set"
    assert_contains "$dest" "host = $SIM_NET_SSHD" "admin destination's host"
    assert_contains "$dest" "host-key = $hk" "admin destination's pinned key"
    assert_contains "$(in_qube -u user ssh-backup sh -c 'cat "$HOME/.ssh/qubes-borg/admin/server.conf"')" \
        "host-key = $hk" "the vault's admin server.conf"
    d0 grep -qx 'admin_repository = ssh://offsite-admin/./repo' /etc/qubes-borg/backup.conf ||
        fail "admin_repository not in backup.conf: $(d0 cat /etc/qubes-borg/backup.conf)"
    assert_contains "$(cat "$S/init.err")" "+admin_repository = ssh://offsite-admin/./repo" "backup.conf diff shown"
    # the repository was there: left alone; the routine destination unchanged
    assert_contains "$out" "already exists" "repository left alone"
    assert_not_contains "$(in_qube sys-backup cat /etc/qubes-borg/destinations/offsite.conf)" "agent = admin" "routine destination"
}

test_init_repository_writes_the_url_and_its_destination() {
    # a new repository under a new destination name: the user registered its line first (the
    # server account now serves repo2 only); backup.conf's repository changes (diff shown),
    # sys-backup gets destinations/nas.conf, init makes repo2 and a backup goes through nas.
    # (The old repository under a new name would be refused by borg as relocated.)
    local line err dest
    line=$(in_qube -u user ssh-backup qubes-borg-keygen --server-line default repo2 10G)
    printf '%s\n' "$line" | in_qube internet sh -c 'cat > /home/borg/.ssh/authorized_keys'
    # shellcheck disable=SC2046 # words on purpose
    run_init --repository ssh://nas/./repo2 $(server_args) --host-key-fingerprint "$(host_fp)" --yes ||
        fail "init --repository failed: $(cat "$S/init.out" "$S/init.err")"
    err=$(cat "$S/init.err")
    assert_contains "$err" "-repository = $(repo)" "diff: old repository"
    assert_contains "$err" "+repository = ssh://nas/./repo2" "diff: new repository"
    d0 grep -qx 'repository = ssh://nas/./repo2' /etc/qubes-borg/backup.conf ||
        fail "repository not written: $(d0 cat /etc/qubes-borg/backup.conf)"
    d0 grep -qx 'key_file = /etc/qubes-borg/key' /etc/qubes-borg/backup.conf || fail "key_file lost"
    d0 sh -c 'ls /etc/qubes-borg/backup.conf.old-* /etc/qubes-borg/key.old-*' >/dev/null ||
        fail "the previous backup.conf and key were not kept"
    dest=$(in_qube sys-backup cat /etc/qubes-borg/destinations/nas.conf) || fail "no destination nas"
    assert_contains "$dest" "host = $SIM_NET_SSHD" "nas destination's host"
    assert_contains "$dest" "user = borg" "nas destination's user"
    assert_contains "$dest" "host-key = $(cut -d' ' -f1,2 "$S/internet/host_key.pub")" "nas pinned key"
    assert_contains "$dest" "agent = default" "nas destination's key set"
    assert_contains "$(cat "$S/init.out")" "$line" "the line printed is the one registered"
    assert_contains "$(cat "$S/init.out")" "Initialised the repository ssh://nas/./repo2 (keyfile-blake2)" "made"
    in_qube internet grep -q '^id = ' /home/borg/repo2/config || fail "no repo2 at the server"
    d0 qvm-backup-borg backup personal >"$S/backup.log" 2>&1 || fail "backup through nas: $(cat "$S/backup.log")"
    d0 qvm-backup-borg list personal >"$S/list.log" 2>&1 || fail "list through nas: $(cat "$S/list.log")"
    grep -qE '^personal +[0-9]{4}-' "$S/list.log" || fail "no archive in repo2: $(cat "$S/list.log")"
}

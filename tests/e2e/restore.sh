#!/usr/bin/env bash
# Suite "restore": `qvm-backup-borg list` and `restore` in the simulated dom0 after real backups through the
# whole chain: the archives per qube with dates and sizes (borg info --json in a fresh
# disposable, checked in dom0), and the settings saved with each archive (borg's comment).
# Run by tests/e2e/run as root; each test_* function runs in its own process.
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

S=${QUBES_SIM_STATE:-}
d0() { in_qube dom0 "$@"; }
pass() { cat "$S/backup-pass"; }
repo() { sed -n 's/^REPO_URL=//p' "$S/chain.env"; }
mnt_borg() {
    d0 qvm-start --skip-if-running sys-backup-mnt
    in_qube sys-backup-mnt BORG_RSH=qubes-ssh-client BORG_PASSPHRASE="$(pass)" borg "$@"
}

suite_setup() {
    "$SIM_DIR/chain-setup" "$S" offsite
    head -c 18 /dev/urandom | base64 | tr -d '/+=' | sed 's/^/sim-pass-/' > "$S/backup-pass"
    pass | d0 sh -c 'umask 077; mkdir -p /etc/qubes-borg; cat > /etc/qubes-borg/passphrase'
    d0 sh -c 'umask 077; cat > /etc/qubes-borg/backup.conf' <<EOC
# written by tests/e2e/restore.sh
repository = $(repo)
passphrase_file = /etc/qubes-borg/passphrase
compression = lz4
state_size_mib = 256
shutdown_timeout = 30
[qube vault-data]
mode = image
EOC
    mnt_borg init --encryption=repokey-blake2 "$(repo)"
    d0 qvm-shutdown --wait sys-backup-mnt
    # settings to find again in the archive
    d0 qvm-prefs personal label purple
    d0 qvm-features personal service.cups 1
    d0 qvm-tags personal add borg-e2e
    d0 qvm-backup-borg backup personal vault-data > "$S/setup-backup.log" 2>&1 ||
        fail "backup failed: $(cat "$S/setup-backup.log")"
}

test_list_shows_each_qubes_archive_with_date_and_size() {
    local out
    out=$(d0 qvm-backup-borg list 2>&1) || fail "list failed: $out"
    assert_contains "$out" "QUBE" "header"
    local q a
    for q in personal vault-data; do
        a=$(mnt_borg list --short --glob-archives "$q-*" "$(repo)" | tail -n 1)
        [ -n "$a" ] || fail "no archive of $q"
        echo "$out" | grep -E "^$q +[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:]{8}Z +[0-9.]+ [KMG]?i?B .* $a\$" >/dev/null ||
            fail "no row for $a in: $out"
    done
    assert_not_contains "$out" "work-" "a qube never backed up"
    d0 qvm-shutdown --wait sys-backup-mnt
    assert_eq "Halted" "$(d0 qvm-ls --raw-data --fields STATE sys-backup-mnt)" "disposable state"
}

test_list_of_one_qube_shows_the_settings_saved_with_it() {
    local out
    out=$(d0 qvm-backup-borg list personal 2>&1) || fail "list failed: $out"
    assert_not_contains "$out" "vault-data" "another qube"
    assert_contains "$out" "Settings saved with personal-" "settings header"
    local want
    for want in "class=AppVM" "mode=files" "pref.label=purple" "pref.template=debian-12" \
        "feature.service.cups=1" "tag=borg-e2e" \
        "private-size=$(d0 qvm-volume info personal:private size)"; do
        assert_contains "$out" "  $want" "saved setting"
    done
    out=$(d0 qvm-backup-borg list vault-data 2>&1) || fail "list failed: $out"
    assert_contains "$out" "  mode=image" "image mode saved"
}

test_list_with_a_wrong_passphrase_fails_and_cleans_up() {
    d0 sh -c 'cp /etc/qubes-borg/passphrase /etc/qubes-borg/passphrase.good && echo wrong > /etc/qubes-borg/passphrase'
    local rc=0 out
    out=$(d0 qvm-backup-borg list 2>&1) || rc=$?
    d0 sh -c 'mv /etc/qubes-borg/passphrase.good /etc/qubes-borg/passphrase'
    assert_eq 1 "$rc" "exit status; output: $out"
    assert_contains "$out" "list FAILED" "message"
    assert_eq "Halted" "$(d0 qvm-ls --raw-data --fields STATE sys-backup-mnt)" "disposable state"
    local att
    att=$(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["attachments"]))' "$S/dom0sim/qubes.json")
    assert_eq 0 "$att" "attachments left"
}

# The new qube's committed private image in the simulated pool.
image() { echo "$S/dom0sim/var-lib-qubes/appvms/$1/private.img"; }

test_restore_as_a_new_qube_is_byte_exact_with_its_settings() {
    local out name m
    out=$(d0 qvm-backup-borg restore personal 2>&1) || fail "restore failed: $out"
    name=$(echo "$out" | sed -n 's/^restored .* as qube //p')
    case "$name" in personal-restored-[0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9]) ;; *) fail "name '$name' in: $out" ;; esac
    assert_eq "purple" "$(d0 qvm-prefs "$name" label)" "label"
    assert_eq "debian-12" "$(d0 qvm-prefs "$name" template)" "template"
    assert_eq "1" "$(d0 qvm-features "$name" service.cups)" "feature"
    assert_eq "borg-e2e" "$(d0 qvm-tags "$name" list)" "tags (no qubes-borg-restoring left)"
    m=$(mktemp -d)
    mount -o ro,noload,loop "$(image "$name")" "$m"
    local rc=0 diff
    diff=$(python3 "$SIM_DIR/treedata.py" compare "$S/dom0sim/expected/personal" "$m" 2>&1) || rc=$?
    umount "$m" && rmdir "$m"
    # backups exclude lost+found (default excludes); the fresh ext4 has its own, nothing else differs
    [ "$rc" = 0 ] || assert_eq "extra in restore: lost+found
1 differences" "$diff" "restored tree vs the backed-up volume"
    assert_eq "Halted" "$(d0 qvm-ls --raw-data --fields STATE sys-backup-mnt)" "disposable state"
}

test_restore_of_an_image_archive_writes_the_image() {
    local out size
    out=$(d0 qvm-backup-borg restore vault-data --as vault-back 2>&1) || fail "restore failed: $out"
    assert_contains "$out" "(image mode) as qube vault-back" "message"
    size=$(stat -c %s "$S/dom0sim/var-lib-qubes/appvms/vault-data/private.img")
    assert_eq "$(sha256sum < "$S/dom0sim/var-lib-qubes/appvms/vault-data/private.img")" \
        "$(head -c "$size" "$(image vault-back)" | sha256sum)" "image"
}

test_restore_never_overwrites_an_existing_qube() {
    local before rc=0 out
    before=$(sha256sum < "$(image personal)")
    out=$(d0 qvm-backup-borg restore personal --as personal 2>&1) || rc=$?
    assert_eq 1 "$rc" "exit status; output: $out"
    assert_contains "$out" "qube personal exists: nothing was changed" "message"
    assert_eq "$before" "$(sha256sum < "$(image personal)")" "personal's volume untouched"
    assert_not_contains "$(d0 qvm-tags personal list)" "qubes-borg-restoring" "tag"
}

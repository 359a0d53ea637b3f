#!/usr/bin/env bash
# Suite "restore": `qvm-backup-borg list` and `restore` in the simulated dom0 after real backups through the
# whole chain: the archives per qube with dates and sizes (borg info --json in a fresh
# disposable, checked in dom0), and the settings saved with each archive (borg's comment).
# Run by tests/e2e/run as root; each test_* function runs in its own process.
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"


suite_setup() {
    setup_repository tests/e2e/restore.sh '[qube vault-data]
mode = image'
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
    assert_nothing_left
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

# --- restore QUBE --path P... --into TARGET ---------------------------------------------------

DATA=home/user/data
INTO_PATHS=("$DATA/home-3" "$DATA/special/script.sh" "$DATA/special/link-rel"
    "$DATA/special/link-abs" "$DATA/special/link-dangling" "$DATA/special/hardlinked"
    "$DATA/special/hardlinked-2")
newest() { newest_archive "$1"; }
into_args() { local p; for p in "${INTO_PATHS[@]}"; do printf -- '--path\n%s\n' "$p"; done; }

test_restore_into_a_running_qube_delivers_the_paths_byte_exact() {
    local a out rc=0 got args
    a=$(newest personal)
    d0 qvm-shutdown --wait sys-backup-mnt
    d0 qvm-start --skip-if-running work
    mapfile -t args < <(into_args)
    out=$(d0 qvm-backup-borg restore personal "${args[@]}" --into work 2>&1) || fail "restore --into failed: $out"
    assert_contains "$out" "restored 7 path(s) of $a into work:~/QubesIncoming/borg-restore/$a/" "message"
    # the originals of those paths, copied into work as they are (root keeps owners)
    tar -C "$S/dom0sim/expected/personal" -cf - "${INTO_PATHS[@]}" |
        in_qube work sh -c 'rm -rf /tmp/exp && mkdir /tmp/exp && tar -xpf - -C /tmp/exp'
    got=/home/user/QubesIncoming/borg-restore/$a/$DATA
    for sub in home-3 special; do
        out=$(in_qube work python3 -I "$SIM_DIR/treedata.py" compare "/tmp/exp/$DATA/$sub" "$got/$sub" --ignore uid,gid 2>&1) || rc=$?
        assert_eq 0 "$rc" "$sub: content, modes, mtimes, symlinks, hard links: $out"
    done
    # unpacked as the qube's user, in folders only it can enter (as qfile-unpacker makes them)
    assert_eq "$(in_qube work id -u user)" "$(in_qube work stat -c %u "$got/home-3")" "owner (uid)"
    assert_eq "700 700" "$(in_qube work stat -c %a /home/user/QubesIncoming /home/user/QubesIncoming/borg-restore | tr '\n' ' ' | sed 's/ $//')" "folder modes"
    assert_eq "Halted" "$(d0 qvm-ls --raw-data --fields STATE sys-backup-mnt)" "disposable state"
    # a second delivery of the same paths overwrites nothing: it fails and leaves the files
    local f
    f=$(in_qube work find "$got/home-3" -type f -name 'file-*' | sort | head -n 1)
    in_qube work cp -p "$f" /tmp/kept
    # shellcheck disable=SC2016  # $1 belongs to the inner sh
    in_qube work sh -c 'echo changed > "$1"' sh "$f"
    rc=0
    out=$(d0 qvm-backup-borg restore personal --path "$DATA/home-3" --into work 2>&1) || rc=$?
    assert_eq 1 "$rc" "second delivery: $out"
    assert_contains "$out" "unpacking in work failed" "message"
    assert_contains "$out" "File exists" "tar's reason"
    assert_eq "changed" "$(in_qube work cat "$f")" "file left as it was"
    # put it back in place (a rename would change its folder's mtime)
    # shellcheck disable=SC2016  # $1 belongs to the inner sh
    in_qube work sh -c 'cat /tmp/kept > "$1" && touch -r /tmp/kept "$1" && rm /tmp/kept' sh "$f"
    rc=0
    out=$(in_qube work python3 -I "$SIM_DIR/treedata.py" compare "/tmp/exp/$DATA/home-3" "$got/home-3" --ignore uid,gid 2>&1) || rc=$?
    assert_eq 0 "$rc" "after the refused second delivery: $out"
}

test_restore_into_refuses_dotdot_paths_and_a_qube_not_running() {
    local rc=0 out before
    before=$(wc -l < "$S/dom0-calls.jsonl")
    out=$(d0 qvm-backup-borg restore personal --path home/user/../../etc --into work 2>&1) || rc=$?
    assert_eq 64 "$rc" "exit status; output: $out"
    assert_contains "$out" "path 'home/user/../../etc' must not have an empty, . or .. component" "message"
    assert_eq "$before" "$(wc -l < "$S/dom0-calls.jsonl")" "no qvm-* call made"
    assert_eq "Halted" "$(d0 qvm-ls --raw-data --fields STATE vault-data)" "vault-data halted"
    rc=0
    out=$(d0 qvm-backup-borg restore personal --path "$DATA/home-3" --into vault-data 2>&1) || rc=$?
    assert_eq 1 "$rc" "exit status; output: $out"
    assert_contains "$out" "qube vault-data is halted: start it first" "message"
    assert_eq "Halted" "$(d0 qvm-ls --raw-data --fields STATE vault-data)" "vault-data not started"
    assert_eq "Halted" "$(d0 qvm-ls --raw-data --fields STATE sys-backup-mnt)" "no disposable left"
}

test_the_target_command_contains_a_hostile_stream() {
    # TARGET's command line exactly as qvm-backup-borg gave it to qvm-run, fed a tar made to
    # escape: ../ and absolute names, a symlink to home followed by a file through it.
    local cmd t
    cmd=$(python3 -c '
import json, sys
for line in open(sys.argv[1]):
    a = json.loads(line)
    if a[0] == "qvm-run" and "--service" not in a and a[-1].startswith("umask"):
        print(a[-1].replace("borg-restore/\x27", "borg-restore/\x27evil-"))
        break' "$S/dom0-calls.jsonl")
    [ -n "$cmd" ] || fail "no qvm-run of restore --into in the call log (run after the first test)"
    t=$(mktemp)
    python3 - "$t" <<'PY'
import io, sys, tarfile
with tarfile.open(sys.argv[1], "w", format=tarfile.GNU_FORMAT) as tar:
    def add(name, data=b"owned\n", **kw):
        ti = tarfile.TarInfo(name)
        for k, v in kw.items():
            setattr(ti, k, v)
        if ti.type == tarfile.REGTYPE:
            ti.size = len(data)
            tar.addfile(ti, io.BytesIO(data))
        else:
            tar.addfile(ti)
    add("../../escaped")
    add("/tmp/absolute")
    add("home", type=tarfile.SYMTYPE, linkname="/home/user")
    add("home/.bashrc")
    add("ok.txt", b"fine\n")
PY
    local rc=0
    d0 qvm-run --pass-io --no-autostart --no-gui --no-color-output --no-color-stderr \
        --no-filter-escape-chars work "$cmd" < "$t" > /dev/null 2>&1 || rc=$?
    rm -f "$t"
    [ "$rc" != 0 ] || fail "tar reported no error for a hostile stream"
    in_qube work sh -c '! grep -qs owned /home/user/.bashrc' || fail ".bashrc written through a symlink"
    in_qube work sh -c '! test -e /home/user/QubesIncoming/escaped && ! test -e /home/user/escaped && ! test -e /tmp/absolute' ||
        fail "a file landed outside the folder"
    in_qube work sh -c 'grep -q fine /home/user/QubesIncoming/borg-restore/evil-*/ok.txt' || fail "the harmless file is missing"
}

test_a_template_archive_comes_back_as_a_template() {
    # a TemplateVM with a filesystem on its private volume, backed up in files mode
    d0 qvm-create --class TemplateVM --label black tpl-e2e
    assert_eq "vm-templates/tpl-e2e/private" "$(d0 qvm-volume info tpl-e2e:private vid)" "vid"
    local img=$S/dom0sim/var-lib-qubes/vm-templates/tpl-e2e/private.img m
    mkfs.ext4 -q -F "$img"
    m=$(mktemp -d)
    mount -o loop "$img" "$m" && mkdir -p "$m/home/user" && echo template-data > "$m/home/user/t.txt"
    umount "$m" && rmdir "$m"
    local out rc=0
    out=$(d0 qvm-backup-borg backup tpl-e2e 2>&1) || fail "backup failed: $out"
    out=$(d0 qvm-backup-borg restore tpl-e2e --as tpl-back 2>&1) || fail "restore failed: $out"
    assert_contains "$out" "tpl-back: TemplateVM with an EMPTY root volume" "warning"
    assert_eq "TemplateVM" "$(d0 qvm-prefs tpl-back klass)" "class"
    assert_eq "black" "$(d0 qvm-prefs tpl-back label)" "label"
    assert_eq "vm-templates/tpl-back/private" "$(d0 qvm-volume info tpl-back:private vid)" "vid"
    m=$(mktemp -d)
    mount -o ro,loop "$S/dom0sim/var-lib-qubes/vm-templates/tpl-back/private.img" "$m"
    out=$(cat "$m/home/user/t.txt") || rc=$?
    umount "$m" && rmdir "$m"
    assert_eq "0 template-data" "$rc $out" "file restored"
    rc=0
    out=$(d0 qvm-create --class TemplateVM --template debian-12 --label black tpl-x 2>&1) || rc=$?
    assert_eq 1 "$rc" "a template based on a template: $out"
    assert_contains "$out" "TemplateVM cannot be based on template" "qubesd's refusal"
}

test_a_standalone_archive_comes_back_as_a_standalone_with_its_files() {
    # a StandaloneVM made the usual way (a copy of a template), its private volume holding
    # personal's tree; backed up in files mode
    d0 qvm-create --class StandaloneVM --template debian-12 --label orange sa-e2e
    local img m
    img=$(image sa-e2e)
    mkfs.ext4 -q -F -d "$S/dom0sim/expected/personal" "$img"
    local out rc=0
    out=$(d0 qvm-backup-borg backup sa-e2e 2>&1) || fail "backup failed: $out"
    : > "$S/sa-calls.jsonl"
    out=$(QUBES_SIM_DOM0_CALLS=$S/sa-calls.jsonl d0 qvm-backup-borg restore sa-e2e --as sa-back 2>&1) ||
        fail "restore failed: $out"
    # no template is saved for a standalone: qvm-create makes it with an empty root volume
    # (never --template: that would be a fresh copy of a template, not this qube), and says so
    local create
    create=$(python3 -c '
import json, sys
for line in open(sys.argv[1]):
    a = json.loads(line)
    if a[0] == "qvm-create":
        print(" ".join(a))' "$S/sa-calls.jsonl")
    assert_eq "qvm-create --class StandaloneVM --label orange sa-back" "$create" "qvm-create call"
    assert_contains "$out" "sa-back: StandaloneVM with an EMPTY root volume" "warning about the root volume"
    assert_contains "$out" "--as NAME --replace" "how to get a bootable one"
    assert_contains "$out" "as qube sa-back" "message"
    assert_eq "StandaloneVM" "$(d0 qvm-prefs sa-back klass)" "class"
    assert_eq "orange" "$(d0 qvm-prefs sa-back label)" "label"
    assert_eq "" "$(d0 qvm-tags sa-back list)" "tags (no qubes-borg-restoring left)"
    m=$(mktemp -d)
    mount -o ro,noload,loop "$(image sa-back)" "$m"
    local diff
    diff=$(python3 "$SIM_DIR/treedata.py" compare "$S/dom0sim/expected/personal" "$m" 2>&1) || rc=$?
    umount "$m" && rmdir "$m"
    # as for personal: only the fresh filesystem's own lost+found differs
    [ "$rc" = 0 ] || assert_eq "extra in restore: lost+found
1 differences" "$diff" "restored tree vs the standalone's volume"
    assert_nothing_left
}

# --- Ctrl-C during restore --into ----------------------------------------------------------------

# restore personal --path home-3 --into work, the folder it lands in emptied first; output in
# $S/into.log, exit status kept
into_home3() {
    local rc=0
    in_qube work rm -rf /home/user/QubesIncoming/borg-restore
    d0 qvm-backup-borg restore personal --path "$DATA/home-3" --into work >"$S/into.log" 2>&1 || rc=$?
    return "$rc"
}

test_sigint_at_every_step_of_restore_into_exits_130_and_leaves_nothing() {
    # SIGINT (Ctrl-C: qvm-backup-borg runs its qvm-* children in their own process groups, so
    # only it gets the terminal's signal) at each qvm-* call of one restore --into, through
    # the stand-ins' fault hook (tests/sim/README.md)
    d0 qvm-start --skip-if-running work
    local total n rc a
    : > "$S/into-count.jsonl"
    QUBES_SIM_DOM0_CALLS=$S/into-count.jsonl into_home3 || fail "clean run: $(cat "$S/into.log")"
    total=$(wc -l < "$S/into-count.jsonl")
    [ "$total" -ge 5 ] || fail "only $total qvm-* calls counted"
    n=1
    while [ "$n" -le "$total" ]; do
        echo "$n INT" > "$S/dom0sim/fault"
        rc=0
        into_home3 || rc=$?
        rm -f "$S/dom0sim/fault"
        # 130 and "interrupted", or, when the signal came while the last steps were undone after
        # the files were delivered (it reaches the tool a moment after the stand-in sends it),
        # 0 and "restored": never a silent partial restore
        case "$rc" in
            130) assert_contains "$(cat "$S/into.log")" "interrupted" "says it was interrupted (call $n)" ;;
            0) assert_contains "$(cat "$S/into.log")" "restored 1 path(s)" "exit 0 only once the files were delivered (call $n)" ;;
            *) fail "SIGINT at call $n of $total: exit $rc: $(cat "$S/into.log")" ;;
        esac
        assert_nothing_left
        assert_lock_free
        assert_eq "Running" "$(d0 qvm-ls --raw-data --fields STATE work)" "target still running (call $n)"
        n=$((n + 1))
    done
    echo "interrupted at each of $total calls"
    # the next restore --into works and delivers the files
    into_home3 || fail "restore --into after the interruptions: $(cat "$S/into.log")"
    a=$(newest personal)
    d0 qvm-shutdown --wait sys-backup-mnt
    assert_contains "$(cat "$S/into.log")" "restored 1 path(s) of $a into work:" "message"
    tar -C "$S/dom0sim/expected/personal" -cf - "$DATA/home-3" |
        in_qube work sh -c 'rm -rf /tmp/exp && mkdir /tmp/exp && tar -xpf - -C /tmp/exp'
    rc=0
    out=$(in_qube work python3 -I "$SIM_DIR/treedata.py" compare "/tmp/exp/$DATA/home-3" \
        "/home/user/QubesIncoming/borg-restore/$a/$DATA/home-3" --ignore uid,gid 2>&1) || rc=$?
    assert_eq 0 "$rc" "files delivered after the interruptions: $out"
}

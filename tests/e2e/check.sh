#!/usr/bin/env bash
# Suite "check": `qvm-backup-borg info` and `check` in the simulated dom0 after a real backup
# through the whole chain: borg check passes on a sound repository; the spot check compares
# every file of personal's newest archive (personal is cut down to four files first, so
# `--spot 10` samples all of them) with its committed volume; a file changed through the
# filesystem is "changed since the archive" (exit 0), a file whose bytes change under the
# filesystem (ctime untouched) is a MISMATCH (exit 1); a corrupted segment file in the server's
# repository is reported by borg check (exit 1). Run by tests/e2e/run as root; each test_*
# function runs in its own process, in file order (the last one breaks the repository).
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# personal's committed private image in the simulated pool.
image() { echo "$S/dom0sim/var-lib-qubes/appvms/personal/private.img"; }

suite_setup() {
    setup_repository tests/e2e/check.sh ""
    # personal (halted) keeps four regular files: config/rc.local and these three
    local m
    m=$(mktemp -d)
    mount -o loop "$(image)" "$m"
    rm -rf "$m/home/user/data"
    printf 'first file\n' > "$m/home/user/a.txt"
    printf 'second file\n' > "$m/home/user/b.txt"
    head -c 16384 /dev/urandom > "$m/home/user/c.bin"
    chown 1000:1000 "$m"/home/user/*
    umount "$m" && rmdir "$m"
    d0 qvm-backup-borg backup personal > "$S/setup-backup.log" 2>&1 ||
        fail "backup failed: $(cat "$S/setup-backup.log")"
}

newest() { mnt_borg list --short --glob-archives 'personal-*' "$(repo)" | tail -n 1; }

test_info_prints_the_archive_asked_for() {
    local a out
    a=$(newest)
    [ -n "$a" ] || fail "no archive of personal"
    out=$(d0 qvm-backup-borg info "$a" 2>&1) || fail "info failed: $out"
    assert_contains "$out" "Archive:       $a" "name"
    assert_contains "$out" "Qube:          personal" "qube"
    assert_contains "$out" "Date (UTC):    ${a#personal-}" "date"
    assert_contains "$out" "Files:         4" "file count (rc.local, a.txt, b.txt, c.bin)"
    assert_contains "$out" "Duration:      0:0" "duration"
    assert_contains "$out" "  mode=files" "settings saved with it"
    expect_code 1 d0 qvm-backup-borg info personal-2001-01-01T00:00:00Z
    assert_contains "$out" "info FAILED" "an archive that does not exist"
    assert_eq "Halted" "$(d0 qvm-ls --raw-data --fields STATE sys-backup-mnt)" "disposable state"
}

test_check_passes_on_a_sound_repository_and_unchanged_volume() {
    local out a
    a=$(newest)
    out=$(d0 qvm-backup-borg check --spot 10 personal 2>&1) || fail "check failed: $out"
    assert_contains "$out" "repository (borg check): ok" "borg check"
    assert_contains "$out" "personal: $a: 4 files checked, 4 matched, 0 changed since the archive, 0 mismatched: ok" "spot check"
    assert_eq "Halted" "$(d0 qvm-ls --raw-data --fields STATE sys-backup-mnt)" "disposable state"
    local att
    att=$(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["attachments"]))' "$S/dom0sim/qubes.json")
    assert_eq 0 "$att" "attachments left"
}

test_a_file_changed_through_the_filesystem_is_changed_since_the_archive() {
    local m out
    m=$(mktemp -d)
    mount -o loop "$(image)" "$m"
    printf 'edited after the backup\n' >> "$m/home/user/b.txt"
    umount "$m" && rmdir "$m"
    out=$(d0 qvm-backup-borg check --spot 10 personal 2>&1) || fail "check failed: $out"
    assert_contains "$out" "4 files checked, 3 matched, 1 changed since the archive, 0 mismatched: ok" "counts"
    assert_contains "$out" "  changed since the archive: home/user/b.txt" "named"
}

test_bytes_changed_under_the_filesystem_are_a_mismatch_naming_the_file() {
    local img block bs out
    img=$(image)
    # The first data block of c.bin, written directly: the file's ctime and mtime stay as
    # archived, as with a disk error or tampering below the filesystem.
    block=$(debugfs -R "bmap /home/user/c.bin 0" "$img" 2>/dev/null)
    bs=$(dumpe2fs -h "$img" 2>/dev/null | sed -n 's/^Block size: *//p')
    if [ -z "$block" ] || [ -z "$bs" ]; then fail "cannot find c.bin's block ($block, $bs)"; fi
    printf 'CORRUPTED' | dd of="$img" bs=1 seek=$((block * bs + 100)) conv=notrunc status=none
    expect_code 1 d0 qvm-backup-borg check --spot 10 personal
    assert_contains "$out" "repository (borg check): ok" "the repository is sound"
    assert_contains "$out" "4 files checked, 2 matched, 1 changed since the archive, 1 mismatched: MISMATCH" "counts"
    assert_contains "$out" "  MISMATCH (content): home/user/c.bin" "named"
    assert_contains "$out" "  changed since the archive: home/user/b.txt" "the edited file"
}

test_a_corrupted_segment_in_the_servers_repository_fails_check() {
    # Flip bytes in the middle of the largest segment file (the server side, "internet").
    in_qube internet python3 - <<'PY'
import os
root = "/home/borg/repo/data"
segs = [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs if f.isdigit()]
seg = max(segs, key=os.path.getsize)
with open(seg, "r+b") as f:
    size = os.path.getsize(seg)
    f.seek(size // 2)
    b = f.read(16)
    f.seek(size // 2)
    f.write(bytes(x ^ 0xFF for x in b))
print("corrupted", seg)
PY
    expect_code 1 d0 qvm-backup-borg check --spot 0
    assert_contains "$out" "repository (borg check): PROBLEMS FOUND" "borg check result"
    assert_contains "$out" "Segment entry checksum mismatch" "borg's message shown"
    assert_eq "Halted" "$(d0 qvm-ls --raw-data --fields STATE sys-backup-mnt)" "disposable state"
}

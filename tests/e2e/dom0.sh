#!/usr/bin/env bash
# Suite "dom0": the simulated dom0 and its qvm-* stand-ins (tests/sim/qvm_sim.py) on their own:
# what each accepts and rejects (as the real qubesadmin argparse does), what it prints, and the
# mechanics behind them (volumes, start/stop, the named disposable, qvm-block, qvm-run --service).
# Run by tests/e2e/run as root; each test_* function runs in its own process.
# shellcheck disable=SC2016  # commands in single quotes expand inside the qube
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

d0() { in_qube dom0 "$@"; }
# losetup --find can lose a race with another simulation on the same kernel: try again
d0_losetup() {
    local i
    for i in 1 2 3 4 5; do
        "$QEXEC" -s "${LOSETUP_STATE:-$QUBES_SIM_STATE}" dom0 losetup "$@" && return 0
        sleep "0.$i"
    done
    return 1
}
calls() { cat "$QUBES_SIM_STATE/dom0-calls.jsonl"; }
img() { echo "$QUBES_SIM_STATE/dom0sim/var-lib-qubes/appvms/$1/private.img"; }
# content of a file in a (stopped) qube's committed private image, read with debugfs
img_cat() { debugfs -R "cat $2" "$(img "$1")" 2>/dev/null; }
# loop devices backed by this simulation's pool
sim_loops() { python3 "$SIM_DIR/loops.py" list "$QUBES_SIM_STATE"; }

test_every_call_is_logged_as_one_json_argv_per_line() {
    d0 qvm-ls --raw-list >/dev/null
    expect_code 2 d0 qvm-prefs work 'no such' 'x' 'y'
    calls | tail -n 2 | python3 -c '
import json, sys
lines = [json.loads(l) for l in sys.stdin]
assert lines == [["qvm-ls", "--raw-list"], ["qvm-prefs", "work", "no such", "x", "y"]], lines'
}

test_qvm_ls_raw_data_and_what_it_rejects() {
    local o
    o=$(d0 qvm-ls --raw-data --fields NAME,CLASS,STATE,include_in_backups)
    assert_contains "$o" "work|AppVM|Running|True" "qvm-ls"
    assert_contains "$o" "personal|AppVM|Halted|True" "qvm-ls"
    assert_contains "$o" "sys-backup-mnt|DispVM|Running|False" "qvm-ls"
    assert_contains "$o" "dom0|AdminVM|Running|False" "qvm-ls"
    assert_eq "vault-data|-" "$(d0 qvm-ls --raw-data -O name,netvm vault-data)" "empty cell"
    assert_eq "personal" "$(d0 qvm-ls --raw-list --halted --tags nosuchtag personal; d0 qvm-ls --raw-list personal)" "filters"
    expect_code 2 d0 qvm-ls nosuch
    assert_contains "$out" "no such domain: 'nosuch'" "unknown qube"
    expect_code 2 d0 qvm-ls --format bogus
    expect_code 2 d0 qvm-ls --format simple --fields name      # mutually exclusive
    expect_code 2 d0 qvm-ls --class AppVM                       # only in 4.3: not in both
    expect_code 2 d0 qvm-ls --exclude work                      # --exclude needs --all
}

test_qvm_prefs_get_set_and_errors() {
    assert_eq "" "$(d0 qvm-prefs personal backup_timestamp)" "unset backup_timestamp"
    d0 qvm-prefs personal backup_timestamp 1700000000
    assert_eq "1700000000" "$(d0 qvm-prefs personal backup_timestamp)" "backup_timestamp"
    assert_eq "True" "$(d0 qvm-prefs personal include_in_backups)" "bool"
    assert_eq "debian-12" "$(d0 qvm-prefs -- personal template)" "template"
    d0 qvm-prefs personal | grep -E '^backup_timestamp +-  1700000000$' >/dev/null || fail "listing"
    d0 qvm-prefs --default personal backup_timestamp
    assert_eq "" "$(d0 qvm-prefs personal backup_timestamp)" "reset"
    expect_code 1 d0 qvm-prefs personal backup_timestamp soon
    expect_code 2 d0 qvm-prefs personal no_such_property
    assert_contains "$out" "no such property: 'no_such_property'" "unknown property"
    expect_code 2 d0 qvm-prefs personal label red extra
    expect_code 2 d0 qvm-prefs
}

test_qvm_volume_and_qvm_pool_info() {
    assert_eq "varlibqubes" "$(d0 qvm-volume info work:private pool)" "pool"
    assert_eq "appvms/work/private" "$(d0 qvm-volume info work:private vid)" "vid"
    assert_eq "$((48 << 20))" "$(d0 qvm-volume info personal:private size)" "size"
    local u
    u=$(d0 qvm-volume info personal:private usage)
    [ "$u" -gt 0 ] || fail "usage $u"
    d0 qvm-volume i work:private | grep -E '^save_on_stop +True$' >/dev/null || fail "info table"
    assert_eq "/var/lib/qubes" "$(d0 qvm-pool info varlibqubes | awk '$1=="dir_path"{print $2}')" "dir_path"
    assert_eq "file-reflink" "$(d0 qvm-pool info varlibqubes | awk '$1=="driver"{print $2}')" "driver"
    expect_code 2 d0 qvm-volume info work                       # no VM:VOLUME
    expect_code 1 d0 qvm-volume info nosuch:private
    assert_contains "$out" "no vm 'nosuch'" "unknown vm"
    expect_code 1 d0 qvm-volume info work:root
    expect_code 1 d0 qvm-volume info work:private nosuchprop
    expect_code 2 d0 qvm-volume info work:private usage extra
    expect_code 2 d0 qvm-pool info nosuchpool
}

test_qvm_features_and_qvm_tags() {
    d0 qvm-features personal sim-test 1
    assert_eq "1" "$(d0 qvm-features personal sim-test)" "feature"
    d0 qvm-features --unset personal sim-test
    expect_code 1 d0 qvm-features personal sim-test
    expect_code 2 d0 qvm-features personal a b c
    d0 qvm-tags personal add backup-me other
    assert_eq "backup-me other" "$(d0 qvm-tags personal list | tr '\n' ' ' | sed 's/ $//')" "tags"
    assert_eq "personal" "$(d0 qvm-ls --raw-list --tags backup-me)" "qvm-ls --tags"
    expect_code 1 d0 qvm-tags personal list nosuch
    d0 qvm-tags personal del other
    d0 qvm-tags personal del backup-me
    expect_code 2 d0 qvm-tags personal bogus-command
}

test_start_and_shutdown_commit_the_running_copy() {
    local before
    before=$(sha256sum < "$(img personal)")
    d0 qvm-start personal
    assert_eq "Running" "$(d0 qvm-ls --raw-data -O state personal)" "state"
    [ -f "$QUBES_SIM_STATE/dom0sim/var-lib-qubes/appvms/personal/private-dirty.img" ] || fail "no running copy"
    in_qube personal sh -c 'echo changed-while-running > /home/user/new-file; sync'
    in_qube personal test -f /rw/home/user/new-file || fail "/home is not /rw/home"
    assert_eq "$before" "$(sha256sum < "$(img personal)")" "committed image while running"
    expect_code 1 d0 qvm-start personal
    assert_contains "$out" "domain personal is already running" "double start"
    d0 qvm-start --skip-if-running personal
    d0 qvm-shutdown --wait --timeout 20 personal
    [ ! -e "$QUBES_SIM_STATE/dom0sim/var-lib-qubes/appvms/personal/private-dirty.img" ] || fail "running copy left"
    assert_eq "changed-while-running" "$(img_cat personal /home/user/new-file)" "committed after stop"
    case "$(sim_loops)" in *personal*) fail "loop left: $(sim_loops)" ;; esac
    d0 qvm-shutdown personal                                     # halted: nothing to do, exit 0
    expect_code 2 d0 qvm-shutdown --wait --timeout soon personal
}

test_named_disposable_is_fresh_on_each_start() {
    in_qube sys-backup-mnt sh -c 'echo x > /root/leftover; echo y > /etc/leftover'
    in_qube sys-backup-mnt sh -c 'setsid sleep 1000 </dev/null >/dev/null 2>&1 &'
    d0 qvm-shutdown --wait sys-backup-mnt
    pgrep -f 'sleep 1000' >/dev/null && fail "a process of the disposable survived"
    expect_code 1 in_qube sys-backup-mnt true                   # no such qube while halted
    d0 qvm-start sys-backup-mnt
    in_qube sys-backup-mnt test ! -e /root/leftover || fail "/root kept"
    in_qube sys-backup-mnt test ! -e /etc/leftover || fail "/etc kept"
    in_qube sys-backup-mnt id user >/dev/null || fail "the dvm template's user is gone"
    # its qrexec link works again (127: allowed by the policy, no such service without install)
    expect_code 127 in_qube sys-backup-mnt qrexec-client-vm @default qubes-borg.Ssh+offsite
}

test_app_qube_private_volume_has_the_qubes_layout() {
    local d
    for d in home/user config bind-dirs usrlocal; do
        in_qube work test -d "/rw/$d" || fail "/rw/$d missing in work"
    done
    in_qube work test -d /home/user/data || fail "/home is not the private volume's home"
    in_qube work sh -c 'grep -q " /rw ext4 " /proc/mounts' || fail "/rw is not ext4"
    # halted qubes: the committed image holds the same layout
    img_cat personal /config/rc.local | grep '^#!/bin/sh' >/dev/null || fail "config/rc.local"
}

test_block_attach_read_only_appears_in_the_target_only() {
    local loop rwloop
    loop=$(d0_losetup --read-only --find --show /var/lib/qubes/appvms/vault-data/private.img)
    d0 qvm-block list | grep "dom0:${loop#/dev/}" >/dev/null || fail "not listed: $(d0 qvm-block list)"
    d0 qvm-block attach --ro --option frontend-dev=xvdi sys-backup-mnt "dom0:${loop#/dev/}"
    in_qube sys-backup-mnt test -b /dev/xvdi || fail "no /dev/xvdi in sys-backup-mnt"
    for q in work sys-backup ssh-backup; do
        in_qube "$q" test ! -e /dev/xvdi || fail "/dev/xvdi visible in $q"
    done
    in_qube sys-backup-mnt sh -c 'mkdir -p /mnt/v && mount -o ro,noload /dev/xvdi /mnt/v && test -d /mnt/v/home/user/data && umount /mnt/v'
    expect_code 1 in_qube sys-backup-mnt dd if=/dev/zero of=/dev/xvdi bs=512 count=1 conv=notrunc
    expect_code 1 d0 qvm-block attach --ro sys-backup-mnt "dom0:${loop#/dev/}"
    assert_contains "$out" "already attached" "double attach"
    d0 qvm-block detach sys-backup-mnt "dom0:${loop#/dev/}"
    in_qube sys-backup-mnt test ! -e /dev/xvdi || fail "node left after detach"
    expect_code 1 d0 qvm-block detach sys-backup-mnt "dom0:${loop#/dev/}"
    # read-write loop, attached --ro: the qube gets a read-only device
    rwloop=$(d0_losetup --find --show /var/lib/qubes/appvms/vault-data/private.img)
    d0 qvm-block a --ro -o frontend-dev=xvdj sys-backup-mnt "dom0:${rwloop#/dev/}"
    assert_eq "1" "$(in_qube sys-backup-mnt blockdev --getro /dev/xvdj)" "--ro of a rw device"
    d0 qvm-block detach sys-backup-mnt
    # validation of qubes/ext/block.py and the parser
    expect_code 1 d0 qvm-block attach -o frontend-dev=hda sys-backup-mnt "dom0:${loop#/dev/}"
    assert_contains "$out" "Invalid frontend-dev option value: hda" "frontend-dev"
    expect_code 1 d0 qvm-block attach -o color=blue sys-backup-mnt "dom0:${loop#/dev/}"
    assert_contains "$out" "Unsupported option color" "option"
    expect_code 1 d0 qvm-block attach -o read-only=no sys-backup-mnt "dom0:${loop#/dev/}"
    assert_contains "$out" "can be attached only read-only" "rw of a ro device"
    expect_code 1 d0 qvm-block attach --ro sys-backup-mnt dom0:loop999
    assert_contains "$out" "doesn't expose device 'loop999'" "unknown device"
    expect_code 2 d0 qvm-block attach --ro sys-backup-mnt loop0
    expect_code 2 d0 qvm-block attach --ro nosuch "dom0:${loop#/dev/}"
    expect_code 2 d0 qvm-block attach --read-only sys-backup-mnt "dom0:${loop#/dev/}"
    d0 losetup -d "$loop" "$rwloop"
}

test_qvm_run_service_from_dom0() {
    local svc=$QUBES_SIM_STATE/roots/sys-backup-mnt/etc/qubes-rpc/sim.Dom0Test
    mkdir -p "${svc%/*}"
    printf '#!/bin/sh\necho "from=$QREXEC_REMOTE_DOMAIN user=$(id -un)"\ncat\necho on-stderr >&2\nexit 7\n' > "$svc"
    chmod 0755 "$svc"
    expect_code 7 sh -c 'echo data-in | "$1" -s "$2" dom0 qvm-run --user root --pass-io --no-gui --no-color-output --no-color-stderr --service sys-backup-mnt sim.Dom0Test 2>/dev/null' sh "$QEXEC" "$QUBES_SIM_STATE"
    assert_eq "from=dom0 user=root
data-in" "$out" "service stdio"
    qube_log sys-backup-mnt | grep 'sim.Dom0Test+-dom0: on-stderr' >/dev/null || fail "stderr not in the qube's log"
    expect_code 127 d0 qvm-run --pass-io --service sys-backup-mnt sim.NoSuchService
    expect_code 2 d0 qvm-run --pass-io --service --no-shell sys-backup-mnt sim.Dom0Test
    expect_code 2 d0 qvm-run --pass-io --service nosuch sim.Dom0Test
    rm -f "$svc"
}

test_down_removes_loop_devices_and_namespaces() {
    local loop rwloop extra wloop keeper
    st=$("$SIM_DIR/up" --no-install 2>/dev/null)      # global: the EXIT trap needs it
    trap '"$SIM_DIR/down" "$st"' EXIT
    loop=$(LOSETUP_STATE=$st d0_losetup --read-only --find --show /var/lib/qubes/appvms/personal/private.img)
    rwloop=$(LOSETUP_STATE=$st d0_losetup --find --show /var/lib/qubes/appvms/vault-data/private.img)
    "$QEXEC" -s "$st" dom0 qvm-block attach --ro sys-backup-mnt "dom0:${loop#/dev/}"
    "$QEXEC" -s "$st" dom0 qvm-block attach --ro sys-backup-mnt "dom0:${rwloop#/dev/}"
    extra=$(python3 -c 'import json,sys; print(*[a["extra_loop"] for a in json.load(open(sys.argv[1]))["attachments"] if a["extra_loop"]])' "$st/dom0sim/qubes.json")
    wloop=$(python3 -c 'import json,sys; print(*json.load(open(sys.argv[1]))["qubes"]["work"]["disk_loops"])' "$st/dom0sim/qubes.json")
    keeper=$(cat "$st/dom0sim/pid")
    if [ -z "$extra" ] || [ -z "$wloop" ]; then fail "no extra loop ($extra) or work disk ($wloop)"; fi
    # (loop devices are the kernel's: other simulations may reuse the numbers; compare inodes)
    local before
    before=$(losetup --list --noheadings -O NAME,BACK-INO | grep -E "^($loop|$rwloop|$extra|$wloop) ")
    "$SIM_DIR/down" "$st"
    [ "$(wc -l <<<"$before")" = 4 ] || fail "expected 4 loop devices: $before"
    [ ! -e "$st" ] || fail "state left"
    # (a zombie is fine: its parent, up, is gone and init reaps it)
    if grep -qs '^State:.*[^Z] (' "/proc/$keeper/status"; then fail "dom0 keeper left"; fi
    local after
    after=$(losetup --list --noheadings -O NAME,BACK-INO)
    while read -r l; do
        if grep -qxF "$l" <<<"$after"; then fail "loop device left: $l"; fi
    done <<<"$before"
}

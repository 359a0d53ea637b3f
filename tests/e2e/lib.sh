#!/usr/bin/env bash
# Helpers for the end-to-end suites (sourced by tests/e2e/run and by each test process).
# shellcheck source-path=SCRIPTDIR source=../sim/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../sim/lib.sh"
QEXEC=$SIM_DIR/qube-exec
# The qrexec version the current simulation runs (tests/sim/up records it).
# shellcheck disable=SC2034  # used by the suites
SIM_QREXEC_VERSION=$(cat "${QUBES_SIM_STATE:-/nonexistent}/qrexec-version" 2>/dev/null || echo 4.3)

# Run in a qube of the current simulation ($QUBES_SIM_STATE).
in_qube() { "$QEXEC" "$@"; }

fail() { echo "FAILED: $*" >&2; exit 1; }

assert_eq() { # EXPECTED ACTUAL WHAT
    [ "$1" = "$2" ] || fail "$3: expected '$1', got '$2'"
}

assert_contains() { # HAYSTACK NEEDLE WHAT
    case "$1" in *"$2"*) ;; *) fail "$3: '$2' not found in: $1" ;; esac
}

assert_not_contains() { # HAYSTACK NEEDLE WHAT
    case "$1" in *"$2"*) fail "$3: '$2' must not appear in: $1" ;; *) ;; esac
}

# Run CMD..., require exit status CODE; its stdout+stderr end up in $out.
expect_code() { # CODE CMD...
    local want=$1 got=0
    shift
    out=$("$@" 2>&1) || got=$?
    [ "$got" = "$want" ] || fail "'$*' exited $got, expected $want; output: $out"
}

# Put an executable service (a #!/bin/sh body) into a qube at PATH (e.g. /etc/qubes-rpc/x).
put_service() { # QUBE PATH BODY
    # shellcheck disable=SC2016  # $1 belongs to the inner sh
    printf '#!/bin/sh\n%s\n' "$3" | in_qube "$1" sh -c 'mkdir -p "${1%/*}" && cat > "$1" && chmod 0755 "$1"' sh "$2"
}

qube_log() { cat "$QUBES_SIM_STATE/roots/$1/var/log/qubes/qrexec-services.log" 2>/dev/null; }

# --- the suites of the whole chain (backup, restore, check, faults, init) ----------------------
S=${QUBES_SIM_STATE:-}
d0() { in_qube dom0 "$@"; }
pass() { cat "$S/backup-pass"; }
repo() { sed -n 's/^REPO_URL=//p' "$S/chain.env"; }
# borg in a fresh disposable (like a user restoring by hand, docs/USAGE.md); left running
mnt_borg() {
    d0 qvm-start --skip-if-running sys-backup-mnt
    in_qube sys-backup-mnt BORG_RSH=qubes-ssh-client BORG_PASSPHRASE="$(pass)" borg "$@"
}
newest_archive() { mnt_borg list --short --glob-archives "$1-*" "$(repo)" | tail -n 1; } # QUBE
attachments() { python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["attachments"]))' "$S/dom0sim/qubes.json"; }

# The chain as a user sets it up (tests/sim/chain-setup, destination offsite), a random
# passphrase in dom0, backup.conf (the common keys, then EXTRA: more keys or [qube] sections)
# and a repokey repository made by borg in the disposable, which is halted again.
setup_repository() { # WHO EXTRA
    "$SIM_DIR/chain-setup" "$S" offsite
    head -c 18 /dev/urandom | base64 | tr -d '/+=' | sed 's/^/sim-pass-/' > "$S/backup-pass"
    pass | d0 sh -c 'umask 077; mkdir -p /etc/qubes-borg; cat > /etc/qubes-borg/passphrase'
    printf '# written by %s\nrepository = %s\npassphrase_file = /etc/qubes-borg/passphrase\ncompression = lz4\nstate_size_mib = 256\nshutdown_timeout = 30\n%s\n' \
        "$1" "$(repo)" "$2" | d0 sh -c 'umask 077; cat > /etc/qubes-borg/backup.conf'
    mnt_borg init --encryption=repokey-blake2 "$(repo)"
    d0 qvm-shutdown --wait sys-backup-mnt
}

# What must be gone after any run: attachments, the disposable, loop devices of the pool or of
# borg's state image (the running qube work's own disk excepted), mounts in dom0.
assert_nothing_left() {
    local loops
    assert_eq 0 "$(attachments)" "attachments left"
    assert_eq "Halted" "$(d0 qvm-ls --raw-data --fields STATE sys-backup-mnt)" "disposable state"
    loops=$(python3 "$SIM_DIR/loops.py" list "$S" | grep -v 'appvms/work/private-dirty.img' || true)
    assert_eq "" "$loops" "loop devices left"
    case "$(d0 cat /proc/self/mounts)" in *xvd*|*/var/lib/qubes-borg/*) fail "mount left in dom0" ;; esac
}
# No run's lock left: nobody holds the flock, and the file names no run (an ended run empties it).
assert_lock_free() {
    d0 sh -c 'test ! -e /run/qubes-borg/lock || flock -n /run/qubes-borg/lock true' || fail "the lock is still held"
    d0 sh -c 'test ! -s /run/qubes-borg/lock' || fail "the lock file still names a run: $(d0 cat /run/qubes-borg/lock)"
}

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

#!/usr/bin/env bash
# Shared helpers for the simulated Qubes (sourced by up, down, qube-exec, e2e and bench scripts).
# shellcheck disable=SC2034  # variables used by the sourcing scripts

SIM_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$SIM_DIR/../.." && pwd)
# The three qubes that run project code, and the outside world.
SIM_QUBES=(sys-backup-mnt sys-backup ssh-backup)
# App qubes whose private volumes dom0 backs up (started and stopped by the qvm-* stand-ins).
SIM_APP_QUBES=(work personal vault-data)
# Addresses on the only link: sys-backup <-> internet (TEST-NET-1, only inside our namespaces).
SIM_NET_SYSBACKUP=192.0.2.2
SIM_NET_SSHD=192.0.2.10
# PATH inside qubes (what a Debian template has).
SIM_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

sim_die() { echo "qubes-sim: $*" >&2; exit 1; }
sim_log() { [ -n "${SIM_QUIET:-}" ] || echo "qubes-sim: $*" >&2; }

# Exit 77 (the "skipped" code) with a clear reason when the simulation cannot run here.
sim_require_root() {
    if [ "$(id -u)" -ne 0 ]; then
        echo "SKIP: the simulated Qubes needs root (network and mount namespaces); run as root" >&2
        exit 77
    fi
    local t
    for t in unshare nsenter ip mount python3; do
        command -v "$t" >/dev/null || sim_die "missing tool '$t' (apt-get install util-linux iproute2 python3)"
    done
    grep -qw overlay /proc/filesystems || modprobe overlay 2>/dev/null ||
        sim_die "the kernel has no overlay filesystem"
}

# The keeper process of a qube (or of "internet"): its namespaces are the qube.
sim_pid() {
    local state=$1 qube=$2 f
    case "$qube" in
        internet) f=$state/internet/pid ;;
        dom0) f=$state/dom0sim/pid ;;
        *) f=$state/qubes/$qube/pid ;;
    esac
    [ -s "$f" ] || sim_die "no such qube '$qube' in $state"
    cat "$f"
}

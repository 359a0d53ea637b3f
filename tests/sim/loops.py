#!/usr/bin/python3
"""Loop devices of one simulation (tests/sim/README.md, "dom0"): those backed by a file of its
dom0 (the pool /var/lib/qubes, /var/lib/qubes-borg), found by backing inode, so loop devices of
the host or of other simulations on the same kernel are never touched; plus the read-only loops
put over those by qvm-block attach --ro.

  loops.py list STATE      one "DEVICE BACKING-FILE" per line
  loops.py detach STATE    losetup -d each of them (the ones over others first)
"""
import json
import os
import subprocess
import sys


def sim_loops(state):
    ours = set()
    for top in ("dom0sim/var-lib-qubes", "dom0sim/var-lib-qubes-borg"):
        for d, _dirs, files in os.walk(os.path.join(state, top)):
            for f in files:
                st = os.lstat(os.path.join(d, f))
                ours.add((st.st_ino, os.major(st.st_dev), os.minor(st.st_dev)))
    out = subprocess.run(["losetup", "--list", "--json", "-O",
                          "NAME,BACK-FILE,BACK-INO,BACK-MAJ:MIN"],
                         capture_output=True, text=True, check=False).stdout
    loops = json.loads(out or '{"loopdevices": []}')["loopdevices"]
    mine = []
    for lo in loops:
        try:
            maj, mi = (int(x) for x in lo["back-maj:min"].split(":"))
            if (int(lo["back-ino"]), maj, mi) in ours:
                mine.append(lo)
        except (KeyError, ValueError, TypeError, AttributeError):
            pass
    # a loop over a loop device shows its backing file relative to devtmpfs, e.g. "/loop5"
    names = {os.path.basename(lo["name"]) for lo in mine}
    over = [lo for lo in loops
            if (lo.get("back-file") or "").startswith(("/dev/loop", "/loop"))
            and os.path.basename(lo["back-file"].split(" ")[0]) in names]
    return over + mine


def main(argv):
    if len(argv) != 3 or argv[1] not in ("list", "detach"):
        print(__doc__, file=sys.stderr)
        return 2
    for lo in sim_loops(argv[2]):
        if argv[1] == "list":
            print(lo["name"], lo.get("back-file") or "")
        else:
            subprocess.run(["losetup", "-d", lo["name"]], check=False,
                           stderr=subprocess.DEVNULL)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

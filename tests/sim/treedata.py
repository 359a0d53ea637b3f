#!/usr/bin/python3
"""Test data for the simulated Qubes: make a realistic tree, change a bit of it, compare trees.

  treedata.py make DIR SIZE_MIB [SEED]   a mixed tree of about SIZE_MIB MiB: compressible text and
                                         logs, incompressible "media", many small files, modes,
                                         mtimes (ns), symlinks (also dangling), hard links, a
                                         sparse file, user xattrs (when the filesystem has them),
                                         an empty dir and file, odd names
  treedata.py change DIR [SEED]          modify a few files, add one, delete one (incremental)
  treedata.py add DIR SUBDIR MIB [SEED]  add a new directory of about MIB MiB (half text, half
                                         random; a reversible "small change" for benchmarks)
  treedata.py compare A B [--ignore K,..] exit 0 if B restores A exactly: type, content, mode,
                                         owner, mtime (ns), symlink target, hard-link groups,
                                         holes of sparse files, xattrs; else list differences
                                         (--ignore uid,gid,...: leave those keys out)

Everything is generated from a seeded PRNG, so the same arguments give the same tree.
"""
import os
import random
import stat
import sys

MIB = 1 << 20
WORDS = ("borg qubes backup archive chunk segment repository deduplication encryption key "
         "vault network disposable template policy service relay socket stream journal "
         "the of and to in is that for it as with was on be at by this had not are but").split()


def text_blob(rng, size):
    """Compressible, not trivially: words in random order, with numbers, in lines."""
    out, n = [], 0
    while n < size:
        line = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 14)))
        line += " %d\n" % rng.randint(0, 10 ** 6)
        out.append(line)
        n += len(line)
    return "".join(out).encode()[:size]


def write(path, data, mode=0o644, mtime_ns=None):
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, mode)
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))


def try_xattr(path, name, value):
    try:
        os.setxattr(path, name, value, follow_symlinks=False)
        return True
    except OSError:
        return False


def make(top, size_mib, seed=1):
    rng = random.Random(seed)
    total = size_mib * MIB
    os.makedirs(top, exist_ok=True)
    base_t = 1_600_000_000 * 10 ** 9
    dirs = []
    for i in range(8):
        d = os.path.join(top, "home-%d" % i, "projects" if i % 2 else "documents")
        os.makedirs(d, exist_ok=True)
        dirs.append(d)
    os.makedirs(os.path.join(top, "empty-dir"), exist_ok=True)
    write(os.path.join(top, "empty-file"), b"", 0o600, base_t + 1)
    write(os.path.join(top, "name with spaces & ünïcödé.txt"), b"odd name\n", 0o640, base_t + 2)
    # ~45% incompressible media (large files), ~40% compressible text/logs, the rest small files
    media, text = int(total * 0.45), int(total * 0.40)
    small = total - media - text
    n = 0
    while media > 0:
        size = min(media, rng.randint(4, 64) * MIB)
        d = dirs[n % len(dirs)]
        p = os.path.join(d, "media-%03d.jpg" % n)
        with open(p, "wb") as f:
            left = size
            while left:
                k = min(left, 4 * MIB)
                f.write(rng.randbytes(k))
                left -= k
        os.utime(p, ns=(base_t + n * 7919, base_t + n * 7919))
        media -= size
        n += 1
    while text > 0:
        size = min(text, rng.randint(64 * 1024, 8 * MIB))
        d = dirs[n % len(dirs)]
        p = os.path.join(d, "log-%03d.txt" % n)
        write(p, text_blob(rng, size), rng.choice([0o644, 0o600, 0o664]), base_t + n * 104729)
        text -= size
        n += 1
    i = 0
    while small > 0:
        size = rng.randint(0, 16 * 1024)
        d = os.path.join(dirs[i % len(dirs)], "src", "m%02d" % (i % 37))
        os.makedirs(d, exist_ok=True)
        p = os.path.join(d, "file-%05d.%s" % (i, rng.choice(["c", "h", "py", "md", "json"])))
        data = text_blob(rng, size) if i % 3 else rng.randbytes(size)
        write(p, data, rng.choice([0o644, 0o755, 0o600, 0o444]), base_t + i * 1_000_003 + 123)
        small -= max(size, 1)
        i += 1
    # special files
    special = os.path.join(top, "special")
    os.makedirs(special, exist_ok=True)
    write(os.path.join(special, "script.sh"), b"#!/bin/sh\necho hi\n", 0o4755, base_t + 5)
    write(os.path.join(special, "sticky-dir-file"), b"x", 0o644, base_t + 6)
    os.symlink("script.sh", os.path.join(special, "link-rel"))
    os.symlink("/etc/hostname", os.path.join(special, "link-abs"))
    os.symlink("does/not/exist", os.path.join(special, "link-dangling"))
    hard = os.path.join(special, "hardlinked")
    write(hard, text_blob(rng, 100_000), 0o640, base_t + 7)
    os.link(hard, os.path.join(special, "hardlinked-2"))
    os.link(hard, os.path.join(dirs[0], "hardlinked-3"))
    sparse = os.path.join(special, "sparse.img")
    with open(sparse, "wb") as f:
        f.seek(32 * MIB)
        f.write(b"data in the middle" * 100)
        f.seek(64 * MIB - 1)
        f.write(b"\0")
    os.utime(sparse, ns=(base_t + 8, base_t + 8))
    xa = os.path.join(special, "with-xattrs")
    write(xa, b"xattrs\n", 0o644, base_t + 9)
    try_xattr(xa, "user.comment", b"made by treedata.py")
    try_xattr(xa, "user.binary", bytes(range(0, 256, 7)))
    os.chmod(os.path.join(top, "empty-dir"), 0o1777)
    # directory mtimes last (creating entries changes them)
    for k, (root, _dirs, _files) in enumerate(sorted(os.walk(top), reverse=True)):
        os.utime(root, ns=(base_t + k * 11, base_t + k * 11))


def change(top, seed=2):
    """A small change: a few appended/rewritten files, one new, one deleted."""
    rng = random.Random(seed)
    files = sorted(os.path.join(r, f) for r, _d, fs in os.walk(top) for f in fs
                   if not os.path.islink(os.path.join(r, f)) and "log-" in f)
    for p in files[:3]:
        with open(p, "ab") as f:
            f.write(text_blob(rng, 10_000))
    small = sorted(os.path.join(r, f) for r, _d, fs in os.walk(top) for f in fs
                   if "file-" in f)
    if small:
        write(small[0], text_blob(rng, 2000), 0o600)
        os.unlink(small[-1])
    write(os.path.join(top, "new-after-first-backup.txt"), text_blob(rng, 50_000))


def add(top, sub, mib, seed=3):
    rng = random.Random(seed)
    d = os.path.join(top, sub)
    os.makedirs(d, exist_ok=True)
    left, i = mib * MIB, 0
    while left > 0:
        size = min(left, 512 * 1024)
        data = text_blob(rng, size) if i % 2 else rng.randbytes(size)
        write(os.path.join(d, "new-%04d" % i), data)
        left -= size
        i += 1


def holes(path):
    """Data extents of a file as (start, end) pairs (SEEK_DATA/SEEK_HOLE)."""
    out = []
    with open(path, "rb") as f:
        fd = f.fileno()
        end = os.fstat(fd).st_size
        pos = 0
        while pos < end:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                break
            stop = os.lseek(fd, start, os.SEEK_HOLE)
            out.append((start, stop))
            pos = stop
    return out


def snapshot(top):
    entries, inodes = {}, {}
    for root, dirs, files in os.walk(top):
        for name in dirs + files:
            p = os.path.join(root, name)
            rel = os.path.relpath(p, top)
            st = os.lstat(p)
            e = {"type": stat.S_IFMT(st.st_mode), "mode": stat.S_IMODE(st.st_mode),
                 "uid": st.st_uid, "gid": st.st_gid, "mtime": st.st_mtime_ns}
            try:
                e["xattrs"] = {k: os.getxattr(p, k, follow_symlinks=False)
                               for k in sorted(os.listxattr(p, follow_symlinks=False))}
            except OSError:
                e["xattrs"] = {}
            if stat.S_ISLNK(st.st_mode):
                e["target"] = os.readlink(p)
                del e["mode"]                      # symlink modes are not meaningful
            elif stat.S_ISREG(st.st_mode):
                e["size"] = st.st_size
                e["sparse"] = st.st_blocks * 512 < st.st_size // 2
                if st.st_nlink > 1:
                    inodes.setdefault((st.st_dev, st.st_ino), []).append(rel)
            entries[rel] = (e, p)
    links = sorted(sorted(v) for v in inodes.values())
    return entries, links


def same_content(a, b):
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(MIB), fb.read(MIB)
            if x != y:
                return False
            if not x:
                return True


def compare(a, b, ignore=()):
    ea, la = snapshot(a)
    eb, lb = snapshot(b)
    for entries in (ea, eb):
        for e, _p in entries.values():
            for k in ignore:
                e.pop(k, None)
    diffs = []
    for rel in sorted(set(ea) | set(eb)):
        if rel not in eb:
            diffs.append("missing in restore: " + rel)
            continue
        if rel not in ea:
            diffs.append("extra in restore: " + rel)
            continue
        (xa, pa), (xb, pb) = ea[rel], eb[rel]
        for k in sorted(set(xa) | set(xb)):
            if xa.get(k) != xb.get(k):
                diffs.append("%s: %s %r != %r" % (rel, k, xa.get(k), xb.get(k)))
        if xa["type"] == stat.S_IFREG and xa.get("size") == xb.get("size"):
            if not same_content(pa, pb):
                diffs.append("%s: content differs" % rel)
    if la != lb:
        diffs.append("hard-link groups differ: %r != %r" % (la, lb))
    nfiles = sum(1 for e, _p in ea.values() if e["type"] == stat.S_IFREG)
    nx = sum(1 for e, _p in ea.values() if e.get("xattrs"))
    nsparse = sum(1 for e, _p in ea.values() if e.get("sparse"))
    for d in diffs[:50]:
        print(d)
    if diffs:
        print("%d differences" % len(diffs))
        return 1
    print("identical: %d entries (%d files, %d hard-link groups, %d sparse, %d with xattrs)"
          % (len(ea), nfiles, len(la), nsparse, nx))
    return 0


def main(argv):
    if len(argv) >= 4 and argv[1] == "make":
        make(argv[2], int(argv[3]), int(argv[4]) if len(argv) > 4 else 1)
        return 0
    if len(argv) >= 3 and argv[1] == "change":
        change(argv[2], int(argv[3]) if len(argv) > 3 else 2)
        return 0
    if len(argv) >= 5 and argv[1] == "add":
        add(argv[2], argv[3], int(argv[4]), int(argv[5]) if len(argv) > 5 else 3)
        return 0
    if len(argv) == 4 and argv[1] == "compare":
        return compare(argv[2], argv[3])
    if len(argv) == 6 and argv[1] == "compare" and argv[4] == "--ignore":
        return compare(argv[2], argv[3], argv[5].split(","))
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))

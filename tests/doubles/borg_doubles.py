#!/usr/bin/python3
"""Test doubles around `borg serve` for tests/it/ssh/.

  borg_doubles.py serve STATE_DIR ARGS...
      The remote command the ssh double runs (through a per-test wrapper named as the
      destination's remote-path). Records ARGS (NUL-separated) in STATE/serve-argv.N, then does
      what STATE/serve-plan says:
        stream IN OUT EXIT   read stdin to EOF and check it is the first IN bytes of
                             stream(1), while writing OUT bytes of stream(2) to stdout; write
                             "in=N ok" or "in=N mismatch@K" to STATE/serve-result; exit EXIT.
        echo                 copy stdin to stdout as it arrives; exit 0 at EOF.
        proxy                run the real `borg ARGS...` and relay both ways, recording every
                             byte to STATE/serve-up.bin and STATE/serve-down.bin; exit with
                             borg's status.
  borg_doubles.py record UP DOWN PROGRAM ARGS...
      A recording BORG_RSH wrapper for the borg client side: runs PROGRAM, relays both ways,
      records the bytes to UP and DOWN, exits with PROGRAM's status.

stream(seed) is defined identically in tests/it/support/data.rs: 64 KiB blocks; byte j of
block k is ((j * 31 + (j >> 8) * 7 + seed * 101) + k) mod 256.
"""
import os
import subprocess
import sys
import threading

BLOCK = 65536


def base_block(seed):
    return bytes(((j * 31 + (j >> 8) * 7 + seed * 101) & 0xFF) for j in range(BLOCK))


def stream_blocks(seed, total):
    base = base_block(seed)
    k = 0
    sent = 0
    while sent < total:
        table = bytes(((b + k) & 0xFF) for b in range(256))
        block = base.translate(table)[: total - sent]
        yield block
        sent += len(block)
        k += 1


def next_index(state, stem):
    n = 0
    while os.path.exists(os.path.join(state, f"{stem}.{n}")):
        n += 1
    return os.path.join(state, f"{stem}.{n}")


def write_all(fd, data):
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def serve_stream(state, want_in, out, code):
    def writer():
        try:
            for block in stream_blocks(2, out):
                write_all(1, block)
        except BrokenPipeError:
            pass
        os.close(1)

    t = threading.Thread(target=writer)
    t.start()
    expected = b"".join(stream_blocks(1, want_in))
    got = 0
    mismatch = None
    while True:
        data = os.read(0, 1 << 20)
        if not data:
            break
        if mismatch is None:
            exp = expected[got : got + len(data)]
            if data != exp:
                i = next((i for i in range(len(data)) if i >= len(exp) or data[i] != exp[i]))
                mismatch = got + i
        got += len(data)
    if mismatch is None and got != want_in:
        mismatch = got
    result = f"in={got} ok" if mismatch is None else f"in={got} mismatch@{mismatch}"
    with open(os.path.join(state, "serve-result"), "w", encoding="ascii") as f:
        f.write(result)
    t.join()
    return code


def relay_record(argv, up_path, down_path):
    signal_default()
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
    cin, cout = proc.stdin.fileno(), proc.stdout.fileno()

    def up():
        with open(up_path, "wb") as rec:
            try:
                while True:
                    data = os.read(0, 1 << 16)
                    if not data:
                        break
                    rec.write(data)
                    rec.flush()
                    write_all(cin, data)
            except OSError:
                pass
            try:
                proc.stdin.close()
            except OSError:
                pass

    threading.Thread(target=up, daemon=True).start()
    with open(down_path, "wb") as rec:
        while True:
            data = os.read(cout, 1 << 16)
            if not data:
                break
            rec.write(data)
            rec.flush()
            try:
                write_all(1, data)
            except OSError:
                break
    os.close(1)
    code = proc.wait()
    return 128 - code if code < 0 else code


def signal_default():
    import signal  # pylint: disable=import-outside-toplevel

    signal.signal(signal.SIGPIPE, signal.SIG_DFL)


def main(argv):
    role = argv[1]
    if role == "serve":
        state, args = argv[2], argv[3:]
        with open(next_index(state, "serve-argv"), "wb") as f:
            f.write(b"".join(a.encode() + b"\0" for a in args))
        with open(os.path.join(state, "serve-plan"), encoding="ascii") as f:
            plan = f.read().split()
        if plan[0] == "stream":
            return serve_stream(state, int(plan[1]), int(plan[2]), int(plan[3]))
        if plan[0] == "echo":
            while True:
                data = os.read(0, 1 << 16)
                if not data:
                    return 0
                write_all(1, data)
        if plan[0] == "proxy":
            return relay_record(
                ["borg"] + args,
                os.path.join(state, "serve-up.bin"),
                os.path.join(state, "serve-down.bin"),
            )
        print(f"borg_doubles: unknown plan {plan}", file=sys.stderr)
        return 99
    if role == "record":
        return relay_record(argv[4:], argv[2], argv[3])
    print(f"borg_doubles: unknown role {role}", file=sys.stderr)
    return 99


if __name__ == "__main__":
    sys.exit(main(sys.argv))

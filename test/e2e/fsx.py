#!/usr/bin/env python3
"""A seeded fsx-style run (after fsx from xfstests): random operations on images on a Sheep mount,
the same ones on reference files on a local filesystem (ext4), compared as they go.

Each step's touched range is read back from both and compared; every --check-every steps and at
the end both whole files are. Snapshots taken along the way (user.sheep.snapshot) are compared
with copies of the reference taken at the same moment. Then requests at and past the limits:
offsets near 2^63, zero lengths, names of 255 and 256 bytes; none may crash the daemon or change a
byte. Exits 1 with the seed, the step and what differed on the first difference.

  fsx.py --mount MNT --ref DIR --seed N --ops 10000 --object-size 262144
"""

import argparse
import ctypes
import errno
import os
import random
import sys

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10

libc = ctypes.CDLL(None, use_errno=True)
libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong]


def fallocate(fd, mode, offset, length):
    if libc.fallocate(fd, mode, offset, length) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def copy_range(src, dst, count, off_src, off_dst):
    """copy_file_range until `count` bytes or the source's end; returns the bytes copied."""
    done = 0
    while done < count:
        n = os.copy_file_range(src, dst, count - done, off_src + done, off_dst + done)
        if n == 0:
            break
        done += n
    return done


def read_all(fd, off, length):
    out = bytearray()
    while len(out) < length:
        b = os.pread(fd, min(length - len(out), 1 << 20), off + len(out))
        if not b:
            break
        out += b
    return bytes(out)


class Fail(Exception):
    pass


class Pair:
    """An image on the mount and its reference file: every operation goes to both."""

    def __init__(self, name, mount, ref):
        self.name = name
        self.path = os.path.join(mount, name)
        self.ref_path = os.path.join(ref, name)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        self.ref = os.open(self.ref_path, os.O_RDWR | os.O_CREAT, 0o600)

    def size(self):
        a, b = os.fstat(self.fd).st_size, os.fstat(self.ref).st_size
        if a != b:
            raise Fail(f"{self.name}: size {a}, reference {b}")
        return a

    def compare(self, off, length, what):
        a = read_all(self.fd, off, length)
        b = read_all(self.ref, off, length)
        if a != b:
            first = next((i for i in range(min(len(a), len(b))) if a[i] != b[i]), min(len(a), len(b)))
            raise Fail(f"{what}: {self.name} differs from its reference at {off + first} "
                       f"(read {len(a)} and {len(b)} bytes of [{off}, {off + length}); "
                       f"image 0x{a[first:first + 8].hex()} reference 0x{b[first:first + 8].hex()})")

    def compare_all(self, what):
        self.compare(0, self.size() + 4096, what)


def same_outcome(what, image_call, ref_call):
    """Runs both; they must both succeed with the same result, or both fail (errnos may differ)."""
    try:
        a = image_call()
    except OSError as e:
        a = e
    try:
        b = ref_call()
    except OSError as e:
        b = e
    if isinstance(a, OSError) != isinstance(b, OSError) or (not isinstance(a, OSError) and a != b):
        raise Fail(f"{what}: image gave {a!r}, reference {b!r}")
    return a


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mount", required=True)
    ap.add_argument("--ref", required=True)
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--ops", type=int, default=10000)
    ap.add_argument("--object-size", type=int, default=4 << 20)
    ap.add_argument("--max-size", type=int, default=8 << 20)
    ap.add_argument("--max-io", type=int, default=300 << 10)
    ap.add_argument("--check-every", type=int, default=500)
    ap.add_argument("--snapshots", type=int, default=3)
    args = ap.parse_args()
    print(f"fsx: seed {args.seed}, {args.ops} operations, files up to {args.max_size} bytes, objects of {args.object_size}", flush=True)
    rng = random.Random(args.seed)
    osz = args.object_size
    a = Pair("fsx-a.img", args.mount, args.ref)
    b = Pair("fsx-b.img", args.mount, args.ref)
    counts = {}
    snapshots = []
    snap_at = set(rng.randrange(1, args.ops) for _ in range(args.snapshots))

    def offset(limit, eof):
        """Anywhere below limit, or at and around object and sub-block boundaries and the end of the file."""
        r = rng.random()
        if r < 0.3:
            base = rng.randrange(0, max(1, limit // osz + 1)) * osz
        elif r < 0.45:
            base = rng.randrange(0, max(1, limit // (osz // 64) + 1)) * (osz // 64)
        elif r < 0.55:
            base = eof
        else:
            return rng.randrange(0, max(1, limit))
        return max(0, min(limit, base + rng.choice([0, 0, -1, 1, -512, 512, -4096, 4096, rng.randrange(-9000, 9000)])))

    def length():
        r = rng.random()
        if r < 0.1:
            return rng.choice([1, 511, 512, 4096, osz // 64, osz, osz + 1])
        if r < 0.6:
            return rng.randrange(1, 16 << 10)
        return rng.randrange(1, args.max_io)

    def pattern(n, step):
        head = step.to_bytes(4, "little")
        return (head + rng.randbytes(60)) * (n // 64) + rng.randbytes(n % 64)

    for step in range(1, args.ops + 1):
        p = a if rng.random() < 0.85 else b
        op = rng.choices(["write", "read", "truncate", "punch", "zero", "alloc", "copy", "copy-to-b", "copy-to-a"],
                         weights=[30, 20, 6, 8, 6, 3, 8, 5, 4])[0]
        counts[op] = counts.get(op, 0) + 1
        size = p.size()
        what = f"step {step} ({op})"
        if op == "write":
            off, n = offset(args.max_size - 1, size), length()
            n = min(n, args.max_size - off)
            data = pattern(n, step)
            if os.pwrite(p.fd, data, off) != n or os.pwrite(p.ref, data, off) != n:
                raise Fail(f"{what}: short write")
            p.compare(off, n, what)
        elif op == "read":
            off, n = offset(size + 4096, size), length()
            p.compare(off, n, what)
        elif op == "truncate":
            to = rng.choice([rng.randrange(0, args.max_size), offset(args.max_size, size), size // 2, size + rng.randrange(1, osz)])
            to = min(to, args.max_size)
            os.ftruncate(p.fd, to)
            os.ftruncate(p.ref, to)
            p.compare(max(0, min(size, to) - osz), 2 * osz + abs(size - to), what)
        elif op in ("punch", "zero", "alloc"):
            off, n = offset(size + osz, size), length() * rng.choice([1, 1, 4, 16])
            mode = {"punch": FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                    "zero": FALLOC_FL_ZERO_RANGE | rng.choice([0, FALLOC_FL_KEEP_SIZE]),
                    "alloc": rng.choice([0, FALLOC_FL_KEEP_SIZE])}[op]
            if mode & FALLOC_FL_KEEP_SIZE == 0:
                n = max(1, min(n, args.max_size - off))
            fallocate(p.fd, mode, off, n)
            fallocate(p.ref, mode, off, n)
            p.compare(max(0, off - 4096), n + 8192, what)
        else:
            src, dst = {"copy": (p, p), "copy-to-b": (a, b), "copy-to-a": (b, a)}[op]
            n = length() * rng.choice([1, 1, 4, 16])
            off_in = offset(src.size(), src.size())
            off_out = offset(min(args.max_size, dst.size() + osz), dst.size())
            n = max(0, min(n, args.max_size - off_out))
            if src is dst and off_in < off_out + n and off_out < off_in + n:
                off_out = off_in + n if off_in + 2 * n <= args.max_size else max(0, off_in - n)
                if off_out < off_in + n and off_in < off_out + n:
                    continue
            got = same_outcome(what, lambda: copy_range(src.fd, dst.fd, n, off_in, off_out),
                               lambda: copy_range(src.ref, dst.ref, n, off_in, off_out))
            if isinstance(got, OSError):
                raise Fail(f"{what}: copy_file_range failed on both: {got}")
            dst.compare(max(0, off_out - 4096), n + 8192, what)
        if step in snap_at:
            tag = f"s{step}"
            os.setxattr(a.path, "user.sheep.snapshot", tag.encode())
            copy = os.path.join(args.ref, f"snap-{tag}")
            with open(a.ref_path, "rb") as f, open(copy, "wb") as g:
                g.write(f.read())
            snapshots.append((tag, copy))
        if step % args.check_every == 0:
            a.compare_all(f"step {step} (whole file)")
            b.compare_all(f"step {step} (whole file)")
    a.compare_all("the end (whole file)")
    b.compare_all("the end (whole file)")
    for tag, copy in snapshots:
        with open(os.path.join(args.mount, ".snapshots", a.name, tag), "rb") as f, open(copy, "rb") as g:
            if f.read() != g.read():
                raise Fail(f"snapshot {tag} differs from the reference as it was then")
    print(f"fsx: {args.ops} operations matched: {sorted(counts.items())}; {len(snapshots)} snapshots matched", flush=True)

    # At and past the limits: each succeeds or fails with an errno (the outcome may differ from
    # ext4's: FUSE allows files up to 2^63-1 where ext4 stops at 16 TiB), and changes nothing.
    size = a.size()
    before = read_all(a.fd, 0, size)
    big = (1 << 63) - 1
    odd = [
        ("pwrite at 2^63-1", lambda fd: os.pwrite(fd, b"x", big)),
        ("pwrite at 2^63-4096", lambda fd: os.pwrite(fd, b"x" * 4096, (1 << 63) - 4096)),
        ("pwrite at 2^62", lambda fd: os.pwrite(fd, b"x", 1 << 62)),
        ("pread at 2^63-1", lambda fd: os.pread(fd, 4096, big)),
        ("pread at 2^62", lambda fd: os.pread(fd, 4096, 1 << 62)),
        ("zero-length pwrite past the end", lambda fd: os.pwrite(fd, b"", size + 12345)),
        ("zero-length pread", lambda fd: os.pread(fd, 0, 0)),
        ("ftruncate to 2^63-1", lambda fd: os.ftruncate(fd, big)),
        ("fallocate at 2^63-4096", lambda fd: fallocate(fd, 0, (1 << 63) - 4096, 4096)),
        ("fallocate of length 0", lambda fd: fallocate(fd, 0, 0, 0)),
        ("punch at 2^62", lambda fd: fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 1 << 62, 1 << 20)),
        ("zero range from 2^53+1", lambda fd: fallocate(fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, (1 << 53) + 1, 4096)),
        ("pread at 2^53+1", lambda fd: os.pread(fd, 4096, (1 << 53) + 1)),
        ("copy_file_range of 0 bytes", lambda fd: os.copy_file_range(fd, b.fd if fd == a.fd else b.ref, 0, 0, 0)),
        ("copy_file_range from 2^62", lambda fd: os.copy_file_range(fd, b.fd if fd == a.fd else b.ref, 4096, 1 << 62, 0)),
        ("copy_file_range to 2^63-4096", lambda fd: os.copy_file_range(fd, b.fd if fd == a.fd else b.ref, 4096, 0, (1 << 63) - 4096)),
        ("lseek SEEK_DATA at 2^62", lambda fd: os.lseek(fd, 1 << 62, os.SEEK_DATA)),
        ("lseek SEEK_HOLE at 0", lambda fd: os.lseek(fd, 0, os.SEEK_HOLE) <= size),
    ]
    for what, call in odd:
        outcome = []
        for fd in (a.fd, a.ref):
            try:
                outcome.append(repr(call(fd)))
            except OSError as e:
                outcome.append(errno.errorcode.get(e.errno, str(e.errno)))
        print(f"fsx: {what}: {outcome[0]} (ext4: {outcome[1]})", flush=True)
        if a.size() != size or read_all(a.fd, 0, size) != before:
            raise Fail(f"{what} changed the image")
    b.compare_all("after the odd requests (whole file)")
    for n in (255, 256):
        name = "n" * (n - 4) + ".img"
        got = same_outcome(f"a name of {n} bytes",
                           lambda: os.close(os.open(os.path.join(args.mount, name), os.O_CREAT | os.O_RDWR, 0o600)) or os.stat(os.path.join(args.mount, name)).st_size,
                           lambda: os.close(os.open(os.path.join(args.ref, name), os.O_CREAT | os.O_RDWR, 0o600)) or 0)
        print(f"fsx: a name of {n} bytes: {got!r}", flush=True)
        if not isinstance(got, OSError):
            os.unlink(os.path.join(args.mount, name))
        elif got.errno != errno.ENAMETOOLONG:
            raise Fail(f"a name of {n} bytes failed with {got!r}, not ENAMETOOLONG")
    a.compare_all("the very end (whole file)")
    print("fsx: passed", flush=True)


if __name__ == "__main__":
    try:
        main()
    except Fail as e:
        print(f"fsx: FAILED: {e}", flush=True)
        sys.exit(1)

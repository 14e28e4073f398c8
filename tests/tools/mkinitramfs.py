#!/usr/bin/env python3
"""Writes a gzip-compressed newc cpio archive (the initramfs format Linux unpacks,
Documentation/driver-api/early-userspace/buffer-format.rst) from (archive path, host file or
None for a directory, mode) entries. Used by scripts/guest-fixtures; Debian's cpio is not
installed on the test machines.

usage: mkinitramfs.py OUT ENTRY... where ENTRY is `dir:PATH`, `file:PATH=HOSTFILE[:MODE]`
or `link:PATH=TARGET`."""
import gzip
import sys


def header(ino, mode, size, name, nlink=1):
    fields = [ino, mode, 0, 0, nlink, 0, size, 0, 0, 0, 0, len(name) + 1, 0]
    return b"070701" + b"".join(b"%08X" % f for f in fields)


def pad4(n):
    return b"\0" * ((4 - n % 4) % 4)


def main():
    out, entries = sys.argv[1], sys.argv[2:]
    data = bytearray()
    for ino, e in enumerate(entries, start=1):
        kind, rest = e.split(":", 1)
        if kind == "dir":
            name, body, mode = rest, b"", 0o040755
        elif kind == "file":
            name, src = rest.split("=", 1)
            perm = 0o755
            if ":" in src:
                src, m = src.rsplit(":", 1)
                perm = int(m, 8)
            body, mode = open(src, "rb").read(), 0o100000 | perm
        elif kind == "link":
            name, target = rest.split("=", 1)
            body, mode = target.encode(), 0o120777
        else:
            sys.exit(f"mkinitramfs: unknown entry kind {kind!r} in {e!r}")
        n = name.lstrip("/").encode()
        h = header(ino, mode, len(body), n, 2 if kind == "dir" else 1) + n + b"\0"
        data += h + pad4(len(h)) + body + pad4(len(body))
    t = header(0, 0, 0, b"TRAILER!!!") + b"TRAILER!!!\0"
    data += t + pad4(len(t))
    with open(out, "wb") as f:
        f.write(gzip.compress(bytes(data), 9, mtime=0))


if __name__ == "__main__":
    main()

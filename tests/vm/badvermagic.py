#!/usr/bin/env python3
"""Copy a kernel module with the release in its vermagic changed.

    badvermagic.py IN.ko OUT.ko RELEASE

The copy names another kernel release of the same length (each digit of the
version part before the first '-' or '+' is bumped by one), so the ELF layout
stays intact and only the .modinfo string differs. Prints the new release.
"""
import re
import sys


def other_release(release: str) -> str:
    m = re.match(r"^([0-9.]+)(.*)$", release)
    if not m:
        raise SystemExit(f"cannot derive another release from {release!r}")
    version, rest = m.groups()
    bumped = "".join(str((int(c) + 1) % 10) if c.isdigit() else c for c in version)
    return bumped + rest


def main() -> None:
    src, dst, release = sys.argv[1:4]
    data = open(src, "rb").read()
    old = b"vermagic=" + release.encode() + b" "
    if data.count(old) != 1:
        raise SystemExit(f"{src}: expected one {old!r}, found {data.count(old)}")
    new_release = other_release(release)
    assert len(new_release) == len(release) and new_release != release
    data = data.replace(old, b"vermagic=" + new_release.encode() + b" ")
    open(dst, "wb").write(data)
    print(new_release)


if __name__ == "__main__":
    main()

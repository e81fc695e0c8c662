"""The payload's hand-written ctypes structs and ioctl numbers, against the kernel's uAPI headers.

A generated C program prints sizeof/offsetof/constant values compiled against the
newest uAPI headers Debian ships (sid's linux-libc-dev, fetched once through the lab's
private apt setup into the cache), or the headers in $VFIO_LAB_UAPI_INCLUDE (e.g. a
tree's `make headers_install` output). Every value must equal the Python definition.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
from pathlib import Path

from lab.artifacts.apt import PrivateApt
from lab.core.cache import Cache
from vfiolib import uapi

HEADERS = {
    "linux/vfio.h": (uapi.STRUCTS, uapi.CONSTANTS),
    "linux/iommufd.h": (uapi.IOMMUFD_STRUCTS, uapi.IOMMUFD_CONSTANTS),
}


def uapi_include() -> list[Path]:
    if env := os.environ.get("VFIO_LAB_UAPI_INCLUDE"):
        return [Path(env)]
    cache = Cache()
    apt = PrivateApt(cache)
    apt.update()
    version = apt.candidate("linux-libc-dev")
    assert version, "no linux-libc-dev in the private apt lists"
    with cache.lock("uapi"):
        entry = cache.entry("uapi", version)
        if not entry.exists():
            with cache.build("uapi", version, "test") as scratch:
                deb = apt.download("linux-libc-dev", version, scratch)
                subprocess.run(["dpkg-deb", "-x", str(deb), str(scratch / "root")], check=True)
                deb.unlink()
    root = entry / "root" / "usr" / "include"
    return [root, root / "x86_64-linux-gnu"]


def c_program() -> tuple[str, list[tuple[str, int]]]:
    lines = ["#include <stdio.h>", "#include <stddef.h>"]
    lines += [f"#include <{header}>" for header in HEADERS]
    lines.append("int main(void) {")
    expected: list[tuple[str, int]] = []
    for structs, constants in HEADERS.values():
        for name, cls in structs.items():
            lines.append(f'printf("sizeof {name} %zu\\n", sizeof(struct {name}));')
            expected.append((f"sizeof {name}", ctypes.sizeof(cls)))
            for field, *_ in cls._fields_:
                lines.append(
                    f'printf("offsetof {name}.{field} %zu\\n", offsetof(struct {name}, {field}));'
                )
                expected.append((f"offsetof {name}.{field}", getattr(cls, field).offset))
        for name, value in sorted(constants.items()):
            lines.append(f'printf("const {name} %llu\\n", (unsigned long long)({name}));')
            expected.append((f"const {name}", value))
    lines += ["return 0;", "}"]
    return "\n".join(lines) + "\n", expected


def test_structs_and_ioctls_match_kernel_headers(tmp_path):
    includes = uapi_include()
    source, expected = c_program()
    (tmp_path / "layout.c").write_text(source)
    flags = [arg for inc in includes for arg in ("-I", str(inc))]
    subprocess.run(
        ["cc", *flags, "-o", str(tmp_path / "layout"), str(tmp_path / "layout.c")],
        check=True,
        capture_output=True,
    )
    out = subprocess.run(
        [str(tmp_path / "layout")], check=True, capture_output=True, text=True
    ).stdout
    actual = {line.rsplit(" ", 1)[0]: int(line.rsplit(" ", 1)[1]) for line in out.splitlines()}
    mismatches = [
        f"{key}: python {value}, C {actual[key]}" for key, value in expected if actual[key] != value
    ]
    assert not mismatches, "\n".join(mismatches)
    assert len(expected) > 90  # the program checked every struct field and constant

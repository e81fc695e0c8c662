"""The payload's hand-written ctypes structs and ioctl numbers, against the kernel's uAPI headers.

A generated C program prints sizeof/offsetof/constant values compiled against
<linux/vfio.h> (Debian's linux-libc-dev, or $VFIO_LAB_UAPI_INCLUDE for a tree being
tested); every value must equal the Python definition.
"""

from __future__ import annotations

import ctypes
import os
import subprocess

import pytest
from vfiolib import uapi

INCLUDE = os.environ.get("VFIO_LAB_UAPI_INCLUDE", "/usr/include")


def c_program() -> tuple[str, list[tuple[str, int]]]:
    lines = [
        "#include <stdio.h>",
        "#include <stddef.h>",
        "#include <linux/vfio.h>",
        "int main(void) {",
    ]
    expected: list[tuple[str, int]] = []
    for name, cls in uapi.STRUCTS.items():
        lines.append(f'printf("sizeof {name} %zu\\n", sizeof(struct {name}));')
        expected.append((f"sizeof {name}", ctypes.sizeof(cls)))
        for field, *_ in cls._fields_:
            lines.append(
                f'printf("offsetof {name}.{field} %zu\\n", offsetof(struct {name}, {field}));'
            )
            expected.append((f"offsetof {name}.{field}", getattr(cls, field).offset))
    for name, value in sorted(uapi.CONSTANTS.items()):
        lines.append(f'printf("const {name} %llu\\n", (unsigned long long)({name}));')
        expected.append((f"const {name}", value))
    lines += ["return 0;", "}"]
    return "\n".join(lines) + "\n", expected


def test_structs_and_ioctls_match_kernel_headers(tmp_path):
    if not os.path.exists(f"{INCLUDE}/linux/vfio.h"):
        pytest.fail(f"{INCLUDE}/linux/vfio.h is missing: apt-get install linux-libc-dev")
    source, expected = c_program()
    (tmp_path / "layout.c").write_text(source)
    subprocess.run(
        ["cc", "-I", INCLUDE, "-o", str(tmp_path / "layout"), str(tmp_path / "layout.c")],
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
    assert len(expected) > 60  # the program checked every struct field and constant

"""A bzImage's kernel as an uncompressed ELF, for QEMU's PVH entry (`-kernel vmlinux`).

Under TCG, unpacking a distribution kernel's xz-compressed bzImage is most of its boot:
Debian's 6.1 printed its first line 3.2-3.8 s after QEMU started, and 0.7 s when QEMU
loaded the ELF and entered it through PVH (the kernel needs CONFIG_PVH; Debian's has
it). The ELF is extracted once per image and cached by the image's hash.
"""

from __future__ import annotations

import lzma
import zlib
from pathlib import Path

from lab.core.cache import Cache, content_key

ELF = b"\x7fELF"
# Where a compressed payload starts inside a bzImage, and how to unpack it.
STREAMS = ((b"\xfd7zXZ\x00", "xz"), (b"\x1f\x8b\x08", "gzip"))


def pvh_capable(config: Path) -> bool:
    return config.exists() and "CONFIG_PVH=y\n" in config.read_text()


def extract_elf(bzimage: bytes) -> bytes | None:
    """The ELF inside a bzImage, or None when it is compressed in a way not handled here
    (zstd, lz4: the image then boots as it is)."""
    for magic, kind in STREAMS:
        start = bzimage.find(magic)
        while start != -1:
            elf = _unpack(bzimage[start:], kind)
            if elf is not None and elf.startswith(ELF):
                return elf
            start = bzimage.find(magic, start + 1)
    return None


def _unpack(data: bytes, kind: str) -> bytes | None:
    """Decompress the one stream at the start of `data`; what follows it is ignored."""
    try:
        if kind == "xz":
            return lzma.LZMADecompressor().decompress(data)
        return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data)
    except (lzma.LZMAError, zlib.error):
        return None


def pvh_image(vmlinuz: Path, sha256: str, config: Path, cache: Cache) -> Path | None:
    """The cached ELF of `vmlinuz` if its kernel boots through PVH, else None."""
    if not pvh_capable(config):
        return None
    key = content_key(["pvh-elf", sha256])

    def extract(scratch: Path) -> None:
        elf = extract_elf(vmlinuz.read_bytes())
        (scratch / "vmlinux").write_bytes(elf or b"")

    with cache.lock(f"pvh-{key}"):
        made_by = f"PVH ELF of {vmlinuz} (sha256 {sha256[:16]})"
        entry = cache.ensure("pvh", key, extract, lambda *_: None, made_by=made_by)
    vmlinux = entry / "vmlinux"
    return vmlinux if vmlinux.stat().st_size else None


def built_pvh_elf(vmlinuz: Path, config: Path) -> Path | None:
    """A kernel the lab built keeps its vmlinux beside the image: that ELF, where the
    kernel was configured with PVH (the base fragment asks for it), else None."""
    vmlinux = vmlinuz.parent / "vmlinux"
    return vmlinux if pvh_capable(config) and vmlinux.exists() else None

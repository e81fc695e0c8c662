"""The ELF inside a bzImage, for QEMU's PVH entry: synthetic images, no kernel."""

from __future__ import annotations

import gzip
import lzma
from pathlib import Path

from lab.artifacts.pvh import built_pvh_elf, extract_elf, pvh_image
from lab.core.cache import Cache

ELF = b"\x7fELF" + bytes(range(256)) * 64
SETUP = b"MZ\x00\x00 real-mode setup " + b"\xfd7zXZ" + b" not a stream " * 20


def test_the_xz_payload_is_found_past_false_starts() -> None:
    image = SETUP + lzma.compress(ELF) + b"\x00trailer: the decompressor's end"
    assert extract_elf(image) == ELF


def test_a_gzip_payload_with_bytes_after_it() -> None:
    assert extract_elf(SETUP + gzip.compress(ELF) + b"\x00" * 100) == ELF


def test_no_payload_it_can_unpack_is_none() -> None:
    assert extract_elf(SETUP + lzma.compress(b"not an ELF")) is None
    assert extract_elf(b"zstd payload \x28\xb5\x2f\xfd ...") is None


def test_only_a_pvh_kernel_gets_an_elf_and_it_is_cached(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    vmlinuz = tmp_path / "vmlinuz"
    vmlinuz.write_bytes(SETUP + lzma.compress(ELF))
    config = tmp_path / "config"
    config.write_text("CONFIG_64BIT=y\n# CONFIG_PVH is not set\n")
    assert pvh_image(vmlinuz, "ab", config, cache) is None
    config.write_text("CONFIG_64BIT=y\nCONFIG_PVH=y\n")
    elf = pvh_image(vmlinuz, "ab", config, cache)
    assert elf is not None and elf.read_bytes() == ELF
    vmlinuz.write_bytes(b"changed, but the same hash: the cached ELF stands")
    assert pvh_image(vmlinuz, "ab", config, cache) == elf


def test_a_built_kernel_boots_its_own_vmlinux_only_when_configured_for_pvh(
    tmp_path: Path,
) -> None:
    vmlinuz, config = tmp_path / "vmlinuz", tmp_path / "config"
    vmlinuz.write_bytes(b"bzImage")
    (tmp_path / "vmlinux").write_bytes(ELF)
    config.write_text("CONFIG_PVH=y\n")
    assert built_pvh_elf(vmlinuz, config) == tmp_path / "vmlinux"
    config.write_text("# CONFIG_PVH is not set\n")
    assert built_pvh_elf(vmlinuz, config) is None


def test_the_base_fragment_asks_for_pvh_and_what_it_depends_on() -> None:
    # PVH sits inside the HYPERVISOR_GUEST menu: without it merge_config drops PVH.
    base = (Path(__file__).parents[2] / "images" / "kernel" / "base.config").read_text()
    assert "CONFIG_HYPERVISOR_GUEST=y\n" in base
    assert "CONFIG_PVH=y\n" in base

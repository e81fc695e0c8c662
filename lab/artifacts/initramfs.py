"""Build a small initramfs: busybox, an /init script, and a closure of kernel modules."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lab.core.data import IMAGES
from lab.core.errors import BuildError
from lab.core.files import copy_file
from lab.core.proc import run_logged

RECIPE = IMAGES / "initramfs"


@dataclass(frozen=True)
class ModuleList:
    boot: list[str]
    payload: list[str]

    @property
    def all(self) -> list[str]:
        return self.boot + self.payload


def read_module_list(path: Path) -> ModuleList:
    boot: list[str] = []
    payload: list[str] = []
    for lineno, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        stage, _, name = line.partition(" ")
        if stage not in ("boot", "payload") or not name.strip():
            raise BuildError("initramfs", f"{path}:{lineno}: expected 'boot|payload MODULE'")
        (boot if stage == "boot" else payload).append(name.strip())
    return ModuleList(boot, payload)


def module_name(path: str) -> str:
    """'kernel/drivers/vfio/pci/vfio-pci.ko' -> 'vfio_pci' (modprobe's canonical name)."""
    base = path.rsplit("/", 1)[-1]
    return base.split(".ko", 1)[0].replace("-", "_")


def parse_modules_dep(text: str) -> dict[str, tuple[str, list[str]]]:
    """modules.dep -> {name: (path, [dependency paths])}."""
    deps: dict[str, tuple[str, list[str]]] = {}
    for line in text.splitlines():
        target, sep, rest = line.partition(":")
        if sep:
            deps[module_name(target)] = (target, rest.split())
    return deps


def module_closure(wanted: list[str], deps: dict[str, tuple[str, list[str]]]) -> list[str]:
    """Paths of the wanted modules and everything they depend on; unknown names are skipped
    (built in, or absent from this kernel: /init tolerates both)."""
    by_path = {path: name for name, (path, _) in deps.items()}
    out: list[str] = []
    stack = [deps[w.replace("-", "_")][0] for w in wanted if w.replace("-", "_") in deps]
    while stack:
        path = stack.pop()
        if path in out:
            continue
        out.append(path)
        stack.extend(deps[by_path[path]][1])
    return sorted(out)


def build_initramfs(
    modules_root: Path | None,
    version: str,
    out: Path,
    log: Path,
    busybox: Path,
    iommu_modules: Sequence[str] = (),
) -> list[str]:
    """Write an uncompressed newc cpio to `out`; returns the module paths it contains.

    `busybox` is a static one of the kernel's arch (lab.artifacts.busybox). Nothing else
    in it is arch-specific: /init is a script, and the modules are the kernel's own,
    which the host's depmod indexes whatever their arch (it reads their ELF, either
    class and byte order).
    `modules_root` is a tree with lib/modules/<version>/ as a kernel package installs it,
    or None for a kernel with everything built in (then /init finds no module to load).
    `iommu_modules` (virtio_iommu) load right after virtio_pci, before any other driver
    binds a device: a device must meet its IOMMU before its driver maps DMA.
    """
    stage = out.parent / "initramfs.d"
    paths: list[str] = []
    if modules_root is None:
        _stage_tree(stage, None, version, paths, busybox)
    else:
        run_logged(["depmod", "-b", modules_root, version], artifact="initramfs", log=log)
        src = modules_root / "lib" / "modules" / version
        module_list = read_module_list(RECIPE / "modules.txt")
        paths = module_closure(
            [*module_list.all, *iommu_modules], parse_modules_dep((src / "modules.dep").read_text())
        )
        _stage_tree(stage, src, version, paths, busybox)
        run_logged(["depmod", "-b", stage, version], artifact="initramfs", log=log)
    (stage / "etc" / "lab-modules").write_text(load_order(iommu_modules))
    _write_cpio(stage, out)
    shutil.rmtree(stage)
    return paths


def load_order(iommu_modules: Sequence[str]) -> str:
    """modules.txt for /init, the IOMMU modules after its first boot module (virtio_pci)."""
    lines = (RECIPE / "modules.txt").read_text().splitlines(keepends=True)
    first = next(i for i, line in enumerate(lines) if line.startswith("boot "))
    extra = [f"boot {m}\n" for m in iommu_modules]
    return "".join(lines[: first + 1] + extra + lines[first + 1 :])


def _stage_tree(
    stage: Path, src: Path | None, version: str, paths: list[str], busybox: Path
) -> None:
    for d in ("bin", "sbin", "dev", "proc", "sys", "etc", "newroot"):
        (stage / d).mkdir(parents=True, exist_ok=True)
    # Hard links: the stage is only read (cpio) and removed, and depmod replaces the files
    # it writes; cpio archives a file with more links as it does any other.
    copy_file(busybox, stage / "bin" / "busybox", link=True)
    copy_file(RECIPE / "init", stage / "init", link=True)
    dst = stage / "lib" / "modules" / version
    dst.mkdir(parents=True, exist_ok=True)
    if src is None:
        return
    for rel in paths:
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        copy_file(src / rel, dst / rel, link=True)
    for meta in ("modules.order", "modules.builtin", "modules.builtin.modinfo"):
        if (src / meta).exists():
            copy_file(src / meta, dst / meta, link=True)


def _write_cpio(stage: Path, out: Path) -> None:
    names = "\n".join(sorted(str(p.relative_to(stage)) for p in stage.rglob("*"))) + "\n"
    with out.open("wb") as f:
        done = subprocess.run(
            ["cpio", "--quiet", "-o", "-H", "newc", "-R", "0:0"],
            cwd=stage,
            input=names.encode(),
            stdout=f,
            stderr=subprocess.PIPE,
            check=False,
        )
    if done.returncode != 0:
        raise BuildError("initramfs", f"cpio failed: {done.stderr.decode(errors='replace')}")

"""Scenario files: the typed model, loading, cross-field rules, and expansion into cells."""

from __future__ import annotations

import dataclasses
import fnmatch
import itertools
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from lab.core.data import GUEST_TESTS, SCENARIOS
from lab.core.errors import ScenarioError, UsageError
from lab.core.registry import Registry, UnknownVariant
from lab.model import schema
from lab.model.arches import ARCHES, DEFAULT_ARCH, host_arch
from lab.model.kernelspec import (
    KERNEL_SOURCES,
    NO_CONFIG,
    CellConfig,
    KernelSpec,
    available_fragments,
    option_name,
    parse_kernel_spec,
)
from lab.model.schema import Axis, Duration, KValue, Size, doc_field
from lab.model.suites import DEFAULT_SUITE, SUITES
from lab.model.variants import DEVICES, IOMMU_MODELS

DEFAULT_SCENARIO = SCENARIOS / "quick.yaml"
DEFAULT_PAYLOAD = GUEST_TESTS
HUGEPAGE_SIZES = {"2M": 2 << 20, "1G": 1 << 30}
# What the guest's own kernel and userspace need besides the reserved hugepages.
MIN_FREE_MEMORY = 768 << 20
QEMU_CHOICES = ("system", "lab")  # or a path
RAM_BAR_SIZES = (4 << 10, 64 << 30)
RAM_BARS_MAX = 128 << 30  # what the lab sizes q35's 64-bit window for


@dataclass
class RamBarSpec:
    size: Size = doc_field("its size: a power of two from 4K to 64G, e.g. 1G")
    index: int | None = doc_field(
        "its BAR number: edu 1 to 4 (default 1; a 64-bit BAR takes the next slot too), "
        "ivshmem always 2",
        None,
    )


@dataclass
class DeviceSpec:
    type: str = doc_field("PCI device model, from the device registry (`vfio-lab schema`)")
    dma_mask: int = doc_field(
        "the device's DMA address mask (edu: the dma_mask property)", (1 << 64) - 1
    )
    bar: RamBarSpec | None = doc_field(
        "a RAM-backed 64-bit prefetchable BAR: the tweaked edu's (needs machine.qemu: lab), "
        "or ivshmem's shared memory (required for ivshmem)",
        None,
    )
    dma_delay: Duration | None = doc_field(
        "how long each of edu's DMA transfers takes, from start to done: a duration with a "
        "unit, ns, us, ms or s (e.g. 10us; 0ns completes on QEMU's next timer run, still "
        "after the start); default: edu's own 100 ms; needs machine.qemu: lab",
        None,
    )


@dataclass
class MachineSpec:
    memory: Size = doc_field("guest RAM, e.g. 2G or 3072M", Size(2 << 30))
    cpus: int = doc_field("guest vCPUs", 2)
    arch: Axis = doc_field(
        "guest architecture from the architecture registry (x86_64, aarch64), or a list of "
        "them: an axis of the matrix (each cell's name then ends in -ARCH, before any "
        "-MODEL); a guest of another architecture than the host's runs under TCG",
        Axis([DEFAULT_ARCH]),
    )
    iommu: Axis = doc_field(
        "virtual IOMMU model from the IOMMU registry, or a list of them: an axis of the "
        "matrix (each cell's name then ends in -MODEL); each arch gets the listed models "
        "it offers; default: each arch's own (intel-iommu on x86_64, smmuv3 on aarch64)",
        Axis([]),
    )
    hugepages: dict[str, int] = doc_field(
        "hugepages reserved on the guest kernel command line, by size (2M, 1G)", {}
    )
    cmdline: list[str] = doc_field("extra guest kernel command-line words", [])
    boot_timeout: float = doc_field("seconds from QEMU start until SSH must answer", 120.0)
    qemu: str = doc_field(
        "system (Debian's qemu-system-ARCH), lab (built by the lab from Debian's newer "
        "source with the lab's patches: the tweaked edu; one build per guest arch, on first "
        "use), or the path of a QEMU binary",
        "system",
    )


@dataclass
class Payload:
    tests: Path | None = doc_field(
        "directory of guest tests to copy in; default: guest_tests/", None
    )
    suites: list[str] = doc_field(
        "test suites to run in each cell, in order, from the suite registry: lab (this "
        "payload), kselftest-vfio and kselftest-iommu (the kernel's C selftests, built from "
        "the cell's kernel tree), programs (the payload's programs/, built by you)",
        ["lab"],
    )
    args: list[str] = doc_field("extra pytest arguments in the guest, e.g. ['-k', 'dma']", [])
    timeout: float = doc_field("seconds each suite may run in the guest", 1800.0)
    stall_timeout: float = doc_field(
        "seconds without console or SSH output before the guest is given up on, counted "
        "as test_timeout is",
        300.0,
    )
    test_timeout: float = doc_field(
        "seconds one test may run, not counting the time the host kept QEMU waiting for a "
        "CPU (a busy host stretches it at most 4 times); then the guest is killed, the test "
        "is an error and the tests after it are not run",
        120.0,
    )
    parity: Literal["report", "gate"] = doc_field(
        "the lab's payload against the C suites, per cell (`vfio-lab parity`): report (a "
        "line per cell in summary.json, parity.json) or gate (also: a disagreement no "
        "expectation explains, or nothing to compare, fails the cell: exit 1); gate needs "
        "lab and a C suite in suites",
        "report",
    )


@dataclass
class KernelEntry:
    SHORTHAND: ClassVar[str] = "source"  # a bare string in `kernels:` is the source

    source: str = doc_field("SOURCE[:ARG], from the kernel sources (`vfio-lab schema`)")
    patches: list[Path] = doc_field(
        "patches applied in order to the source tree with `patch -p1`: git format-patch "
        "files, an mbox of a whole series, plain diffs (debian:X.Y only)",
        [],
    )
    name: str = doc_field(
        "the kernel's part of cell names; default: the source's, plus `+` and the first "
        "patch's file name without its extension",
        "",
    )
    matrix: bool = doc_field(
        "whether the scenario's fragments and config axis apply to this kernel; false: one "
        "cell per IOMMU model, the kernel as it comes (a prebuilt kernel, a series without "
        "the axis's options)",
        True,
    )
    iommu: list[str] = doc_field(
        "the IOMMU models of machine.iommu this kernel runs behind (default: all of them); "
        "for a kernel that lacks one (Debian's 6.1 has no VIRTIO_IOMMU)",
        [],
    )


@dataclass
class Expectation:
    test: str = doc_field("glob over test names, e.g. 'vfio_dma_mapping_test.*_1gb.*'")
    reason: str = doc_field("why it fails; shown with the XFAIL")
    cells: str = doc_field("glob over the cells it fails in", "*")
    suite: str = doc_field(
        "glob over the suites it fails in (test ids are upstream's in every suite)", "*"
    )
    link: str = doc_field("where it is tracked: a lore thread, a bug", "")
    kernel: bool = doc_field(
        "the known failure is a kernel splat (WARN, Oops, BUG...) attributed to the test; "
        "without it, a splat stays an error even when the test is a known failure",
        False,
    )


@dataclass
class Scenario:
    name: str = doc_field("scenario name used in results; default: the file name", "")
    description: str = doc_field("free text shown by `vfio-lab list`", "")
    accel: Literal["auto", "kvm", "tcg"] = doc_field(
        "accelerator: auto uses KVM only if it really runs a guest", "auto"
    )
    kernels: list[KernelEntry] = doc_field(
        "kernel axis, one cell per entry: a SOURCE[:ARG] string, or a mapping with patches",
        factory=lambda: [KernelEntry("debian-stock")],
    )
    fragments: list[str] = doc_field(
        "config fragments from images/kernel/ applied to every source-built kernel", []
    )
    config: dict[str, list[KValue]] = doc_field(
        "config axis: OPTION: [values], one cell per combination (source-built kernels)", {}
    )
    machine: MachineSpec = doc_field("the guest machine", factory=MachineSpec)
    devices: list[DeviceSpec] = doc_field("PCI devices behind the IOMMU", [])
    payload: Payload = doc_field("what runs in the guest", factory=Payload)
    expectations: list[Expectation] = doc_field(
        "known failures: a matching test that fails is XFAIL, one that passes is XPASS", []
    )
    file: Path = dataclasses.field(default=Path("<none>"), init=False, repr=False)
    lines: dict[str, int] = dataclasses.field(default_factory=dict, init=False, repr=False)

    def error(self, field: str, message: str) -> ScenarioError:
        return ScenarioError(self.file, self.lines.get(field), field, message)

    @property
    def payload_dir(self) -> Path:
        return self.payload.tests or DEFAULT_PAYLOAD


@dataclass(frozen=True)
class Cell:
    """One point of the matrix: a scenario with every axis fixed."""

    name: str
    kernel: KernelSpec
    scenario: Scenario
    config: CellConfig = NO_CONFIG
    iommu: str = "intel-iommu"  # the machine's IOMMU model (machine.iommu may be an axis)
    arch: str = DEFAULT_ARCH  # the guest's architecture (machine.arch may be an axis)
    kernel_field: str = "kernels[0]"  # where its kernel came from, for errors


def builtin_names() -> list[str]:
    return sorted(p.stem for p in SCENARIOS.glob("*.yaml"))


def locate(text: str) -> Path:
    """A scenario file's path, or where the built-in scenario of that name lives."""
    path = Path(text)
    if path.exists() or path.suffix in (".yaml", ".yml") or "/" in text:
        return path
    builtin = SCENARIOS / f"{text}.yaml"
    if builtin.is_file():
        return builtin
    raise UsageError(
        f"{text}: no such scenario file, and no built-in scenario of that name "
        f"(built-in: {', '.join(builtin_names())})"
    )


def load(file: Path) -> Scenario:
    file = Path(file)
    node = schema.load_yaml_node(file)
    ctx = schema.Context(file.resolve())
    scenario = schema.load_dataclass(Scenario, node, ctx)
    scenario.file = file
    scenario.lines = ctx.lines
    if not scenario.name:
        scenario.name = file.stem
    if not scenario.devices:
        scenario.devices = [DeviceSpec(type="edu")]
    validate(scenario)
    return scenario


def validate(s: Scenario) -> None:
    """Rules between fields and against the registries, after the types are known."""
    _validate_arches(s)
    models = all_models(s)
    for i, entry in enumerate(s.kernels):
        for j, model in enumerate(entry.iommu):
            if model not in models:
                raise s.error(
                    f"kernels[{i}].iommu[{j}]",
                    f"{model} is not one of machine.iommu: {', '.join(models)}",
                )
    for i, dev in enumerate(s.devices):
        _check_registry(s, f"devices[{i}].type", dev.type, DEVICES)
        if not 0 < dev.dma_mask < (1 << 64):
            raise s.error(f"devices[{i}].dma_mask", "must be between 1 and 2**64-1")
    _validate_qemu(s)
    _validate_ram_bars(s)
    _validate_dma_delays(s)
    _validate_kernels(s)
    _validate_config(s)
    _validate_machine(s)
    if not s.payload_dir.is_dir():
        raise s.error("payload.tests", f"{s.payload_dir} is not a directory")
    _validate_suites(s)
    if s.payload.timeout <= 0:
        raise s.error("payload.timeout", "must be positive")
    for name in ("stall_timeout", "test_timeout"):
        if getattr(s.payload, name) <= 0:
            raise s.error(f"payload.{name}", "must be positive")
    for i, known in enumerate(s.expectations):
        for name in ("test", "reason"):
            if not getattr(known, name).strip():
                raise s.error(f"expectations[{i}].{name}", "must not be empty")


def axis_field(s: Scenario, name: str, i: int) -> str:
    """Where the i-th value of a machine axis was written: the field itself when it holds
    one value."""
    return f"machine.{name}" if len(getattr(s.machine, name)) == 1 else f"machine.{name}[{i}]"


def _validate_arches(s: Scenario) -> None:
    """The arch axis, the IOMMU models each arch offers, and the accelerator they allow."""
    m = s.machine
    axes: tuple[tuple[str, Registry[Any], str], ...] = (
        ("arch", ARCHES, "an arch"),
        ("iommu", IOMMU_MODELS, "a model"),
    )
    for name, registry, what in axes:
        values = getattr(m, name)
        for i, value in enumerate(values):
            _check_registry(s, axis_field(s, name, i), value, registry)
        if len(set(values)) != len(values):
            raise s.error(f"machine.{name}", f"{what} is listed twice")
    for i, model in enumerate(m.iommu):
        offered = IOMMU_MODELS[model].arches
        if not set(offered) & set(m.arch):
            raise s.error(
                axis_field(s, "iommu", i),
                f"{model} is offered on {', '.join(offered)} only, "
                f"and machine.arch is {', '.join(m.arch)}",
            )
    for i, arch in enumerate(m.arch):
        if not arch_models(s, arch):
            own = [n for n in IOMMU_MODELS if arch in IOMMU_MODELS[n].arches]
            raise s.error(
                axis_field(s, "arch", i),
                f"no model of machine.iommu is offered on {arch} (it has {', '.join(own)})",
            )
    host = host_arch()
    for arch in m.arch:
        if s.accel == "kvm" and not ARCHES[arch].runs_kvm(host):
            raise s.error(
                "accel",
                f"KVM runs only guests of the host's architecture ({host}); machine.arch "
                f"{arch} runs under TCG: use accel: auto or tcg",
            )


def arch_models(s: Scenario, arch: str) -> list[str]:
    """The IOMMU models a cell of `arch` runs behind: the listed ones it offers, or its own."""
    if not s.machine.iommu:
        return [ARCHES[arch].default_iommu]
    return [m for m in s.machine.iommu if arch in IOMMU_MODELS[m].arches]


def all_models(s: Scenario) -> list[str]:
    """Every model some cell runs behind, each once, in the order the arches give them."""
    return list(dict.fromkeys(m for arch in s.machine.arch for m in arch_models(s, arch)))


def _resolve_local(s: Scenario, spec: str) -> str:
    """`local:PATH` is relative to the scenario file, like every path in it."""
    source, _, arg = spec.partition(":")
    if source != "local" or not arg:
        return spec
    return f"local:{(s.file.parent / arg).resolve()}"


def kernel_spec(entry: KernelEntry) -> KernelSpec:
    return parse_kernel_spec(entry.source, tuple(entry.patches), entry.name)


def _validate_kernels(s: Scenario) -> None:
    if not s.kernels:
        raise s.error("kernels", "at least one kernel is needed")
    names: dict[str, int] = {}
    for i, entry in enumerate(s.kernels):
        entry.source = _resolve_local(s, entry.source)
        for j, patch in enumerate(entry.patches):
            if not patch.is_file():
                raise s.error(f"kernels[{i}].patches[{j}]", f"{patch}: no such patch file")
        source_field = f"kernels[{i}]"
        if f"{source_field}.source" in s.lines:  # written as a mapping
            source_field += ".source"
        try:
            parse_kernel_spec(entry.source)
        except UsageError as e:
            raise s.error(source_field, str(e)) from None
        try:
            spec = kernel_spec(entry)
        except UsageError as e:
            raise s.error(f"kernels[{i}].patches", str(e)) from None
        if spec.cell_label in names:
            raise s.error(
                f"kernels[{i}]",
                f"kernels[{names[spec.cell_label]}] has the same cell name {spec.cell_label!r}: "
                "a kernel is listed twice, or give one a name:",
            )
        names[spec.cell_label] = i


def _validate_config(s: Scenario) -> None:
    known = available_fragments()
    for i, name in enumerate(s.fragments):
        if name not in known:
            raise s.error(
                f"fragments[{i}]",
                f"no fragment {name!r} in images/kernel/; available: {', '.join(known)}",
            )
    seen: dict[str, str] = {}
    for option, values in s.config.items():
        field = f"config.{option}"
        try:
            canonical = option_name(option)
        except ValueError as e:
            raise s.error(field, str(e)) from None
        if canonical in seen:
            raise s.error(field, f"contradictory axes: {seen[canonical]} names the same option")
        seen[canonical] = option
        if not values:
            raise s.error(field, "an axis needs at least one value")
        if len(set(values)) != len(values):
            raise s.error(field, f"contradictory axis: a value is listed twice in {values}")
    if s.fragments or s.config:
        for i, entry in enumerate(s.kernels):
            if entry.matrix and not KERNEL_SOURCES[kernel_spec(entry).source].configurable:
                where = "config" if s.config else "fragments"
                raise s.error(
                    where,
                    f"kernels[{i}]: {entry.source} is a prebuilt kernel: it cannot take the scenario's {where}; "
                    "use debian:X.Y or local:PATH, or give it `matrix: false`",
                )


def _validate_machine(s: Scenario) -> None:
    m = s.machine
    if m.cpus < 1:
        raise s.error("machine.cpus", "must be at least 1")
    if m.boot_timeout <= 0:
        raise s.error("machine.boot_timeout", "must be positive")
    reserved = 0
    for size, count in m.hugepages.items():
        if size not in HUGEPAGE_SIZES:
            raise s.error(
                f"machine.hugepages.{size}", f"size must be one of {', '.join(HUGEPAGE_SIZES)}"
            )
        if count < 0:
            raise s.error(f"machine.hugepages.{size}", "count must not be negative")
        reserved += HUGEPAGE_SIZES[size] * count
    if m.memory < reserved + MIN_FREE_MEMORY:
        need = (reserved + MIN_FREE_MEMORY) >> 20
        raise s.error(
            "machine.memory", f"{m.memory >> 20} MiB is too small: hugepages need {need} MiB"
        )


def _validate_qemu(s: Scenario) -> None:
    """`system`, `lab`, a command on PATH, or a path relative to the scenario file."""
    q = s.machine.qemu
    if q in QEMU_CHOICES or shutil.which(q):
        return
    path = (s.file.parent / q).resolve()
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise s.error(
            "machine.qemu",
            f"{q!r} is neither {' nor '.join(QEMU_CHOICES)} nor an executable QEMU binary",
        )
    s.machine.qemu = str(path)


def _validate_ram_bars(s: Scenario) -> None:
    total = 0
    for i, dev in enumerate(s.devices):
        variant = DEVICES[dev.type]
        if variant.lab_qemu_only and s.machine.qemu == "system":
            raise s.error(
                f"devices[{i}].type", f"Debian's QEMU has no {dev.type}; set machine.qemu: lab"
            )
        if dev.bar is None:
            if variant.ram_bar_required:
                raise s.error(f"devices[{i}]", f"a {dev.type} needs bar: {{size: ...}}")
            continue
        total += _validate_bar(s, i, dev)
    if total > RAM_BARS_MAX:
        raise s.error(
            "devices", f"RAM BARs of {total >> 30} GiB do not fit the guest's 64-bit PCI window"
        )


def _validate_bar(s: Scenario, i: int, dev: DeviceSpec) -> int:
    """The BAR's size, once it is known to be one this device and this QEMU can have."""
    assert dev.bar is not None
    variant, field = DEVICES[dev.type], f"devices[{i}].bar"
    if not variant.ram_bar:
        raise s.error(field, f"a {dev.type} has no RAM BAR to size")
    if s.machine.qemu == "system" and not variant.ram_bar_required:
        raise s.error(field, "Debian's QEMU has no such BAR; set machine.qemu: lab")
    low, high = RAM_BAR_SIZES
    size = dev.bar.size
    if size & (size - 1) or not low <= size <= high:
        raise s.error(f"{field}.size", f"{size:#x} is not a power of two from 4K to 64G")
    index = dev.bar.index
    fixed = variant.fixed_bar_index
    if fixed is not None and index not in (None, fixed):
        raise s.error(f"{field}.index", f"a {dev.type}'s RAM BAR is always BAR{fixed}")
    if fixed is None and index is not None and not 1 <= index <= 4:
        raise s.error(f"{field}.index", "must be 1 to 4 (BAR 0 holds the registers)")
    return size


def _validate_dma_delays(s: Scenario) -> None:
    for i, dev in enumerate(s.devices):
        if dev.dma_delay is None:
            continue
        field, longest = f"devices[{i}].dma_delay", DEVICES[dev.type].dma_delay_max_ns
        if longest is None:
            raise s.error(field, f"a {dev.type} has no DMA delay to set")
        if s.machine.qemu == "system":
            raise s.error(
                field,
                f"Debian's QEMU cannot set the {dev.type}'s DMA delay (it is always 100 ms); "
                "set machine.qemu: lab",
            )
        if dev.dma_delay > longest:
            limit = f"{longest // 10**9} s"
            raise s.error(
                field, f"{dev.dma_delay} ns is longer than the {dev.type}'s limit, {limit}"
            )


def _validate_suites(s: Scenario) -> None:
    if not s.payload.suites:
        raise s.error("payload.suites", "at least one suite is needed")
    for i, name in enumerate(s.payload.suites):
        _check_registry(s, f"payload.suites[{i}]", name, SUITES)
        if name in s.payload.suites[:i]:
            raise s.error(f"payload.suites[{i}]", f"{name} is listed twice")
        where = SUITES[name].programs_dir
        if where is not None and not (s.payload_dir / where).is_dir():
            raise s.error(
                f"payload.suites[{i}]",
                f"{name} runs {s.payload_dir / where}/, which is no directory",
            )
    c_suites = [n for n in s.payload.suites if SUITES[n].selftest_dir or SUITES[n].programs_dir]
    if s.payload.parity == "gate" and (DEFAULT_SUITE not in s.payload.suites or not c_suites):
        raise s.error(
            "payload.parity",
            f"gate compares the {DEFAULT_SUITE} suite with a C suite: payload.suites needs both",
        )


def _check_registry(s: Scenario, field: str, name: str, registry: Registry[Any]) -> None:
    try:
        registry[name]
    except UnknownVariant as e:
        raise s.error(field, str(e)) from None


def machines(s: Scenario) -> list[tuple[str, str]]:
    """The machine axes: (arch, IOMMU model) for each arch and each model it offers."""
    return [(arch, model) for arch in s.machine.arch for model in arch_models(s, arch)]


def expand(s: Scenario) -> list[Cell]:
    """The matrix: kernels x every combination of the config axis x arches x their IOMMU
    models, in file order. A model's kernel options (IommuModel.kconfig) join the cell's
    requested config."""
    options = list(s.config)
    combos = list(itertools.product(*(s.config[o] for o in options)))
    pairs = machines(s)
    # A model's name only where some arch has a choice of them.
    name_models = any(len(arch_models(s, a)) > 1 for a in s.machine.arch)
    cells = []
    for i, entry in enumerate(s.kernels):
        spec = kernel_spec(entry)
        configurable = KERNEL_SOURCES[spec.source].configurable
        own = [(a, m) for a, m in pairs if not entry.iommu or m in entry.iommu]
        for combo, (arch, model) in itertools.product(combos if entry.matrix else [()], own):
            overrides = tuple(zip(options, combo, strict=False))
            name = spec.cell_label + "".join(
                f"-{o.lower().removeprefix('config_')}={v}" for o, v in overrides
            )
            name += f"-{arch}" if len(s.machine.arch) > 1 else ""
            name += f"-{model}" if name_models else ""
            # The model's options, unless the cell's own axis sets them (names compared
            # as Kconfig does: CONFIG_ or not).
            axis = {option_name(o) for o, _ in overrides}
            extra = tuple(
                kv for kv in IOMMU_MODELS[model].kconfig if option_name(kv[0]) not in axis
            )
            fragments = tuple(s.fragments) if entry.matrix else ()
            cfg = CellConfig(fragments, overrides + extra) if configurable else NO_CONFIG
            cells.append(Cell(name, spec, s, cfg, model, arch, kernel_field=f"kernels[{i}]"))
    return cells


def select(cells: list[Cell], patterns: list[str]) -> list[Cell]:
    """Cells whose name matches any of the glob patterns (all when none are given)."""
    if not patterns:
        return cells
    return [c for c in cells if any(fnmatch.fnmatchcase(c.name, p) for p in patterns)]

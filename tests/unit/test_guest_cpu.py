"""The CPU a guest sees, in the keys of what CI runners share through a cache: a snapshot
and the KVM probe's verdict are the host CPU's under KVM, and nobody's under TCG; a
snapshot saved on another CPU is refused before QEMU starts, and made again."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import multiprocessing
import os
import time
from pathlib import Path
from typing import Any

import pytest

from lab.core.cache import Cache
from lab.run.booter import CellBooter, _Boot, snapshot_key
from lab.vm import accel, snapshot
from lab.vm.accel import GuestCpu, guest_cpu, parse_cpuinfo, probe_key
from tests.unit.test_cache import Messages
from tests.unit.test_snapshot import cell, prepared

KEY = "0123456789abcdef"


def cpuinfo(model: str, flags: str, processors: int = 2) -> str:
    """/proc/cpuinfo as Linux writes it: a block per processor, a blank line after each."""
    block = (
        "processor\t: {n}\nvendor_id\t: GenuineIntel\nmodel name\t: {model}\n"
        "flags\t\t: {flags}\nbugs\t\t: spectre_v1\n\n"
    )
    return "".join(block.format(n=n, model=model, flags=flags) for n in range(processors))


OLD = cpuinfo("Intel(R) Xeon(R) CPU E5-2680 v4", "fpu sse2 avx avx2 vmx")
NEW = cpuinfo("Intel(R) Xeon(R) Platinum 8480+", "fpu sse2 avx avx2 vmx avx512f amx_tile")
SAME_MODEL_FEWER_FLAGS = cpuinfo("Intel(R) Xeon(R) Platinum 8480+", "fpu sse2 avx avx2 vmx")


def test_cpuinfo_gives_the_first_processors_model_and_flags() -> None:
    text = OLD + cpuinfo("another", "sse2", processors=1)  # a hybrid's later cores: not read
    assert parse_cpuinfo(text) == ("Intel(R) Xeon(R) CPU E5-2680 v4", (
        "avx", "avx2", "fpu", "sse2", "vmx"))  # fmt: skip
    assert parse_cpuinfo("") == ("", ())


def test_under_kvm_two_cpus_are_two_snapshot_keys(tmp_path: Path) -> None:
    p = dataclasses.replace(prepared(tmp_path), accel="kvm")
    keys = {
        snapshot_key(cell(), dataclasses.replace(p, cpu=guest_cpu("kvm", text)), bind=True)
        for text in (OLD, NEW, SAME_MODEL_FEWER_FLAGS)
    }
    assert len(keys) == 3, "another model, or the same model with other flags, is another key"


def test_under_tcg_the_host_cpu_is_in_no_key(tmp_path: Path) -> None:
    """TCG's `-cpu max` is emulated: no host flag reaches the guest, so a TCG snapshot
    restores on any host (and QEMU's version, in the key, fixes what `max` is)."""
    assert guest_cpu("tcg", OLD) == guest_cpu("tcg", NEW) == GuestCpu("tcg")
    p = prepared(tmp_path)
    key = snapshot_key(cell(), dataclasses.replace(p, cpu=guest_cpu("tcg", OLD)), bind=True)
    assert snapshot_key(cell(), dataclasses.replace(p, cpu=guest_cpu("tcg", NEW)), True) == key


def test_the_kvm_probe_verdict_is_kept_per_host_cpu() -> None:
    key = probe_key("6.1.0-30-amd64", "QEMU 7.2.15", "aa", guest_cpu("kvm", OLD))
    assert probe_key("6.1.0-30-amd64", "QEMU 7.2.15", "aa", guest_cpu("kvm", OLD)) == key
    assert probe_key("6.1.0-30-amd64", "QEMU 7.2.15", "aa", guest_cpu("kvm", NEW)) != key


def test_a_probe_memo_from_another_runners_cpu_is_not_taken_for_this_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    info = tmp_path / "cpuinfo"
    monkeypatch.setattr(accel, "CPUINFO", info)
    probes: list[str] = []

    def probe(qemu: str, kernel: Path, cache: Cache) -> tuple[bool, str]:
        probes.append(info.read_text())
        return False, "KVM cannot run the guest kernel: on the old runner"

    monkeypatch.setattr(accel, "probe_kvm", probe)
    monkeypatch.setattr(accel, "kvm_unusable", lambda: None)  # a host where /dev/kvm opens
    monkeypatch.setattr(accel, "version_text", lambda qemu: "QEMU 7.2.15")
    cache = Cache(tmp_path / "cache")
    info.write_text(OLD)
    for _ in range(2):
        accel._probe_once("qemu", tmp_path / "vmlinuz", "aa", cache)
    assert probes == [OLD], "the same host probes once"
    info.write_text(NEW)  # the cache restored on another runner
    accel._probe_once("qemu", tmp_path / "vmlinuz", "aa", cache)
    assert probes == [OLD, NEW], "another CPU's verdict was taken for this one's"


def test_two_runs_probing_at_once_probe_once_and_share_the_verdict(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    probes = tmp_path / "probes"

    def probe(qemu: str, kernel: Path, cache: Cache) -> tuple[bool, str]:
        with probes.open("a") as out:
            out.write(f"{os.getpid()}\n")
        time.sleep(1)  # long enough for the other run to reach the lock
        return False, "KVM cannot run the guest kernel: slow probe"

    monkeypatch.setattr(accel, "probe_kvm", probe)
    monkeypatch.setattr(accel, "kvm_unusable", lambda: None)
    monkeypatch.setattr(accel, "version_text", lambda qemu: "QEMU 7.2.15")

    def run(n: int) -> None:
        verdict = accel._probe_once("qemu", tmp_path / "vmlinuz", "aa", Cache(tmp_path / "c"))
        (tmp_path / f"verdict-{n}").write_text(json.dumps(verdict))

    # Forked processes, not threads: the lock is a file lock between the runs' processes.
    runs = [multiprocessing.get_context("fork").Process(target=run, args=(n,)) for n in (1, 2)]
    for proc in runs:
        proc.start()
    for proc in runs:
        proc.join(30)
    assert [proc.exitcode for proc in runs] == [0, 0]
    assert len(probes.read_text().split()) == 1, "both runs probed"
    verdicts = [json.loads((tmp_path / f"verdict-{n}").read_text()) for n in (1, 2)]
    assert verdicts == [[False, "KVM cannot run the guest kernel: slow probe"]] * 2


def test_a_mismatch_names_what_differs() -> None:
    here = guest_cpu("kvm", SAME_MODEL_FEWER_FLAGS)
    assert here.unlike(here) is None
    assert here.unlike(guest_cpu("kvm", NEW)) == (
        "it was saved with CPU flags this host lacks: amx_tile avx512f"
    )
    assert guest_cpu("kvm", NEW).unlike(guest_cpu("kvm", OLD)) == (
        "it was saved on a Intel(R) Xeon(R) CPU E5-2680 v4, and this host has a "
        "Intel(R) Xeon(R) Platinum 8480+; without CPU flags this host has: amx_tile avx512f"
    )
    assert GuestCpu.from_json(json.loads(json.dumps(here.as_json()))) == here
    with pytest.raises(ValueError):
        GuestCpu.from_json({"accel": "kvm", "flags": "fpu"})


def saved_on(cache: Cache, cpu: GuestCpu) -> Path:
    with cache.build("snapshots", KEY, "test") as entry:
        meta = {"bound": [], "cpu": cpu.as_json()}
        (entry / snapshot.META).write_text(json.dumps(meta))
        (entry / snapshot.CONSOLE).write_bytes(b"[    0.000000] Linux version 6.1\n")
        (entry / snapshot.STATE).write_bytes(b"s" * 4096)
        (entry / snapshot.DISK).write_bytes(b"d" * 4096)
    return cache.entry("snapshots", KEY)


def test_a_snapshot_saved_on_another_cpu_is_refused_before_qemu_and_made_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The key names the CPU, so this takes a cache whose entry says otherwise (copied by
    hand, or keyed before the CPU was): the entry's own record is checked all the same."""
    cache = Cache(tmp_path / "cache")
    entry = saved_on(cache, guest_cpu("kvm", NEW))
    said = Messages()
    booter = CellBooter(cache, said)  # type: ignore[arg-type]

    def restoring(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a restore of a snapshot of another CPU was started")

    def saved(b: _Boot) -> None:
        said("saving", f"a new snapshot; the old one is gone: {not entry.exists()}")
        b.guest = "ready"  # type: ignore[assignment]

    monkeypatch.setattr(booter, "_launch", restoring)
    monkeypatch.setattr("lab.artifacts.rootfs.create_overlay", restoring)
    monkeypatch.setattr(booter, "_save_steps", lambda: (saved,))
    here = dataclasses.replace(
        prepared(tmp_path), accel="kvm", cpu=guest_cpu("kvm", SAME_MODEL_FEWER_FLAGS)
    )
    with contextlib.ExitStack() as stack:
        ready = booter._from_snapshot(_Boot(cell(), here, tmp_path, stack, key=KEY))
    assert ready.guest == "ready"
    assert said.lines == [
        (cell().name, f"snapshot {KEY} did not restore (it was saved with CPU flags this host "
         "lacks: amx_tile avx512f); making it again"),
        ("saving", "a new snapshot; the old one is gone: True"),
    ]  # fmt: skip


def test_a_snapshot_of_the_same_cpu_is_restored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check refuses only what differs: the same CPU gets as far as starting QEMU."""
    cache = Cache(tmp_path / "cache")
    saved_on(cache, guest_cpu("kvm", NEW))
    booter = CellBooter(cache, Messages())  # type: ignore[arg-type]

    class Started(Exception):
        pass

    def qemu(*args: Any, **kwargs: Any) -> None:
        raise Started

    monkeypatch.setattr(booter, "_launch", qemu)
    here = dataclasses.replace(prepared(tmp_path), accel="kvm", cpu=guest_cpu("kvm", NEW))
    monkeypatch.setattr("lab.artifacts.rootfs.create_overlay", lambda base, overlay: None)
    with pytest.raises(Started), contextlib.ExitStack() as stack:
        booter._attempt(_Boot(cell(), here, tmp_path, stack, key=KEY))


PVM_HOST = cpuinfo("AMD EPYC 9B14", "fpu sse2 avx avx2 avx512f hypervisor")


def test_an_x86_cpu_without_vmx_or_svm_is_not_worth_a_kvm_probe() -> None:
    """These machines' KVM is PVM's: it opens, and a probe that boots far enough to print
    a banner was taken for a working one (a 7.2 cell then hung at its FPU set-up)."""
    why = accel.no_hardware_virt(PVM_HOST, "x86_64")
    assert why is not None and "neither vmx nor svm" in why
    assert accel.no_hardware_virt(OLD, "x86_64") is None
    assert accel.no_hardware_virt(cpuinfo("AMD EPYC 7763", "fpu svm"), "x86_64") is None
    assert accel.no_hardware_virt(PVM_HOST, "aarch64") is None, "Arm hosts have no such flag"
    assert accel.no_hardware_virt("", "x86_64") is None, "an unread cpuinfo decides nothing"


class Stuck:
    """A QEMU that stays up: PVM stops the vCPU at an emulation failure, not the process."""

    def poll(self) -> None:
        return None


def test_the_probe_waits_past_the_banner_for_the_cpus_set_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(accel, "PROBE_SECONDS", 0.3)
    console, log = tmp_path / "console.log", tmp_path / "qemu.log"
    log.write_text("KVM internal error. Suberror: 1\nemulation failure\nRAX=0\n")
    banner = "[    0.000000] Linux version 7.2.13-vfio-lab\n"
    console.write_text(banner + "[    0.128362] x86/fpu: Supporting XSAVE feature 0x080\n")
    works, why = accel._watch(Stuck(), console, log)  # type: ignore[arg-type]
    assert not works and why == "KVM cannot run the guest kernel: KVM internal error. Suberror: 1"
    console.write_text(banner + '[    0.912000] VFS: Cannot open root device "" or unknown\n')
    assert accel._watch(Stuck(), console, log)[0]  # type: ignore[arg-type]


def test_the_probe_verdict_is_kept_per_line_waited_for(monkeypatch: pytest.MonkeyPatch) -> None:
    """A verdict taken on the banner alone (before the fix) is not this probe's."""
    key = probe_key("6.1.0-30-amd64", "QEMU 10.0.13", "aa", guest_cpu("kvm", OLD))
    monkeypatch.setattr(accel, "BOOT_MARK", "Linux version")
    assert probe_key("6.1.0-30-amd64", "QEMU 10.0.13", "aa", guest_cpu("kvm", OLD)) != key

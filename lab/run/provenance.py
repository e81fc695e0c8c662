"""What the booted guest says about itself, checked against the artifact the cell built."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from lab.artifacts.kernels import KernelArtifact
from lab.core.errors import InfraError
from lab.vm.ssh import GuestSSH

# One round trip: release, the config the kernel carries (if built with IKCONFIG_PROC),
# and who serves /dev/vfio/vfio. iommufd logs "IOMMUFD is providing /dev/vfio/vfio" once,
# on the first open, so the probe opens it (an empty container, dropped at once).
GUEST_FACTS = (
    "uname -r; "
    "if [ -r /proc/config.gz ]; then gzip -dc /proc/config.gz | sha256sum | cut -d' ' -f1; else echo -; fi; "
    "if [ ! -e /dev/vfio/vfio ]; then echo none; else : <>/dev/vfio/vfio 2>/dev/null; "
    "if dmesg | grep -q 'IOMMUFD is providing /dev/vfio/vfio'; then echo iommufd; else echo vfio; fi; fi"
)


@dataclass(frozen=True)
class GuestFacts:
    release: str
    config_sha256: str | None
    container_provider: str  # vfio | iommufd | none


def read_facts(ssh: GuestSSH) -> GuestFacts:
    return parse_facts(ssh.check(GUEST_FACTS))


def parse_facts(text: str) -> GuestFacts:
    words = text.split()
    if len(words) != 3:
        raise InfraError(f"unexpected answer to the guest provenance query: {text!r}")
    release, config, provider = words
    return GuestFacts(release, None if config == "-" else config, provider)


def config_sha256(config: Path) -> str:
    return hashlib.sha256(config.read_bytes()).hexdigest()


def mismatches(facts: GuestFacts, kernel: KernelArtifact) -> list[str]:
    """Why the running guest is not provably the cell's kernel (empty when it is)."""
    problems = []
    if facts.release != kernel.release:
        problems.append(f"the guest runs {facts.release}, not the cell's kernel {kernel.release}")
    config = kernel.config
    if (
        facts.config_sha256 is not None
        and config.exists()
        and facts.config_sha256 != config_sha256(config)
    ):
        problems.append("the guest's /proc/config.gz differs from the config the cell built")
    return problems

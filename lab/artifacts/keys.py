"""The lab's SSH identities: one client key and one guest host key per cache."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from lab.core.cache import Cache
from lab.core.errors import MissingPrerequisite


@dataclass(frozen=True)
class LabKeys:
    client: Path  # private key the host logs in with
    host: Path  # private host key baked into the root filesystem

    @property
    def client_pub(self) -> Path:
        return self.client.with_suffix(".pub")

    @property
    def host_pub(self) -> Path:
        return self.host.with_suffix(".pub")


def ensure_keys(cache: Cache) -> LabKeys:
    d = cache.root / "keys"
    keys = LabKeys(client=d / "lab_ed25519", host=d / "host_ed25519")
    with cache.lock("keys"):
        for key in (keys.client, keys.host):
            if not key.exists():
                _generate(key)
    return keys


def _generate(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "vfio-lab", "-f", str(path)],
            check=True,
            capture_output=True,
        )
    except FileNotFoundError:
        raise MissingPrerequisite("ssh-keygen", "apt-get install openssh-client") from None

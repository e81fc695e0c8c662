"""The userspace of a guest of another arch than the host's (aarch64 on x86_64): the
initramfs's busybox per arch, with fakes at the seams (apt, dpkg-deb): nothing is
fetched, built or booted here. The host arch's own path is checked to be what it always
was."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab.artifacts import apt, busybox, kernels
from lab.artifacts.busybox import HostBusybox, PackagedBusybox, busybox_for
from lab.core.cache import Cache
from lab.core.errors import BuildError
from lab.model.arches import ARCHES
from tests.unit.test_arches import x86_host  # noqa: F401 (a fixture)

X86, ARM = ARCHES["x86_64"], ARCHES["aarch64"]
pytestmark = pytest.mark.usefixtures("x86_host")


# -- the initramfs's busybox ------------------------------------------------------------------


@pytest.fixture
def arm64_apt(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The private arm64 setup answering busybox-static:arm64's candidate (its lists as if
    fresh); returns the apt-cache argv it was asked with."""
    asked: list[list[str]] = []

    def apt_cache(argv: list[str], **kw: object) -> str:
        asked.append(argv)
        return f"{argv[-1]}:\n  Installed: (none)\n  Candidate: 1:1.35.0-4+deb12u1+b1\n"

    monkeypatch.setattr(apt.PrivateApt, "update", lambda self, progress: None)
    monkeypatch.setattr(apt, "capture", apt_cache)
    return asked


def test_the_host_arch_keeps_the_host_s_busybox_and_no_key(tmp_path, arm64_apt) -> None:
    chosen = busybox_for(X86, Cache(tmp_path))
    assert isinstance(chosen, HostBusybox) and chosen.key() == []
    assert not arm64_apt, "the host's own arch asks no private apt"
    if busybox.HOST_BUSYBOX.exists():
        assert chosen.provide() == Path("/bin/busybox")


def test_another_arch_gets_the_guest_release_s_package(tmp_path, arm64_apt) -> None:
    chosen = busybox_for(ARM, Cache(tmp_path))
    assert isinstance(chosen, PackagedBusybox)
    assert chosen.key() == ["busybox-static:arm64", "1:1.35.0-4+deb12u1+b1"]
    (argv,) = arm64_apt
    # bookworm's, not sid's newer one: the private setup lists sid too.
    assert argv[-2:] == ["policy", "busybox-static:arm64"]
    assert "APT::Default-Release=bookworm" in argv and "APT::Architectures::=arm64" in argv
    busybox_for(ARM, Cache(tmp_path))
    assert len(arm64_apt) == 1, "asked once per refresh of the lists"


def test_no_package_in_the_mirror_is_a_build_error(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(apt.PrivateApt, "update", lambda self, progress: None)
    monkeypatch.setattr(apt, "capture", lambda argv, **kw: "  Candidate: (none)\n")
    with pytest.raises(BuildError, match="serves no busybox-static:arm64"):
        busybox_for(ARM, Cache(tmp_path))


def fake_fetch(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """apt-get download and dpkg-deb -x of a busybox package; returns what was fetched."""
    fetched: list[str] = []

    def download(self: apt.PrivateApt, package: str, version: str, dest: Path) -> Path:
        fetched.append(f"{self.qualified(package)}={version}")
        deb = dest / f"{package}_{version}_{self.foreign}.deb"
        deb.write_bytes(b"!<arch>\n")
        return deb

    def dpkg_deb(argv: list[object], **kw: object) -> None:
        assert argv[:2] == ["dpkg-deb", "-x"]
        tree = Path(str(argv[3]))
        (tree / "bin").mkdir(parents=True)
        (tree / "bin" / "busybox").write_bytes(b"\x7fELF aarch64")

    monkeypatch.setattr(apt.PrivateApt, "download", download)
    monkeypatch.setattr(apt, "run_logged", dpkg_deb)
    return fetched


def test_the_package_is_unpacked_once_into_the_cache_by_arch_and_version(
    tmp_path, monkeypatch
) -> None:
    fetched = fake_fetch(monkeypatch)
    cache = Cache(tmp_path)
    arm64 = apt.PrivateApt(cache, "http://m", foreign="arm64", release="bookworm")
    path = PackagedBusybox(arm64, "1:1.35.0-4").provide()
    assert path.read_bytes() == b"\x7fELF aarch64"
    assert path.relative_to(cache.root).parts[0] == "packages"
    assert PackagedBusybox(arm64, "1:1.35.0-4").provide() == path
    assert fetched == ["busybox-static:arm64=1:1.35.0-4"]
    newer = PackagedBusybox(arm64, "1:1.35.0-5").provide()
    armhf = PackagedBusybox(apt.PrivateApt(cache, "http://m", foreign="armhf"), "1:1.35.0-4")
    assert len({path, newer, armhf.provide()}) == 3
    assert not list(cache.entry("packages", "x").parent.glob("*/*.deb")), "the .deb goes"


def test_the_busybox_version_is_in_another_arch_s_kernel_keys(tmp_path) -> None:
    arm64 = apt.PrivateApt(Cache(tmp_path), "http://m", foreign="arm64", release="bookworm")
    image = "linux-image-6.1.0-50-arm64"
    keys = {
        kernels.stock_key(image, "6.1.176-1", ARM, PackagedBusybox(arm64, version))
        for version in ("1:1.35.0-4", "1:1.35.0-5")
    }
    assert len(keys) == 2

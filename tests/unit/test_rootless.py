"""A normal user's lab, without a normal user: subordinate ids, user namespaces, /dev/kvm
and the doctor's checks of them, on fake /etc/subuid files, fake accounts and fake
devices."""

from __future__ import annotations

import os
import pwd
import stat
from pathlib import Path

import pytest

from lab.artifacts import rootfs, userns
from lab.artifacts.keys import LabKeys
from lab.artifacts.userns import Account, IdRange
from lab.cli import doctor, main
from lab.core import accounts
from lab.core.cache import Cache
from lab.core.errors import MissingPrerequisite
from lab.vm import accel

ALICE = Account("alice", 1000)
KVM = Path("/dev/kvm")
OTHERS = "bob:100000:65536\n# a comment\nbroken line\ncarol:165536:65536\n"


def files(tmp_path: Path, subuid: str, subgid: str) -> tuple[Path, Path]:
    (tmp_path / "subuid").write_text(subuid)
    (tmp_path / "subgid").write_text(subgid)
    return tmp_path / "subuid", tmp_path / "subgid"


def test_the_users_range_is_found_by_name_or_uid_and_the_first_one_counts() -> None:
    assert userns.subordinate(OTHERS + "alice:231072:65536\n", ALICE) == IdRange(231072, 65536)
    assert userns.subordinate("1000:300000:70000\nalice:1:2\n", ALICE) == IdRange(300000, 70000)
    assert userns.subordinate(OTHERS + "alicex:231072:65536\n", ALICE) is None
    assert userns.subordinate("alice:x:65536\n", ALICE) is None


def test_what_a_user_lacks_names_each_file(tmp_path: Path) -> None:
    subuid, subgid = files(tmp_path, OTHERS + "alice:231072:65536\n", "alice:231072:1000\n")
    ids = userns.subids(ALICE, subuid, subgid)
    assert ids.lacking == [f"{subgid} gives alice 1000 ids, fewer than 65536"]
    assert ids.ranges() is None and ids.uids == IdRange(231072, 65536)
    assert userns.subids(ALICE, tmp_path / "absent", subgid).lacking[0] == (
        f"{tmp_path / 'absent'} has no range for alice"
    )
    subgid.write_text("alice:231072:65536\n")
    ids = userns.subids(ALICE, subuid, subgid)
    assert ids.lacking == [] and ids.ranges() == (IdRange(231072, 65536), IdRange(231072, 65536))


def test_the_fix_gives_a_range_no_one_has(tmp_path: Path) -> None:
    subuid, subgid = files(tmp_path, OTHERS, "dave:300000:65536\n")
    assert userns.subids(ALICE, subuid, subgid).fix == (
        "sudo usermod --add-subuids 365536-431071 --add-subgids 365536-431071 alice"
    )
    empty = files(tmp_path, "", "")
    assert "--add-subuids 100000-165535 " in userns.subids(ALICE, *empty).fix


def test_the_doctor_reads_each_subordinate_id_file_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    user(monkeypatch)
    read: list[str] = []
    real = Path.read_text

    def counted(path: Path, *args: object, **kwargs: object) -> str:
        read.append(path.name)
        return real(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "read_text", counted)
    for text in (OTHERS, OTHERS + "alice:231072:65536\n1000:400000:65536\n"):
        files(tmp_path, text, text)
        read.clear()
        doctor.check_subids(tmp_path / "subuid", tmp_path / "subgid")
        assert sorted(read) == ["subgid", "subuid"]


def test_one_lookup_names_the_users_and_groups_of_namespaces_and_kvm(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    nameless = max(p.pw_uid for p in pwd.getpwall()) + 4242
    assert accounts.user_name(nameless) == str(nameless), "a container's uid: no passwd entry"
    assert accounts.user_name(0) == "root" and accounts.group_name(0) == "root"
    assert accounts.group_name(nameless) == str(nameless)
    monkeypatch.setattr(os, "geteuid", lambda: nameless)
    assert userns.current_account() == Account(str(nameless), nameless)


def user(monkeypatch: pytest.MonkeyPatch, account: Account = ALICE) -> None:
    monkeypatch.setattr(userns, "current_account", lambda: account)
    monkeypatch.setattr(doctor, "current_account", lambda: account, raising=False)
    monkeypatch.setattr(os, "geteuid", lambda: account.uid)


def test_a_user_builds_as_root_of_a_namespace_mapping_their_own_ranges(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    user(monkeypatch)
    monkeypatch.setattr(userns.shutil, "which", lambda name: f"/usr/bin/{name}")
    subuid, subgid = files(tmp_path, OTHERS + "alice:231072:65536\n", "alice:400000:65536\n")
    assert userns.namespace_root(subuid, subgid) == [
        "unshare", "--map-root-user",
        "--map-users=231072,1,65536", "--map-groups=400000,1,65536", "--",
    ]  # fmt: skip
    subgid.write_text(OTHERS)
    with pytest.raises(MissingPrerequisite) as e:
        userns.namespace_root(subuid, subgid)
    assert f"{subgid} has no range for alice" in e.value.what
    # Past every range, alice's own too: usermod adds to both files.
    assert e.value.fix.startswith("sudo usermod --add-subuids 296608-362143 ")


def test_root_builds_unwrapped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    user(monkeypatch, Account("root", 0))
    assert userns.namespace_root(tmp_path / "absent", tmp_path / "absent") == []


def test_namespace_ids_map_back_from_host_ids() -> None:
    sub = IdRange(231072, 65536)
    assert userns.inner_id(1000, 1000, sub) == 0
    assert userns.inner_id(231072, 1000, sub) == 1
    assert userns.inner_id(231072 + 65533, 1000, sub) == 65534  # nobody
    assert userns.inner_id(0, 1000, sub) is None
    assert userns.inner_id(231072 + 65536, 1000, sub) is None


def test_kvm_denial_names_the_group_to_join_or_the_mode_to_set() -> None:
    crw_rw = stat.S_IFCHR | 0o660
    joined = accel.kvm_denial(KVM, crw_rw, "root", "kvm", in_group=False, user="alice")
    assert joined.why == "alice is not in group kvm (/dev/kvm is crw-rw---- root:kvm)"
    assert joined.fix == "sudo usermod -aG kvm alice (then log in again)"
    closed = accel.kvm_denial(
        KVM, stat.S_IFCHR | 0o600, "root", "root", in_group=True, user="alice"
    )
    assert closed.why == "/dev/kvm is crw------- root:root, which alice may not open"
    assert closed.fix == "sudo chmod 0666 /dev/kvm"
    root_group = accel.kvm_denial(KVM, crw_rw, "root", "root", in_group=False, user="alice")
    assert root_group.fix == "sudo chmod 0666 /dev/kvm", "never a user into group root"
    # In the group, but the group may not write: joining again would not help.
    ro = accel.kvm_denial(KVM, stat.S_IFCHR | 0o640, "root", "kvm", in_group=True, user="alice")
    assert ro.fix == "sudo chmod 0666 /dev/kvm"


def deny_kvm(monkeypatch: pytest.MonkeyPatch, dev: Path, allowed: list[bool]) -> None:
    """`dev` stands for /dev/kvm; it opens while allowed[0] is true."""
    real = os.access

    def access(path: object, mode: int, **kw: object) -> bool:
        if str(path) in (str(dev), "/dev/kvm"):
            return allowed[0]
        return real(path, mode, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(accel, "KVM", dev, raising=False)
    monkeypatch.setattr(os, "access", access)
    # A CPU KVM can use, whatever this machine's is (no vmx here: the probe would be moot).
    cpuinfo = dev.parent / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Test CPU\nflags\t\t: fpu vmx\n\n")
    monkeypatch.setattr(accel, "CPUINFO", cpuinfo)


def test_a_kvm_access_denial_is_not_remembered_once_access_is_granted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dev = tmp_path / "kvm"
    dev.touch()
    allowed = [False]
    deny_kvm(monkeypatch, dev, allowed)
    monkeypatch.setattr(accel, "version_text", lambda qemu: "QEMU 7.2.15")
    monkeypatch.setattr(accel, "_watch", lambda proc, console, log: (True, "KVM booted"))
    cache = Cache(tmp_path / "cache")
    works, why = accel._probe_once("true", tmp_path / "vmlinuz", "aa", cache)
    assert not works and "may not open" in why and "fix: sudo chmod 0666" in why
    allowed[0] = True  # the user was given /dev/kvm
    assert accel._probe_once("true", tmp_path / "vmlinuz", "aa", cache) == (True, "KVM booted")


def test_doctor_checks_a_users_subordinate_ids_and_namespaces(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    user(monkeypatch)
    subuid, subgid = files(tmp_path, OTHERS, OTHERS)
    check = doctor.check_subids(subuid, subgid)
    assert not check.ok and check.detail.startswith(f"{subuid} has no range for alice")
    assert check.fix == (
        "sudo usermod --add-subuids 231072-296607 --add-subgids 231072-296607 alice"
    )
    subuid.write_text(OTHERS + "alice:231072:65536\n")
    subgid.write_text("1000:400000:65536\n")
    check = doctor.check_subids(subuid, subgid)
    assert check.ok and check.detail == "uids 231072+65536, gids 400000+65536"
    clone, most = tmp_path / "clone", tmp_path / "most"
    clone.write_text("0\n")
    most.write_text("15000\n")
    check = doctor.check_userns(clone, most)
    assert not check.ok and check.fix == "sudo sysctl -w kernel.unprivileged_userns_clone=1"
    clone.write_text("1\n")
    assert doctor.check_userns(clone, most).ok
    assert doctor.check_userns(tmp_path / "absent", most).ok  # not Debian's kernel: allowed
    most.write_text("0\n")
    assert not doctor.check_userns(tmp_path / "absent", most).ok


def test_doctor_no_longer_asks_for_root_and_puts_sudo_in_a_users_fixes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    user(monkeypatch)
    assert "root" not in [c.name for c in doctor.all_checks(Cache(tmp_path / "cache"))]
    monkeypatch.setattr(doctor.shutil, "which", lambda name: None)
    assert doctor._tool("mmdebstrap", "mmdebstrap")().fix == "sudo apt-get install mmdebstrap"
    user(monkeypatch, Account("root", 0))
    assert doctor._tool("mmdebstrap", "mmdebstrap")().fix == "apt-get install mmdebstrap"


def test_doctor_names_each_thing_a_bare_user_lacks_with_its_fix_and_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    user(monkeypatch)
    monkeypatch.setenv("VFIO_LAB_CACHE", str(tmp_path / "cache"))
    subuid, subgid = files(tmp_path, OTHERS, OTHERS)
    monkeypatch.setattr(doctor, "SUBUID", subuid, raising=False)
    monkeypatch.setattr(doctor, "SUBGID", subgid, raising=False)
    dev = tmp_path / "kvm"
    dev.touch()
    deny_kvm(monkeypatch, dev, [False])
    monkeypatch.setattr(doctor, "KVM", dev, raising=False)
    monkeypatch.setattr(doctor.shutil, "which", lambda name: None)  # no package installed
    assert main(["doctor"]) == 3
    out = capsys.readouterr().out
    for missing, fix in (
        ("subordinate ids", "sudo usermod --add-subuids 231072-296607"),
        ("kvm", f"sudo chmod 0666 {dev}"),
        ("mmdebstrap", "sudo apt-get install mmdebstrap"),
        ("newuidmap", "sudo apt-get install uidmap"),
        ("qemu-system-x86_64", "sudo apt-get install --no-install-recommends qemu-system-x86"),
    ):
        line = next((ln for ln in out.splitlines() if ln.startswith(f"MISSING {missing} ")), None)
        assert line is not None, f"{missing} is not said to be missing:\n{out}"
        following = out.splitlines()[out.splitlines().index(line) + 1]
        assert following.strip().startswith(f"fix: {fix}"), (line, following)
    assert "running as root" not in out and "debootstrap" not in out


def test_doctor_names_cache_entries_another_user_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = Cache(tmp_path / "cache")
    (cache.root / "rootfs" / "abc").mkdir(parents=True)
    assert doctor.check_cache_owner(cache).ok
    user(monkeypatch, Account("alice", os.getuid() + 1))  # every file is someone else's now
    check = doctor.check_cache_owner(cache)
    assert not check.ok and "3 entries not alice's" in check.detail
    assert check.fix == f"sudo chown -R alice: {cache.root}"


def fake_tree(root: Path) -> None:
    """What a builder leaves, as far as `configure` touches it: root's has device nodes in
    /dev, a user's has none; apt's scratch directories."""
    for d in ("sbin", "etc/ssh", "root", "dev/pts", "var/cache/apt/archives/partial",
              "var/lib/apt/lists/partial"):  # fmt: skip
        (root / d).mkdir(parents=True)
    (root / "etc/ssh/ssh_host_rsa_key").write_text("the builder's")
    (root / "dev/null").touch()
    (root / "dev/fd").symlink_to("/proc/self/fd")
    (root / "var/lib/apt/lists/lock").touch()


def test_configure_leaves_the_same_tree_whoever_built_it(tmp_path: Path) -> None:
    keys = LabKeys(client=tmp_path / "keys" / "lab_ed25519", host=tmp_path / "keys" / "host")
    keys.client.parent.mkdir()
    for key in (keys.client, keys.client_pub, keys.host, keys.host_pub):
        key.write_text(key.name)
    root = tmp_path / "tree"
    fake_tree(root)
    rootfs.configure(root, keys)
    assert list((root / "dev").iterdir()) == [], "the initramfs's devtmpfs goes over /dev"
    for apt in ("var/cache/apt/archives", "var/lib/apt/lists"):
        assert list((root / apt).iterdir()) == [], apt
    assert sorted(p.name for p in (root / "etc/ssh").iterdir()) == [
        "ssh_host_ed25519_key", "ssh_host_ed25519_key.pub", "sshd_config",
    ]  # fmt: skip
    assert stat.S_IMODE((root / "etc/ssh/ssh_host_ed25519_key").stat().st_mode) == 0o600
    assert (root / "sbin/lab-init").read_bytes() == (rootfs.RECIPE / "lab-init").read_bytes()
    assert (root / "root/.ssh/authorized_keys").read_text() == keys.client_pub.name

from __future__ import annotations

from pathlib import Path

import pytest

from lab.core.errors import ScenarioError
from lab.model import scenario, schema
from lab.model.schema import parse_size


def write(tmp_path: Path, text: str, name: str = "s.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def error_of(path: Path) -> ScenarioError:
    with pytest.raises(ScenarioError) as info:
        scenario.load(path)
    return info.value


def test_quick_scenario_loads():
    s = scenario.load(scenario.DEFAULT_SCENARIO)
    assert s.name == "quick"
    assert s.machine.memory == 4 << 30
    assert s.machine.hugepages == {"2M": 32, "1G": 1}
    assert [c.name for c in scenario.expand(s)] == ["debian-stock"]
    assert s.devices[0].type == "edu"


def test_defaults_for_an_almost_empty_file(tmp_path):
    s = scenario.load(write(tmp_path, "description: hi\n", "mini.yaml"))
    assert s.name == "mini"
    assert s.kernels == [scenario.KernelEntry("debian-stock")]
    assert s.machine.arch == ["x86_64"]
    assert s.machine.iommu == []  # each arch's own model
    assert [(c.arch, c.iommu) for c in scenario.expand(s)] == [("x86_64", "intel-iommu")]
    assert [d.type for d in s.devices] == ["edu"]
    assert s.payload_dir == scenario.DEFAULT_PAYLOAD


def test_unknown_key_names_file_line_and_field(tmp_path):
    path = write(tmp_path, "name: x\nmachine:\n  cpus: 2\n  memroy: 2G\n")
    e = error_of(path)
    assert (e.file, e.line, e.field) == (path, 4, "machine.memroy")
    assert "unknown key" in e.message and "memory" in e.message
    assert str(e).startswith(f"{path}:4: machine.memroy:")


def test_wrong_type(tmp_path):
    e = error_of(write(tmp_path, "machine:\n  cpus: two\n"))
    assert (e.line, e.field) == (2, "machine.cpus")
    assert "expected an integer" in e.message


def test_bool_is_not_an_integer(tmp_path):
    e = error_of(write(tmp_path, "machine:\n  cpus: true\n"))
    assert e.field == "machine.cpus"


def test_list_expected(tmp_path):
    e = error_of(write(tmp_path, "kernels: debian-stock\n"))
    assert (e.line, e.field) == (1, "kernels")
    assert "expected a list" in e.message


def test_missing_file(tmp_path):
    e = error_of(tmp_path / "nope.yaml")
    assert e.field == "<file>" and "no such scenario file" in e.message


def test_yaml_syntax_error_has_line(tmp_path):
    e = error_of(write(tmp_path, "name: x\nmachine: [\n"))
    assert e.field == "<yaml>" and e.line is not None


def test_unknown_iommu_lists_choices(tmp_path):
    e = error_of(write(tmp_path, "machine:\n  iommu: amd-vi\n"))
    assert (e.line, e.field) == (2, "machine.iommu")
    assert "intel-iommu" in e.message and "virtio-iommu" in e.message


def test_iommu_as_an_axis(tmp_path):
    s = scenario.load(
        write(tmp_path, "kernels: [debian:7.2]\nmachine:\n  iommu: [intel-iommu, virtio-iommu]\n")
    )
    cells = scenario.expand(s)
    assert [(c.name, c.iommu) for c in cells] == [
        ("7.2-intel-iommu", "intel-iommu"),
        ("7.2-virtio-iommu", "virtio-iommu"),
    ]
    # The model's kernel options join the requested config: virtio-iommu's kernel is another.
    assert cells[0].config.overrides == ()
    assert cells[1].config.overrides == (("VIRTIO_IOMMU", "y"),)


def test_a_bad_model_in_the_axis_names_its_index(tmp_path):
    e = error_of(write(tmp_path, "machine:\n  iommu: [intel-iommu, none]\n"))
    assert e.field == "machine.iommu[1]" and "virtio-iommu" in e.message
    e = error_of(write(tmp_path, "machine:\n  iommu: [virtio-iommu, virtio-iommu]\n"))
    assert e.field == "machine.iommu" and "listed twice" in e.message
    e = error_of(write(tmp_path, "machine:\n  iommu: []\n"))
    assert e.field == "machine.iommu" and "at least one" in e.message


def test_unknown_device_and_kernel_source(tmp_path):
    e = error_of(write(tmp_path, "devices:\n  - type: nvme\n"))
    assert (e.line, e.field) == (2, "devices[0].type")
    e = error_of(write(tmp_path, "kernels: [fedora:40]\n"))
    assert e.field == "kernels[0]" and "debian-stock" in e.message


def test_missing_required_device_type(tmp_path):
    e = error_of(write(tmp_path, "devices:\n  - dma_mask: 0xff\n"))
    assert e.field == "devices[0].type" and "required" in e.message


def test_hugepages_must_fit_in_memory(tmp_path):
    e = error_of(write(tmp_path, "machine:\n  memory: 2G\n  hugepages: {1G: 2}\n"))
    assert (e.line, e.field) == (2, "machine.memory")
    e = error_of(write(tmp_path, "machine:\n  hugepages: {4M: 1}\n"))
    assert e.field == "machine.hugepages.4M"


def test_relative_payload_path_resolves_against_the_yaml(tmp_path):
    (tmp_path / "mytests").mkdir()
    sub = tmp_path / "sub"
    sub.mkdir()
    s = scenario.load(write(sub, "payload:\n  tests: ../mytests\n"))
    assert s.payload_dir == tmp_path / "mytests"
    e = error_of(write(sub, "payload:\n  tests: ./missing\n"))
    assert (e.line, e.field) == (2, "payload.tests")


@pytest.mark.parametrize(
    ("text", "value"),
    [("2G", 2 << 30), ("512M", 512 << 20), ("1GiB", 1 << 30), ("4096", 4096), (7, 7)],
)
def test_parse_size(text, value):
    assert parse_size(text) == value


def test_parse_size_rejects_garbage():
    with pytest.raises(ValueError):
        parse_size("lots")


MATRIX = """\
kernels: [debian:7.2, debian:6.12]
fragments: [iommufd]
config:
  IOMMUFD_VFIO_CONTAINER: [y, n]
"""


def test_matrix_expands_kernels_times_config_axis(tmp_path):
    s = scenario.load(write(tmp_path, MATRIX))
    cells = scenario.expand(s)
    assert [c.name for c in cells] == [
        "7.2-iommufd_vfio_container=y",
        "7.2-iommufd_vfio_container=n",
        "6.12-iommufd_vfio_container=y",
        "6.12-iommufd_vfio_container=n",
    ]
    assert cells[0].config.fragments == ("iommufd",)
    assert cells[0].config.overrides == (("IOMMUFD_VFIO_CONTAINER", "y"),)  # YAML's y, not True
    assert cells[2].kernel_field == "kernels[1]"
    assert [c.name for c in scenario.select(cells, ["7.2-*"])] == [c.name for c in cells[:2]]
    assert scenario.select(cells, ["*=n"]) == [cells[1], cells[3]]


def test_shipped_matrix_scenarios_load():
    root = scenario.DEFAULT_SCENARIO.parent
    assert len(scenario.expand(scenario.load(root / "iommufd-compat.yaml"))) == 2
    # stock 6.1 once; 6.12, 7.2, 7.3 x y/n x two x86 models; 7.2 x y/n on aarch64's smmuv3
    assert len(scenario.expand(scenario.load(root / "nightly.yaml"))) == 1 + 3 * 2 * 2 + 2


@pytest.mark.parametrize(
    ("text", "field", "message"),
    [
        ("kernels: [debian:7.2]\nfragments: [nope]\n", "fragments[0]", "no fragment 'nope'"),
        (
            "kernels: [debian:7.2]\nconfig:\n  bad-name: [y]\n",
            "config.bad-name",
            "not a kernel config option",
        ),
        ("kernels: [debian:7.2]\nconfig:\n  IOMMUFD: []\n", "config.IOMMUFD", "at least one value"),
        ("kernels: [debian:7.2]\nconfig:\n  IOMMUFD: [y, y]\n", "config.IOMMUFD", "listed twice"),
        (
            "kernels: [debian:7.2]\nconfig:\n  IOMMUFD: [y]\n  CONFIG_IOMMUFD: [n]\n",
            "config.CONFIG_IOMMUFD",
            "contradictory axes",
        ),
        ("config:\n  IOMMUFD: [y]\n", "config", "prebuilt kernel"),
        ("kernels: [debian:seven]\n", "kernels[0]", "expected debian:X.Y"),
        ("kernels: [local:./no-such-tree]\n", "kernels[0]", "no kernel tree there"),
        ("kernels: [{source: debian:seven}]\n", "kernels[0].source", "expected debian:X.Y"),
        ("kernels: [{patches: [a.patch]}]\n", "kernels[0].source", "required key"),
        ("kernels: [{source: debian:7.2, patch: [a]}]\n", "kernels[0].patch", "unknown key"),
        (
            "kernels: [{source: debian:7.2, patches: [no.patch]}]\n",
            "kernels[0].patches[0]",
            "no such patch file",
        ),
        (
            "kernels: [{source: debian-stock, patches: [s.yaml]}]\n",
            "kernels[0].patches",
            "takes no patches: it is a prebuilt kernel",
        ),
        (
            "kernels: [debian:7.2, {source: debian:7.2, patches: [s.yaml], name: '7.2'}]\n",
            "kernels[1]",
            "kernels[0] has the same cell name '7.2'",
        ),
        ("kernels: [debian:7.2, debian:7.2]\n", "kernels[1]", "listed twice"),
        ("payload: {suites: [lab, kselftest]}\n", "payload.suites[1]", "kselftest-vfio"),
        ("payload: {suites: [lab, lab]}\n", "payload.suites[1]", "listed twice"),
        ("payload: {suites: []}\n", "payload.suites", "at least one"),
        ("payload: {suites: [lab, programs]}\n", "payload.suites[1]", "programs/, which is no"),
    ],
)
def test_matrix_rules(tmp_path, text, field, message):
    e = error_of(write(tmp_path, text))
    assert e.field == field
    assert message in e.message
    assert e.line is not None


def test_local_tree_path_is_relative_to_the_scenario(tmp_path):
    tree = tmp_path / "linux"
    tree.mkdir()
    (tree / "Makefile").write_text("")
    (tree / "Kconfig").write_text("")
    sub = tmp_path / "scenarios"
    sub.mkdir()
    s = scenario.load(write(sub, "kernels: [local:../linux]\n"))
    assert s.kernels == [scenario.KernelEntry(f"local:{tree}")]
    assert scenario.expand(s)[0].name == "local-linux"


def test_patched_kernels_are_cells_of_their_own(tmp_path):
    """Patches are relative to the scenario file; a patched kernel is named after its
    first patch unless the entry names it."""
    (tmp_path / "patches").mkdir()
    for name in ("rfc-v4.mbox", "fixup.patch"):
        (tmp_path / "patches" / name).write_text("")
    s = scenario.load(
        write(
            tmp_path,
            "kernels:\n"
            "  - debian:7.2\n"
            "  - source: debian:7.2\n"
            "    patches: [patches/rfc-v4.mbox, patches/fixup.patch]\n"
            "  - {source: debian:7.2, patches: [patches/fixup.patch], name: fixed}\n",
        )
    )
    cells = scenario.expand(s)
    assert [c.name for c in cells] == ["7.2", "7.2+rfc-v4", "fixed"]
    assert cells[1].kernel.patches == (
        tmp_path / "patches" / "rfc-v4.mbox",
        tmp_path / "patches" / "fixup.patch",
    )
    assert cells[1].kernel.label == "debian:7.2"
    assert cells[0].kernel.patches == ()


def test_a_kernel_outside_the_matrix(tmp_path):
    s = scenario.load(
        write(
            tmp_path,
            "kernels: [{source: debian-stock, matrix: false}, debian:7.2]\n"
            "fragments: [iommufd]\nconfig:\n  IOMMUFD_VFIO_CONTAINER: [y, n]\n"
            "machine:\n  iommu: [intel-iommu, virtio-iommu]\n",
        )
    )
    cells = {c.name: c for c in scenario.expand(s)}
    assert list(cells) == [
        "debian-stock-intel-iommu",
        "debian-stock-virtio-iommu",
        "7.2-iommufd_vfio_container=y-intel-iommu",
        "7.2-iommufd_vfio_container=y-virtio-iommu",
        "7.2-iommufd_vfio_container=n-intel-iommu",
        "7.2-iommufd_vfio_container=n-virtio-iommu",
    ]
    assert cells["debian-stock-virtio-iommu"].config == scenario.NO_CONFIG
    assert cells["7.2-iommufd_vfio_container=n-virtio-iommu"].config.overrides == (
        ("IOMMUFD_VFIO_CONTAINER", "n"),
        ("VIRTIO_IOMMU", "y"),
    )


def test_a_kernel_names_the_models_it_runs_behind(tmp_path):
    s = scenario.load(
        write(
            tmp_path,
            "kernels: [{source: debian-stock, iommu: [intel-iommu]}, debian:7.2]\n"
            "machine:\n  iommu: [intel-iommu, virtio-iommu]\n",
        )
    )
    assert [c.name for c in scenario.expand(s)] == [
        "debian-stock-intel-iommu",
        "7.2-intel-iommu",
        "7.2-virtio-iommu",
    ]
    e = error_of(write(tmp_path, "kernels: [{source: debian-stock, iommu: [virtio-iommu]}]\n"))
    assert e.field == "kernels[0].iommu[0]" and "not one of machine.iommu" in e.message


def test_a_model_the_prebuilt_kernel_lacks_is_refused_before_boot(tmp_path):
    from lab.artifacts.kernels import KernelArtifact
    from lab.core.errors import ScenarioError
    from lab.run.booter import _check_model

    s = scenario.load(write(tmp_path, "machine:\n  iommu: virtio-iommu\n"))
    (cell,) = scenario.expand(s)
    k = tmp_path / "k"
    k.mkdir()
    (k / "config").write_text("CONFIG_AMD_IOMMU=y\n# CONFIG_VIRTIO_IOMMU is not set\n")
    artifact = KernelArtifact("debian-stock", "6.1", "linux-image-6.1=1", k / "vmlinuz",
                              k / "initrd", "aa")  # fmt: skip
    with pytest.raises(ScenarioError) as caught:
        _check_model(cell, artifact)
    assert caught.value.field == "machine.iommu"
    assert "virtio-iommu needs CONFIG_VIRTIO_IOMMU, which linux-image-6.1=1" in str(caught.value)
    (k / "config").write_text("CONFIG_VIRTIO_IOMMU=m\n")
    _check_model(cell, artifact)


def test_an_axis_on_the_models_option_wins_however_it_is_spelled(tmp_path):
    s = scenario.load(
        write(
            tmp_path,
            "kernels: [debian:7.2, {source: debian:7.3, matrix: false}]\n"
            "config:\n  CONFIG_VIRTIO_IOMMU: [n]\nmachine:\n  iommu: virtio-iommu\n",
        )
    )
    on_axis, outside = scenario.expand(s)
    assert on_axis.config.overrides == (("CONFIG_VIRTIO_IOMMU", "n"),)
    assert outside.config.overrides == (("VIRTIO_IOMMU", "y"),), "no axis: the model's own"


def test_payload_parity_is_report_or_gate(tmp_path):
    path = write(tmp_path, "payload:\n  suites: [lab, kselftest-vfio]\n  parity: gates\n")
    e = error_of(path)
    assert (e.file, e.line, e.field) == (path, 3, "payload.parity")
    assert e.message == "'gates' is not one of: report, gate"
    row = next(r for r in schema.describe(scenario.Scenario) if r[0] == "payload.parity")
    assert row[1] == "'report'" and "gate" in row[2]


def test_a_parity_gate_needs_the_lab_and_a_c_suite(tmp_path):
    for suites in ("[lab]", "[kselftest-vfio]"):
        path = write(tmp_path, f"payload:\n  suites: {suites}\n  parity: gate\n")
        e = error_of(path)
        assert (e.line, e.field) == (3, "payload.parity") and "needs both" in e.message

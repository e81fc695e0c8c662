from __future__ import annotations

import pytest

from lab.artifacts.kconfig import (
    fragment_text,
    kconfig_dependencies,
    mismatches,
    parse_config,
    requested,
)
from lab.model.kernelspec import available_fragments, option_name

CONFIG = """\
#
# Automatically generated file; DO NOT EDIT.
CONFIG_VFIO=y
CONFIG_LOCALVERSION="-vfio-lab"
# CONFIG_VFIO_CONTAINER is not set
CONFIG_NR_CPUS=64
"""


def test_parse_config():
    assert parse_config(CONFIG) == {
        "CONFIG_VFIO": "y",
        "CONFIG_LOCALVERSION": '"-vfio-lab"',
        "CONFIG_VFIO_CONTAINER": "n",
        "CONFIG_NR_CPUS": "64",
    }


def test_fragment_text_round_trips():
    values = {"CONFIG_A": "y", "CONFIG_B": "n", "CONFIG_C": '"x"'}
    assert parse_config(fragment_text(values)) == values


def test_option_name():
    assert option_name("IOMMUFD") == "CONFIG_IOMMUFD"
    assert option_name("CONFIG_IOMMUFD") == "CONFIG_IOMMUFD"
    with pytest.raises(ValueError):
        option_name("iommufd; rm -rf /")


def test_axis_value_brings_its_companion_fragment():
    on = requested(["iommufd"], {"IOMMUFD_VFIO_CONTAINER": "y"}, "x86_64")
    assert on["CONFIG_IOMMUFD_VFIO_CONTAINER"] == "y"
    assert on["CONFIG_VFIO_CONTAINER"] == "n"  # what that value needs
    assert on["CONFIG_VFIO_PCI"] == "y"  # from the base fragment
    off = requested(["iommufd"], {"IOMMUFD_VFIO_CONTAINER": "n"}, "x86_64")
    assert (off["CONFIG_VFIO_CONTAINER"], off["CONFIG_IOMMUFD_VFIO_CONTAINER"]) == ("y", "n")


def test_explicit_axis_values_win_over_companions():
    both = requested([], {"IOMMUFD_VFIO_CONTAINER": "y", "VFIO_CONTAINER": "y"}, "x86_64")
    assert both["CONFIG_VFIO_CONTAINER"] == "y"  # impossible: verification will say so


def test_mismatches_carry_the_kconfig_reason():
    wanted = {"CONFIG_IOMMUFD_VFIO_CONTAINER": "y", "CONFIG_VFIO": "y"}
    final = {"CONFIG_VFIO": "y", "CONFIG_VFIO_CONTAINER": "y"}
    reasons = {"CONFIG_IOMMUFD_VFIO_CONTAINER": "depends on VFIO_GROUP && !VFIO_CONTAINER"}
    assert mismatches(wanted, final, reasons) == [
        "CONFIG_IOMMUFD_VFIO_CONTAINER: asked y, got n (depends on VFIO_GROUP && !VFIO_CONTAINER)"
    ]


def test_kconfig_dependencies_reads_depends_on(tmp_path):
    (tmp_path / "drivers").mkdir()
    (tmp_path / "drivers" / "Kconfig").write_text(
        'config IOMMUFD_VFIO_CONTAINER\n\tbool "x"\n\tdepends on VFIO_GROUP && !VFIO_CONTAINER\n'
        "config OTHER\n\tdepends on X\n"
    )
    assert kconfig_dependencies(tmp_path, ["CONFIG_IOMMUFD_VFIO_CONTAINER"]) == {
        "CONFIG_IOMMUFD_VFIO_CONTAINER": "depends on VFIO_GROUP && !VFIO_CONTAINER"
    }


def test_shipped_fragments():
    assert {"iommufd", "vfio-container", "iommufd-vfio-container"} <= set(available_fragments())

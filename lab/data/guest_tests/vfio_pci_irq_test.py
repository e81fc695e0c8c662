"""Mirrors upstream's vfio_pci_irq_test (in vfio_pci_device_test.c): eventfd interrupts."""

from __future__ import annotations

import pytest

from vfiolib.irq import Interrupts, irq_count


@pytest.fixture(params=["intx", "msi", "msix"])
def irq(request, default_device, diag):
    count = irq_count(default_device, request.param)
    diag("vectors", count)
    if count == 0:
        pytest.skip(f"the device has no {request.param.upper()} (edu offers INTx and one MSI)")
    return request.param


def test_enable_trigger_disable(default_device, irq):
    with Interrupts(default_device, irq) as interrupts:
        assert interrupts.wait(timeout=0.2) == 0, "fired before it was triggered"
        interrupts.trigger()
        assert interrupts.wait() == 1
    # Disabled and released: enabling again must work.
    with Interrupts(default_device, irq) as again:
        again.trigger()
        assert again.wait() == 1


def test_irq_count(default_device, irq):
    assert irq_count(default_device, irq) >= 1

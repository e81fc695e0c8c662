"""Mirrors upstream's vfio_pci_irq_test (in vfio_pci_device_test.c): eventfd interrupts.

Upstream's variants are MSI and MSI-X; the lab adds INTx, which edu also has. Each
variant enables as many vectors as the device offers (at most 16, as upstream), checks
none fires before it is triggered, triggers each from software and sees it fire once.
"""

from __future__ import annotations

import pytest

from vfiolib.irq import Interrupts, irq_count

MAX_TEST_MSI = 16  # upstream's bound, e.g. to stay within IRTE limits
# What edu itself does not have (a property of the device, not of the kernel): it has
# INTx and one MSI vector, and no MSI-X capability.
DEVICE_LACKS = ("msix",)


@pytest.fixture(params=["intx", "msi", "msix"])
def irq(request, default_device, diag):
    count = irq_count(default_device, request.param)
    diag("vectors", count)
    if count == 0 and request.param in DEVICE_LACKS:
        pytest.skip(f"the device has no {request.param.upper()}")
    assert count > 0, f"the kernel reports no {request.param.upper()} vector; edu has one"
    return request.param


def test_enable_trigger_disable(default_device, irq, diag):
    count = min(irq_count(default_device, irq), MAX_TEST_MSI)
    with Interrupts(default_device, irq, count) as interrupts:
        for vector in range(count):
            assert interrupts.wait(vector, timeout=0.2) == 0, f"vector {vector} fired untriggered"
            interrupts.trigger(vector)
            assert interrupts.wait(vector) == 1, f"vector {vector} did not fire"
    diag("vectors_tested", count)
    # Disabled and released: enabling again must work.
    with Interrupts(default_device, irq) as again:
        again.trigger()
        assert again.wait() == 1

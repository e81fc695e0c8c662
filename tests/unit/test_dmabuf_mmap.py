"""When the dma-buf mmap test may skip: only on the errno that means no mmap is offered."""

from __future__ import annotations

import errno

import pytest

from vfiolib import dmabuf


def test_einval_means_the_exporter_offers_no_mmap():
    assert dmabuf.mmap_not_offered(OSError(errno.EINVAL, "Invalid argument"))


@pytest.mark.parametrize(
    "code", [errno.EACCES, errno.ENODEV, errno.ENOMEM, errno.EFAULT, errno.EPERM, errno.EAGAIN]
)
def test_any_other_refusal_is_a_failure(code):
    assert not dmabuf.mmap_not_offered(OSError(code, "refused"))

"""vfiolib's mmap of a BAR (Mapping), on a mapped file: every access is an aligned 4- or
8-byte word (edu takes no other; on arm64 a 2-byte read of its BAR is an external
abort), and a misplaced one is refused before it reaches the mapping."""

from __future__ import annotations

import ctypes as C
import os

import pytest

from vfiolib import vfio

SIZE = 0x4000


@pytest.fixture
def backing(tmp_path):
    fd = os.open(tmp_path / "bar", os.O_RDWR | os.O_CREAT)
    os.ftruncate(fd, SIZE)
    yield fd
    os.close(fd)


@pytest.fixture
def mapping(backing):
    m = vfio.Mapping(backing, vfio.Region(0, 0, SIZE, 0, 0))
    yield m
    m.close()


class WordSpy:
    """A c_uint32 array over the mapping that records how it is indexed."""

    def __init__(self, words: C.Array[C.c_uint32]) -> None:
        self.words = words
        self.reads: list[object] = []
        self.writes: list[tuple[object, list[int]]] = []

    def __len__(self) -> int:
        return len(self.words)

    def __getitem__(self, key):
        self.reads.append(key)
        return self.words[key]

    def __setitem__(self, key, values) -> None:
        values = list(values)
        self.writes.append((key, values))
        self.words[key] = values


@pytest.fixture
def spied(monkeypatch):
    """Every words_at of the mapping, spied on; ctypes' own byte copies made to fail."""
    spies: list[tuple[int, int, WordSpy]] = []
    real = vfio.words_at

    def spy(addr: int, count: int) -> WordSpy:
        s = WordSpy(real(addr, count))
        spies.append((addr, count, s))
        return s

    def no_bytewise_copy(*args: object) -> None:
        raise AssertionError("a byte-wise copy touched the mapping")

    monkeypatch.setattr(vfio, "words_at", spy)
    for name in ("memmove", "memset", "string_at"):
        monkeypatch.setattr(vfio.C, name, no_bytewise_copy)
    return spies


def test_words_are_32_bit_ctypes_elements():
    buf = (C.c_uint32 * 4)(1, 2, 3, 4)
    words = vfio.words_at(C.addressof(buf), 3)
    assert type(words)._type_ is C.c_uint32 and len(words) == 3
    assert words[:] == [1, 2, 3]


def test_write_and_read_land_in_the_mapped_region(mapping, backing):
    data = bytes(range(256)) * 8
    mapping.write(0x1000, data)
    assert os.pread(backing, len(data), 0x1000) == data
    os.pwrite(backing, b"\xde\xad\xbe\xef\x01\x02\x03\x04", 0x3FF8)
    assert mapping.read(0x3FF8, 8) == b"\xde\xad\xbe\xef\x01\x02\x03\x04"
    assert mapping.read(0x1000, len(data)) == data


def test_read_and_write_copy_word_by_word(mapping, spied):
    data = bytes(range(64))
    mapping.write(0x100, data)
    assert mapping.read(0x100, len(data)) == data
    (w_addr, w_count, w_spy), (r_addr, r_count, r_spy) = spied
    assert (w_addr, w_count) == (r_addr, r_count) == (mapping.addr + 0x100, 16)
    # One slice assignment of 16 words (ctypes stores element by element), no reads.
    assert w_spy.reads == [] and len(w_spy.writes) == 1
    key, values = w_spy.writes[0]
    assert key == slice(None) and values == list(memoryview(data).cast("I"))
    assert r_spy.reads == [slice(None)] and r_spy.writes == []


def test_register_accessors_use_their_width(mapping, backing):
    mapping.write32(0x24, 0x12345678)
    mapping.write64(0x80, 0x1122334455667788)
    assert os.pread(backing, 4, 0x24) == (0x12345678).to_bytes(4, "little")
    assert mapping.read32(0x24) == 0x12345678
    assert mapping.read64(0x80) == 0x1122334455667788


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda m: m.read(2, 4), "not 4-byte aligned"),
        (lambda m: m.read(0, 6), "not 4-byte aligned"),
        (lambda m: m.write(1, b"\0" * 4), "not 4-byte aligned"),
        (lambda m: m.write(0, b"\0" * 3), "not 4-byte aligned"),
        (lambda m: m.read32(2), "not 4-byte aligned"),
        (lambda m: m.write32(6, 0), "not 4-byte aligned"),
        (lambda m: m.read64(4), "not 8-byte aligned"),
        (lambda m: m.write64(0xC, 0), "not 8-byte aligned"),
        (lambda m: m.read(SIZE - 4, 8), "outside the 0x4000-byte mapping"),
        (lambda m: m.write(SIZE, b"\0" * 4), "outside the 0x4000-byte mapping"),
        (lambda m: m.read(-4, 4), "outside the 0x4000-byte mapping"),
        (lambda m: m.read(0, -4), "outside the 0x4000-byte mapping"),
        (lambda m: m.read32(SIZE), "outside the 0x4000-byte mapping"),
        (lambda m: m.write64(SIZE - 4, 0), "outside the 0x4000-byte mapping"),
    ],
)
def test_misplaced_accesses_are_refused_before_touching_the_mapping(mapping, spied, call, match):
    with pytest.raises(ValueError, match=match):
        call(mapping)
    assert spied == []


def test_a_closed_mapping_refuses_access(mapping):
    mapping.close()
    with pytest.raises(ValueError, match="closed"):
        mapping.read32(0)

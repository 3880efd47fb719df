"""Vendor private values read through their private creator block, never at a fixed element number.

A private element's number is only meaningful inside the block its creator reserved: (0019,100C) is
Siemens' b-value only where (0019,0010) says "SIEMENS MR HEADER". A scanner, an anonymiser or a
PACS re-encoding may reserve another block than the usual one: reading through the creator finds the value
wherever its block was placed, and nothing when the creator is absent. The one place private values are
read: volume splitting, MOSAIC and the header facts (b-values) all go through it."""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset

SIEMENS_MR_CREATORS = ("SIEMENS MR HEADER", "SIEMENS CSA HEADER")


@dataclass(frozen=True)
class PrivateTag:
    """One vendor's private element, named by its creator and its offset in the creator's block."""

    group: int
    creator: str  # the private creator string, exactly as the vendor writes it
    element: int  # the element's offset within its block (0x00-0xFF): 0x0C for (0019,xx0C)
    name: str

    def value(self, ds: Dataset) -> Any | None:
        """The element's value when ``ds`` holds this creator's block and the element in it; else None."""
        return private_value(ds, self.group, (self.creator,), self.element)


SIEMENS_B_VALUE = PrivateTag(0x0019, "SIEMENS MR HEADER", 0x0C, "B_value")  # IS
# GE slop_int_6..9: the first value is the b-value (+1e9 on some releases).
GE_B_VALUE = PrivateTag(0x0043, "GEMS_PARM_01", 0x39, "slop_int_6")
PHILIPS_B_VALUE = PrivateTag(0x2001, "Philips Imaging DD 001", 0x03, "Diffusion B-Factor")  # FL


class PrivateBlocks:
    """The private blocks of one dataset, found once: which creator reserved which block of each odd group.
    Reading several private values of one header (a slice's b-value and gradient direction) scans its
    elements once instead of probing every possible block for each value."""

    def __init__(self, ds: Dataset) -> None:
        self._ds = ds
        # (group, creator) -> the first block that creator reserved in the group. The creator elements
        # (gggg,0010-00FF) name the blocks: (gggg,xx00-xxFF) belongs to (gggg,00xx).
        self._slots: dict[tuple[int, str], int] = {}
        try:
            for tag in ds.keys():  # noqa: SIM118 - iterating a Dataset converts every element; its keys do not
                if tag >> 16 & 1 and 0x10 <= tag & 0xFFFF <= 0xFF:
                    try:
                        creator = ds[tag].value
                    except Exception:  # a damaged creator element: its block is as if absent
                        continue
                    text = creator.decode("latin-1") if isinstance(creator, bytes) else str(creator)
                    key, slot = (tag >> 16, text.strip(" \x00")), tag & 0xFF
                    if slot < self._slots.get(key, 0x100):  # whatever the elements' order
                        self._slots[key] = slot
        except Exception:  # a dataset whose elements cannot be listed: no private values
            self._slots.clear()

    def value(self, group: int, creators: Sequence[str], offset: int) -> Any:
        """The raw value of element ``offset`` (0x00..0xFF) in the first block of ``group`` reserved by one of
        ``creators``; None when no such creator or element. Never raises."""
        for creator in creators:
            slot = self._slots.get((group, creator))
            if slot is not None:
                tag = group << 16 | slot << 8 | offset
                if tag in self._ds:
                    try:
                        return self._ds[tag].value
                    except Exception:  # a damaged private element: as if absent
                        return None
        return None

    def numbers(self, group: int, creators: Sequence[str], offset: int, *, binary: str = "") -> list[float]:
        """``value`` as numbers: decimal strings, numbers, or bytes unpacked with struct format ``binary`` (e.g.
        "<H", "<d") when the element was read without a dictionary entry (VR UN)."""
        return _as_numbers(self.value(group, creators, offset), binary)


def private_value(ds: Dataset, group: int, creators: Sequence[str], offset: int) -> Any:
    """The raw value of element ``offset`` (0x00..0xFF) in the first block of ``group`` reserved by
    one of ``creators``; None when no such creator or element. Never raises."""
    return PrivateBlocks(ds).value(group, creators, offset)


def private_numbers(ds: Dataset, group: int, creators: Sequence[str], offset: int, *, binary: str = "") -> list[float]:
    """A private value as numbers (see ``PrivateBlocks.numbers``)."""
    return PrivateBlocks(ds).numbers(group, creators, offset, binary=binary)


def _as_numbers(value: Any, binary: str) -> list[float]:
    if value is None:
        return []
    if isinstance(value, bytes):
        if binary and len(value) % struct.calcsize(binary) == 0 and len(value) > 0:
            count = len(value) // struct.calcsize(binary)
            return [float(v) for v in struct.unpack(binary[0] + binary[1:] * count, value)]
        value = value.decode("latin-1").strip("\x00 ").split("\\")
    if isinstance(value, str):
        items: Sequence[Any] = value.split("\\")
    elif isinstance(value, Sequence):
        items = value
    else:
        items = [value]
    numbers: list[float] = []
    for item in items:
        try:
            number = float(item)
        except (TypeError, ValueError):
            return []
        if not math.isfinite(number):
            return []
        numbers.append(number)
    return numbers

"""Vendor private tags, read through their private creator block.

A private element's number is not fixed: (gggg,xxEE) lives in the block (gggg,00xx) whose creator string
says whose it is, and a scanner (or an anonymiser, or a PACS re-encoding) may reserve another block than
the usual one. Reading (0019,100C) blindly reads whatever another creator put there; reading through the
creator finds the Siemens b-value wherever its block was placed, and nothing when the creator is absent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset


@dataclass(frozen=True)
class PrivateTag:
    group: int
    creator: str  # the private creator string, exactly as the vendor writes it
    element: int  # the element's offset within its block (0x00-0xFF): 0x0C for (0019,xx0C)
    name: str

    def value(self, ds: Dataset) -> Any | None:
        """The element's value when ``ds`` holds this creator's block and the element in it; else None."""
        try:
            return ds.private_block(self.group, self.creator)[self.element].value
        except (KeyError, ValueError):  # no such creator block, or no such element in it
            return None


SIEMENS_B_VALUE = PrivateTag(0x0019, "SIEMENS MR HEADER", 0x0C, "B_value")  # IS
# GE slop_int_6..9: the first value is the b-value (+1e9 on some releases).
GE_B_VALUE = PrivateTag(0x0043, "GEMS_PARM_01", 0x39, "slop_int_6")
PHILIPS_B_VALUE = PrivateTag(0x2001, "Philips Imaging DD 001", 0x03, "Diffusion B-Factor")  # FL

"""The attribute table of the Basic Application Level Confidentiality Profile (DICOM PS3.15 Annex E, Table
E.1-1, 2013 edition, in ``basic_profile.csv``) and the action it asks for each attribute.

The table's codes: D replace with a dummy value of the VR; Z replace with a zero-length (or dummy) value; X
remove; K keep; U replace a UID with another, consistently within the set of objects; combined codes leave
the choice to the attribute's Type in the IOD. This profile does not look IODs up, so it takes the choice
that conforms whatever the Type: X/Z -> Z (an empty Type 3 attribute is valid too), X/D, Z/D, X/Z/D -> D,
X/Z/U* -> the sequence is kept and its items are de-identified (the UIDs in them replaced). The Retain
Longitudinal Temporal Information With Full Dates Option keeps (K) the dates and times the table marks."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from enum import StrEnum
from functools import cache
from importlib import resources

TABLE_FILE = "basic_profile.csv"


class Action(StrEnum):
    """What is done to one attribute."""

    DUMMY = "D"
    EMPTY = "Z"
    REMOVE = "X"
    KEEP = "K"
    NEW_UID = "U"
    CLEAN_ITEMS = "X/Z/U*"  # a sequence of references: kept, its items de-identified


# The combined codes of the table, resolved as the module docstring says.
_RESOLVED = {"D": Action.DUMMY, "Z": Action.EMPTY, "X": Action.REMOVE, "K": Action.KEEP, "U": Action.NEW_UID,
             "X/Z": Action.EMPTY, "X/D": Action.DUMMY, "Z/D": Action.DUMMY, "X/Z/D": Action.DUMMY,
             "X/Z/U*": Action.CLEAN_ITEMS}


@dataclass(frozen=True)
class ProfileRow:
    """One row of Table E.1-1: the attribute, the Basic Profile's code and the Full Dates Option's ("" none)."""

    tag: int
    keyword: str
    basic: str
    full_dates: str

    def action(self, *, retain_full_dates: bool = True) -> Action:
        """The action for this attribute under the Basic Profile, with the Full Dates Option when asked."""
        if retain_full_dates and self.full_dates:
            return _RESOLVED[self.full_dates]
        return _RESOLVED[self.basic]


@cache
def profile_table() -> dict[int, ProfileRow]:
    """Table E.1-1 by tag (group << 16 | element), read once from the package."""
    text = resources.files("neuroflow.deid").joinpath(TABLE_FILE).read_text()
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    rows = {}
    for record in csv.DictReader(lines):
        row = ProfileRow(int(record["tag"], 16), record["keyword"], record["basic"], record["full_dates"])
        if row.basic not in _RESOLVED or (row.full_dates and row.full_dates not in _RESOLVED):
            raise ValueError(f"{TABLE_FILE}: unknown action in the row of {row.keyword}")
        rows[row.tag] = row
    return rows


def action_for(tag: int, *, retain_full_dates: bool = True) -> Action | None:
    """The profile's action for the attribute ``tag``; None for a standard attribute the table does not list
    (kept, as the profile says). Private attributes are not asked here: the caller removes them all. Curves
    (groups 50xx) and overlays (60xx) are removed whole: the table lists their data and comments, and an
    overlay without its data would not conform."""
    group = tag >> 16
    if group & 0xFF00 in (0x5000, 0x6000) and group % 2 == 0:
        return Action.REMOVE
    row = profile_table().get(tag)
    return None if row is None else row.action(retain_full_dates=retain_full_dates)

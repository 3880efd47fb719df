"""BENCHMARKS.md is written by several bench scripts, each owning one ``## `` section: a script rewrites
its own section and leaves the others as they are."""

from __future__ import annotations

from pathlib import Path


def write_section(path: Path, section: str) -> None:
    """Replace the section of ``path`` that starts with ``section``'s first line (its ``## `` heading) up
    to the next ``## `` heading, or append it when the file has none; a blank line stays between sections.
    A missing file starts as ``# Benchmarks``."""
    heading = section.split("\n", 1)[0]
    if not heading.startswith("## "):
        raise ValueError(f"a benchmarks section starts with its '## ' heading, not {heading!r}")
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    start = text.find(heading)
    if start >= 0:
        following = text.find("\n## ", start + len(heading))
        text = text[:start] + (section.rstrip("\n") + "\n\n" + text[following + 1:] if following >= 0
                               else section.rstrip("\n") + "\n")
    else:
        text = text.rstrip("\n") + "\n\n" + section.rstrip("\n") + "\n"
    path.write_text(text)


def write_header(path: Path, header: str) -> None:
    """``header`` (the ``# Benchmarks`` title and what follows it) in place of what ``path`` holds before its first
    ``## `` section (all of it when it has none): `make bench`'s first script keeps the other scripts' sections."""
    text = path.read_text() if path.exists() else ""
    first = text.find("\n## ")
    path.write_text(header.rstrip("\n") + "\n" + (text[first:] if first >= 0 else ""))

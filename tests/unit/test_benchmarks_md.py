"""BENCHMARKS.md is shared by the bench scripts: `make bench`'s first script rewrites the title block and its own
sections and keeps every other script's, so one script run alone never drops the others' figures."""

from __future__ import annotations

from pathlib import Path

from neuroflow.devtools.benchmarks_md import write_header, write_section


def test_the_header_is_replaced_and_every_section_kept(tmp_path: Path) -> None:
    path = tmp_path / "BENCHMARKS.md"
    path.write_text("# Benchmarks\n\nWritten on Monday.\n\n## Glioma\n\nold\n\n## Peers\n\nkept\n")
    write_header(path, "# Benchmarks\n\nWritten on Friday.")
    write_section(path, "## Glioma\n\nnew")
    text = path.read_text()
    assert text.startswith("# Benchmarks\n\nWritten on Friday.\n\n## Glioma\n\nnew\n\n## Peers\n\nkept")
    assert "Monday" not in text and "old" not in text


def test_a_missing_or_sectionless_file_takes_the_header_alone(tmp_path: Path) -> None:
    path = tmp_path / "BENCHMARKS.md"
    write_header(path, "# Benchmarks\n\nWritten now.\n")
    assert path.read_text() == "# Benchmarks\n\nWritten now.\n"
    write_header(path, "# Benchmarks\n\nWritten later.")
    assert path.read_text() == "# Benchmarks\n\nWritten later.\n"

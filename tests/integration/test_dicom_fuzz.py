"""Issue 11, "prove it": mutated DICOM files through index, classify, read and convert end accepted or
refused with a reason, never in a crash, a hang or a memory blow-up (each case in a child process under
RLIMIT_AS and a time limit). The small count runs here; `make fuzz` runs 10,000 files."""

from __future__ import annotations

from pathlib import Path

import pytest

from neuroflow.core.config import InputLimitSettings
from neuroflow.devtools.dicom_fuzz import FINDINGS, FuzzOptions, fuzz, make_case, run_case, seed_series

# Cases that once crashed or hung a worker (run seed, case number): each must now be refused.
REGRESSIONS = [
    (5, 223, "codestream is 20 x 24 pixels"),  # header 1 x 8192: GDCM aborted the process (SIGABRT)
    (7, 218, "index out of bounds"),  # RLE segments past the data: pylibjpeg-rle panicked (pyo3 PanicException)
    (11, 1026, "unreadable DICOM header"),  # a flipped bit made PatientID's VR 'DO': index raised NotImplementedError
]


def test_two_hundred_mutated_files_are_each_accepted_or_refused_with_a_reason(tmp_path: Path) -> None:
    options = FuzzOptions(count=200, seed=2026, timeout_s=60.0)
    result = fuzz(options, tmp_path)
    assert result.files >= 200
    assert {k: result.outcomes[k] for k in FINDINGS} == dict.fromkeys(FINDINGS, 0), result.findings
    assert result.outcomes["accepted"] > 0 and result.outcomes["refused"] > 0
    assert result.outcomes["accepted"] + result.outcomes["refused"] == result.cases
    assert all(reason for reason in result.refusal_classes)
    assert result.peak_rss_mb < options.memory_mb


def test_the_same_seed_gives_the_same_files(tmp_path: Path) -> None:
    seeds = seed_series(tmp_path / "a")
    again = seed_series(tmp_path / "b")
    assert seeds == again
    first = [make_case(seeds, 3, n)[0] for n in range(20)]
    second = [make_case(again, 3, n)[0] for n in range(20)]
    assert [c.files for c in first] == [c.files for c in second]
    assert len({b"".join(c.files) for c in first}) == 20


@pytest.mark.parametrize(("run_seed", "number", "reason"), REGRESSIONS)
def test_fuzz_findings_stay_refused(tmp_path: Path, run_seed: int, number: int, reason: str) -> None:
    case, _ = make_case(seed_series(tmp_path), run_seed, number)
    folder = tmp_path / "case"
    folder.mkdir()
    for index, data in enumerate(case.files):
        (folder / f"IM{index}").write_bytes(data)
    answer = run_case(folder, InputLimitSettings(max_series_bytes=FuzzOptions.max_series_bytes))
    assert answer["outcome"] == "refused", answer
    assert reason in answer.get("message", answer["reason"])

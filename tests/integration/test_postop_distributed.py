"""Post-operative glioma in the distributed runtime (issue 15, seed S001): the orchestrator runs glioma_postop as
the glioma stages; its segmentation stage runs the glioma model (ONNX Runtime) and carves the resection cavity into
the label map after the review, the cavity finding in its meta and out of the region volumes; the results stage,
reading the series from a real Orthanc, stores the SEG with the cavity segment and the SR, and writes the report's
post-operative section, as the embedded runtime does."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from neuroflow.core import topics
from neuroflow.core.bus import InMemoryBus
from neuroflow.core.config import DEFAULT_MODEL_REPOSITORY, GLIOMA_POSTOP_PIPELINE, NeuroflowSettings, PipelineModels
from neuroflow.core.dicom_io import study_key
from neuroflow.core.handoff import CavityFinding, GeometrySummary, PreprocessSummary
from neuroflow.core.inference import OnnxRuntimeBackend
from neuroflow.core.labels import RESECTION_CAVITY_LABEL, RESECTION_CAVITY_SEGMENT, BratsLabel
from neuroflow.core.orthanc import OrthancDicomSink, OrthancDicomSource
from neuroflow.core.roles import GLIOMA_INPUT_ROLES, SeriesRole
from neuroflow.core.volume import Geometry, Volume, resample
from neuroflow.core.volume_store import FolderVolumeStore
from neuroflow.devtools.dicom_writer import write_study
from neuroflow.orchestrator.pipelines import glioma_postop_pipeline
from neuroflow.proto.neuroflow.v1 import common_pb2, events_pb2, tasks_pb2
from neuroflow.results.worker import ResultsHandler
from neuroflow.segmentation.worker import ROUTED_POSTOPERATIVE, SegmentationHandler
from tests.integration.stage_tasks import ball, stage_task
from tests.servers.orthanc import OrthancPair

PRE, SEG, RES = common_pb2.STAGE_PREPROCESS, common_pb2.STAGE_SEGMENTATION, common_pb2.STAGE_RESULTS
GRID = Geometry(spacing=(1.0, 1.0, 1.0), origin=(-24.0, -24.0, -10.0),
                direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0), size=(48, 48, 20))


def _ready(uid: str, series: dict[SeriesRole, str]) -> events_pb2.StudyReady:
    return events_pb2.StudyReady(
        schema_version=topics.SCHEMA_VERSION, pipeline=GLIOMA_POSTOP_PIPELINE, input_hash="postop-small",
        priority=common_pb2.PRIORITY_ROUTINE,
        study=common_pb2.StudyRef(study_instance_uid=uid, study_key=study_key(uid), site="test"),
        series=[common_pb2.SeriesRef(series_instance_uid=s, role=role.value, instance_count=20)
                for role, s in series.items()])


def _task(stage: common_pb2.Stage.ValueType, ready: events_pb2.StudyReady,
          done: dict[common_pb2.Stage.ValueType, tasks_pb2.TaskDone]) -> tasks_pb2.TaskRequested:
    return stage_task(stage, glioma_postop_pipeline(PipelineModels()), ready, done, "wf-postop")


def _preprocessed(volumes: FolderVolumeStore, fluid: np.ndarray, summary: PreprocessSummary, *,
                  seed: int) -> tasks_pb2.TaskDone:
    """The preprocess stage's answer for a box of brain holding ``fluid`` (dark on T1, T1CE and FLAIR, bright on
    T2: a cavity's signal) in noise, the brain mask carrying ``summary``."""
    brain = np.zeros((20, 48, 48), dtype=np.uint8)
    brain[1:19, 3:45, 3:45] = 1
    rng = np.random.default_rng(seed)
    pre = tasks_pb2.TaskDone(preprocess=tasks_pb2.PreprocessOutput(
        brain_mask=volumes.put_ref("k/wf/brain_mask", summary.attach(Volume(brain, GRID)))))
    for role, fluid_z in ((SeriesRole.T1, -2.0), (SeriesRole.T1CE, -2.0), (SeriesRole.T2, 3.0),
                          (SeriesRole.FLAIR, -2.0)):
        image = rng.normal(0.0, 1.0, brain.shape).astype(np.float32)
        image[fluid] = fluid_z
        pre.preprocess.volumes[role.value].CopyFrom(volumes.put_ref(f"k/wf/{role.value}", Volume(image * brain, GRID)))
    return pre


def test_the_segmentation_stage_carves_the_cavity_into_the_label_map(tmp_path: Path) -> None:
    volumes = FolderVolumeStore(tmp_path / "volumes")
    fluid = ball((12.0, 0.0, 0.0), 6.0)  # in one hemisphere, off the midline: not a ventricle
    pre = _preprocessed(volumes, fluid, PreprocessSummary(reference_geometry=GeometrySummary.of(GRID),
                                                          brain_volume_ml=30.0), seed=4)
    handler = SegmentationHandler(volumes, OnnxRuntimeBackend(DEFAULT_MODEL_REPOSITORY, 1), NeuroflowSettings())
    ready = _ready("1.2.3", {role: f"1.2.3.{n}" for n, role in enumerate(GLIOMA_INPUT_ROLES)})
    out = handler(_task(SEG, ready, {PRE: pre}))
    labels = volumes.get_ref(out.label_map)
    cavity = np.asarray(labels.array) == RESECTION_CAVITY_LABEL
    assert (cavity & fluid).sum() >= 0.8 * fluid.sum() and not (cavity & ~ball((12.0, 0.0, 0.0), 8.0)).any()
    finding = CavityFinding.of(labels)
    assert finding is not None and finding.evidence == [ROUTED_POSTOPERATIVE]
    # The region volumes handed on exclude the cavity: no tumour voxel is left in it.
    tumour_ml = float(np.isin(np.asarray(labels.array), [1, 2, 3]).sum()) / 1000.0
    assert out.region_volumes_ml["WT"] == pytest.approx(tumour_ml, abs=1e-6)
    assert PreprocessSummary.of(labels).brain_volume_ml == 30.0


def test_the_prior_tumour_handed_to_segmentation_reaches_the_cavity_step(tmp_path: Path) -> None:
    """The prior's tumour preprocessing placed (SegmentationInput.prior_tumour) is part of the tumour bed the cavity
    must lie near, and what became of it (the preprocess summary's note) is in the finding; without it, neither.
    (That the prior alone locates a cavity the network draws nothing near: tests/unit/test_postop_cavity.py.)"""
    volumes = FolderVolumeStore(tmp_path / "volumes")
    fluid = ball((-10.0, -9.0, 0.0), 6.0)
    note = "the prior's tumour (0.1 mL) placed on this study: outline agreement 0.98, 1.0 mm, 0.5 deg"
    pre = _preprocessed(volumes, fluid, PreprocessSummary(reference_geometry=GeometrySummary.of(GRID),
                                                          brain_volume_ml=30.0, prior_tumour=note), seed=5)
    handler = SegmentationHandler(volumes, OnnxRuntimeBackend(DEFAULT_MODEL_REPOSITORY, 1), NeuroflowSettings())
    ready = _ready("1.2.4", {role: f"1.2.4.{n}" for n, role in enumerate(GLIOMA_INPUT_ROLES)})
    without = CavityFinding.of(volumes.get_ref(handler(_task(SEG, ready, {PRE: pre})).label_map))
    assert without is not None and "prior tumour" not in without.located_by
    pre.preprocess.prior_tumour.CopyFrom(volumes.put_ref("k/wf/prior_tumour", Volume(
        ball((-10.0, -9.0, 0.0), 3.0).astype(np.uint8), GRID)))
    labels = volumes.get_ref(handler(_task(SEG, ready, {PRE: pre})).label_map)
    assert (np.asarray(labels.array) == RESECTION_CAVITY_LABEL)[fluid].mean() > 0.8
    finding = CavityFinding.of(labels)
    assert finding is not None and "prior tumour" in finding.located_by and finding.prior_tumour == note


def test_the_preprocess_stage_places_the_prior_tumour_from_orthanc(orthancs: OrthancPair, tmp_path: Path) -> None:
    """The prior (its T1CE and neuroflow's glioma SEG on it) and the post-operative study (the same brain in another
    session: another frame of reference, the head turned and moved) in a real Orthanc: preprocessing reads the
    prior back, registers it and hands on its tumour where it now lies."""
    from neuroflow.core.prior_seg import seg_tumour_mask
    from neuroflow.devtools.dicom_writer import PatientInfo, load_volume
    from neuroflow.devtools.synthetic_postop import another_session
    from neuroflow.preprocess.worker import PreprocessHandler
    from neuroflow.results.dicom_seg import build_glioma_seg
    from neuroflow.segmentation.measure import dice

    data = Path(__file__).resolve().parents[1] / "data" / "glioma-tcga-du-7294"
    t1ce, flair = load_volume(data / "t1c_bet.nii.gz"), load_volume(data / "fla_bet.nii.gz")
    patient = PatientInfo(patient_id="NF-PRIOR-BED-DIST")
    before = write_study({SeriesRole.T1CE: t1ce}, tmp_path / "before", patient=patient, seed="bed-before",
                         study_date="20240105")
    instances = [pydicom.dcmread(p) for p in before.series[SeriesRole.T1CE].paths]
    truth = load_volume(data / "seg_fusion_mav.nii.gz")
    seg = build_glioma_seg(truth, instances, model=PipelineModels().glioma)
    assert seg is not None
    buffer = io.BytesIO()
    seg.save_as(buffer, enforce_file_format=True)
    (now_t1ce, to_before), (now_flair, _) = another_session(t1ce), another_session(flair)
    after = write_study({SeriesRole.T1CE: now_t1ce, SeriesRole.FLAIR: now_flair}, tmp_path / "after",
                        patient=patient, seed="bed-after", study_date="20240301", description="MRI BRAIN POST OP")
    for path in sorted(tmp_path.rglob("IM*")):
        orthancs.site_client.upload(path.read_bytes())
    orthancs.site_client.upload(buffer.getvalue())

    volumes = FolderVolumeStore(tmp_path / "volumes")
    handler = PreprocessHandler(OrthancDicomSource(orthancs.site_client), volumes,
                                OnnxRuntimeBackend(DEFAULT_MODEL_REPOSITORY, 1), NeuroflowSettings())
    ready = _ready(after.study_instance_uid, {role: s.series_instance_uid for role, s in after.series.items()})
    ready.baseline_study_instance_uid = before.study_instance_uid
    out = handler(_task(PRE, ready, {}))
    mask = volumes.get_ref(out.brain_mask)
    assert "placed on this study" in PreprocessSummary.of(mask).prior_tumour
    placed = np.asarray(volumes.get_ref(out.prior_tumour).array) > 0
    tumour = seg_tumour_mask(seg, instances, t1ce.geometry, stage="test")
    expected = resample(t1ce.with_array(tumour.astype(np.uint8)), mask.geometry, to_before,
                        interpolator=sitk.sitkNearestNeighbor)
    assert dice(placed, np.asarray(expected.array) > 0) >= 0.85

    # A prior Orthanc no longer holds costs the bed, never the study; no prior named places nothing, says nothing.
    for prior_uid, said in (("1.2.826.0.1.3680043.10.999", "the prior study is no longer in the source"), ("", "")):
        ready.baseline_study_instance_uid = prior_uid
        out = handler(_task(PRE, ready, {}))
        assert not out.HasField("prior_tumour")
        assert PreprocessSummary.of(volumes.get_ref(out.brain_mask)).prior_tumour == said


def test_the_results_stage_stores_the_cavity_in_orthanc(orthancs: OrthancPair, tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    images = {role: Volume(rng.integers(0, 400, size=(20, 48, 48)).astype(np.int16), GRID)
              for role in (SeriesRole.T1CE, SeriesRole.FLAIR)}
    written = write_study(images, tmp_path / "in", seed="postop-distributed", description="MRI BRAIN POST OP")
    for path in sorted((tmp_path / "in").rglob("IM*")):
        orthancs.site_client.upload(path.read_bytes())
    volumes = FolderVolumeStore(tmp_path / "volumes")
    array = np.zeros((20, 48, 48), dtype=np.uint8)
    array[ball((10.0, 0.0, 0.0), 9.0)] = BratsLabel.OEDEMA
    array[ball((10.0, 0.0, 0.0), 7.0)] = BratsLabel.ENHANCING
    array[ball((10.0, 0.0, 0.0), 6.0)] = RESECTION_CAVITY_LABEL
    summary = PreprocessSummary(reference_geometry=GeometrySummary.of(GRID), brain_volume_ml=30.0)
    finding = CavityFinding(evidence=[ROUTED_POSTOPERATIVE], located_by="tumour bed", method="rules")
    ref = volumes.put_ref("k/wf/label_map", finding.attach(summary.attach(Volume(array, GRID))))
    segmented = tasks_pb2.TaskDone(segmentation=tasks_pb2.SegmentationOutput(
        label_map=ref, model=glioma_postop_pipeline(PipelineModels()).model))
    ready = _ready(written.study_instance_uid, {role: s.series_instance_uid for role, s in written.series.items()})
    results = ResultsHandler(OrthancDicomSource(orthancs.site_client), OrthancDicomSink(orthancs.site_client),
                             volumes, InMemoryBus(), tmp_path / "reports")
    out = results(_task(RES, ready, {SEG: segmented}))
    stored = [pydicom.dcmread(io.BytesIO(orthancs.site_client.instance_file(i["ID"])))
              for i in orthancs.site_client.get_json("/instances?expand", what="list instances")]
    (seg,) = [ds for ds in stored if str(ds.SOPInstanceUID) in out.sop_instance_uids and ds.Modality == "SEG"]
    assert RESECTION_CAVITY_SEGMENT.label in [str(s.SegmentLabel) for s in seg.SegmentSequence]
    assert str(seg.SeriesDescription).startswith("NEEDS REVIEW")
    report = json.loads(next((tmp_path / "reports").rglob("report.json")).read_text())
    assert report["pipeline"] == GLIOMA_POSTOP_PIPELINE
    section = report["postoperative"]
    assert section["cavity_ml"] == pytest.approx(float((array == RESECTION_CAVITY_LABEL).sum()) / 1000.0, abs=1e-3)
    assert section["residual_enhancing_ml"] == pytest.approx(report["volumes_ml"]["ET"], abs=1e-3)
    assert section["residual_enhancing_ml"] > 0
    assert section["rim_enhancing_ml"] == pytest.approx(section["residual_enhancing_ml"], abs=1e-3)
    assert report["review"]["needs_review"] is True


def test_ingest_hands_a_post_operative_study_to_glioma_postop_with_its_evidence_in_the_audit(
        orthancs: OrthancPair, tmp_path: Path) -> None:
    from neuroflow.core.config import GLIOMA_PIPELINE
    from neuroflow.core.state import SqliteStateStore
    from neuroflow.devtools.dicom_writer import load_volume
    from neuroflow.devtools.scanner_presets import Vendor
    from neuroflow.ingest.service import IngestService, IngestSettings
    from neuroflow.ingest.window_store import SqliteWindowStore

    data = Path(__file__).resolve().parents[1] / "data" / "glioma-tcga-du-7294"
    files = {SeriesRole.T1: "t1_bet.nii.gz", SeriesRole.T1CE: "t1c_bet.nii.gz", SeriesRole.T2: "t2_bet.nii.gz",
             SeriesRole.FLAIR: "fla_bet.nii.gz"}

    def slab(role: SeriesRole) -> Volume:  # 20 slices of the real volume: enough for routing, quick to upload
        volume = load_volume(data / files[role])
        g = volume.geometry
        x, y, z = volume.to_sitk().TransformIndexToPhysicalPoint([0, 0, 60])
        return Volume(volume.array[60:80].copy(), Geometry(g.spacing, (x, y, z), g.direction,
                                                           (g.size[0], g.size[1], 20)))

    bus, audit = InMemoryBus(), SqliteStateStore(tmp_path / "state.sqlite")
    # The site enables glioma only, as the chart's examples do: glioma_postop is its variant.
    settings = IngestSettings(site="test-site", pipelines=[GLIOMA_PIPELINE],
                              models={GLIOMA_PIPELINE: PipelineModels().glioma}, wait_window_s=1.0, lease_s=2.0)
    ingest = IngestService(orthancs.site_client, SqliteWindowStore(tmp_path / "w.sqlite"), bus, settings, audit=audit)
    written = write_study({r: slab(r) for r in files}, tmp_path / "study", vendor=Vendor.SIEMENS, seed="ingest-postop",
                          description="MRT Schädel postoperativ")
    for path in sorted((tmp_path / "study").rglob("IM*")):
        orthancs.site_client.upload(path.read_bytes())
    ingest.poll_changes(now=5000.0)
    (ready,) = ingest.trigger_due(now=5002.0)
    assert ready.study.study_instance_uid == written.study_instance_uid
    assert ready.pipeline == GLIOMA_POSTOP_PIPELINE
    assert {s.role for s in ready.series} == {r.value for r in files}
    (handed_on,) = audit.audit_records(ready.study.study_key)
    fields = handed_on.fields()
    assert fields["pipeline"] == GLIOMA_POSTOP_PIPELINE
    assert fields["postoperative"] == ["description 'MRT Schädel postoperativ' says post-operative"]
    audit.close()


def test_ingest_takes_a_study_whose_patient_had_tumour_before_as_post_operative(
        orthancs: OrthancPair, tmp_path: Path) -> None:
    """No description says so; the patient's earlier study in the site's Orthanc holds neuroflow's glioma SR with
    tumour in it: the new study goes to glioma_postop, the prior named in the audit."""
    from neuroflow.core.config import GLIOMA_PIPELINE
    from neuroflow.core.state import SqliteStateStore
    from neuroflow.devtools.dicom_writer import PatientInfo
    from neuroflow.ingest.service import IngestService, IngestSettings
    from neuroflow.ingest.window_store import SqliteWindowStore
    from neuroflow.results.dicom_sr import SR_FILE
    from neuroflow.results.glioma_results import glioma_objects
    from neuroflow.results.report import ReportStatus, StudyReport, TumourVolumes

    rng = np.random.default_rng(8)
    images = {role: Volume(rng.integers(0, 400, size=(20, 48, 48)).astype(np.int16), GRID)
              for role in GLIOMA_INPUT_ROLES}
    patient = PatientInfo(patient_id="NF-POSTOP-PRIOR")
    before = write_study(images, tmp_path / "before", patient=patient, seed="prior-tumour", study_date="20240105")
    instances = {role: [pydicom.dcmread(p) for p in before.series[role].paths] for role in GLIOMA_INPUT_ROLES}
    array = np.zeros((20, 48, 48), dtype=np.uint8)
    array[ball((10.0, 0.0, 0.0), 8.0)] = BratsLabel.NECROTIC_CORE
    labels = Volume(array, GRID)
    volumes = TumourVolumes.from_label_map(labels)
    report = StudyReport(study_instance_uid=before.study_instance_uid, study_key="k", pipeline=GLIOMA_PIPELINE,
                         status=ReportStatus.SUCCEEDED, volumes_ml=volumes, model=PipelineModels().glioma)
    sr = glioma_objects(report, labels, instances, input_hash="d" * 64, objects=NeuroflowSettings().results,
                        study_key="k")[SR_FILE][0]
    buffer = io.BytesIO()
    sr.save_as(buffer, enforce_file_format=True)
    orthancs.site_client.upload(buffer.getvalue())  # the earlier result, as PACS-bound objects sit in Orthanc
    bus, audit = InMemoryBus(), SqliteStateStore(tmp_path / "state.sqlite")
    settings = IngestSettings(site="test-site", pipelines=[GLIOMA_PIPELINE],
                              models={GLIOMA_PIPELINE: PipelineModels().glioma}, wait_window_s=1.0, lease_s=2.0)
    ingest = IngestService(orthancs.site_client, SqliteWindowStore(tmp_path / "w.sqlite"), bus, settings, audit=audit)
    after = write_study(images, tmp_path / "after", patient=patient, seed="after-surgery", study_date="20240301")
    for path in sorted((tmp_path / "after").rglob("IM*")):
        orthancs.site_client.upload(path.read_bytes())
    ingest.poll_changes(now=7000.0)
    (ready,) = ingest.trigger_due(now=7002.0)
    assert ready.study.study_instance_uid == after.study_instance_uid
    assert ready.pipeline == GLIOMA_POSTOP_PIPELINE
    # The prior goes with the study: preprocessing places its tumour where the cavity must lie.
    assert ready.baseline_study_instance_uid == before.study_instance_uid
    (handed_on,) = audit.audit_records(ready.study.study_key)
    (line,) = handed_on.fields()["postoperative"]
    assert line.startswith(f"prior study of 20240105 had tumour ({volumes.WT:.1f} mL)")
    audit.close()

"""The study report as a DICOM Structured Report (Comprehensive 3D SR, TID 1500 Measurement Report), built
from the :class:`StudyReport` and nothing else, so the SR and report.json always say the same thing.

One measurement group per reported region (its volume in mL, coded per region by ``core.labels.REGION_CODES``,
the algorithm's name and version), referencing its SEG segment where the region is one (oedema, necrotic core,
enhancing tumour); the review assessment (needs review, risk score, alarms) when there is one; the regions
the sequences could not show; the MS new and enlarging lesions of a longitudinal report; and, for a failed run
or one that found nothing, the notice saying so and why. Every SR says "AI result for review, not a diagnosis".
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

import neuroflow
from neuroflow.core.config import ResultObjectSettings
from neuroflow.core.identity import NEUROFLOW_MANUFACTURER
from neuroflow.core.labels import LOCAL_CODING_SCHEME, REGION_CODES, RESECTION_CAVITY_SEGMENT, SEGMENT_REGION
from neuroflow.core.uids import derived_uid
from neuroflow.results.dicom_seg import declare_local_coding_scheme
from neuroflow.results.report import LongitudinalReport, ReportStatus, ReviewAssessment, StudyReport
from neuroflow.results.series_naming import series_description as describe

SR_DISCLAIMER = "AI result for review, not a diagnosis"
SR_FILE = "sr.dcm"
GLIOMA_SR_DESCRIPTION = "AI glioma report (not for diagnosis)"
MS_SR_DESCRIPTION = "AI new MS lesions report (not for diagnosis)"
METASTASES_SR_DESCRIPTION = "AI metastases report (not for diagnosis)"
METASTASES_RESPONSE_SR_DESCRIPTION = "AI metastases follow-up RANO-BM (not for diagnosis)"
NOTICE_SR_DESCRIPTION = "AI NOTICE: no result (not for diagnosis)"
RETRACTION_SR_DESCRIPTION = "AI RESULT RETRACTED: do not use (not for diagnosis)"
CORRECTION_SR_DESCRIPTION = "AI result CORRECTED by radiologist review (not for diagnosis)"

_ML = hd.sr.CodedConcept("mL", "UCUM", "milliliter")
_MM3 = hd.sr.CodedConcept("mm3", "UCUM", "cubic millimeter")
_NO_UNITS = hd.sr.CodedConcept("1", "UCUM", "no units")
_MR_BRAIN = hd.sr.CodedConcept("24590-2", "LN", "MR Brain")


def _local(value: str, meaning: str) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(value, LOCAL_CODING_SCHEME, meaning)


NEEDS_REVIEW_CONCEPT = _local("NEEDS-REVIEW", "Needs review")
RISK_SCORE_CONCEPT = _local("RISK-SCORE", "Risk score (number of alarms)")
REVIEW_THRESHOLD_CONCEPT = _local("REVIEW-THRESHOLD", "Needs-review threshold")
REVIEW_FINDING = _local("REVIEW-ASSESSMENT", "AI result review assessment")
OUTCOME_FINDING = _local("PROCESSING-OUTCOME", "AI processing outcome")
RETRACTION_FINDING = _local("RETRACTION", "AI result retracted by radiologist review")
CORRECTION_FINDING = _local("CORRECTION", "AI result corrected by radiologist review")
NEW_LESION_COUNT_CONCEPT = _local("NEW-LESION-COUNT", "Number of new or enlarging lesions")
NOT_ASSESSABLE_CONCEPT = _local("NOT-ASSESSABLE", "Not assessable")
LESION_COUNT_CONCEPT = _local("LESION-COUNT", "Number of lesions")
TOTAL_VOLUME_CONCEPT = _local("TOTAL-LESION-VOLUME", "Total lesion volume")
LONGEST_AXIAL_DIAMETER_CONCEPT = _local("LONGEST-AXIAL-DIAMETER", "Longest axial diameter (RANO-BM)")
CONFIDENCE_CONCEPT = _local("CONFIDENCE", "Mean lesion probability")
PRIOR_DIAMETER_CONCEPT = _local("PRIOR-LONGEST-AXIAL-DIAMETER", "Longest axial diameter on the prior (RANO-BM)")
LESION_STATUS_CONCEPT = _local("LESION-STATUS", "Lesion status since the prior")
RANO_BM_CONCEPT = _local("RANO-BM", "RANO-BM response category (imaging only)")
SLD_PRIOR_CONCEPT = _local("SLD-PRIOR", "Sum of longest diameters of target lesions on the prior")
SLD_CONCEPT = _local("SLD", "Sum of longest diameters of target lesions")
SLD_CHANGE_CONCEPT = _local("SLD-CHANGE", "Change of the sum of longest diameters from the prior")
TARGET_COUNT_CONCEPT = _local("TARGET-COUNT", "Number of target lesions")
RESIDUAL_ET_FINDING = _local("RESIDUAL-ET", "Residual enhancing tumor (post-operative)")
RIM_ET_CONCEPT = _local("RIM-ET-VOLUME", "Enhancing tumor volume at the resection cavity wall")
_MM = hd.sr.CodedConcept("mm", "UCUM", "millimeter")
_PERCENT = hd.sr.CodedConcept("%", "UCUM", "percent")
_UID = re.compile(r"\b\d+(?:\.\d+){3,}\b")
_LESION = hd.sr.CodedConcept("52988006", "SCT", "Lesion")
_Group = hd.sr.MeasurementsAndQualitativeEvaluations | hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations
_REGION_LABELS = {"WT": "Whole tumour (WT)", "TC": "Tumour core (TC)", "ET": "Enhancing tumour (ET)",
                  "oedema": "Oedema (WT - TC)", "necrotic_core": "Necrotic core (TC - ET)"}


def glioma_sr(
    report: StudyReport,
    evidence: Sequence[Dataset],
    *,
    seg: Dataset | None,
    input_hash: str,
    objects: ResultObjectSettings,
    version: int = 1,
    predecessor: Dataset | None = None,
) -> hd.sr.Comprehensive3DSR:
    """The SR of a succeeded glioma report: the five region volumes (mL), each group naming the model,
    the SEG segment of the disjoint regions when ``seg`` is given, the review assessment, the regions not
    assessable, the method and the disclaimer. ``evidence``: the reference series' instances (headers).
    ``predecessor``: the SR of the result this one replaces (a re-run), listed as its predecessor document.
    Refuses (ValueError) a report without volumes or model."""
    if report.volumes_ml is None or report.model is None:
        raise ValueError("a glioma SR needs a succeeded report with volumes and a model")
    algorithm = hd.sr.AlgorithmIdentification(name=report.model.name, version=str(report.model.version),
                                              manufacturer=NEUROFLOW_MANUFACTURER)
    volumes = report.volumes_ml.model_dump()
    segment_of = {region: number for number, region in SEGMENT_REGION.items()}
    groups: list[_Group] = []
    for region, label in _REGION_LABELS.items():
        tracking = hd.sr.TrackingIdentifier(
            uid=derived_uid(objects.uid_root, "neuroflow.sr-region", input_hash, region), identifier=label)
        finding = hd.sr.CodedConcept(*REGION_CODES[region])
        why_not = report.not_assessable.get(region)
        measurements = [] if why_not is not None else [
            hd.sr.Measurement(name=codes.SCT.Volume, value=round(float(volumes[region]), 2), unit=_ML,
                              algorithm_id=algorithm)]
        number = segment_of.get(region)
        if seg is not None and number is not None and why_not is None:
            group: _Group = (
                hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                    tracking_identifier=tracking, finding_type=finding, algorithm_id=algorithm,
                    measurements=measurements,
                    referenced_segment=hd.sr.ReferencedSegment(
                        sop_class_uid=str(seg.SOPClassUID), sop_instance_uid=str(seg.SOPInstanceUID),
                        segment_number=number,
                        source_series=hd.sr.SourceSeriesForSegmentation(str(evidence[0].SeriesInstanceUID)))))
        else:
            group = hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=tracking, finding_type=finding, algorithm_id=algorithm,
                measurements=measurements or None)
        if why_not is not None:
            _add_text(group, f"{label}: not assessable: {why_not}", name=NOT_ASSESSABLE_CONCEPT)
        groups.append(group)
    if report.postoperative is not None:
        groups += _postoperative_groups(report, seg, evidence, input_hash, objects, algorithm)
    groups.append(_outcome_group(report, input_hash, objects, algorithm, [
        f"Method: {_method(report)}",
        *([] if report.volumes_ml.tumour_detected else ["No tumour detected."]),
    ]))
    if report.review is not None:
        groups.append(_review_group(report.review, input_hash, objects, algorithm))
    needs_review = report.review is not None and report.review.needs_review
    evidence_all = [*evidence, *([seg] if seg is not None else [])]
    return _sr(report.study_key, report.pipeline, evidence_all, groups, kind="neuroflow.glioma-sr",
               input_hash=input_hash, objects=objects,
               series_number=objects.sr_series_number,
               description=describe(GLIOMA_SR_DESCRIPTION, needs_review=needs_review, version=version),
               predecessor=predecessor)


def _postoperative_groups(report: StudyReport, seg: Dataset | None, evidence: Sequence[Dataset], input_hash: str,
                          objects: ResultObjectSettings, algorithm: hd.sr.AlgorithmIdentification) -> list[_Group]:
    """A post-operative result's two groups: the resection cavity (its volume, its SEG segment, why the study is
    post-operative, the method; a rule-based estimate for review) and the residual enhancing tumour."""
    section = report.postoperative
    assert section is not None
    tracking = hd.sr.TrackingIdentifier(uid=derived_uid(objects.uid_root, "neuroflow.sr-region", input_hash,
                                                        "resection_cavity"), identifier="Resection cavity")
    finding = hd.sr.CodedConcept(*REGION_CODES["resection_cavity"])
    measurements = [] if section.cavity_ml is None else [
        hd.sr.Measurement(name=codes.SCT.Volume, value=round(section.cavity_ml, 2), unit=_ML, algorithm_id=algorithm)]
    number = next((int(item.SegmentNumber) for item in (seg.SegmentSequence if seg is not None else [])
                   if str(item.SegmentLabel) == RESECTION_CAVITY_SEGMENT.label), None)
    cavity: _Group
    if seg is not None and number is not None:
        cavity = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking, finding_type=finding, algorithm_id=algorithm, measurements=measurements,
            referenced_segment=hd.sr.ReferencedSegment(
                sop_class_uid=str(seg.SOPClassUID), sop_instance_uid=str(seg.SOPInstanceUID), segment_number=number,
                source_series=hd.sr.SourceSeriesForSegmentation(str(evidence[0].SeriesInstanceUID))))
    else:
        cavity = hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking, finding_type=finding, algorithm_id=algorithm,
            measurements=measurements or None)
    _add_text(cavity, "Resection cavity: NEEDS REVIEW, a rule-based estimate; not counted as tumour")
    if section.cavity_ml is None:
        _add_text(cavity, f"Resection cavity: not assessable: {section.why_not}", name=NOT_ASSESSABLE_CONCEPT)
    for line in section.evidence:
        _add_text(cavity, f"Post-operative evidence: {mask_uids(line)}")
    if section.method:
        _add_text(cavity, f"Cavity method: {section.method}")
    residual = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=derived_uid(objects.uid_root, "neuroflow.sr-region", input_hash, "residual_et"),
            identifier="Residual enhancing tumour"),
        finding_type=RESIDUAL_ET_FINDING, algorithm_id=algorithm,
        measurements=[
            hd.sr.Measurement(name=codes.SCT.Volume, value=round(section.residual_enhancing_ml, 3), unit=_ML,
                              algorithm_id=algorithm),
            hd.sr.Measurement(name=RIM_ET_CONCEPT, value=round(section.rim_enhancing_ml, 3), unit=_ML,
                              algorithm_id=algorithm)])
    _add_text(residual, f"Residual enhancing tumour: {section.residual_enhancing_ml:.2f} mL outside the cavity, "
                        f"{section.rim_enhancing_ml:.2f} mL within {section.rim_mm:g} mm of its wall")
    return [cavity, residual]


def glioma_sr_uid(study_instance_uid: str, input_hash: str, objects: ResultObjectSettings) -> str:
    """The SOP Instance UID :func:`glioma_sr` gives the SR of these inputs (to tell a re-run of the same
    inputs, which replaces the SR in place, from a new version, which names the earlier one)."""
    return derived_uid(objects.uid_root, "neuroflow.glioma-sr", study_instance_uid, input_hash, "instance")


def ms_change_sr(
    report: StudyReport,
    evidence: Sequence[Dataset],
    *,
    input_hash: str,
    objects: ResultObjectSettings,
    predecessor: Dataset | None = None,
) -> hd.sr.Comprehensive3DSR:
    """The SR of an MS change comparison (the latest pair of ``report.longitudinal``): the number of new and
    enlarging lesions and, per lesion, its volume (mm3), kind, location and centroid. ``evidence``: the
    follow-up FLAIR's instances; ``report.model``: the method that found them. Refuses (ValueError) a report
    without an MS comparison."""
    section: LongitudinalReport | None = report.longitudinal
    if section is None or section.new_lesions is None:
        raise ValueError("an MS change SR needs a longitudinal report with the new lesions")
    if report.model is None:
        raise ValueError("an MS change SR needs the method or model that found the lesions (report.model)")
    algorithm = hd.sr.AlgorithmIdentification(name=report.model.name, version=str(report.model.version),
                                              manufacturer=NEUROFLOW_MANUFACTURER)
    summary = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=derived_uid(objects.uid_root, "neuroflow.sr-ms-summary", input_hash), identifier="New MS activity"),
        finding_type=_LESION, algorithm_id=algorithm,
        measurements=[hd.sr.Measurement(name=NEW_LESION_COUNT_CONCEPT, value=len(section.new_lesions),
                                        unit=_NO_UNITS, algorithm_id=algorithm)],
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(
            _local("NEW-ACTIVITY", "New MS activity"), codes.SCT.Yes if section.new_activity else codes.SCT.No)])
    _add_text(summary, f"Compared {section.baseline_study_date or 'baseline'} -> "
                       f"{section.followup_study_date or 'follow-up'}")
    if section.ms_sensitivity_limited:
        _add_text(summary, f"Sensitivity limited: this pair shows only changes above "
                           f"{section.ms_detectable_change:.2f} robust spreads of the brain; faint new lesions may be "
                           "missed, and finding none does not rule out new activity")
    groups: list[hd.sr.MeasurementsAndQualitativeEvaluations] = [summary]
    for n, lesion in enumerate(section.new_lesions, start=1):
        group = hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=derived_uid(objects.uid_root, "neuroflow.sr-ms-lesion", input_hash, str(n)),
                identifier=f"Lesion {n} ({lesion.kind})"),
            finding_type=_LESION, algorithm_id=algorithm,
            measurements=[hd.sr.Measurement(name=codes.SCT.Volume, value=round(lesion.volume_mm3, 1), unit=_MM3,
                                            algorithm_id=algorithm)])
        x, y, z = lesion.centroid_mm
        _add_text(group, f"{lesion.kind} lesion at {lesion.location}; centroid ({x:.1f}, {y:.1f}, {z:.1f}) mm LPS")
        groups.append(group)
    groups.append(_outcome_group(report, input_hash, objects, algorithm, [
        "Method: subtraction of co-registered FLAIR with intensity and size criteria"]))
    return _sr(report.study_key, report.pipeline, evidence, groups, kind="neuroflow.ms-change-sr",
               input_hash=input_hash, objects=objects,
               series_number=objects.ms_sr_series_number, description=MS_SR_DESCRIPTION, predecessor=predecessor)


def notice_sr(
    report: StudyReport,
    evidence: Sequence[Dataset],
    *,
    headline: str,
    reasons: Sequence[str],
    input_hash: str,
    objects: ResultObjectSettings,
) -> hd.sr.Comprehensive3DSR:
    """The SR of a notice: the study could not be processed (a failed report) or nothing was found.
    ``headline`` and ``reasons`` are what a reader is told; ``evidence``: any instances of the study (the
    SR takes its patient and study from them)."""
    group = _outcome_group(report, input_hash, objects, None, [headline, *reasons])
    return _sr(report.study_key, report.pipeline, evidence, [group], kind="neuroflow.notice-sr",
               input_hash=input_hash, objects=objects,
               series_number=objects.notice_series_number, description=NOTICE_SR_DESCRIPTION, predecessor=None)


def retraction_sr(
    evidence: Sequence[Dataset],
    superseded_srs: Sequence[Dataset],
    *,
    study_key: str,
    pipeline: str,
    lines: Sequence[str],
    retraction_hash: str,
    objects: ResultObjectSettings,
) -> hd.sr.Comprehensive3DSR:
    """The SR retracting a result a radiologist rejected after it reached the PACS (results/retraction.py):
    ``superseded_srs`` become its predecessor documents, ``evidence`` (the retracted objects) its evidence,
    ``lines`` what a reader is told."""
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=derived_uid(objects.uid_root, "neuroflow.sr-retraction", retraction_hash), identifier="Retraction"),
        finding_type=RETRACTION_FINDING)
    for line in (*lines, SR_DISCLAIMER):
        _add_text(group, line)
    return _sr(study_key, pipeline, evidence, [group], kind="neuroflow.retraction-sr", input_hash=retraction_hash,
               objects=objects, series_number=objects.notice_series_number + 2, description=RETRACTION_SR_DESCRIPTION,
               predecessor=superseded_srs)


def correction_sr(
    evidence: Sequence[Dataset],
    superseded_srs: Sequence[Dataset],
    *,
    study_key: str,
    pipeline: str,
    lines: Sequence[str],
    correction_hash: str,
    objects: ResultObjectSettings,
) -> hd.sr.Comprehensive3DSR:
    """The SR of a result a radiologist corrected (removed components; results/correction.py): as
    :func:`retraction_sr`, ``superseded_srs`` its predecessor documents, ``evidence`` the corrected SEG."""
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=derived_uid(objects.uid_root, "neuroflow.sr-correction", correction_hash), identifier="Correction"),
        finding_type=CORRECTION_FINDING)
    for line in (*lines, SR_DISCLAIMER):
        _add_text(group, line)
    return _sr(study_key, pipeline, evidence, [group], kind="neuroflow.correction-sr", input_hash=correction_hash,
               objects=objects, series_number=objects.notice_series_number + 4, description=CORRECTION_SR_DESCRIPTION,
               predecessor=superseded_srs)


def metastases_sr(
    report: StudyReport,
    evidence: Sequence[Dataset],
    *,
    seg: Dataset | None,
    input_hash: str,
    objects: ResultObjectSettings,
) -> hd.sr.Comprehensive3DSR:
    """The SR of a metastases report: the count and total volume, then per lesion ("Met n", SEG segment n and
    RTSTRUCT ROI n) its volume (mL), longest axial diameter (mm, RANO-BM), confidence, centroid (LPS) and atlas
    location, and the method. ``evidence``: the T1CE's instances. Refuses (ValueError) a report without
    metastases or model."""
    section = report.metastases
    if section is None or report.model is None:
        raise ValueError("a metastases SR needs a succeeded report with its metastases and model")
    algorithm = hd.sr.AlgorithmIdentification(name=report.model.name, version=str(report.model.version),
                                              manufacturer=NEUROFLOW_MANUFACTURER)
    summary = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=derived_uid(objects.uid_root, "neuroflow.sr-mets-summary", input_hash), identifier="Metastases"),
        finding_type=_LESION, algorithm_id=algorithm,
        measurements=[
            hd.sr.Measurement(name=LESION_COUNT_CONCEPT, value=section.count, unit=_NO_UNITS, algorithm_id=algorithm),
            hd.sr.Measurement(name=TOTAL_VOLUME_CONCEPT, value=round(section.total_volume_ml, 4), unit=_ML,
                              algorithm_id=algorithm)])
    groups: list[_Group] = [summary]
    for lesion in section.lesions:
        tracking = hd.sr.TrackingIdentifier(
            uid=derived_uid(objects.uid_root, "neuroflow.sr-mets-lesion", input_hash, str(lesion.number)),
            identifier=f"Met {lesion.number}")
        measurements = [
            hd.sr.Measurement(name=codes.SCT.Volume, value=round(lesion.volume_ml, 4), unit=_ML,
                              algorithm_id=algorithm),
            hd.sr.Measurement(name=LONGEST_AXIAL_DIAMETER_CONCEPT, value=round(lesion.longest_axial_diameter_mm, 1),
                              unit=_MM, algorithm_id=algorithm),
            *([] if lesion.confidence is None else [hd.sr.Measurement(
                name=CONFIDENCE_CONCEPT, value=round(lesion.confidence, 3), unit=_NO_UNITS, algorithm_id=algorithm)])]
        if seg is not None:
            group: _Group = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=tracking, finding_type=_LESION, algorithm_id=algorithm, measurements=measurements,
                referenced_segment=hd.sr.ReferencedSegment(
                    sop_class_uid=str(seg.SOPClassUID), sop_instance_uid=str(seg.SOPInstanceUID),
                    segment_number=lesion.number,
                    source_series=hd.sr.SourceSeriesForSegmentation(str(evidence[0].SeriesInstanceUID))))
        else:
            group = hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=tracking, finding_type=_LESION, algorithm_id=algorithm, measurements=measurements)
        x, y, z = lesion.centroid_mm
        _add_text(group, f"Met {lesion.number}: centroid ({x:.1f}, {y:.1f}, {z:.1f}) mm LPS")
        if lesion.location is not None:
            _add_text(group, f"Met {lesion.number}: location {lesion.location}")
        groups.append(group)
    groups.append(_outcome_group(report, input_hash, objects, algorithm, [
        f"Method: {_method(report)}; lesions: probability >= {section.threshold:g}, at least "
        f"{section.min_volume_mm3:g} mm3, measured on the T1CE grid",
        *([] if section.count else ["No metastasis detected."])]))
    needs_review = report.review is not None and report.review.needs_review
    return _sr(report.study_key, report.pipeline, [*evidence, *([seg] if seg is not None else [])], groups,
               kind="neuroflow.metastases-sr", input_hash=input_hash, objects=objects,
               series_number=objects.metastases_sr_series_number,
               description=describe(METASTASES_SR_DESCRIPTION, needs_review=needs_review), predecessor=None)


def metastases_response_sr(
    report: StudyReport,
    evidence: Sequence[Dataset],
    *,
    input_hash: str,
    objects: ResultObjectSettings,
) -> hd.sr.Comprehensive3DSR:
    """The SR of a metastases follow-up (``report.longitudinal.metastases_response``): the RANO-BM category with
    its reasons and caveats, the target lesions' sum of longest diameters then and now; per lesion its status
    (coded), longest axial diameters then and now, volume, the prior lesion it was matched with and where it is;
    the review assessment and the method. ``evidence``: the follow-up T1CE's instances. Refuses (ValueError) a
    report without the follow-up or its model."""
    section = report.longitudinal.metastases_response if report.longitudinal is not None else None
    if section is None or report.model is None:
        raise ValueError("a metastases follow-up SR needs a longitudinal report with metastases_response and a model")
    pair = report.longitudinal
    assert pair is not None
    algorithm = hd.sr.AlgorithmIdentification(name=report.model.name, version=str(report.model.version),
                                              manufacturer=NEUROFLOW_MANUFACTURER)
    rano = section.rano_bm
    measurements = [
        hd.sr.Measurement(name=TARGET_COUNT_CONCEPT, value=rano.target_count, unit=_NO_UNITS, algorithm_id=algorithm),
        hd.sr.Measurement(name=SLD_PRIOR_CONCEPT, value=rano.sld_prior_mm, unit=_MM, algorithm_id=algorithm),
        hd.sr.Measurement(name=SLD_CONCEPT, value=rano.sld_mm, unit=_MM, algorithm_id=algorithm),
        *([] if rano.sld_change_pct is None else [hd.sr.Measurement(
            name=SLD_CHANGE_CONCEPT, value=rano.sld_change_pct, unit=_PERCENT, algorithm_id=algorithm)])]
    summary = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=derived_uid(objects.uid_root, "neuroflow.sr-mets-response", input_hash), identifier="RANO-BM"),
        finding_type=_LESION, algorithm_id=algorithm, measurements=measurements,
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(
            RANO_BM_CONCEPT, _local(f"RANO-BM-{rano.category.value}", f"RANO-BM {rano.category.value}"))])
    _add_text(summary, f"Compared {pair.baseline_study_date or 'prior'} -> {pair.followup_study_date or 'follow-up'}")
    for line in (f"RANO-BM {rano.category.value} from imaging only", *rano.reasons,
                 *(f"Caveat: {caveat}" for caveat in rano.caveats)):
        _add_text(summary, line)
    groups: list[_Group] = [summary]
    for row, lesion in enumerate(section.lesions, start=1):
        name = f"Met {lesion.number}" if lesion.number is not None else f"Prior Met {lesion.prior_number}"
        lesion_measurements = [
            hd.sr.Measurement(name=LONGEST_AXIAL_DIAMETER_CONCEPT, value=lesion.diameter_mm, unit=_MM,
                              algorithm_id=algorithm),
            hd.sr.Measurement(name=PRIOR_DIAMETER_CONCEPT, value=lesion.prior_diameter_mm, unit=_MM,
                              algorithm_id=algorithm),
            hd.sr.Measurement(name=codes.SCT.Volume, value=round(lesion.volume_ml, 4), unit=_ML,
                              algorithm_id=algorithm),
            *([] if lesion.confidence is None else [hd.sr.Measurement(
                name=CONFIDENCE_CONCEPT, value=round(lesion.confidence, 3), unit=_NO_UNITS, algorithm_id=algorithm)])]
        group = hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=derived_uid(objects.uid_root, "neuroflow.sr-mets-response-lesion", input_hash, str(row)),
                identifier=f"{name} ({lesion.status.value})"),
            finding_type=_LESION, algorithm_id=algorithm, measurements=lesion_measurements,
            qualitative_evaluations=[hd.sr.QualitativeEvaluation(
                LESION_STATUS_CONCEPT, _local(f"LESION-{lesion.status.value.upper()}", lesion.status.value))])
        x, y, z = lesion.centroid_mm
        prior = (f"matched with prior Met {lesion.prior_number} by {lesion.matched_by}"
                 if lesion.prior_number is not None and lesion.number is not None else
                 "not on the prior" if lesion.number is not None else "not found on the follow-up")
        _add_text(group, f"{name}: {lesion.status.value}, {lesion.prior_diameter_mm:.1f} -> "
                         f"{lesion.diameter_mm:.1f} mm; {prior}; {'target' if lesion.target else 'non-target'}; "
                         f"at ({x:.1f}, {y:.1f}, {z:.1f}) mm LPS on the follow-up")
        groups.append(group)
    if section.review is not None:
        groups.append(_review_group(section.review, input_hash, objects, algorithm))
    groups.append(_outcome_group(report, input_hash, objects, algorithm, [
        f"Method: metastases segmented on each study by {report.model.name} version {report.model.version}, "
        f"longest axial diameters measured on each study's T1CE; lesions matched {section.match_rule}"]))
    needs_review = section.review is not None and section.review.needs_review
    return _sr(report.study_key, report.pipeline, evidence, groups, kind="neuroflow.metastases-response-sr",
               input_hash=input_hash, objects=objects, series_number=objects.metastases_response_sr_series_number,
               description=describe(METASTASES_RESPONSE_SR_DESCRIPTION, needs_review=needs_review), predecessor=None)


def _outcome_group(report: StudyReport, input_hash: str, objects: ResultObjectSettings,
                   algorithm: hd.sr.AlgorithmIdentification | None, lines: Sequence[str]
                   ) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=derived_uid(objects.uid_root, "neuroflow.sr-outcome", input_hash), identifier="Processing outcome"),
        finding_type=OUTCOME_FINDING, algorithm_id=algorithm)
    status = "succeeded" if report.status is ReportStatus.SUCCEEDED else "FAILED: the study could not be processed"
    for line in (f"Pipeline {report.pipeline}: {status}", *lines,
                 *(f"Error: {mask_uids(e)}" for e in report.errors),
                 *(f"Warning: {mask_uids(w)}" for w in report.warnings),
                 f"neuroflow {report.neuroflow_version}", SR_DISCLAIMER):
        _add_text(group, line)
    return group


def mask_uids(text: str) -> str:
    """``text`` with every DICOM UID replaced by "<UID>": an SR is filed in its study, and the UIDs of other
    objects in a report's errors mean nothing to a reader."""
    return _UID.sub("<UID>", text)


def _review_group(review: ReviewAssessment, input_hash: str, objects: ResultObjectSettings,
                  algorithm: hd.sr.AlgorithmIdentification) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=derived_uid(objects.uid_root, "neuroflow.sr-review", input_hash), identifier="Review assessment"),
        finding_type=REVIEW_FINDING, algorithm_id=algorithm,
        measurements=[
            hd.sr.Measurement(name=RISK_SCORE_CONCEPT, value=review.risk_score, unit=_NO_UNITS),
            hd.sr.Measurement(name=REVIEW_THRESHOLD_CONCEPT, value=review.threshold, unit=_NO_UNITS)],
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(
            NEEDS_REVIEW_CONCEPT, codes.SCT.Yes if review.needs_review else codes.SCT.No)])
    if review.method:
        _add_text(group, f"Review method: {review.method}")
    for alarm in review.alarms:
        _add_text(group, f"Alarm: {alarm}")
    return group


def _method(report: StudyReport) -> str:
    model = report.model
    named = f"{model.name} version {model.version}" if model is not None else "no model"
    skull = f"; skull strip {report.skull_strip.method}" if report.skull_strip and report.skull_strip.method else ""
    used = ", ".join(str(s.used_as) for s in report.series if s.used_as is not None)
    return (f"automatic 3D segmentation by {named} on {used or 'the routed series'}{skull}; "
            f"volumes of the segmentation on a 1 mm grid")


def _add_text(group: Sequence[Dataset], text: str, *, name: hd.sr.CodedConcept | None = None) -> None:
    """A TEXT item in the group's container (TID 1501 allows free-text evaluations beside coded ones)."""
    group[0].ContentSequence.append(hd.sr.TextContentItem(
        name=name or codes.DCM.Comment, value=text, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))


def _sr(study_key: str, pipeline: str, evidence: Sequence[Dataset], groups: Sequence[Sequence[Dataset]], *,
        kind: str, input_hash: str, objects: ResultObjectSettings, series_number: int, description: str,
        predecessor: Dataset | Sequence[Dataset] | None) -> hd.sr.Comprehensive3DSR:
    if not evidence:
        raise ValueError(f"study {study_key}: an SR needs at least one instance of the study as evidence")
    previous = [predecessor] if isinstance(predecessor, Dataset) else list(predecessor or [])
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=derived_uid(objects.uid_root, "neuroflow.device"), name="neuroflow",
            manufacturer_name=NEUROFLOW_MANUFACTURER, model_name=pipeline))
    content = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=_MR_BRAIN, imaging_measurements=list(groups),  # type: ignore[arg-type]
        title=codes.DCM.ImagingMeasurementReport)
    entropy = (kind, str(evidence[0].StudyInstanceUID), input_hash)
    sr = hd.sr.Comprehensive3DSR(
        evidence=list(evidence), content=content,
        series_instance_uid=derived_uid(objects.uid_root, *entropy, "series"), series_number=series_number,
        sop_instance_uid=derived_uid(objects.uid_root, *entropy, "instance"), instance_number=1,
        manufacturer=NEUROFLOW_MANUFACTURER, is_complete=True, is_final=False, is_verified=False,
        previous_versions=previous or None)
    sr.SeriesDescription = description
    declare_local_coding_scheme(sr)
    sr.SoftwareVersions = neuroflow.__version__
    return sr


def sr_texts(sr: Dataset) -> list[str]:
    """Every TEXT value of an SR, depth first (what a reader of the SR is told in words)."""
    texts: list[str] = []

    def walk(items: Sequence[Dataset]) -> None:
        for item in items:
            if item.get("ValueType") == "TEXT":
                texts.append(str(item.TextValue))
            walk(item.get("ContentSequence", []))

    walk([sr])
    return texts



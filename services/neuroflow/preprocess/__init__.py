"""Preprocessing: DICOM series to volumes with exact geometry, orientation checks, registration,
skull stripping and intensity normalisation."""

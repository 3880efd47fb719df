"""Results: DICOM SEG and the structured report, written to the DICOM sink."""

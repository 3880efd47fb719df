"""Ingest: reading incoming DICOM and deciding which series is which (routing)."""

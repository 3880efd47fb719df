"""Longitudinal change: a study against the patient's prior (new MS lesions, haematoma expansion, tumour growth)."""

"""Developer tools: realistic DICOM series written from real volumes, for tests and ``make demo``.

Nothing under ``neuroflow.devtools`` is imported by a service; it only produces inputs for them."""

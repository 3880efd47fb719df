"""The monitor service: probes what the pipeline depends on (storage, Orthanc, Kafka, the state store, stuck
work) and exposes the results as Prometheus gauges (``neuroflow serve monitor``)."""

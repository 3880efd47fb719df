"""The orchestrator service: one workflow per (study, pipeline, input), dispatched stage by stage."""

"""The chart's Kafka names (helm/neuroflow/files/topics.yaml) are generated from services/neuroflow/core/topics.py
by scripts/gen_chart_topics.py: the committed file is current, and an edited or stale one is caught."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from neuroflow.core import topics

ROOT = Path(__file__).resolve().parents[2]
GENERATOR = ROOT / "scripts" / "gen_chart_topics.py"


def generator() -> Any:  # the script's module, with its constants and main
    spec = importlib.util.spec_from_file_location("gen_chart_topics", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_committed_chart_topics_are_what_the_generator_writes_from_topics_py() -> None:
    result = subprocess.run([sys.executable, str(GENERATOR), "--check"], capture_output=True, text=True,
                            check=False, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_stale_chart_topics_file_fails_the_check_with_a_diff(tmp_path: Path) -> None:
    gen = generator()
    stale = tmp_path / "topics.yaml"
    stale.write_text(gen.OUTPUT.read_text().replace(".neuroflow.v1.task.results.urgent", ".results"))
    gen.OUTPUT = stale
    assert gen.main(["--check"]) == 1
    assert gen.main([]) == 0 and gen.main(["--check"]) == 0


def test_the_generated_names_are_the_ones_the_kafka_bus_uses() -> None:
    names = yaml.safe_load((ROOT / "helm" / "neuroflow" / "files" / "topics.yaml").read_text())
    assert names["allTopics"] == topics.all_topics()
    for stage in topics.STAGES:
        worker = names["workers"][topics.stage_name(stage)]
        pairs = [(read["topic"], read["consumerGroup"]) for read in worker["taskTopics"]]
        # Urgent first, each with the Kafka group the bus joins for (worker group, topic).
        assert pairs == [(t, topics.kafka_group_id(t, topics.worker_group(stage)))
                         for t in topics.task_topics_by_priority(stage)]

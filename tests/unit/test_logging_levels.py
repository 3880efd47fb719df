"""Services log at INFO with pseudonymous keys; libraries stay at WARNING, since their INFO lines name
DICOM UIDs (highdicom logs the SOPInstanceUID of every source image it copies attributes from: found in
the results service's log by tests/e2e/test_no_phi_leaves.py)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from neuroflow.cli import configure_logging


@pytest.fixture
def restored() -> Iterator[None]:
    root, ours = logging.getLogger(), logging.getLogger("neuroflow")
    levels, handlers = (root.level, ours.level), list(root.handlers)
    yield
    root.setLevel(levels[0])
    ours.setLevel(levels[1])
    root.handlers[:] = handlers


def test_a_service_logs_its_info_but_not_the_libraries(restored: None) -> None:
    logging.getLogger().setLevel(logging.DEBUG)  # whatever it was before: the service's setting counts
    configure_logging(logging.INFO)
    assert logging.getLogger("neuroflow.results.worker").isEnabledFor(logging.INFO)
    assert not logging.getLogger("highdicom.base").isEnabledFor(logging.INFO)
    assert logging.getLogger("highdicom.base").isEnabledFor(logging.WARNING)


def test_quiet_commands_stay_quiet(restored: None) -> None:
    configure_logging(logging.ERROR)
    assert not logging.getLogger("neuroflow.cli").isEnabledFor(logging.WARNING)
    assert logging.getLogger("neuroflow.cli").isEnabledFor(logging.ERROR)

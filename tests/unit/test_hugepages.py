"""numpy's transparent huge pages are off in every neuroflow process unless the operator chose otherwise
(NUMPY_MADVISE_HUGEPAGE; why: ``neuroflow/__init__.py``), whether neuroflow or numpy was imported first. Each case is a
fresh interpreter: the setting is read once, when numpy is imported."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from neuroflow import HUGEPAGE_SETTING

ASK = "from numpy._core import multiarray; print(multiarray._get_madvise_hugepage(), os.environ.get({!r}))"


def _in_fresh_interpreter(imports: str, setting: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != HUGEPAGE_SETTING}  # this process set it when it imported us
    if setting is not None:
        env[HUGEPAGE_SETTING] = setting
    code = f"import os\n{imports}\n" + ASK.format(HUGEPAGE_SETTING)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True).stdout.strip()


@pytest.mark.parametrize("imports", ["import neuroflow\nimport numpy", "import numpy\nimport neuroflow"],
                         ids=["neuroflow first", "numpy first"])
def test_off_by_default_and_passed_on_to_the_processes_we_start(imports: str) -> None:
    assert _in_fresh_interpreter(imports, None) == "False 0"


def test_numpy_alone_would_use_them() -> None:
    """The baseline the setting changes: without neuroflow, this numpy asks for huge pages."""
    assert _in_fresh_interpreter("import numpy", None) == "True None"


@pytest.mark.parametrize("setting", ["1", "0"])
def test_the_operators_choice_is_kept(setting: str) -> None:
    expected = "True 1" if setting == "1" else "False 0"
    assert _in_fresh_interpreter("import numpy\nimport neuroflow", setting) == expected

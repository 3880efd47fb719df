"""A model repository like the project's whose glioma card declares ``min_roles_any``, for the tests of studies
that lack some sequences: the same weights (linked, not copied), the card of the pinned glioma version with
the roles of which a study needs one. The shipped v1 weights were not trained with sequence dropout, so
what they draw from zero channels proves the plumbing, not the accuracy."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from neuroflow.core.config import DEFAULT_MODEL_REPOSITORY, PipelineModels
from neuroflow.core.model_card import model_card_path

MIN_ROLES_ANY = ("T1CE", "FLAIR")


def subset_model_repository(dest: Path, min_roles_any: tuple[str, ...] = MIN_ROLES_ANY) -> Path:
    """``dest`` filled as described above; returns it."""
    glioma = PipelineModels().glioma
    for card in DEFAULT_MODEL_REPOSITORY.glob("*/model_card.yaml"):
        folder = dest / card.parent.name
        folder.mkdir(parents=True, exist_ok=True)
        for version in card.parent.iterdir():
            if version.is_dir():
                (folder / version.name).symlink_to(version.resolve(), target_is_directory=True)
        shutil.copy2(card, folder / card.name)
    path = model_card_path(dest, glioma)
    cards = yaml.safe_load(path.read_text())
    for entry in cards["versions"]:
        if int(entry["version"]) == glioma.version:
            entry["min_roles_any"] = list(min_roles_any)
    path.write_text(yaml.safe_dump(cards, sort_keys=False))
    return dest

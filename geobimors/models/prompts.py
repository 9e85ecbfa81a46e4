"""Prompt templates for remote-sensing zero-shot classification.

Each class is described by every template and the normalised text features are
averaged (prompt ensembling, Radford et al. 2021), which is more robust than any
single phrasing. The templates describe overhead imagery, not ground photos.
"""

from __future__ import annotations

REMOTE_SENSING_TEMPLATES: tuple[str, ...] = (
    "a satellite image of {}.",
    "a satellite photo of {}.",
    "an aerial image of {}.",
    "an aerial photograph of {}.",
    "an aerial view of {}.",
    "a remote sensing image of {}.",
    "satellite imagery of {}.",
    "a centered satellite photo of {}.",
    "an overhead view of {}.",
    "a top-down image of {}.",
)


def fill_templates(prompt: str, templates: tuple[str, ...] = REMOTE_SENSING_TEMPLATES) -> list[str]:
    """Substitute a class description into every template."""
    return [template.format(prompt) for template in templates]

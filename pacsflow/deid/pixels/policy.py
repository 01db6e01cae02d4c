"""The pixel policy as :func:`~pacsflow.deid.pixels.inspect_instance` uses it.

The settings are the project's ``pixels:`` section (:class:`pacsflow.config.PixelPolicyConfig`,
one model for the file, the docs and the code); this adds what the settings alone do not
hold: the recipe files resolved against the project file's folder, checked once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pacsflow.config import PixelPolicyConfig, PixelPolicyMode, ProjectConfig


@dataclass(frozen=True)
class PixelPolicy:
    settings: PixelPolicyConfig = field(default_factory=PixelPolicyConfig)
    recipe_files: tuple[Path, ...] = ()
    """The project's own deid recipes, as absolute paths (applied under ``clean``)."""

    @property
    def mode(self) -> PixelPolicyMode:
        return self.settings.policy

    @classmethod
    def for_project(cls, project: ProjectConfig) -> PixelPolicy:
        """Build the policy of ``project``; a bad recipe file raises ConfigError naming it.

        Recipes are parsed here only under ``clean`` (parsing imports deid, ~1 s, which a
        ``quarantine`` project never needs).
        """
        policy = cls(project.pixels, tuple(project.resolved_pixel_recipes))
        if policy.mode is PixelPolicyMode.CLEAN and policy.recipe_files:
            from pacsflow.deid.pixels.masking import check_recipes

            check_recipes(policy.recipe_files)
        return policy

"""The export destination block."""

from __future__ import annotations

from pathlib import Path

from prefect.blocks.core import Block
from pydantic import Field

from pacsflow.config import FilesystemDestinationConfig


class FilesystemExportDestination(Block):
    """A folder studies are exported to: ``<path>/<project>/<pseudo patient>/<pseudo study>``."""

    _block_type_name = "pacsflow filesystem destination"
    _block_type_slug = "pacsflow-filesystem-destination"
    _description = "A folder that receives de-identified studies, written atomically."

    path: str = Field(description="Root folder; one sub-folder per project is created.")

    @classmethod
    def from_config(cls, config: FilesystemDestinationConfig) -> FilesystemExportDestination:
        return cls(path=str(Path(config.path).resolve()))

    def to_config(self) -> FilesystemDestinationConfig:
        return FilesystemDestinationConfig(path=Path(self.path))

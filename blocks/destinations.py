"""Export destination blocks: one block type per destination ``type:``.

Each block wraps the destination's configuration model (:mod:`pacsflow.config`) instead
of repeating its fields, so a new setting is one edit; passwords and tokens are
``SecretStr`` fields of that model, which Prefect stores encrypted and masks in the UI.
:data:`BLOCK_FOR_TYPE` tells the site block which block type a destination name has.
"""

from __future__ import annotations

from typing import Any

from prefect.blocks.core import Block
from pydantic import Field

from pacsflow.config import (
    DestinationConfig,
    DicomDestinationConfig,
    DicomwebDestinationConfig,
    FilesystemDestinationConfig,
    FtpsDestinationConfig,
)


class _WrapsConfig:
    """``from_config`` and ``to_config`` for a block whose one field is ``settings``."""

    @classmethod
    def from_config(cls, config: Any) -> Any:
        return cls(settings=config)

    def to_config(self) -> Any:
        return self.settings


class FilesystemExportDestination(_WrapsConfig, Block):
    """A folder studies are exported to: ``<path>/<project>/<pseudo patient>/<pseudo study>``."""

    _block_type_name = "pacsflow filesystem destination"
    _block_type_slug = "pacsflow-filesystem-destination"
    _description = "A folder that receives de-identified studies, written atomically."

    settings: FilesystemDestinationConfig = Field(
        description="The folder (an absolute path) and whether each study is one zip."
    )


class DicomExportDestination(_WrapsConfig, Block):
    """A DICOM node that receives studies by C-STORE."""

    _block_type_name = "pacsflow DICOM destination"
    _block_type_slug = "pacsflow-dicom-destination"
    _description = "A DICOM node (C-STORE, verified by C-FIND), optionally over DICOM TLS."

    settings: DicomDestinationConfig = Field(
        description="The node's AE title, host and port, our AE title, workers and TLS."
    )


class DicomwebExportDestination(_WrapsConfig, Block):
    """A DICOMweb archive that receives studies by STOW-RS."""

    _block_type_name = "pacsflow DICOMweb destination"
    _block_type_slug = "pacsflow-dicomweb-destination"
    _description = "A DICOMweb archive (STOW-RS, verified by QIDO-RS), basic or bearer auth."

    settings: DicomwebDestinationConfig = Field(
        description="The service URL, credentials (secret) and batch size."
    )


class FtpsExportDestination(_WrapsConfig, Block):
    """An FTPS server that receives one zip per study."""

    _block_type_name = "pacsflow FTPS destination"
    _block_type_slug = "pacsflow-ftps-destination"
    _description = "An FTP server over explicit TLS; one zip per study, resumable."

    settings: FtpsDestinationConfig = Field(
        description="The server, login (the password is secret), folder and CA file."
    )


#: The block type that stores each destination ``type:``.
BLOCK_FOR_TYPE: dict[str, type[Block]] = {
    "filesystem": FilesystemExportDestination,
    "dicom": DicomExportDestination,
    "dicomweb": DicomwebExportDestination,
    "ftps": FtpsExportDestination,
}


def destination_block(config: DestinationConfig) -> Block:
    """The block that stores ``config``."""
    return BLOCK_FOR_TYPE[config.type].from_config(config)

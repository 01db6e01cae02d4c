"""The DICOM source block: one per PACS or VNA that pacsflow pulls from."""

from __future__ import annotations

from typing import Literal

from prefect.blocks.core import Block
from pydantic import Field

from pacsflow.config import SourceConfig, SourceTLS
from pacsflow.windows import ExtractionWindows


class DicomSource(Block):
    """A DICOM query/retrieve SCP. Its name is the source name projects refer to."""

    _block_type_name = "pacsflow DICOM source"
    _block_type_slug = "pacsflow-dicom-source"
    _description = "A PACS or VNA that pacsflow queries (C-FIND) and retrieves from."

    ae_title: str = Field(description="The source's AE title.")
    host: str = Field(description="Host name or address of the source.")
    port: int = Field(description="DICOM port of the source.")
    max_concurrent: int = Field(
        default=2,
        description="Most retrievals running against this source at once, across every "
        "project, flow run and worker (a Prefect tag concurrency limit).",
    )
    find_ahead: bool = Field(
        default=True,
        description="C-FIND a lane's next study on a second association while it retrieves "
        "one (at most max_concurrent queries beside the retrievals); off: queries and "
        "retrievals together at most max_concurrent.",
    )
    retrieve: Literal["move", "get"] = Field(
        default="move", description="C-MOVE into pacsflow's receiver, or C-GET."
    )
    timeout: float = Field(default=60.0, description="Network timeout in seconds.")
    max_images: int | None = Field(
        default=None,
        description="Most instances being retrieved from this source at once, across every "
        "project, flow run and worker (a Prefect global concurrency limit).",
    )
    retry_delays: list[float] = Field(
        default=[10.0, 60.0, 180.0],
        description="Seconds before each retry when the source is down or answers badly.",
    )
    tls: SourceTLS | None = Field(
        default=None,
        description="DICOM over TLS: ca_file, and cert_file/key_file for a client "
        "certificate (paths of PEM files on the workers); empty: plain TCP.",
    )
    store_ae_titles: list[str] = Field(
        default=[],
        description="AE titles the source sends C-MOVE results with, when not its own.",
    )
    store_hosts: list[str] = Field(
        default=[], description="Other hosts the source sends C-MOVE results from."
    )
    windows: ExtractionWindows | None = Field(
        default=None,
        description="When the source may be queried, e.g. timezone Europe/London, open "
        '["mon-fri 20:00-08:00", "sat-sun 00:00-24:00"]; empty: at any time.',
    )

    @classmethod
    def from_config(cls, config: SourceConfig) -> DicomSource:
        return cls(**config.model_dump(mode="json"))

    def to_config(self) -> SourceConfig:
        """The source as pacsflow's domain sees it (every field of SourceConfig)."""
        return SourceConfig.model_validate(
            {name: getattr(self, name) for name in SourceConfig.model_fields}
        )

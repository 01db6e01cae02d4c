"""A site with every destination type survives being saved as blocks and loaded back."""

from __future__ import annotations

from pathlib import Path

import pytest

from pacsflow.config import SiteConfig

pytestmark = pytest.mark.integration


def test_save_and_load_site_keeps_every_destination(prefect_api: str, tmp_path: Path) -> None:
    from blocks.site import load_site, save_site

    site = SiteConfig.model_validate(
        {
            "sources": {"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": 104}},
            "destinations": {
                "share": {"type": "filesystem", "path": "export", "zip": True},
                "node": {
                    "type": "dicom",
                    "ae_title": "RESEARCH",
                    "host": "10.0.0.9",
                    "port": 2762,
                    "tls": {"ca_file": "certs/ca.pem"},
                },
                "archive": {"type": "dicomweb", "url": "https://a/dicom-web", "token": "t0k3n"},
                "drop": {"type": "ftps", "host": "ftp", "username": "u", "password": "pa55"},
            },
        }
    )
    save_site(site, name="all-destinations", base=tmp_path)
    loaded = load_site("all-destinations")

    assert {n: d.type for n, d in loaded.destinations.items()} == {
        "share": "filesystem",
        "node": "dicom",
        "archive": "dicomweb",
        "drop": "ftps",
    }
    assert loaded.destinations["share"].path == tmp_path / "export"
    assert loaded.destinations["node"].tls.ca_file == tmp_path / "certs" / "ca.pem"
    assert loaded.destinations["archive"].token.get_secret_value() == "t0k3n"
    assert loaded.destinations["drop"].password.get_secret_value() == "pa55"
    assert loaded.destinations["drop"] == site.destinations["drop"]

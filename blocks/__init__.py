"""Prefect Block types for pacsflow: sources, destinations, the site, secrets."""

from blocks.destinations import (
    DicomExportDestination,
    DicomwebExportDestination,
    FilesystemExportDestination,
    FtpsExportDestination,
)
from blocks.site import PacsflowSite, load_site, save_site
from blocks.sources import DicomSource

__all__ = [
    "DicomExportDestination",
    "DicomSource",
    "DicomwebExportDestination",
    "FilesystemExportDestination",
    "FtpsExportDestination",
    "PacsflowSite",
    "load_site",
    "save_site",
]

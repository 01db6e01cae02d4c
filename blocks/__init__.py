"""Prefect Block types for pacsflow: sources, destinations, the site, secrets."""

from blocks.destinations import FilesystemExportDestination
from blocks.site import PacsflowSite, load_site, save_site
from blocks.sources import DicomSource

__all__ = ["DicomSource", "FilesystemExportDestination", "PacsflowSite", "load_site", "save_site"]

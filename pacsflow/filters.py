"""Which retrieved series a project keeps: modalities, descriptions, manufacturers, size.

Filters work per series from headers read without pixel data. The result carries counts
and reasons only (never descriptions, which may hold identifiers), so it can be logged
and stored in the ledger when a study ends ``excluded``.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import pydicom

from pacsflow.config import FilterConfig

_TAGS = ["SeriesInstanceUID", "Modality", "SeriesDescription", "Manufacturer"]


@dataclass(frozen=True)
class InstanceHeader:
    path: Path
    series_uid: str
    modality: str
    series_description: str
    manufacturer: str


def read_headers(paths: list[Path]) -> list[InstanceHeader]:
    headers = []
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_TAGS)
        headers.append(
            InstanceHeader(
                path=path,
                series_uid=str(ds.get("SeriesInstanceUID", "")),
                modality=str(ds.get("Modality", "")).upper(),
                series_description=str(ds.get("SeriesDescription", "")),
                manufacturer=str(ds.get("Manufacturer", "")),
            )
        )
    return headers


@dataclass(frozen=True)
class Selection:
    kept: list[Path]
    series_kept: int
    series_dropped: dict[str, int]  # reason -> number of series

    def summary(self) -> str:
        """E.g. ``kept 0 of 3 series; dropped: 2 by series description, 1 by modality``."""
        total = self.series_kept + sum(self.series_dropped.values())
        dropped = ", ".join(f"{n} by {reason}" for reason, n in self.series_dropped.items())
        return f"kept {self.series_kept} of {total} series" + (
            f"; dropped: {dropped}" if dropped else ""
        )


def _drop_reason(
    first: InstanceHeader, count: int, modalities: list[str], filters: FilterConfig
) -> str | None:
    if modalities and first.modality not in modalities:
        return "modality"
    description = first.series_description.lower()
    if any(word.lower() in description for word in filters.exclude_series_descriptions):
        return "series description"
    manufacturer = first.manufacturer.lower()
    if filters.manufacturers and not any(m.lower() in manufacturer for m in filters.manufacturers):
        return "manufacturer"
    if count < filters.min_instances_per_series:
        return "too few instances"
    return None


def select_instances(
    headers: list[InstanceHeader], modalities: list[str], filters: FilterConfig
) -> Selection:
    """Keep the instances of every series that passes all of the project's filters."""
    series: dict[str, list[InstanceHeader]] = defaultdict(list)
    for header in headers:
        series[header.series_uid].append(header)
    kept: list[Path] = []
    dropped: Counter[str] = Counter()
    for members in series.values():
        reason = _drop_reason(members[0], len(members), modalities, filters)
        if reason is None:
            kept.extend(h.path for h in members)
        else:
            dropped[reason] += 1
    return Selection(
        kept=sorted(kept),
        series_kept=len(series) - sum(dropped.values()),
        series_dropped=dict(dropped),
    )

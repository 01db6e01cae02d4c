"""De-identify one study: read, inspect, de-identify, gate, write. No Prefect, no ledger.

Why a study at a time: the PHI gate looks for the identifiers of the whole original
study, not only of the instance at hand (an instance whose own Patient's Name is blank
may still carry in its kept text the name another instance holds), and the cleaner
removes the same. So the study's identifiers are gathered first, from every instance's
header (:func:`gather_identifiers`), then each instance is de-identified in memory and
checked before it is written; an instance with a leak is never written.

Each file is parsed once: the gathering pass reads it (:func:`read_instance`, pixel data
left in the file) and keeps the dataset, unchanged, for the second pass, up to
:data:`KEPT_HEADERS` instances per study (about 80 to 125 KB of memory each, measured on
pydicom's MR and CT test files; a pixel value under ``DEFER_SIZE`` is kept with it), so
at most about 125 MB per study being de-identified; the instances of a larger study
beyond that are read again in the second pass.

Per instance, in order:

1. ``inspect(original)``, when given: the pixel check, run on the original before the
   profile (burned-in text, encapsulated segments, overlays). A verdict that is not
   ``exportable`` holds the study back with its ``summary()``; a cleaning verdict has
   changed the dataset in place, which then goes on.
2. the profile (:meth:`Profile.deidentify`), with the study's identifiers for ``clean``;
3. the PHI gate (:func:`~pacsflow.deid.phi_gate.find_leaks`), searching every value
   except those the engine wrote, and asking the profile about every attribute;
4. the write, into ``out_dir``, only while the study is still exportable.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pydicom.dataset import Dataset

from pacsflow.deid.files import read_instance, write_instance
from pacsflow.deid.phi_gate import GateResult, IdentifierBuilder, OriginalIdentifiers, find_leaks
from pacsflow.deid.phi_gate.matching import matcher_for
from pacsflow.deid.profile import DeidContext, Profile


class InstanceVerdict(Protocol):
    """What a per-instance check (the pixel inspection) answers; values never included."""

    @property
    def exportable(self) -> bool: ...

    def summary(self) -> str: ...


InstanceCheck = Callable[[Dataset], InstanceVerdict]
"""``inspect(original_ds) -> verdict``, run on each original before the profile."""


@dataclass(frozen=True)
class StudyDeidResult:
    """What de-identifying a study produced: safe to log and store (paths, counts, no values).

    ``written`` are the instances in ``out_dir``, complete only when :attr:`exportable`.
    """

    written: tuple[Path, ...]
    gate: GateResult
    held: tuple[str, ...] = ()
    """Why per-instance checks held instances back (their ``summary()``), in order."""

    @property
    def exportable(self) -> bool:
        return self.gate.passed and not self.held

    def summary(self) -> str:
        """One line for the ledger: the gate's verdict, then the pixel reasons."""
        parts = [] if self.gate.passed and self.held else [self.gate.summary()]
        parts += list(dict.fromkeys(self.held))
        return "; ".join(parts)[:1000]


KEPT_HEADERS = 1000
"""Datasets of one study kept between the two passes; the rest are parsed twice."""


def gather_identifiers(
    files: Iterable[Path],
    profile: Profile,
    *,
    mrn: str | None = None,
    accession: str | None = None,
    kept: list[Dataset | None] | None = None,
) -> OriginalIdentifiers:
    """The identifiers of the whole original study, read from every instance's header.

    Pixel data is not read (it is what the pixel check is for); what the profile keeps
    on purpose is left out (see :mod:`pacsflow.deid.phi_gate.identifiers`). Collecting
    changes no dataset, so when ``kept`` is given the first :data:`KEPT_HEADERS`
    datasets are appended to it, as read, for the caller to de-identify.
    """
    builder = IdentifierBuilder(keeps=profile.keeps)
    builder.add_mrn(mrn)
    builder.add_accession(accession)
    for path in files:
        ds = read_instance(path)
        builder.add_dataset(ds)
        if kept is not None and len(kept) < KEPT_HEADERS:
            kept.append(ds)
    return builder.build()


def deidentify_study(
    files: Sequence[Path],
    profile: Profile,
    context: DeidContext,
    out_dir: Path,
    *,
    mrn: str | None = None,
    accession: str | None = None,
    inspect: InstanceCheck | None = None,
) -> StudyDeidResult:
    """De-identify the study's ``files`` into ``out_dir`` (``00000.dcm``, ... in order).

    ``mrn`` and ``accession`` are the manifest's values, looked for as well. Every
    instance is checked, even after a first leak, so the result names every attribute
    path to fix in one go; nothing more is written once the study cannot be exported.
    """
    kept: list[Dataset | None] = []  # each freed once used
    ids = gather_identifiers(files, profile, mrn=mrn, accession=accession, kept=kept)
    context = dataclasses.replace(context, identifiers=ids)
    # The one the cleaner gets too (Cleaner.for_study): a study's patterns compiled once.
    matcher = matcher_for(ids)
    skip = profile.written_values(context)
    # The profile's answers are the same for every instance: one table per manufacturer,
    # keyed by the tag alone for public attributes (most lookups, and the cheapest key).
    allowed: dict[str, dict[int | tuple[int, str], bool]] = {}

    def allows_for(manufacturer: str) -> Callable[[int, str | None], bool]:
        answers = allowed.setdefault(manufacturer, {})

        def allows(tag: int, creator: str | None) -> bool:
            key = int(tag) if creator is None else (int(tag), creator)
            answer = answers.get(key)
            if answer is None:
                answer = answers[key] = profile.allows(tag, creator, manufacturer)
            return answer

        return allows

    written: list[Path] = []
    held: list[str] = []
    leaks: dict[str, None] = {}
    failed = 0
    for number, path in enumerate(files):
        ds = kept[number] if number < len(kept) else None
        if ds is None:
            ds = read_instance(path)
        else:
            kept[number] = None
        if inspect is not None:
            verdict = inspect(ds)
            if not verdict.exportable:
                held.append(verdict.summary())
                continue
        manufacturer = str(ds.get("Manufacturer", "") or "")
        profile.deidentify(ds, context)
        found = find_leaks(ds, matcher, allows=allows_for(manufacturer), skip=skip)
        if found:
            failed += 1
            leaks.update(dict.fromkeys(found))
            continue
        if not leaks and not held:
            written.append(write_instance(ds, out_dir / f"{number:05d}.dcm"))
    gate = GateResult(
        passed=not leaks, paths=tuple(leaks), instances=len(files), failed_instances=failed
    )
    return StudyDeidResult(written=tuple(written), gate=gate, held=tuple(held))

"""Which of a source's C-FIND matches a manifest row asks for: the project's ambiguity policy.

A row names a study by MRN plus accession number (or by study UID) and gives its date.
Usually one study matches, on that date. When several match, or the one match has a
different date, the row does not say which study is meant, and retrieving the wrong one
would put another examination into a research export. So the default (``none``) takes
nothing and the study ends ``ambiguous`` for a person to resolve; ``date_match`` takes the
one match on the manifest's date; ``all`` takes every match.

The decision is a plain function of the matches, so it is tested without a PACS. Its
reason text holds counts and dates only (no UIDs, MRNs or accession numbers): it is
recorded as the study's ``last_error`` and may be shown in Prefect's logs.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from pacsflow.config import AmbiguityPolicy
from pacsflow.dicom.query import StudyMatch

_HOW_TO_FIX = (
    "add the study_uid column to the manifest row, or set the project's ambiguity policy "
    "(date_match or all), then requeue the ambiguous studies"
)


@dataclass(frozen=True)
class Choice:
    """What to retrieve for one manifest row from one source.

    ``studies`` are the matches to retrieve (empty when nothing is); ``reason`` says why
    nothing is retrieved although the source holds matches, and is None otherwise.
    """

    studies: tuple[StudyMatch, ...] = ()
    reason: str | None = None

    @property
    def ambiguous(self) -> bool:
        """The source holds the study, but which one is meant is unclear."""
        return self.reason is not None

    @property
    def not_found(self) -> bool:
        """The source holds no matching study: the next source may."""
        return not self.studies and self.reason is None


def _dates(matches: list[StudyMatch]) -> str:
    return ", ".join(
        sorted(m.study_date.isoformat() if m.study_date else "no date" for m in matches)
    )


def _ambiguous(matches: list[StudyMatch], manifest_date: dt.date | None, why: str) -> Choice:
    count = f"{len(matches)} studies match" if len(matches) > 1 else "1 study matches"
    wanted = manifest_date.isoformat() if manifest_date else "no date"
    return Choice(
        reason=f"{count} (dated {_dates(matches)}; the manifest says {wanted}): {why}; "
        f"nothing was retrieved. To fix it, {_HOW_TO_FIX}."
    )


def choose(
    matches: list[StudyMatch], manifest_date: dt.date | None, policy: AmbiguityPolicy
) -> Choice:
    """Decide what to retrieve of ``matches`` for a row dated ``manifest_date``.

    - ``none``: the one match, if the source gives no other date than the manifest's;
      several matches, or one on another date, are ambiguous.
    - ``date_match``: the matches on the manifest's date; exactly one is taken, none or
      several are ambiguous.
    - ``all``: every match, whatever its date.

    A match the source gives no date for cannot disagree with the manifest, so alone it
    is taken under ``none``; under ``date_match`` it is not on the manifest's date. A
    study the source lists twice counts once. No matches is "not found" under any policy.
    """
    unique = list({m.study_uid: m for m in matches}.values())
    if not unique:
        return Choice()
    if policy == "all":
        return Choice(studies=tuple(unique))
    if policy == "date_match":
        on_date = [m for m in unique if manifest_date and m.study_date == manifest_date]
        if len(on_date) == 1:
            return Choice(studies=(on_date[0],))
        why = "none is" if not on_date else f"{len(on_date)} are"
        return _ambiguous(
            unique, manifest_date, f"{why} on the manifest's date (policy date_match)"
        )
    if len(unique) > 1:
        return _ambiguous(unique, manifest_date, "the row names one (policy none)")
    [match] = unique
    if manifest_date and match.study_date and match.study_date != manifest_date:
        return _ambiguous(unique, manifest_date, "its date is not the manifest's (policy none)")
    return Choice(studies=(match,))

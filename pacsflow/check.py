"""The pre-flight check: what each source says about a study, without retrieving it.

Before a pull, a project wants to know what it will get: which studies the primary holds,
which only a later source (the fallback) holds, which no source holds, which are ambiguous
(several studies match the row) and which are on another date than the manifest says,
and how many instances the found ones have. The check asks the sources in the project's
order, as the extraction does, with C-FIND only, and decides with the project's ambiguity
policy (:func:`pacsflow.dicom.matching.choose`), so its classes say what the extraction
would do. A study is asked of the next source only when this one answered "not there".

What it found is recorded in the ledger (:mod:`pacsflow.ledger.checks`). The extraction
trusts a fresh check (:func:`trusted_check`): a study the check found at a source is
fetched from it without a second C-FIND, and the sources before it, which answered "not
there", are not asked again. Only the first try of a pull trusts it; a failed fetch asks
the source afresh. Rows the check found nowhere, ambiguous or on another date are asked
again by the extraction: those are the rows a person may have fixed since.
"""

from __future__ import annotations

import datetime as dt
from enum import StrEnum
from typing import TYPE_CHECKING

from pacsflow.config import AmbiguityPolicy
from pacsflow.dicom.association import SourceAssociation
from pacsflow.dicom.matching import Choice, choose
from pacsflow.dicom.query import StudyQuery, find_studies
from pacsflow.ledger import checks
from pacsflow.ledger import repository as repo
from pacsflow.ledger.models import Study

if TYPE_CHECKING:  # pipeline asks trusted_check, so it is imported here for types only
    from pacsflow.pipeline import Workspace

#: How long the extraction trusts a check that found a study (see :func:`trusted_check`).
TRUSTED_FOR = dt.timedelta(hours=24)


class CheckResult(StrEnum):
    """What the check says about one manifest row."""

    PRIMARY = "primary"  #: one study, in the primary
    SECONDARY = "secondary"  #: one study, not in the primary but in a later source
    NOT_FOUND = "not_found"  #: no source holds it
    AMBIGUOUS = "ambiguous"  #: several studies match and the policy takes none
    DATE_MISMATCH = "date_mismatch"  #: one study, on another date, and the policy takes none
    SEVERAL = "several"  #: several studies match; policy ``all`` retrieves each
    OUTSIDE_WINDOW = "outside_window"  #: not checked: a source's extraction window is closed
    UNAVAILABLE = "unavailable"  #: not checked: a source did not answer
    DONE = "done"  #: not checked: the study is finished in the ledger already


#: What the CLI and the artifact call each class.
LABELS = {
    CheckResult.PRIMARY: "found in the primary",
    CheckResult.SECONDARY: "only in a later source",
    CheckResult.NOT_FOUND: "not found anywhere",
    CheckResult.AMBIGUOUS: "ambiguous (several studies match)",
    CheckResult.DATE_MISMATCH: "date mismatch",
    CheckResult.SEVERAL: "several studies, each retrieved (policy all)",
    CheckResult.OUTSIDE_WINDOW: "not checked: outside its window",
    CheckResult.UNAVAILABLE: "not checked: source unavailable",
    CheckResult.DONE: "already done (not checked)",
}
#: The classes that say the extraction will retrieve something.
FOUND = (CheckResult.PRIMARY, CheckResult.SECONDARY, CheckResult.SEVERAL)


def classify(choice: Choice, matched: int, source_index: int) -> CheckResult | None:
    """The class of one source's answer, decided by ``choose``; None: not there, ask the next.

    ``matched`` is how many distinct studies the source listed. An ambiguous choice over
    one study is a date mismatch (its one match is on another date); over several, it is
    ambiguous.
    """
    if choice.not_found:
        return None
    if choice.ambiguous:
        return CheckResult.DATE_MISMATCH if matched == 1 else CheckResult.AMBIGUOUS
    if len(choice.studies) > 1:
        return CheckResult.SEVERAL
    return CheckResult.PRIMARY if source_index == 0 else CheckResult.SECONDARY


def check_at_source(
    ws: Workspace,
    study_id: int,
    source_name: str,
    source_index: int,
    last: bool,
    policy: AmbiguityPolicy = "none",
    association: SourceAssociation | None = None,
) -> CheckResult | None:
    """C-FIND one study at one source, classify the answer and record it in the ledger.

    Returns the class, or None when the source does not hold the study and a later
    source (``last`` is False) may: nothing is recorded then, the next source decides.
    Raises :class:`~pacsflow.errors.SourceUnavailable` when the source's answer cannot
    be trusted, as the extraction's C-FIND does.
    """
    source = ws.site.sources[source_name]
    with ws.sessions() as session:
        study = repo.get_study(session, study_id)
        query = StudyQuery(study.study_uid, study.mrn, study.accession_number)
        manifest_date = study.study_date
    matches = find_studies(source, ws.calling_ae, query, association)
    choice = choose(matches, manifest_date, policy)
    result = classify(choice, len({m.study_uid for m in matches}), source_index)
    if result is None:
        if not last:
            return None
        result = CheckResult.NOT_FOUND
    one = choice.studies[0] if result in (CheckResult.PRIMARY, CheckResult.SECONDARY) else None
    # Several studies (policy all): their instances together, what the row will bring.
    counted = [m.instances for m in choice.studies if m.instances is not None]
    with ws.sessions() as session:
        checks.record_check(
            session,
            study_id,
            result.value,
            source=source_name if result != CheckResult.NOT_FOUND else None,
            found_study_uid=one.study_uid if one else None,
            expected_instances=sum(counted) if counted and result in FOUND else None,
            detail=choice.reason
            or (f"{len(choice.studies)} studies match" if result == CheckResult.SEVERAL else None),
        )
    return result


def trusted_check(
    study: Study, source_name: str, sources: list[str] | None, now: dt.datetime
) -> bool | None:
    """What a fresh check says about ``study`` at ``source_name``, for the extraction.

    True: the check found the study there (its UID and instance count are in the row),
    so fetch without asking again. False: the check found it at a source after this one
    in the project's ``sources``, so this one answered "not there" (without ``sources``
    the order is unknown and this is never said). None: ask the source (no check, an old
    one, one that found nothing to retrieve, or not the first try of this pull: a fetch
    that failed after a trusted check asks afresh).
    """
    if study.check_result not in (CheckResult.PRIMARY, CheckResult.SECONDARY):
        return None
    checked = study.checked_at
    if checked is None or not study.found_study_uid or (study.tries or 0) > 1:
        return None
    if checked.tzinfo is None:
        checked = checked.replace(tzinfo=dt.UTC)  # SQLite keeps UTC without a zone
    if now - checked > TRUSTED_FOR:
        return None
    if study.source == source_name:
        return True
    known = sources and source_name in sources and study.source in sources
    if known and sources.index(study.source) > sources.index(source_name):
        return False
    return None

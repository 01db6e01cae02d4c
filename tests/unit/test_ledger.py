"""The ledger on SQLite: migrations, idempotent ingest, and what a run picks up."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Column, Engine, MetaData, String, inspect, select
from sqlalchemy.orm import Session

from pacsflow.ledger import Study, StudyStatus, ingest, make_engine, migrate, session_factory
from pacsflow.ledger import repository as repo
from pacsflow.ledger.models import Base, Project
from pacsflow.manifest import ManifestRow
from tests.concurrency import migrate_together

PROJECT = "my-study"
DATE = dt.date(2024, 3, 1)


def row(n: int, *, uid: str | None = None, mrn: str | None = None, acc: str | None = None):
    return ManifestRow(
        row=n,
        study_date=DATE,
        mrn=mrn if mrn is not None else (None if uid else f"MRN{n:04d}"),
        accession_number=acc if acc is not None else (None if uid else f"ACC{n:04d}"),
        study_uid=uid,
    )


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'sub' / 'ledger.db'}")
    migrate(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def session(engine: Engine) -> Iterator[Session]:
    with session_factory(engine)() as session:
        yield session


def all_studies(session: Session, project: str = PROJECT) -> list[Study]:
    session.expire_all()
    return list(session.scalars(select(Study).where(Study.project == project).order_by(Study.id)))


# -- schema ----------------------------------------------------------------------------


def test_migrate_creates_folder_and_is_safe_twice(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'new' / 'dir' / 'ledger.db'}")
    try:
        migrate(engine)
        migrate(engine)
        assert (tmp_path / "new" / "dir" / "ledger.db").is_file()
        tables = set(inspect(engine).get_table_names())
        assert tables == {"studies", "projects", "alembic_version"}
        with engine.connect() as connection:
            assert MigrationContext.configure(connection).get_current_revision() == "0005"
    finally:
        engine.dispose()


def test_the_head_read_without_alembic_is_alembics_head() -> None:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from pacsflow.ledger.database import _MIGRATIONS, head_revision

    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    assert head_revision() == ScriptDirectory.from_config(config).get_current_head()


def test_a_ledger_an_older_pacsflow_made_is_brought_to_head(tmp_path: Path) -> None:
    from alembic import command
    from alembic.config import Config

    from pacsflow.ledger.database import _MIGRATIONS

    engine = make_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
    try:
        config = Config()
        config.set_main_option("script_location", str(_MIGRATIONS))
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "0004")
        migrate(engine)
        with engine.connect() as connection:
            assert MigrationContext.configure(connection).get_current_revision() == "0005"
        assert "check_result" in {c["name"] for c in inspect(engine).get_columns("studies")}
    finally:
        engine.dispose()


def _schema_diffs(engine: Engine, metadata: MetaData) -> list:
    with engine.connect() as connection:
        context = MigrationContext.configure(
            connection, opts={"compare_type": True, "compare_server_default": True}
        )
        return compare_metadata(context, metadata)


def test_migrations_match_the_models(engine: Engine) -> None:
    """A model change without a migration fails here."""
    assert _schema_diffs(engine, Base.metadata) == []


def test_schema_check_notices_a_model_change(engine: Engine) -> None:
    # The check above is only worth having if it sees a difference.
    changed = MetaData()
    for other in Base.metadata.tables.values():
        other.to_metadata(changed)
    table = changed.tables["studies"]
    table.append_column(Column("series_uid", String(64)))
    diffs = _schema_diffs(engine, changed)
    assert [(d[0], d[3].name) for d in diffs] == [("add_column", "series_uid")]


# -- ingest ----------------------------------------------------------------------------


def test_ingest_adds_pending_rows_with_manifest_values(session: Session) -> None:
    rows = [
        ManifestRow(
            row=1,
            study_date=DATE,
            mrn="0001234",
            accession_number="ACC1",
            participant_id="P1",
            procedure_id="101",
        ),
        row(2, uid="1.2.3.4"),
    ]
    result = repo.ingest_manifest(session, PROJECT, rows)
    assert (result.added, result.already_known) == (2, 0)
    first, second = all_studies(session)
    assert (first.mrn, first.accession_number, first.study_date) == ("0001234", "ACC1", DATE)
    assert (first.participant_id, first.procedure_id) == ("P1", "101")
    assert second.study_uid == "1.2.3.4"
    assert second.mrn is None
    for study in (first, second):
        assert study.status == StudyStatus.PENDING
        assert study.attempts == 0
        assert len(study.ref) == 32
    assert first.ref != second.ref


def test_reingest_adds_nothing_and_changes_nothing(session: Session) -> None:
    rows = [row(1), row(2), row(3, uid="1.2.3.3")]
    repo.ingest_manifest(session, PROJECT, rows)
    first, second, _third = all_studies(session)
    repo.start_attempt(session, first.id)
    repo.mark_exported(session, first.id, exported_instances=7)
    repo.start_attempt(session, second.id)
    repo.start_attempt(session, second.id)
    repo.mark_failed(session, second.id, "source down")
    before = [(s.id, s.ref, s.status, s.attempts, s.last_error) for s in all_studies(session)]

    result = repo.ingest_manifest(session, PROJECT, rows)

    assert (result.added, result.already_known) == (0, 3)
    after = [(s.id, s.ref, s.status, s.attempts, s.last_error) for s in all_studies(session)]
    assert after == before
    assert after[0][2:4] == (StudyStatus.EXPORTED, 1)
    assert after[1][2:] == (StudyStatus.FAILED, 2, "source down")


def test_reingest_by_uid_of_a_study_first_given_by_accession(session: Session) -> None:
    repo.ingest_manifest(session, PROJECT, [row(1)])
    again = ManifestRow(
        row=1, study_date=DATE, mrn="MRN0001", accession_number="ACC0001", study_uid="1.2.9"
    )
    result = repo.ingest_manifest(session, PROJECT, [again])
    assert (result.added, result.already_known) == (0, 1)
    assert len(all_studies(session)) == 1


def test_top_up_manifest_adds_only_new_rows(session: Session) -> None:
    repo.ingest_manifest(session, PROJECT, [row(1), row(2)])
    original = {s.ref for s in all_studies(session)}
    result = repo.ingest_manifest(session, PROJECT, [row(1), row(2), row(3), row(4)])
    assert (result.added, result.already_known) == (2, 2)
    studies = all_studies(session)
    assert [s.accession_number for s in studies] == ["ACC0001", "ACC0002", "ACC0003", "ACC0004"]
    assert {s.ref for s in studies[:2]} == original


def test_same_study_in_two_projects_is_two_rows(session: Session) -> None:
    rows = [row(1), row(2, uid="1.2.3.2")]
    repo.ingest_manifest(session, "project-a", rows)
    result = repo.ingest_manifest(session, "project-b", rows)
    assert result.added == 2
    assert len(all_studies(session, "project-a")) == 2
    assert len(all_studies(session, "project-b")) == 2
    a_ids = {s.id for s in all_studies(session, "project-a")}
    assert a_ids.isdisjoint({s.id for s in all_studies(session, "project-b")})


def test_ingest_many_rows_in_chunks(session: Session) -> None:
    # By accession and by UID.
    rows = [row(n) for n in range(1, 601)] + [row(n, uid=f"1.2.{n}") for n in range(601, 1201)]
    assert repo.ingest_manifest(session, PROJECT, rows).added == 1200
    result = repo.ingest_manifest(session, PROJECT, rows)
    assert (result.added, result.already_known) == (0, 1200)


def test_ingest_thousands_of_rows_in_several_inserts(
    session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ingest, "CHUNK", 1000)  # several full INSERTs and a partial last one
    rows = [row(n) for n in range(1, 2001)] + [row(n, uid=f"1.2.{n}") for n in range(2001, 3501)]

    result = repo.ingest_manifest(session, PROJECT, rows)

    assert (result.added, result.already_known) == (3500, 0)
    studies = all_studies(session)
    assert [(s.mrn, s.accession_number, s.study_uid, s.study_date) for s in studies] == [
        (r.mrn, r.accession_number, r.study_uid, r.study_date) for r in rows
    ]
    assert {(s.status, s.attempts) for s in studies} == {(StudyStatus.PENDING, 0)}
    refs = [s.ref for s in studies]
    assert len(set(refs)) == len(rows)  # a fresh random handle per study
    assert all(uuid.UUID(hex=ref).version == 4 and len(ref) == 32 for ref in refs)

    before = [(s.id, s.ref) for s in studies]
    again = repo.ingest_manifest(session, PROJECT, rows)
    assert (again.added, again.already_known) == (0, 3500)
    assert [(s.id, s.ref) for s in all_studies(session)] == before


def test_a_study_named_by_its_other_key_in_a_later_insert_is_known(
    session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ingest, "CHUNK", 2)
    by_uid = ManifestRow(
        row=1, study_date=DATE, mrn="MRN0001", accession_number="ACC0001", study_uid="1.2.9"
    )
    rows = [by_uid, row(2), row(3), row(4, mrn="MRN0001", acc="ACC0001")]
    result = repo.ingest_manifest(session, PROJECT, rows)
    assert (result.added, result.already_known) == (3, 1)
    assert [s.accession_number for s in all_studies(session)] == ["ACC0001", "ACC0002", "ACC0003"]


# -- what a run sees -------------------------------------------------------------------


def _one_per_status(session: Session) -> dict[StudyStatus, int]:
    repo.ingest_manifest(session, PROJECT, [row(n) for n in range(1, len(StudyStatus) + 1)])
    ids = {}
    for study, status in zip(all_studies(session), StudyStatus, strict=True):
        repo.update_study(session, study.id, status=status)
        ids[status] = study.id
    return ids


def test_studies_to_process_skips_finished_studies(session: Session) -> None:
    ids = _one_per_status(session)
    repo.ingest_manifest(session, "other-project", [row(9)])
    todo = repo.studies_to_process(session, PROJECT)
    assert [study_id for study_id, _ref in todo] == sorted(
        [ids[StudyStatus.PENDING], ids[StudyStatus.RETRIEVING], ids[StudyStatus.FAILED]]
    )
    refs = {s.id: s.ref for s in all_studies(session)}
    assert all(ref == refs[study_id] for study_id, ref in todo)


def test_status_counts_include_zeros(session: Session) -> None:
    assert repo.status_counts(session, PROJECT) == {
        "pending": 0,
        "retrieving": 0,
        "exported": 0,
        "not_found": 0,
        "excluded": 0,
        "quarantined": 0,
        "ambiguous": 0,
        "expanded": 0,
        "partial": 0,
        "failed": 0,
    }
    repo.ingest_manifest(session, PROJECT, [row(1), row(2), row(3)])
    first, second, _third = all_studies(session)
    repo.mark_exported(session, first.id, 3)
    repo.mark_ambiguous(session, second.id, "primary", "2 studies match")
    assert repo.status_counts(session, PROJECT) == {
        "pending": 1,
        "retrieving": 0,
        "exported": 1,
        "not_found": 0,
        "excluded": 0,
        "quarantined": 0,
        "ambiguous": 1,
        "expanded": 0,
        "partial": 0,
        "failed": 0,
    }
    assert repo.failures(session, PROJECT, (StudyStatus.AMBIGUOUS,)) == [
        (second.id, "2 studies match")
    ]


def test_failures_list_reasons(session: Session) -> None:
    repo.ingest_manifest(session, PROJECT, [row(1), row(2), row(3)])
    first, second, third = all_studies(session)
    repo.mark_failed(session, first.id, "received 3 of 5 instances from primary")
    repo.mark_failed(session, third.id, "x" * 5000)
    repo.mark_exported(session, second.id, 2)
    assert repo.failures(session, PROJECT) == [
        (first.id, "received 3 of 5 instances from primary"),
        (third.id, "x" * 2000),  # reasons are capped
    ]
    assert repo.failures(session, "other-project") == []


def test_start_attempt_counts_and_clears_last_error(session: Session) -> None:
    repo.ingest_manifest(session, PROJECT, [row(1)])
    [study] = all_studies(session)
    repo.mark_failed(session, study.id, "timeout")
    repo.start_attempt(session, study.id)
    [study] = all_studies(session)
    assert (study.status, study.attempts, study.last_error) == (StudyStatus.RETRIEVING, 1, None)


def test_mark_exported_records_time_and_count(session: Session) -> None:
    repo.ingest_manifest(session, PROJECT, [row(1)])
    [study] = all_studies(session)
    repo.mark_exported(session, study.id, 12)
    [study] = all_studies(session)
    assert study.status == StudyStatus.EXPORTED
    assert study.exported_instances == 12
    assert study.exported_at is not None


def test_source_counts_per_source(session: Session) -> None:
    repo.ingest_manifest(session, PROJECT, [row(1), row(2), row(3)])
    a, b, c = all_studies(session)
    for study, source in ((a, "primary"), (b, "secondary"), (c, "primary")):
        repo.update_study(session, study.id, source=source)
        repo.mark_exported(session, study.id, 1)
    assert repo.source_counts(session, PROJECT) == {"primary": 2, "secondary": 1}


def test_unknown_study_and_column_are_errors(session: Session) -> None:
    with pytest.raises(LookupError, match="no study with ledger id 999"):
        repo.get_study(session, 999)
    repo.ingest_manifest(session, PROJECT, [row(1)])
    [study] = all_studies(session)
    with pytest.raises(AttributeError, match="Study has no column 'colour'"):
        repo.update_study(session, study.id, colour="red")


def test_repr_carries_no_identifiers(session: Session) -> None:
    repo.ingest_manifest(session, PROJECT, [row(1)])
    [study] = all_studies(session)
    assert "MRN0001" not in repr(study)
    assert "ACC0001" not in repr(study)


def test_one_manifest_naming_a_study_by_uid_and_by_accession(session: Session) -> None:
    # The manifest sees two rows (their keys differ); the ledger must not crash on its
    # unique constraint (whose message would carry the MRN) but keep one study.
    by_uid = ManifestRow(
        row=1, study_date=DATE, mrn="MRN0001", accession_number="ACC0001", study_uid="1.2.9"
    )
    result = repo.ingest_manifest(session, PROJECT, [by_uid, row(2, mrn="MRN0001", acc="ACC0001")])
    assert (result.added, result.already_known) == (1, 1)
    [study] = all_studies(session)
    assert study.study_uid == "1.2.9"


def test_a_new_key_is_refused_once_the_project_exported_something(session: Session) -> None:
    repo.check_project_key(session, PROJECT, "fp-original")
    repo.check_project_key(session, PROJECT, "fp-other")  # nothing exported yet: accepted
    repo.check_project_key(session, PROJECT, "fp-original")
    repo.ingest_manifest(session, PROJECT, [row(1)])
    repo.mark_exported(session, all_studies(session)[0].id, 3)
    with pytest.raises(repo.KeyChanged, match=r"not the one its 1 exported studies"):
        repo.check_project_key(session, PROJECT, "fp-other")
    repo.check_project_key(session, PROJECT, "fp-other", force=True)
    repo.check_project_key(session, PROJECT, "fp-other")  # the forced key is now the key
    repo.check_project_key(session, "another-project", "fp-original")  # keys are per project


def test_requeue_sends_final_studies_back_but_never_exported_ones(session: Session) -> None:
    ids = _one_per_status(session)
    old_ref = repo.get_study(session, ids[StudyStatus.QUARANTINED]).ref
    assert repo.requeue(session, PROJECT, StudyStatus.QUARANTINED) == 1
    # A new ref, so Prefect's cache of the earlier attempt does not answer for this one.
    assert repo.get_study(session, ids[StudyStatus.QUARANTINED]).ref != old_ref
    assert repo.get_study(session, ids[StudyStatus.QUARANTINED]).status == StudyStatus.PENDING
    todo = [study_id for study_id, _ in repo.studies_to_process(session, PROJECT)]
    assert ids[StudyStatus.QUARANTINED] in todo
    assert repo.requeue(session, PROJECT, StudyStatus.QUARANTINED) == 0
    with pytest.raises(ValueError, match="'exported' cannot be re-queued"):
        repo.requeue(session, PROJECT, StudyStatus.EXPORTED)


def test_workers_starting_together_migrate_a_fresh_sqlite_ledger_without_failing(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    assert migrate_together(url) == [None] * 4
    engine = make_engine(url)
    try:
        with session_factory(engine)() as session:
            row = ManifestRow(row=1, study_date=DATE, mrn="000123", accession_number="ACC1")
            assert repo.ingest_manifest(session, PROJECT, [row]).added == 1
    finally:
        engine.dispose()


def test_two_first_runs_of_a_project_both_record_its_key(engine: Engine) -> None:
    """The second run's insert of the project row loses the race; it reads the winner's."""
    from sqlalchemy.orm import sessionmaker

    with session_factory(engine)() as session:  # the run that got there first
        repo.check_project_key(session, PROJECT, "FINGERPRINT")

    class LateSession(Session):
        """Looked before the first run inserted: saw no row the first time."""

        looked = False

        def get(self, *args, **kwargs):
            if not LateSession.looked:
                LateSession.looked = True
                return None
            return super().get(*args, **kwargs)

    with sessionmaker(engine, class_=LateSession)() as session:
        repo.check_project_key(session, PROJECT, "FINGERPRINT")
        repo.record_profile(session, PROJECT, "PROFILE")
    with session_factory(engine)() as session:
        row = session.get(Project, PROJECT)
        assert (row.key_fingerprint, row.profile_fingerprint) == ("FINGERPRINT", "PROFILE")


def test_expanded_rows_share_the_manifest_rows_accession_but_not_its_uniqueness(
    session: Session,
) -> None:
    from sqlalchemy.exc import IntegrityError

    repo.ingest_manifest(session, PROJECT, [row(1)])
    [parent] = all_studies(session)
    assert repo.expand(session, parent.id, "primary", ["1.2.3.1", "1.2.3.2", "1.2.3.1"]) == 2
    children = all_studies(session)[1:]
    assert [(c.mrn, c.accession_number, c.study_uid) for c in children] == [
        ("MRN0001", "ACC0001", "1.2.3.1"),
        ("MRN0001", "ACC0001", "1.2.3.2"),
    ]
    assert parent.status == StudyStatus.EXPANDED and parent.claimed_by is None
    # The database still refuses a second manifest row for the MRN and accession ...
    session.add(Study(project=PROJECT, mrn="MRN0001", accession_number="ACC0001"))
    with pytest.raises(IntegrityError, match="failed: studies.project, studies.mrn"):
        session.commit()
    session.rollback()
    # ... and a second row for a study UID, expanded or not.
    session.add(Study(project=PROJECT, study_uid="1.2.3.2", expanded_from=parent.id))
    with pytest.raises(IntegrityError, match="UNIQUE constraint failed: studies.project"):
        session.commit()

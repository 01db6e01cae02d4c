"""The ledger as a queue: claims, leases, hand-on to the next source, deferral."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, update
from sqlalchemy.orm import Session, sessionmaker

from pacsflow.ledger import Study, StudyStatus, claims, make_engine, migrate, session_factory
from pacsflow.ledger import repository as repo
from pacsflow.ledger.leases import LeaseKeeper
from pacsflow.manifest import ManifestRow
from pacsflow.processes import process_is_gone, this_process

PROJECT = "my-study"


def ingest(sessions: sessionmaker[Session], n: int, project: str = PROJECT) -> None:
    rows = [
        ManifestRow(row=i, study_date=dt.date(2024, 1, 1), mrn=f"M{i}", accession_number=f"A{i}")
        for i in range(1, n + 1)
    ]
    with sessions() as session:
        repo.ingest_manifest(session, project, rows)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
    migrate(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[Session]:
    return session_factory(engine)


def test_a_claim_takes_each_study_once_and_marks_it_retrieving(sessions) -> None:
    ingest(sessions, 3)
    with sessions() as session:
        taken = [claims.claim_next(session, PROJECT, 0, "w1", "pull-1") for _ in range(4)]
    assert [s.id for s in taken[:3]] == [1, 2, 3] and taken[3] is None
    assert all(s.status == StudyStatus.RETRIEVING and s.claimed_by == "w1" for s in taken[:3])
    assert all(s.attempts == 1 and s.tries == 1 for s in taken[:3])


def test_concurrent_claimers_never_share_a_study(sessions) -> None:
    ingest(sessions, 200)
    got: dict[str, list[int]] = {}

    def worker(name: str) -> None:
        mine = got.setdefault(name, [])
        with sessions() as session:
            while (study := claims.claim_next(session, PROJECT, 0, name, "pull-1")) is not None:
                mine.append(study.id)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [i for ids in got.values() for i in ids]
    assert sorted(every) == list(range(1, 201))


def test_a_held_study_is_not_claimable_until_its_lease_runs_out(sessions) -> None:
    ingest(sessions, 1)
    with sessions() as session:
        assert claims.claim_next(session, PROJECT, 0, "w1", "p", dt.timedelta(seconds=60))
        assert claims.claim_next(session, PROJECT, 0, "w2", "p") is None
        past = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
        session.execute(update(Study).values(claim_expires=past))
        session.commit()
        again = claims.claim_next(session, PROJECT, 0, "w2", "p")
    assert again is not None and again.claimed_by == "w2" and again.attempts == 2


def test_renew_keeps_the_claim_and_a_lost_claim_is_refused(sessions) -> None:
    ingest(sessions, 1)
    with sessions() as session:
        study = claims.claim_next(session, PROJECT, 0, "w1", "p", dt.timedelta(seconds=1))
        assert claims.renew(session, "w1", dt.timedelta(seconds=60)) == 1
        session.refresh(study)
        assert study.claim_expires.replace(tzinfo=dt.UTC) > dt.datetime.now(dt.UTC) + dt.timedelta(
            seconds=30
        )
        with pytest.raises(claims.ClaimLost, match="no longer held by this worker"):
            claims.defer(session, study.id, "w2", 1.0)


def test_not_found_moves_on_to_the_next_source_then_ends_not_found(sessions) -> None:
    ingest(sessions, 1)
    with sessions() as session:
        study = claims.claim_next(session, PROJECT, 0, "w1", "p")
        assert claims.pass_on(session, study.id, "w1", n_sources=2) == StudyStatus.RETRIEVING
        assert claims.claim_next(session, PROJECT, 0, "w1", "p") is None  # not at primary
        assert claims.claimable_counts(session, PROJECT, "p") == {1: 1}
        study = claims.claim_next(session, PROJECT, 1, "w2", "p")
        assert study is not None and study.tries == 1
        assert claims.pass_on(session, study.id, "w2", n_sources=2) == StudyStatus.NOT_FOUND
        session.refresh(study)
    assert study.status == StudyStatus.NOT_FOUND and study.claimed_by is None


def test_scouting_takes_studies_from_the_end_and_gives_them_back_as_they_were(sessions) -> None:
    ingest(sessions, 5)
    with sessions() as session:
        lane = claims.claim_next(session, PROJECT, 0, "w1", "p")
        scouted = claims.claim_to_scout(session, PROJECT, 0, "w1", "p")
        below = claims.claim_to_scout(session, PROJECT, 0, "w1", "p", below=scouted.id)
        assert (lane.id, scouted.id, below.id) == (1, 5, 4)
        # Held while it is asked about: no lane takes it meanwhile.
        assert [claims.claim_next(session, PROJECT, 0, "w2", "p").id for _ in range(2)] == [2, 3]
        assert claims.claim_next(session, PROJECT, 0, "w2", "p") is None
        claims.unclaim(session, scouted.id, "w1")
        claims.pass_on(session, below.id, "w1", n_sources=2)  # the source lacks it
        session.refresh(scouted)
        # Not an attempt: as it was, and the lanes' next claim is its first try.
        assert scouted.status == StudyStatus.PENDING and scouted.claimed_by is None
        assert (scouted.attempts, scouted.tries) == (0, 0)
        again = claims.claim_next(session, PROJECT, 0, "w2", "p")
        assert again.id == scouted.id and again.tries == 1
        assert claims.claimable_counts(session, PROJECT, "p") == {1: 1}
        assert claims.claim_to_scout(session, PROJECT, 0, "w1", "p", below=below.id) is None


def test_a_deferred_study_comes_back_after_its_delay_with_one_more_try(sessions) -> None:
    ingest(sessions, 1)
    with sessions() as session:
        study = claims.claim_next(session, PROJECT, 0, "w1", "p")
        claims.defer(session, study.id, "w1", 30.0)
        assert claims.claim_next(session, PROJECT, 0, "w1", "p") is None
        assert claims.claimable_counts(session, PROJECT, "p") == {}
        assert claims.next_deferred(session, PROJECT) is not None
        session.execute(update(Study).values(claim_expires=dt.datetime.now(dt.UTC)))
        session.commit()
        again = claims.claim_next(session, PROJECT, 0, "w1", "p")
    assert again.tries == 2


def test_a_study_failed_in_a_pull_waits_for_the_next_pull_at_the_primary(sessions) -> None:
    ingest(sessions, 1)
    with sessions() as session:
        study = claims.claim_next(session, PROJECT, 0, "w1", "pull-1")
        claims.pass_on(session, study.id, "w1", n_sources=2)
        study = claims.claim_next(session, PROJECT, 1, "w1", "pull-1")
        repo.mark_failed(session, study.id, "secondary aborted", "SourceUnavailable")
        assert claims.claim_next(session, PROJECT, 0, "w1", "pull-1") is None
        again = claims.claim_next(session, PROJECT, 0, "w1", "pull-2")
    assert again is not None and again.source_index == 0 and again.tries == 1


def test_studies_of_a_gone_process_are_released_at_once(sessions) -> None:
    ingest(sessions, 2)
    with sessions() as session:
        claims.claim_next(session, PROJECT, 0, "dead-host:1:1", "p")
        claims.claim_next(session, PROJECT, 0, this_process(), "p")
        released = claims.release_dead(session, PROJECT, is_gone=lambda o: o.startswith("dead"))
        assert released == 1
        assert claims.claimable_counts(session, PROJECT, "p") == {0: 1}


def test_a_runs_orphaned_claims_are_given_back_but_not_what_its_export_lanes_hold(
    sessions,
) -> None:
    """A lane cut off mid-claim leaves its study held by a live process, whose lease
    renewals would keep it held; the run gives back all of its own claims but those of
    studies in hand, and nobody else's."""
    ingest(sessions, 5)
    with sessions() as session:
        mine = [claims.claim_next(session, PROJECT, 0, "me", "p").id for _ in range(3)]
        other_pull = claims.claim_next(session, PROJECT, 0, "me", "p2").id
        other_owner = claims.claim_next(session, PROJECT, 0, "you", "p").id
        repo.mark_exported(session, mine[0], 2)
        released = claims.release_orphans(session, "me", PROJECT, "p", keep={mine[1]})
        assert released == 1  # mine[2]; mine[0] is done and mine[1] in hand
        held = {s.id: s.claimed_by for s in session.query(Study)}
    assert held[mine[2]] is None and held[mine[1]] == "me"
    assert held[other_pull] == "me" and held[other_owner] == "you"
    with sessions() as session:
        assert claims.claimable_counts(session, PROJECT, "p") == {0: 1}


def test_this_process_is_alive_and_a_finished_one_is_gone() -> None:
    import subprocess
    import sys

    assert not process_is_gone(this_process())
    child = subprocess.run(
        [sys.executable, "-c", "from pacsflow.processes import this_process as t; print(t())"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert process_is_gone(child.stdout.strip())
    assert not process_is_gone("another-host:1:1")  # only its lease can tell


def test_a_final_status_ends_the_claim(sessions) -> None:
    ingest(sessions, 1)
    with sessions() as session:
        study = claims.claim_next(session, PROJECT, 0, "w1", "p")
        repo.mark_exported(session, study.id, 3)
        session.refresh(study)
    assert study.claimed_by is None and study.claim_expires is None


def _lease_threads() -> int:
    return sum(t.name == "pacsflow-leases" for t in threading.enumerate())


def test_the_keeper_renews_while_a_lane_holds_it_and_stops_after(sessions) -> None:
    ingest(sessions, 1)
    lease = dt.timedelta(seconds=0.6)
    with sessions() as session:
        study = claims.claim_next(session, PROJECT, 0, "w1", "p", lease)
    keeper = LeaseKeeper(sessions, "w1", lease)
    before = _lease_threads()
    with keeper.held(), keeper.held():  # two lanes of one process
        time.sleep(1.5)  # more than two leases
        with sessions() as session:
            assert claims.claim_next(session, PROJECT, 0, "w2", "p") is None  # still held
        assert _lease_threads() == before + 1
    time.sleep(0.3)  # the thread notices at its next wake-up at the latest
    assert not keeper.running
    with sessions() as session:
        expires = session.get(Study, study.id).claim_expires.replace(tzinfo=dt.UTC)
    time.sleep(max(0.0, (expires - dt.datetime.now(dt.UTC)).total_seconds()) + 0.1)
    with sessions() as session:  # not renewed any more: the lease runs out
        assert claims.claim_next(session, PROJECT, 0, "w2", "p") is not None

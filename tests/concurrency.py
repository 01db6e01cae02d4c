"""Run ledger work from several threads at once, the way several workers start together."""

from __future__ import annotations

import threading

from pacsflow.ledger import make_engine, migrate


def migrate_together(url: str, n: int = 4) -> list[BaseException | None]:
    """Run ``migrate`` from ``n`` threads at once, each with its own engine (as workers do)."""
    start = threading.Barrier(n)
    outcomes: list[BaseException | None] = [None] * n

    def run(i: int) -> None:
        engine = make_engine(url)
        try:
            start.wait()
            migrate(engine)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            outcomes[i] = exc
        finally:
            engine.dispose()

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    stuck = [i for i, thread in enumerate(threads) if thread.is_alive()]
    assert not stuck, f"migrations {stuck} still waiting after 60 s (deadlocked on each other)"
    return outcomes

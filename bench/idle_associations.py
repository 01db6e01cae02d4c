"""What pynetdicom's polling threads cost, stock and with pacsflow's quiet reactor.

Run ``python -m bench.idle_associations [--associations 4]``. Each mode runs in a fresh
interpreter: a Verification SCP and ``--associations`` associations to it in one process,
as a lane's associations and the sandbox PACS, or our receiver and a source, meet on one
machine. Measured: the process's CPU while they sit idle for 3 s, and the time of a
C-ECHO sent after 0.1 s of idleness (a lane's next request), of associating and of
releasing. Only the accepting half is quieted (requested associations keep stock
pynetdicom, see :mod:`pacsflow.dicom.quiet_reactor`), so of the four polling threads per
association two remain. Goals: quiet idle CPU at most 0.75 of stock, and no request slower
than stock (within 20%, the noise of a shared machine).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from bench.harness import check, figure

_CHILD = """
import json, sys, time
if sys.argv[1] == "quiet":
    from pacsflow.dicom import quiet_reactor
    assert quiet_reactor.install()
from pynetdicom import AE
from pynetdicom.sop_class import Verification
from tests.servers import LOOPBACK, free_port

n, port = int(sys.argv[2]), free_port()
scp = AE("BENCHSCP")
scp.add_supported_context(Verification)
server = scp.start_server((LOOPBACK, port), block=False)
ae = AE("BENCHSCU")
ae.add_requested_context(Verification)
started = time.perf_counter()
assocs = [ae.associate(LOOPBACK, port, ae_title="BENCHSCP") for _ in range(n)]
associate = (time.perf_counter() - started) / n
assert all(a.is_established for a in assocs)
time.sleep(0.5)
cpu = time.process_time()
time.sleep(3.0)
idle_cpu = (time.process_time() - cpu) / 3.0
echo = 0.0
for i in range(30):
    time.sleep(0.1)
    started = time.perf_counter()
    assert assocs[i % n].send_c_echo().Status == 0
    echo += time.perf_counter() - started
started = time.perf_counter()
for assoc in assocs:
    assoc.release()
release = (time.perf_counter() - started) / n
server.shutdown()
print(json.dumps({"idle_cpu": idle_cpu, "associate": associate, "echo": echo / 30,
                  "release": release}))
"""


def _measure(mode: str, associations: int) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, mode, str(associations)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--associations", type=int, default=4)
    args = parser.parse_args()
    n = args.associations
    print(f"Idle associations: {n} associations to an SCP in the same process, stock vs quiet")
    stock, quiet = _measure("stock", n), _measure("quiet", n)
    for name, result in (("stock", stock), ("quiet", quiet)):
        figure(f"{name}: idle CPU, share of one core", result["idle_cpu"])
        for step in ("associate", "echo", "release"):
            figure(f"{name}: {step}, ms", result[step] * 1000)
    ok = check(
        "quiet / stock idle CPU",
        quiet["idle_cpu"] / stock["idle_cpu"],
        "<= 0.75",
        quiet["idle_cpu"] <= 0.75 * stock["idle_cpu"],
    )
    for step in ("associate", "echo", "release"):
        ratio = quiet[step] / stock[step]
        ok = check(f"quiet / stock {step} time", ratio, "<= 1.2", ratio <= 1.2) and ok
    print(f"\nidle associations: {'PASS' if ok else 'FAIL'}")
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()

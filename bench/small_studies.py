"""Goal 2, small studies: pacsflow's cost per study, against the bare script.

Run ``python -m bench.small_studies [--studies 2000] [--k 4] [--retrieve move|get]``.
One-instance synthetic studies (39 KB, with PHI) from Orthanc to a folder, end to end:
find, retrieve, de-identify, write. pacsflow must reach at least 0.5 of the bare
pynetdicom + pydicom script's studies per second with the same k, in the same run.
"""

from __future__ import annotations

from bench import against_bare
from bench.studies import synthetic_studies

if __name__ == "__main__":
    against_bare.main(
        __doc__, "Small studies", synthetic_studies, studies=2000, instances=1, goal=0.5
    )

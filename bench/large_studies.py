"""Goal 3, large studies: pacsflow's data throughput, against the bare script.

Run ``python -m bench.large_studies [--studies 50] [--instances 100] [--k 4]``. Studies of
~512 KB CT slices (pydicom-data's ``693_UNCI.dcm`` with fresh UIDs and PHI) from Orthanc to
a folder, end to end. pacsflow must reach at least 0.8 of the bare pynetdicom + pydicom
script's throughput with the same k, in the same run.
"""

from __future__ import annotations

from bench import against_bare
from bench.studies import ct_studies

if __name__ == "__main__":
    against_bare.main(__doc__, "Large studies", ct_studies, studies=50, instances=100, goal=0.8)

"""The worker's entry point: ``python -m shoal.jobs WORKSPACE JOB_ID`` runs one job.

The job's outcome goes to its record; only a record that cannot be written at all (a full disk,
even in place) ends the worker with a non-zero status and one line in the job's log.
"""

import sys

from shoal import jobs
from shoal.store import StoreError, Workspace

try:
    jobs.run(Workspace(sys.argv[1]), sys.argv[2])
except StoreError as error:
    print(f"job {sys.argv[2]}: {error}", file=sys.stderr)
    sys.exit(1)

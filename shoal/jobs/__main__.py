"""The worker's entry point: ``python -m shoal.jobs WORKSPACE JOB_ID`` runs one job."""

import sys

from shoal import jobs
from shoal.store import Workspace

jobs.run(Workspace(sys.argv[1]), sys.argv[2])

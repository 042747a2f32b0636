"""Entry point of an engine worker process: `python -m pipeline.engines FD` (started by ProcessEngine)."""

import sys

from pipeline.engines.worker import worker_main

worker_main(int(sys.argv[1]))

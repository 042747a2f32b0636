"""Entry point of an engine worker process: `python -m resnest_serving.pipeline.engines FD` (started by ProcessEngine)."""

import sys

from resnest_serving.pipeline.engines.worker import worker_main

worker_main(int(sys.argv[1]))

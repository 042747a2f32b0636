"""The server's log format: one line per event on stderr (time, level, logger, message with the request's logid).

Set by the `resnest` command and again in every process the server starts (worker processes, Ray replicas),
so that all of them write the same lines. Standard library only: the client-only install's command uses it too.
"""

from __future__ import annotations

import logging
import sys


def setup_logging(level: str) -> None:
    """Log `level` and above to stderr; force=True because importing paddle installs its own handler."""
    logging.basicConfig(level=level.upper(), stream=sys.stderr, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

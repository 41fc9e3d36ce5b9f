"""`python crash_after_commit.py N cloud run …`: the real `gridtokenx cloud run`, except that the consumer
exits with status 137 right after its N-th commit, before that batch's ack is published."""

from __future__ import annotations

import functools
import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from cloud.ingest import consumer
from gridtokenx.cli import main


def crash_after(limit: int, commits: int) -> None:
    if commits >= limit:
        logging.getLogger("tests.crash").warning("exiting after commit %d, before the ack", commits)
        logging.shutdown()
        os._exit(137)


if __name__ == "__main__":
    limit = int(sys.argv.pop(1))
    consumer.IngestConsumer.__init__ = functools.partialmethod(  # type: ignore[method-assign]
        consumer.IngestConsumer.__init__, after_commit=functools.partial(crash_after, limit))
    sys.argv[0] = "gridtokenx"
    main()

"""The minter: plans mint batches from unminted readings, writes them ahead, sends, confirms, reconciles."""


class MinterRefused(Exception):
    """The minter refuses to start: its configuration disagrees with the recorded settings or the
    mint on chain, or is unsafe. The one sentence is already on stderr; entry points exit with
    `code` and print nothing more. (Here, not in service.py, so CLIs can catch it without loading
    the chain libraries.)"""

    code = 2

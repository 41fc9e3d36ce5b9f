"""The minter: plans mint batches from unminted readings, writes them ahead, sends, confirms, reconciles."""

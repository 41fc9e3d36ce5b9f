"""Process plumbing shared by every component: configuration, logging, the metrics and health server,
the process runner, backoff and private files. Imports only `protocol/` and third-party packages."""

"""`gridtokenx edge inspect`: what a field technician asks of a gateway's SQLite buffer.

Read-only commands open the buffer with a `mode=ro` URI, so they are WAL readers that never block the
running agent. Only `requeue` and `purge` write, in short transactions. Everything works on a copied
buffer file with no agent and no network (except `doctor`'s broker checks).
"""

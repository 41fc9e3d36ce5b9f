"""Cloud ingest: batches from the edge → verify → validate → PostgreSQL → application ack.

Data flow, one module per step: `consumer` (MQTT shell) → `pipeline` (pure classification, using
`registry` for keys and `rules` for the validation rules) → `store` (one statement per batch) →
ack. `metrics` holds the Prometheus series; `admin` and `meters_csv` back `gridtokenx cloud meters`.
"""

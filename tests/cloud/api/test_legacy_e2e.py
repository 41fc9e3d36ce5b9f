"""Must show: a legacy reading signed as the GridTokenX simulator signs it, posted over HTTP, ends minted
(real PostgreSQL, real SVM); the same bytes then published by MQTT (real Mosquitto, a real ingest
consumer process) are acknowledged as a duplicate."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime

from gridtokenx.harness.brokers import Mosquitto
from protocol.envelopes import BatchItem
from tests.cloud.api.conftest import Api
from tests.cloud.api.support import SimMeter
from tests.cloud.ingest.support import ConsumerProcess, Gateway


def test_legacy_over_http_is_minted_and_the_same_bytes_by_mqtt_are_a_duplicate(
        api: Api, broker_factory: Callable[..., Mosquitto], tmp_path: object) -> None:
    meter = SimMeter("SIM-METER-0001")
    admin, submit, read = api.secrets["admin"], api.secrets["submit"], api.secrets["read"]
    assert api.call("POST", "/api/admin/meters", token=admin, body=meter.admin_body())[0] == 200

    when = datetime.fromtimestamp(int(time.time()) - 900, UTC)
    body, payload = meter.phase2(when, 0.75)
    status, answer, _ = api.call("POST", "/api/meters/submit-reading", token=submit, body=body)
    assert (status, answer["status"]) == (200, "accepted"), answer
    reading_id = answer["reading_id"]

    # The guide's rollout phase: minted "manually with the admin endpoint" (no minter running: this
    # API process drives the embedded SVM itself).
    status, minted, _ = api.call("POST", "/api/admin/mint", token=admin, body={"reading_ids": [reading_id],
                                                                                "wait_secs": 60})
    assert status == 200 and minted["result"]["complete"], minted
    signature = minted["result"]["signatures"][0]
    status, story, _ = api.call("GET", f"/api/readings/{reading_id}", token=read)
    assert story["state"] == "minted" and story["detail"]["signature"] == signature, story
    status, balance, _ = api.call("GET", f"/api/wallets/{meter.wallet}/balance", token=read)
    assert balance["entitled_base_units"] == 750_000_000 == balance["minted_recorded_base_units"], balance
    assert balance["on_chain_base_units"] == 750_000_000, balance
    status, batches, _ = api.call("GET", "/api/mint-batches?status=confirmed", token=read)
    assert batches["items"][0]["signature"] == signature and signature in batches["items"][0]["signatures"]
    status, page, _ = api.call("GET", f"/api/meters/{meter.meter_id}/readings?state=minted", token=read)
    assert [(i["id"], i["mint_tx_signature"]) for i in page["items"]] == [(reading_id, signature)]

    # The same bytes through the MQTT path: the consumer acks them as a duplicate.
    password = secrets.token_urlsafe(12)
    broker = broker_factory("cloud", users={"gw-api": password})
    consumer = ConsumerProcess(dsn=api.dsn, broker_url=broker.url_for("cloud-consumer"), client_id="cloud-consumer-1",
                               log_dir=api.log.parent)
    try:
        consumer.wait_ready()
        gateway = Gateway(broker.host, broker.port, "gw-api", password)
        seq = int(when.timestamp())
        acks = asyncio.run(gateway.deliver([gateway.batch("gw-api-1", [BatchItem(meter.meter_id, seq, payload)])]))
        assert [(r.meter_id, r.seq, r.status) for r in acks["gw-api-1"].results] == [
            (meter.meter_id, seq, "duplicate")]
    finally:
        consumer.close()
    # And again over HTTP as raw bytes: still the one reading.
    status, again, _ = api.call("POST", "/api/meters/submit-reading", token=submit, raw=payload,
                                content_type="application/octet-stream")
    assert (again["status"], again["reading_id"]) == ("duplicate", reading_id)

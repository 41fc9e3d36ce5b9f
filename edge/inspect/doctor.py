"""`doctor`: one line per thing that can stop data flowing at a gateway, each with OK/WARN/FAIL/SKIP and the fix.

Broker checks connect with paho under a client id of their own (never the agent's, which would kick the
agent's persistent session off the broker) and a hard timeout.
"""

from __future__ import annotations

import os
import shutil
import socket
import sqlite3
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from edge.inspect import db
from edge.inspect.filters import FilterError, parse_instant
from edge.inspect.models import Check
from edge.integrity import REPAIR, quick_check
from runtime.config import BrokerURL, ConfigError

#: Free disk below this fraction of the filesystem (or below MIN_FREE_BYTES) fails the disk check.
MIN_FREE_FRACTION = 0.05
MIN_FREE_BYTES = 100 * 1024 * 1024
#: Quota use above this fraction warns: the agent is about to drop or refuse readings.
QUOTA_WARN = 0.8
#: More than this between a meter's interval end and the gateway's receive time is suspicious.
CLOCK_TOLERANCE_S = 60.0
#: The integrity check's time bound: a larger file is reported as not fully checked, never as OK.
INTEGRITY_S = 10.0
#: $SYS topics whose value is the broker's wall clock (EMQX publishes `$SYS/brokers/<node>/datetime`).
_CLOCK_SUFFIXES = ("/datetime", "/time", "/localtime")


@dataclass(frozen=True, slots=True)
class DoctorConfig:
    buffer: Path
    edge_broker: str | None = None
    cloud_broker: str | None = None
    inspector: str | None = None
    """URL with the `edge-inspector` credentials, for $SYS; defaults to the edge broker URL."""
    quota_rows: int | None = None
    quota_bytes: int | None = None
    timeout: float = 5.0
    client_id: str = field(default_factory=lambda: f"gtx-inspect-{os.getpid()}")


#: The edge broker makes the client id the username on every listener (no session takeover), so a
#: login as the agent's account would take over the running agent's persistent session (and with a
#: clean session, wipe what is queued for it). The doctor never logs in as it on the edge broker.
AGENT_USER = "edge-agent"


def run(cfg: DoctorConfig) -> list[Check]:
    checks = _buffer_checks(cfg)
    checks.append(_edge_broker_check(cfg))
    checks.append(_broker_check("cloud broker", cfg.cloud_broker, "GRIDTOKENX_CLOUD_BROKER_URL", cfg))
    checks.append(_broker_clock(cfg))
    return checks


# --- the buffer ------------------------------------------------------------------------------------

def _buffer_checks(cfg: DoctorConfig) -> list[Check]:
    try:
        conn = db.open_readonly(cfg.buffer)
    except db.BufferUnusable as exc:
        return [Check("buffer", "FAIL", str(exc), "start the agent once to create it, or pass the right --db"),
                _disk(cfg.buffer)]
    try:
        checks = [Check("buffer", "OK", f"{cfg.buffer} (schema version {db.SCHEMA_VERSION})")]
        mode = str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower()
        checks.append(Check("WAL", "OK", "journal_mode=wal") if mode == "wal" else Check(
            "WAL", "FAIL", f"journal_mode={mode}: readers block the agent and a crash can lose more",
            "restart the agent (it sets WAL at open) or run: sqlite3 BUFFER 'PRAGMA journal_mode=WAL'"))
        checks.append(_integrity(conn, cfg.buffer))
        checks.append(_writable(cfg.buffer))
        checks.append(_disk(cfg.buffer))
        checks.append(_quota(conn, cfg))
        checks.append(_meter_clocks(conn))
        checks.append(_meter_limits(conn))
    finally:
        conn.close()
    return checks


def _integrity(conn: sqlite3.Connection, path: Path) -> Check:
    try:
        result = quick_check(conn, max_seconds=INTEGRITY_S, max_problems=5)
    except sqlite3.Error as exc:
        return Check("integrity", "FAIL", f"quick_check could not run: {exc}", f"see {REPAIR}")
    if result.ok is True:
        return Check("integrity", "OK", f"PRAGMA quick_check: ok ({result.seconds:.1f} s)")
    if result.ok is None:
        return Check("integrity", "WARN", f"quick_check did not finish within {INTEGRITY_S:g} s "
                     f"({path.stat().st_size / 2**20:.0f} MiB): not fully checked",
                     f"stop the agent and run: sqlite3 {path} 'PRAGMA quick_check'")
    return Check("integrity", "FAIL", "damaged: " + "; ".join(result.problems[:3]),
                 f"stop the agent, move the file aside and salvage it: {REPAIR}")


def _meter_limits(conn: sqlite3.Connection) -> Check:
    """Meters the agent cut off for flooding (edge/guard.py): their later messages were acked unstored."""
    try:
        rows = conn.execute("SELECT meter_id, detail, messages, bytes FROM meter_limits "
                            "ORDER BY cut_off_at DESC LIMIT 5").fetchall()
        total = int(conn.execute("SELECT count(*) FROM meter_limits").fetchone()[0])
    except sqlite3.OperationalError:  # a buffer from before the table existed
        return Check("meter limits", "SKIP", "this buffer has no meter_limits table (an older agent)")
    if not rows:
        return Check("meter limits", "OK", "no meter went over the per-meter rate/byte limits")
    named = ", ".join(f"{m} ({n:,} messages, {b / 2**20:.1f} MiB not stored: {d})" for m, d, n, b in rows)
    return Check("meter limits", "FAIL", f"{total} meter(s) cut off for flooding: {named}",
                 "find out why (tampering? a broken meter?); once fixed, re-enable its broker account: "
                 "mosquitto_ctrl -u edge-agent dynsec enableClient METER_ID (docs/edge-agent.md, \"Abusive meters\")")


def _writable(path: Path) -> Check:
    fix = f"give the agent's user write access: chown/chmod {path} and its directory {path.parent}"
    if not os.access(path, os.W_OK) or not os.access(path.parent, os.W_OK):
        return Check("writable", "FAIL", f"{path} or its directory is not writable by this user", fix)
    try:
        conn = sqlite3.connect(path.resolve().as_uri() + "?mode=rw", uri=True, isolation_level=None, timeout=2.0)
    except sqlite3.Error as exc:
        return Check("writable", "FAIL", f"cannot open for writing: {exc}", fix)
    try:
        # Take the write lock and let go at once: proves the file is writable and not stuck locked.
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
    except sqlite3.Error as exc:
        return Check("writable", "FAIL", f"write lock not granted within 2 s: {exc}",
                     "find the process holding the lock (fuser BUFFER); restart the agent")
    finally:
        conn.close()
    return Check("writable", "OK", "write lock granted and released")


def _disk(path: Path) -> Check:
    where = path.parent if path.parent.exists() else Path(".")
    usage = shutil.disk_usage(where)
    detail = f"{usage.free / 2**30:.1f} GiB free of {usage.total / 2**30:.1f} GiB on {where}"
    if usage.free < MIN_FREE_BYTES or usage.free < usage.total * MIN_FREE_FRACTION:
        return Check("disk", "FAIL", detail, "free space on this filesystem or move the buffer (--buffer) elsewhere")
    return Check("disk", "OK", detail)


def _quota(conn: sqlite3.Connection, cfg: DoctorConfig) -> Check:
    # The agent writes its quota into meta at start; flags override (e.g. for a copied file).
    meta = dict(conn.execute("SELECT key, value FROM meta WHERE key LIKE 'quota_%'").fetchall())
    max_rows = cfg.quota_rows or int(meta.get("quota_max_rows", 0)) or None
    max_bytes = cfg.quota_bytes or int(meta.get("quota_max_bytes", 0)) or None
    if max_rows is None and max_bytes is None:
        return Check("quota", "SKIP", "no quota recorded in the buffer's meta table",
                     "pass --quota-rows/--quota-bytes (the agent's --max-rows/--max-bytes)")
    # The quota limits the forwarding backlog (pending + inflight), not rejected rows kept as evidence.
    rows, size = conn.execute("SELECT count(*), total(size) FROM readings WHERE state IN ('pending', 'inflight')"
                              ).fetchone()
    parts, worst = [], 0.0
    if max_rows:
        parts.append(f"rows {rows:,}/{max_rows:,}")
        worst = max(worst, rows / max_rows)
    if max_bytes:
        parts.append(f"bytes {int(size):,}/{max_bytes:,}")
        worst = max(worst, size / max_bytes)
    detail = f"{', '.join(parts)} ({worst:.0%} used)"
    fix = "find why forwarding is stuck (inspect stats, the broker checks here) or raise --max-rows/--max-bytes"
    if worst >= 1.0:
        policy = meta.get("quota_policy", "its policy")
        return Check("quota", "FAIL", f"{detail}: the agent is dropping readings ({policy})", fix)
    if worst >= QUOTA_WARN:
        return Check("quota", "WARN", detail, fix)
    return Check("quota", "OK", detail)


def _meter_clocks(conn: sqlite3.Connection) -> Check:
    lags = [r[0] for r in conn.execute(
        "SELECT received_at - reading_end FROM readings ORDER BY id DESC LIMIT 200")]
    if not lags:
        return Check("meter clocks", "SKIP", "no buffered readings to compare")
    median = statistics.median(lags)
    detail = f"median arrival − interval end over the newest {len(lags)} readings: {_span(median)}"
    if median < -CLOCK_TOLERANCE_S:
        return Check("meter clocks", "WARN", detail + " (meters are ahead of this gateway)",
                     "check NTP on the gateway (timedatectl) and the meters' clock source")
    return Check("meter clocks", "OK", detail)


def _span(seconds: float) -> str:
    sign = "-" if seconds < 0 else "+"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if abs(seconds) >= size:
            return f"{sign}{abs(seconds) / size:.1f} {unit}"
    return f"{sign}{abs(seconds):.0f} s"


# --- the brokers -----------------------------------------------------------------------------------

class _Session:
    """A synchronous paho session: connect (with timeout), optionally collect $SYS, disconnect."""

    def __init__(self, url: BrokerURL, client_id: str, timeout: float) -> None:
        self.url, self.timeout = url, timeout
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
        if url.username:
            self.client.username_pw_set(url.username, url.password)
        if url.tls:
            self.client.tls_set()
        self.client.connect_timeout = timeout
        self.connack: ReasonCode | None = None
        self.messages: dict[str, bytes] = {}
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message

    def _on_connect(self, _c: mqtt.Client, _u: object, _f: object, rc: ReasonCode, _p: object) -> None:
        self.connack = rc

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        self.messages[msg.topic] = bytes(msg.payload)

    def connect(self) -> ReasonCode | None:
        self.client.connect(self.url.host, self.url.port, keepalive=max(5, int(self.timeout * 2)))
        deadline = time.monotonic() + self.timeout
        while self.connack is None and time.monotonic() < deadline:
            self.client.loop(timeout=0.05)
        return self.connack

    def collect(self, topic: str, seconds: float) -> None:
        self.client.subscribe(topic, qos=0)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.client.loop(timeout=0.05)
            if any(t.endswith(_CLOCK_SUFFIXES) for t in self.messages):
                return

    def close(self) -> None:
        if self.client.is_connected():
            self.client.disconnect()
            self.client.loop(timeout=0.05)
        sock = self.client.socket()
        if sock is not None:
            sock.close()


def _parse_url(name: str, url: str | None, env: str) -> BrokerURL | Check:
    if not url:
        return Check(name, "SKIP", "no URL configured", f"set {env} or pass the URL flag")
    try:
        return BrokerURL.parse(url)
    except ConfigError as exc:
        return Check(name, "FAIL", str(exc), f"fix {env}: mqtt://user:pass@host:port")


def _open(name: str, url: BrokerURL, env: str, cfg: DoctorConfig) -> _Session | Check:
    session = _Session(url, f"{cfg.client_id}-{name.split(maxsplit=1)[0]}", cfg.timeout)
    try:
        rc = session.connect()
    except OSError as exc:
        session.close()
        return Check(name, "FAIL", f"{url}: cannot connect ({exc.strerror or exc})",
                     f"start the broker or fix host:port in {env}; check the firewall")
    if rc is None:
        session.close()
        return Check(name, "FAIL", f"{url}: no CONNACK within {cfg.timeout:g} s", f"check the broker and {env}")
    if rc.is_failure:
        session.close()
        return Check(name, "FAIL", f"{url}: connection refused ({rc})",
                     f"check the username/password in {env} against the broker's password file")
    return session


def _broker_check(name: str, url_text: str | None, env: str, cfg: DoctorConfig) -> Check:
    url = _parse_url(name, url_text, env)
    if isinstance(url, Check):
        return url
    session = _open(name, url, env, cfg)
    if isinstance(session, Check):
        return session
    session.close()
    return Check(name, "OK", f"{url}: connected and authenticated")


def _edge_broker_check(cfg: DoctorConfig) -> Check:
    name, env = "edge broker", "GRIDTOKENX_EDGE_BROKER_URL"
    url = _parse_url(name, cfg.edge_broker, env)
    if isinstance(url, Check) or url.username != AGENT_USER:
        return _broker_check(name, cfg.edge_broker, env, cfg)
    if not cfg.inspector:
        try:  # reachable at all? (a TCP connect is no login: it takes nothing over)
            socket.create_connection((url.host, url.port), timeout=cfg.timeout).close()
        except OSError as exc:
            return Check(name, "FAIL", f"{url}: cannot connect ({exc.strerror or exc})",
                         f"start the broker or fix host:port in {env}; check the firewall")
        return Check(name, "SKIP", f"{url}: reachable; not logging in as {AGENT_USER} (it would take over the agent's "
                     "session: the edge broker makes the client id the username)",
                     "pass --inspector-url with the edge-inspector account, or read edge_connected in the "
                     "agent's /healthz")
    check = _broker_check(name, cfg.inspector, "GRIDTOKENX_EDGE_INSPECTOR_URL", cfg)
    if check.status == "OK":
        return Check(name, "OK", f"{check.detail} as the inspector (never as {AGENT_USER}, whose session it "
                     "would take over; the agent's own login shows in its /healthz)")
    return check


def _broker_clock(cfg: DoctorConfig) -> Check:
    name = "broker clock"
    env = "GRIDTOKENX_EDGE_INSPECTOR_URL"
    url = _parse_url(name, cfg.inspector or cfg.edge_broker, env)
    if isinstance(url, Check):
        return url
    if url.username == AGENT_USER:
        return Check(name, "SKIP", f"not logging in as {AGENT_USER} (it would take over the agent's session)",
                     "pass --inspector-url with the edge-inspector account")
    session = _open(name, url, env, cfg)
    if isinstance(session, Check):
        return Check(name, "SKIP", session.detail, session.fix)
    try:
        session.collect("$SYS/#", min(2.0, cfg.timeout))
    finally:
        session.close()
    for topic, value in session.messages.items():
        if topic.endswith(_CLOCK_SUFFIXES):
            broker_time = _parse_clock(value)
            if broker_time is not None:
                skew = time.time() - broker_time
                detail = f"gateway − broker ({topic}) = {skew:+.1f} s"
                if abs(skew) > CLOCK_TOLERANCE_S:
                    return Check(name, "FAIL", detail, "synchronise the gateway clock with NTP (timedatectl)")
                return Check(name, "OK", detail)
    if not session.messages:
        return Check(name, "SKIP", f"no $SYS messages for user {url.username!r}",
                     f"set {env} to the edge-inspector user (its ACL reads $SYS/#)")
    version = session.messages.get("$SYS/broker/version", b"").decode(errors="replace") or "this broker"
    return Check(name, "SKIP", f"{version} publishes no wall clock in $SYS ({len(session.messages)} topics read)",
                 "check the gateway's NTP sync with `timedatectl` instead")


def _parse_clock(value: bytes) -> float | None:
    try:
        return parse_instant(value.decode(errors="replace"))
    except FilterError:
        return None

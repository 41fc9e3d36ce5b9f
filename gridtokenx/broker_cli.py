"""`gridtokenx broker credentials`: password files for both brokers, service passwords, dev TLS.

Where broker identities come from, before any MQTT connection exists:

    meters.csv + <keys>/<meter_id>.key ──► edge passwd (one user per meter, its key file's password)
    service users (generated, or GRIDTOKENX_*_PASSWORD) ──► edge passwd, cloud passwd, credentials.json
    --tls ──► certs/ca.crt, server.crt, server.key (a dev CA; production brings its own)

The plan (who gets which password) is a pure function; writing files is the thin shell around it.
Passwords never go to stdout: services read them from credentials.json (0600) or from their env.
"""

from __future__ import annotations

import csv
import json
import os
import re
import secrets
import socket
import sys
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import quote

import click
import msgspec

from gridtokenx.harness.brokers import (
    BrokerError,
    generate_client_cert,
    generate_dev_certs,
    mosquitto_binary,
    render_config,
    write_password_file,
)
from protocol.keys import MeterKey
from protocol.meters_csv import SERVICE_ACCOUNTS
from protocol.reading import METER_ID_RE
from runtime.config import ConfigError, load
from runtime.files import write_atomic

EDGE_AGENT = "edge-agent"
EDGE_INSPECTOR = "edge-inspector"
SIM_FLEET = "sim-fleet"
CLOUD_CONSUMER = "cloud-consumer"
SERVICE_USERS = SERVICE_ACCOUNTS  # the registry refuses these as meter ids too (protocol/meters_csv.py)
assert frozenset({EDGE_AGENT, EDGE_INSPECTOR, SIM_FLEET, CLOUD_CONSUMER}) == SERVICE_USERS
METERS_CSV_COLUMNS = ("meter_id", "public_key", "wallet_address", "meter_type", "capacity_w")


class CredentialsError(click.ClickException):
    """Bad input to `broker credentials`; the message says what to fix."""


@dataclass(frozen=True, slots=True)
class PresetPasswords:
    """Passwords fixed from the environment (docker-compose sets them from .env); unset = generated."""

    edge_agent: str | None = field(default=None, metadata={"env": "GRIDTOKENX_EDGE_AGENT_PASSWORD"})
    edge_inspector: str | None = field(default=None, metadata={"env": "GRIDTOKENX_EDGE_INSPECTOR_PASSWORD"})
    cloud_consumer: str | None = field(default=None, metadata={"env": "GRIDTOKENX_CLOUD_CONSUMER_PASSWORD"})
    sim_fleet: str | None = field(default=None, metadata={"env": "GRIDTOKENX_SIM_FLEET_PASSWORD"})
    gateway: str | None = field(default=None, metadata={"env": "GRIDTOKENX_GATEWAY_PASSWORD"})
    """For every gateway of this run; meant for a single-gateway stack (compose). Leave unset for
    several gateways so that each gets its own password."""

    def for_user(self, user: str, *, is_gateway: bool = False) -> str | None:
        if is_gateway:
            return self.gateway
        return {EDGE_AGENT: self.edge_agent, EDGE_INSPECTOR: self.edge_inspector,
                CLOUD_CONSUMER: self.cloud_consumer, SIM_FLEET: self.sim_fleet}.get(user)


class CredentialsFile(msgspec.Struct, frozen=True):
    """DIR/credentials.json: the service users' passwords (meters keep theirs in their key files)."""

    edge: dict[str, str]
    cloud: dict[str, str]
    gateways: list[str]
    fleet_user: bool


@dataclass(frozen=True, slots=True)
class Plan:
    """Every broker user and password; edge_users includes the meters."""

    edge_users: dict[str, str]
    cloud_users: dict[str, str]
    services: CredentialsFile
    meters: int
    edge_hashes: dict[str, str] = field(default_factory=dict)
    """Meters whose password came as a Mosquitto hash."""


class MeterMqtt(msgspec.Struct, frozen=True):
    """The part of a meter key file this command reads: never the signing seed (docs/brokers.md)."""

    meter_id: str
    mqtt_password: str


#: Mosquitto password hashes: $7$ (PBKDF2-SHA512, mosquitto_passwd 2.x) and $6$ (SHA512, 1.x).
_HASH_RE = re.compile(r"^\$[67]\$(\d+\$)?[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+$")


@dataclass(frozen=True, slots=True)
class MeterCredentials:
    """Each meter's MQTT password, plain (hashed when written) or as a Mosquitto hash."""

    passwords: dict[str, str]
    hashes: dict[str, str]

    @property
    def count(self) -> int:
        return len(self.passwords) + len(self.hashes)


def read_meter_ids(csv_path: Path) -> list[str]:
    """The meter ids of meters.csv (public material), checked as broker usernames."""
    try:
        with csv_path.open(newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in METERS_CSV_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise CredentialsError(f"{csv_path} lacks column(s) {', '.join(missing)}; "
                                       f"expected {','.join(METERS_CSV_COLUMNS)} (as `gridtokenx sim keygen` writes)")
            ids = [row["meter_id"].strip() for row in reader]
    except OSError as exc:
        raise CredentialsError(f"cannot read {csv_path} ({exc.strerror}); pass --meters meters.csv") from exc
    for meter_id in ids:
        if not METER_ID_RE.match(meter_id) or meter_id in SERVICE_USERS:
            raise CredentialsError(f"meter_id {meter_id!r} in {csv_path} is not a valid broker username "
                                   f"(letters, digits, . _ -; not a service user name)")
    if len(set(ids)) != len(ids):
        raise CredentialsError(f"{csv_path} lists a meter_id twice")
    return ids


def read_password_list(path: Path) -> MeterCredentials:
    """A CSV `meter_id,mqtt_password` or `meter_id,mqtt_password_hash` (Mosquitto $7$/$6$ hashes)."""
    passwords: dict[str, str] = {}
    hashes: dict[str, str] = {}
    try:
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            fields = set(reader.fieldnames or [])
            if "meter_id" not in fields or not fields & {"mqtt_password", "mqtt_password_hash"}:
                raise CredentialsError(f"{path} needs the columns meter_id and mqtt_password or mqtt_password_hash")
            for line, row in enumerate(reader, start=2):
                meter_id = (row.get("meter_id") or "").strip()
                plain, digest = (row.get("mqtt_password") or "").strip(), (row.get("mqtt_password_hash") or "").strip()
                if digest:
                    if not _HASH_RE.match(digest):
                        raise CredentialsError(f"{path} line {line}: the hash for {meter_id} is not a Mosquitto "
                                               "password hash ($7$... from mosquitto_passwd)")
                    hashes[meter_id] = digest
                elif plain:
                    passwords[meter_id] = plain
                else:
                    raise CredentialsError(f"{path} line {line}: no password or hash for {meter_id!r}")
    except OSError as exc:
        raise CredentialsError(f"cannot read {path} ({exc.strerror})") from exc
    return MeterCredentials(passwords, hashes)


def read_meters(csv_path: Path, keys_dir: Path | None = None, passwords_file: Path | None = None) -> MeterCredentials:
    """Every meter of meters.csv with its MQTT password: from --passwords when given, else from
    <keys>/<meter_id>.key, of which only meter_id and mqtt_password are read (no signing seed needed)."""
    ids = read_meter_ids(csv_path)
    if passwords_file is not None:
        given = read_password_list(passwords_file)
        missing = [m for m in ids if m not in given.passwords and m not in given.hashes]
        if missing:
            raise CredentialsError(f"{passwords_file} has no password for meter {missing[0]}"
                                   + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
        return MeterCredentials({m: p for m, p in given.passwords.items() if m in ids},
                                {m: h for m, h in given.hashes.items() if m in ids})
    keys_dir = keys_dir if keys_dir is not None else csv_path.parent
    passwords: dict[str, str] = {}
    for meter_id in ids:
        path = keys_dir / f"{meter_id}.key"
        try:
            key = msgspec.json.decode(path.read_bytes(), type=MeterMqtt)
        except OSError as exc:
            raise CredentialsError(f"no key file for meter {meter_id} at {path}; pass --keys DIR "
                                   "(the directory `gridtokenx sim keygen --out` wrote) or --passwords FILE") from exc
        except msgspec.DecodeError as exc:
            raise CredentialsError(f"{path} is not a meter key file: {exc}") from exc
        if key.meter_id != meter_id:
            raise CredentialsError(f"{path} belongs to meter {key.meter_id}, not {meter_id}")
        passwords[meter_id] = key.mqtt_password
    return MeterCredentials(passwords, {})


def parse_gateways(text: str) -> list[str]:
    gateways = [g.strip() for g in text.split(",") if g.strip()]
    for gw in gateways:
        if not METER_ID_RE.match(gw) or gw in SERVICE_USERS:
            raise CredentialsError(f"gateway id {gw!r} is not a valid broker username "
                                   "(letters, digits, . _ -; not a service user name)")
    if len(set(gateways)) != len(gateways):
        raise CredentialsError("--gateways lists a gateway twice")
    return gateways


def plan(meters: Iterable[MeterKey] | MeterCredentials, *, gateways: list[str], fleet_user: bool,
         presets: PresetPasswords,
         previous: CredentialsFile | None = None) -> Plan:
    """Who gets which password. A service password is, in order: the env preset, the one already in
    credentials.json (so a re-run does not lock out running services), a fresh random one."""
    old = (previous.edge | previous.cloud) if previous else {}

    def password(user: str, *, is_gateway: bool = False) -> str:
        return presets.for_user(user, is_gateway=is_gateway) or old.get(user) or secrets.token_urlsafe(24)

    edge_services = {u: password(u) for u in (EDGE_AGENT, EDGE_INSPECTOR)}
    if fleet_user:
        edge_services[SIM_FLEET] = password(SIM_FLEET)
    cloud_services = {CLOUD_CONSUMER: password(CLOUD_CONSUMER)}
    cloud_services |= {gw: password(gw, is_gateway=True) for gw in gateways}
    if isinstance(meters, MeterCredentials):
        meter_users, meter_hashes = dict(meters.passwords), dict(meters.hashes)
    else:
        meter_users, meter_hashes = {m.meter_id: m.mqtt_password for m in meters}, {}
    return Plan(edge_users=edge_services | meter_users, cloud_users=cloud_services,
                services=CredentialsFile(edge=edge_services, cloud=cloud_services, gateways=gateways,
                                         fleet_user=fleet_user),
                meters=len(meter_users) + len(meter_hashes), edge_hashes=meter_hashes)


def read_previous(path: Path) -> CredentialsFile | None:
    try:
        return msgspec.json.decode(path.read_bytes(), type=CredentialsFile)
    except FileNotFoundError:
        return None
    except (OSError, msgspec.DecodeError) as exc:
        raise CredentialsError(f"{path} exists but is not a credentials file ({exc}); move it away") from exc


@dataclass(frozen=True, slots=True)
class Written:
    """What `credentials` wrote; the --json output (no passwords)."""

    out: str
    credentials_file: str
    edge_password_file: str
    cloud_password_file: str
    meters: int
    edge_service_users: list[str]
    cloud_users: list[str]
    fleet_user: bool
    tls: dict[str, str] | None


def write(p: Plan, out: Path, *, tls_hosts: tuple[str, ...] | None, client_certs: list[str] | None = None) -> Written:
    for role in ("edge", "cloud"):
        (out / role).mkdir(parents=True, exist_ok=True)
    write_password_file(out / "edge" / "passwd", p.edge_users, p.edge_hashes)
    write_password_file(out / "cloud" / "passwd", p.cloud_users)
    creds = out / "credentials.json"
    write_atomic(creds, msgspec.json.format(msgspec.json.encode(p.services), indent=2) + b"\n")
    tls: dict[str, str] | None = None
    if tls_hosts is not None:
        certs = out / "certs"
        try:
            generate_dev_certs(certs, hostname=tls_hosts[0] if tls_hosts else "localhost",
                               alt_names=tls_hosts[1:])
            for meter_id in client_certs or []:
                generate_client_cert(certs, meter_id)
        except BrokerError as exc:
            raise CredentialsError(str(exc)) from exc
        tls = {name: str(certs / f"{name}") for name in ("ca.crt", "server.crt", "server.key")}
        if client_certs:
            tls["clients"] = str(certs / "clients")
    return Written(out=str(out), credentials_file=str(creds), edge_password_file=str(out / "edge" / "passwd"),
                   cloud_password_file=str(out / "cloud" / "passwd"), meters=p.meters,
                   edge_service_users=sorted(p.services.edge), cloud_users=sorted(p.services.cloud),
                   fleet_user=p.services.fleet_user, tls=tls)


def load_presets(env: Mapping[str, str] | None = None) -> PresetPasswords:
    try:
        return load(PresetPasswords, None, env=env)
    except ConfigError as exc:
        raise CredentialsError(str(exc)) from exc


@click.group(name="broker", help="Broker credentials, ACLs and dev TLS certificates (broker-config/).")
def broker() -> None:
    pass


@broker.command("credentials")
@click.option("--meters", "meters_csv", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="meters.csv (meter_id,public_key,wallet_address,meter_type,capacity_w), "
                   "as `gridtokenx sim keygen` writes it.")
@click.option("--keys", "keys_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Directory of <meter_id>.key files holding each meter's MQTT password; only meter_id and "
                   "mqtt_password are read, a file without secret_seed is fine [default: the directory of --meters].")
@click.option("--passwords", "passwords_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Instead of key files: CSV meter_id,mqtt_password or meter_id,mqtt_password_hash "
                   "(Mosquitto $7$ hashes, e.g. from the meter vendor); no signing keys needed.")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output directory: edge/passwd, cloud/passwd, credentials.json (0600), certs/.")
@click.option("--gateways", default="", metavar="GW1,GW2",
              help="Gateway ids for the cloud broker (username = gateway_id).")
@click.option("--fleet-user", is_flag=True,
              help="Also create the edge user `sim-fleet`, which may publish for every meter. "
                   "DEV AND LOAD TESTS ONLY: never on a production gateway.")
@click.option("--tls", is_flag=True, help="Also create a dev CA and a server certificate in OUT/certs.")
@click.option("--tls-host", "tls_hosts", multiple=True, metavar="NAME",
              help="Server certificate name(s) besides 127.0.0.1 (repeatable; first is the CN) "
                   "[default: localhost].")
@click.option("--client-certs", is_flag=True,
              help="With --tls: also a client certificate per meter (CN = meter_id) in OUT/certs/clients, "
                   "for the client-certificate option of broker-config/README.md.")
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON (never passwords).")
def credentials(meters_csv: Path, keys_dir: Path | None, passwords_file: Path | None, out: Path, gateways: str,
                fleet_user: bool, tls: bool, tls_hosts: tuple[str, ...], client_certs: bool, as_json: bool) -> None:
    """Write the password files for the edge and cloud brokers.

    \b
    Edge broker users: edge-agent, edge-inspector, one per meter (password from its key file),
    and sim-fleet with --fleet-user. Cloud broker users: cloud-consumer and one per gateway.
    Service passwords come from GRIDTOKENX_{EDGE_AGENT,EDGE_INSPECTOR,CLOUD_CONSUMER,SIM_FLEET,
    GATEWAY}_PASSWORD when set, else from an existing OUT/credentials.json, else are generated.
    Mount OUT/edge/passwd and OUT/cloud/passwd as the brokers' password_file (see broker-config/).
    """
    if client_certs and not tls:
        raise CredentialsError("--client-certs needs --tls (the certificates are signed by the dev CA)")
    presets = load_presets()
    if keys_dir is not None and passwords_file is not None:
        raise CredentialsError("pass --keys or --passwords, not both")
    keys = read_meters(meters_csv, keys_dir, passwords_file)
    out.mkdir(parents=True, exist_ok=True)
    p = plan(keys, gateways=parse_gateways(gateways), fleet_user=fleet_user, presets=presets,
             previous=read_previous(out / "credentials.json"))
    written = write(p, out, tls_hosts=(tls_hosts or ("localhost",)) if tls else None,
                    client_certs=sorted(keys.passwords | keys.hashes) if client_certs else None)
    if as_json:
        click.echo(json.dumps(asdict(written), indent=2))
        return
    click.echo(f"edge broker:  {written.edge_password_file}  ({written.meters} meters + "
               f"{', '.join(written.edge_service_users)})")
    click.echo(f"cloud broker: {written.cloud_password_file}  ({', '.join(written.cloud_users)})")
    click.echo(f"service passwords: {written.credentials_file} (0600)")
    if written.tls:
        click.echo(f"dev TLS: CA {written.tls['ca.crt']}, server {written.tls['server.crt']}")
    if fleet_user:
        click.echo("warning: sim-fleet may publish for every meter; use it for load tests only", err=True)


#: Default local ports: the edge broker where meters expect it, the cloud broker next to it.
DEFAULT_PORTS = {"edge": 1883, "cloud": 1884}


def service_env(role: str, services: CredentialsFile, host: str, port: int, scheme: str = "mqtt") -> dict[str, str]:
    """One env file's text per service user of `role`'s broker: its URL with its password, for the
    shell (`set -a; . FILE; set +a`) or systemd's EnvironmentFile (never on a command line)."""

    def url(user: str, password: str) -> str:
        return f"{scheme}://{quote(user, safe='')}:{quote(password, safe='')}@{host}:{port}"

    files: dict[str, str] = {}
    if role == "edge":
        for user, var in ((EDGE_AGENT, "GRIDTOKENX_EDGE_BROKER_URL"), (EDGE_INSPECTOR, "GRIDTOKENX_EDGE_INSPECTOR_URL"),
                          (SIM_FLEET, "GRIDTOKENX_SIM_BROKER_URL")):
            if user in services.edge:
                files[user] = f"{var}={url(user, services.edge[user])}\n"
    else:
        files[CLOUD_CONSUMER] = f"GRIDTOKENX_CLOUD_BROKER_URL={url(CLOUD_CONSUMER, services.cloud[CLOUD_CONSUMER])}\n"
        for gw in services.gateways:
            files[gw] = f"GRIDTOKENX_CLOUD_BROKER_URL={url(gw, services.cloud[gw])}\nGRIDTOKENX_GATEWAY_ID={gw}\n"
    return files


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


@broker.command("run")
@click.argument("role", type=click.Choice(["edge", "cloud"]))
@click.option("--credentials", "creds", type=click.Path(file_okay=False, path_type=Path),
              default=Path(".gridtokenx/credentials"), show_default=True,
              help="The --out directory of `gridtokenx broker credentials`.")
@click.option("--port", type=int, help="Plain MQTT port [default: 1883 edge, 1884 cloud].")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--tls-port", type=int, help="Also a TLS listener, with CREDENTIALS/certs (`broker credentials --tls`).")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path),
              help="Rendered config, persistence and log [default: CREDENTIALS/ROLE/run].")
def run_broker(role: str, creds: Path, port: int | None, host: str, tls_port: int | None,
               workdir: Path | None) -> None:
    """Run the ROLE broker (edge or cloud) in the foreground: Mosquitto with the packaged
    broker-config/ROLE files, the password file of `broker credentials`, persistence in WORKDIR.

    \b
    Also writes CREDENTIALS/env/<user>.env (0600), one per service user of this broker, holding
    its URL with its password (GRIDTOKENX_EDGE_BROKER_URL, GRIDTOKENX_CLOUD_BROKER_URL, ...):
    load it with `set -a; . FILE; set +a` so that no password is on a command line.
    As root, Mosquitto keeps running as root (it could not read the 0600 password file after
    dropping to user mosquitto). Ctrl-C or SIGTERM stops it cleanly (persistence is saved).
    """
    passwd = creds / role / "passwd"
    services = read_previous(creds / "credentials.json")
    if services is None or not passwd.is_file():
        raise CredentialsError(f"no credentials in {creds}: run `gridtokenx broker credentials --meters meters.csv "
                               f"--out {creds}` first")
    port = port if port is not None else DEFAULT_PORTS[role]
    for p in (port, tls_port):
        if p is not None and not _port_free(host, p):
            raise CredentialsError(f"port {p} on {host} is in use (another broker?); pick another --port/--tls-port")
    certs = creds / "certs"
    if tls_port is not None and not (certs / "server.crt").is_file():
        raise CredentialsError(f"--tls-port needs {certs}/server.crt: run `broker credentials --tls` first")
    workdir = (workdir or creds / role / "run").resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    write_atomic(workdir / "passwd", passwd.read_bytes())
    try:
        conf = render_config(role, workdir=workdir, port=port, tls_port=tls_port,  # type: ignore[arg-type]
                             certs_dir=certs.resolve() if tls_port is not None else None, bind=host,
                             log_to_stderr=True)
        binary = mosquitto_binary()
    except BrokerError as exc:
        raise CredentialsError(str(exc)) from exc
    env_dir = creds / "env"
    env_dir.mkdir(exist_ok=True)
    client_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    for user, text in service_env(role, services, client_host, port).items():
        write_atomic(env_dir / f"{user}.env", text.encode())
    click.echo(f"{role} broker: mosquitto on {host}:{port}" + (f" (TLS {tls_port})" if tls_port else "")
               + f"; config {conf}; service URLs in {env_dir}/*.env", err=True)
    sys.stderr.flush()
    os.execv(binary, [binary, "-c", str(conf)])  # Mosquitto itself, in the foreground: its own clean shutdown

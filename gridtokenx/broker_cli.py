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
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import click
import msgspec

from gridtokenx.harness.brokers import BrokerError, generate_client_cert, generate_dev_certs, write_password_file
from protocol.keys import MeterKey, decode_key
from protocol.reading import METER_ID_RE
from runtime.config import ConfigError, load
from runtime.files import write_atomic

EDGE_AGENT = "edge-agent"
EDGE_INSPECTOR = "edge-inspector"
SIM_FLEET = "sim-fleet"
CLOUD_CONSUMER = "cloud-consumer"
SERVICE_USERS = frozenset({EDGE_AGENT, EDGE_INSPECTOR, SIM_FLEET, CLOUD_CONSUMER})
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


def read_meters(csv_path: Path, keys_dir: Path) -> list[MeterKey]:
    """The meters listed in meters.csv, each with its key file (which holds its MQTT password)."""
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
    keys: list[MeterKey] = []
    for meter_id in ids:
        if not METER_ID_RE.match(meter_id) or meter_id in SERVICE_USERS:
            raise CredentialsError(f"meter_id {meter_id!r} in {csv_path} is not a valid broker username "
                                   f"(letters, digits, . _ -; not a service user name)")
        path = keys_dir / f"{meter_id}.key"
        try:
            key = decode_key(path.read_bytes())
        except OSError as exc:
            raise CredentialsError(f"no key file for meter {meter_id} at {path}; pass --keys DIR "
                                   "(the directory `gridtokenx sim keygen --out` wrote)") from exc
        except msgspec.ValidationError as exc:
            raise CredentialsError(f"{path} is not a meter key file: {exc}") from exc
        if key.meter_id != meter_id:
            raise CredentialsError(f"{path} belongs to meter {key.meter_id}, not {meter_id}")
        keys.append(key)
    if len(set(ids)) != len(ids):
        raise CredentialsError(f"{csv_path} lists a meter_id twice")
    return keys


def parse_gateways(text: str) -> list[str]:
    gateways = [g.strip() for g in text.split(",") if g.strip()]
    for gw in gateways:
        if not METER_ID_RE.match(gw) or gw in SERVICE_USERS:
            raise CredentialsError(f"gateway id {gw!r} is not a valid broker username "
                                   "(letters, digits, . _ -; not a service user name)")
    if len(set(gateways)) != len(gateways):
        raise CredentialsError("--gateways lists a gateway twice")
    return gateways


def plan(meters: Iterable[MeterKey], *, gateways: list[str], fleet_user: bool, presets: PresetPasswords,
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
    meter_users = {m.meter_id: m.mqtt_password for m in meters}
    return Plan(edge_users=edge_services | meter_users, cloud_users=cloud_services,
                services=CredentialsFile(edge=edge_services, cloud=cloud_services, gateways=gateways,
                                         fleet_user=fleet_user),
                meters=len(meter_users))


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
    write_password_file(out / "edge" / "passwd", p.edge_users)
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
              help="Directory of <meter_id>.key files holding each meter's MQTT password "
                   "[default: the directory of --meters].")
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
def credentials(meters_csv: Path, keys_dir: Path | None, out: Path, gateways: str, fleet_user: bool,
                tls: bool, tls_hosts: tuple[str, ...], client_certs: bool, as_json: bool) -> None:
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
    keys = read_meters(meters_csv, keys_dir if keys_dir is not None else meters_csv.parent)
    out.mkdir(parents=True, exist_ok=True)
    p = plan(keys, gateways=parse_gateways(gateways), fleet_user=fleet_user, presets=presets,
             previous=read_previous(out / "credentials.json"))
    written = write(p, out, tls_hosts=(tls_hosts or ("localhost",)) if tls else None,
                    client_certs=[k.meter_id for k in keys] if client_certs else None)
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

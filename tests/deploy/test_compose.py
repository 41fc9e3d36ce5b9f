"""The docker-compose stack, checked without Docker: what can be proven from the files and the CLI.

Docker is not available on the build machine, so these tests hold the deployment files to the code
they start: every service's command resolves in the `gridtokenx` click tree with the options it uses;
every environment variable a service gets is read by that service's settings loader and parses;
.env.example documents every variable; Prometheus scrapes the ports the components listen on; the
dashboard and alerts use the metric names of docs/INTERFACES.md; brokers find the files that the
credentials one-shot writes.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import click
import pytest
import yaml
from click.testing import CliRunner

from gridtokenx.cli import root
from runtime.config import env_names, load

REPO = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
OUR_IMAGE = "gridtokenx-edge:latest"

#: The GridTokenX Phase 2 guide's .env block (Step 3: Configuration), every name.
SEED_VARS = (
    "DATABASE_URL", "SOLANA_RPC_URL", "SOLANA_WS_URL", "REGISTRY_PROGRAM_ID", "ENERGY_TOKEN_PROGRAM_ID",
    "TOKENIZATION_KWH_TO_TOKEN_RATIO", "TOKENIZATION_DECIMALS", "TOKENIZATION_AUTO_MINT_ENABLED",
    "TOKENIZATION_POLLING_INTERVAL_SECS", "TOKENIZATION_BATCH_SIZE", "TOKENIZATION_MAX_READING_KWH",
    "TOKENIZATION_READING_MAX_AGE_DAYS", "TOKENIZATION_RETRY_ENABLED", "TOKENIZATION_MAX_RETRY_ATTEMPTS",
    "TOKENIZATION_INITIAL_RETRY_DELAY_MINUTES", "HOST", "PORT",
)
#: Seed variables no loader reads, with the reason (documented in .env.example too).
UNREAD_SEED_VARS = {
    "REGISTRY_PROGRAM_ID": "the meter registry lives in PostgreSQL (meters table), not an Anchor program",
    "ENERGY_TOKEN_PROGRAM_ID": "minting uses the plain SPL Token program (DESIGN.md: Minting)",
}
#: Variables only docker-compose.yml interpolates; no Python service receives them.
COMPOSE_ONLY_VARS = {"POSTGRES_PASSWORD", "GRAFANA_ADMIN_PASSWORD", "DEMO_METERS", "DEMO_SPEED"}
#: Variables Compose itself reads from .env (no ${...} in the file).
COMPOSE_ITSELF = {"COMPOSE_PROJECT_NAME"}
#: Which settings modules a command reads its environment through, by command path prefix.
LOADERS: dict[tuple[str, ...], tuple[str, ...]] = {
    ("edge",): ("edge.settings",),
    ("cloud",): ("cloud.settings",),
    ("sim",): ("simulator.settings",),
    ("broker",): ("gridtokenx.broker_cli",),
    ("localnet",): (),
}
#: How each scraped component's listening port is configured (docs/INTERFACES.md).
METRICS_PORTS = {"edge": 9101, "cloud": 8080, "simulator": 9102}


# ── reading the compose file ───────────────────────────────────────────────────────────────────

def env_example() -> tuple[dict[str, str], set[str]]:
    """(variables set in .env.example, variables only documented there as `# NAME=`)."""
    values: dict[str, str] = {}
    documented: set[str] = set()
    for line in (REPO / ".env.example").read_text().splitlines():
        if m := re.match(r"^([A-Z][A-Z0-9_]*)=(.*)$", line):
            values[m[1]] = m[2]
        elif m := re.match(r"^#\s*([A-Z][A-Z0-9_]*)=", line):
            documented.add(m[1])
    return values, documented


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR:?message} against .env values."""
    def sub(m: re.Match[str]) -> str:
        name, op, arg = m[1], m[2], m[3]
        if name in env and (env[name] or op != ":-"):
            return env[name]
        if op == ":-":
            return arg or ""
        raise AssertionError(f"docker-compose.yml uses ${{{name}}}, which .env.example does not set")
    return re.sub(r"\$\{([A-Z][A-Z0-9_]*)(?:(:-|:\?)([^}]*))?\}", sub, text)


def ours(service: dict[str, Any]) -> bool:
    return service.get("image") == OUR_IMAGE


def service_env(name: str) -> dict[str, str]:
    env, _ = env_example()
    raw = SERVICES[name].get("environment") or {}
    assert isinstance(raw, dict), f"{name}: use the mapping form of environment"
    return {k: interpolate(str(v), env) for k, v in raw.items()}


@dataclass(frozen=True)
class Invocation:
    service: str
    argv: tuple[str, ...]
    """Arguments after `gridtokenx`, interpolated."""


def invocations(name: str) -> list[Invocation]:
    """Every `gridtokenx ...` a service runs (a list command, or `sh -ec "a && b"`)."""
    env, _ = env_example()
    command = SERVICES[name].get("command")
    if command is None:
        return []
    argv = shlex.split(command) if isinstance(command, str) else [str(a) for a in command]
    argv = [interpolate(a, env) for a in argv]
    if argv[:1] == ["sh"]:
        script = argv[-1]
        parts = [shlex.split(p) for p in re.split(r"&&|\|\||;|\n", script) if p.strip()]
    else:
        parts = [argv]
    return [Invocation(name, tuple(p[1:])) for p in parts if p and p[0] == "gridtokenx"]


def all_invocations() -> Iterator[Invocation]:
    for name, service in SERVICES.items():
        if ours(service):
            yield from invocations(name)


def resolve(argv: tuple[str, ...]) -> tuple[tuple[str, ...], click.Command]:
    """Walk the click tree: (command path, the leaf command)."""
    ctx = click.Context(root, info_name="gridtokenx")
    command: click.Command = root
    path: list[str] = []
    for word in argv:
        if word.startswith("-") or not isinstance(command, click.Group):
            break
        sub = command.get_command(ctx, word)
        assert sub is not None, f"`gridtokenx {' '.join([*path, word])}` does not exist"
        command, path = sub, [*path, word]
        ctx = click.Context(command, parent=ctx, info_name=word)
    return tuple(path), command


def loader_classes(path: tuple[str, ...]) -> list[type[Any]]:
    for prefix, modules in LOADERS.items():
        if path[: len(prefix)] == prefix:
            return [cls for module in modules for cls in settings_classes(importlib.import_module(module))]
    raise AssertionError(f"no settings loader is known for `gridtokenx {' '.join(path)}`: add it to LOADERS")


def settings_classes(module: ModuleType) -> list[type[Any]]:
    """The module's settings dataclasses: those with at least one field read from the environment."""
    return [v for v in vars(module).values()
            if isinstance(v, type) and dataclasses.is_dataclass(v) and v.__module__ == module.__name__
            and env_names(v)]


def load_from_env(cls: type[Any], env: dict[str, str]) -> Any:
    """runtime.config.load, the way the CLIs call it (YAML < environment < flags; no file here)."""
    return load(cls, None, env=dict(env))


def every_loader_var() -> set[str]:
    names: set[str] = set()
    for modules in LOADERS.values():
        for module in modules:
            for cls in settings_classes(importlib.import_module(module)):
                names |= env_names(cls)
    return names


# ── the tests ──────────────────────────────────────────────────────────────────────────────────

def test_compose_file_parses_and_holds_the_stack() -> None:
    assert {"edge-broker", "cloud-broker", "postgres", "localnet", "migrate", "cloud", "edge", "simulator",
            "prometheus", "grafana", "credentials"} <= set(SERVICES)
    for role in ("edge", "cloud"):
        assert SERVICES[f"{role}-broker"]["image"].startswith("eclipse-mosquitto:2")
    declared_volumes = set(COMPOSE.get("volumes") or {})
    for name, service in SERVICES.items():
        for dep in service.get("depends_on") or {}:
            assert dep in SERVICES, f"{name} depends on unknown service {dep}"
        for mount in service.get("volumes") or []:
            source = mount.split(":")[0]
            if source.startswith("./"):
                assert (REPO / source).exists(), f"{name} mounts {source}, which is not in the repository"
            else:
                assert source in declared_volumes, f"{name} mounts undeclared volume {source}"
    for one_shot in ("migrate", "credentials"):
        assert SERVICES[one_shot]["restart"] == "no"


@pytest.mark.parametrize("call", list(all_invocations()), ids=lambda c: f"{c.service}:{' '.join(c.argv[:3])}")
def test_every_service_command_exists_in_the_cli(call: Invocation) -> None:
    path, command = resolve(call.argv)
    result = CliRunner().invoke(root, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "not built yet" not in result.output, f"`gridtokenx {' '.join(path)}` is not built yet"
    options = {opt for p in command.params for opt in (*p.opts, *p.secondary_opts)}
    used = {word.split("=")[0] for word in call.argv[len(path):] if word.startswith("-")}
    assert used <= options, f"{call.service}: `gridtokenx {' '.join(path)}` has no option(s) {used - options}"
    # Values of choice options are among the choices (e.g. `cloud run --role all`).
    rest = list(call.argv[len(path):])
    for p in command.params:
        if isinstance(p, click.Option) and isinstance(p.type, click.Choice):
            for i, word in enumerate(rest[:-1]):
                if word in p.opts:
                    assert rest[i + 1] in p.type.choices, f"{call.service}: {word} {rest[i + 1]} is not a choice"


def test_every_python_service_runs_our_image() -> None:
    for name in ("credentials", "migrate", "localnet", "cloud", "edge", "simulator"):
        assert ours(SERVICES[name]), name
        assert SERVICES[name]["build"] == "."
        assert invocations(name), f"{name} runs no gridtokenx command"


@pytest.mark.parametrize("name", [n for n, s in SERVICES.items() if ours(s)])
def test_every_env_var_a_service_gets_is_read_by_its_settings_loader(name: str) -> None:
    env = service_env(name)
    if not env:
        return
    readers: set[str] = set()
    classes: list[type[Any]] = []
    for call in invocations(name):
        path, _ = resolve(call.argv)
        for cls in loader_classes(path):
            classes.append(cls)
            readers |= env_names(cls)
    assert set(env) <= readers, f"{name} sets {sorted(set(env) - readers)}, which no settings loader reads"
    for cls in classes:  # and the values parse (a typo in .env.example fails here, not at `up`)
        load_from_env(cls, env)


def test_env_example_documents_every_variable() -> None:
    values, documented = env_example()
    listed = set(values) | documented
    missing = every_loader_var() - listed
    assert not missing, f".env.example lacks {sorted(missing)} (read by a settings loader)"
    for var in SEED_VARS:
        assert var in values, f".env.example lacks the GridTokenX Phase 2 guide's {var}"
    compose_text = (REPO / "docker-compose.yml").read_text()
    loader_vars = every_loader_var()
    for var in values:
        if var in COMPOSE_ITSELF:
            continue
        if var in UNREAD_SEED_VARS:
            assert var not in loader_vars, f"{var} is read now: drop it from UNREAD_SEED_VARS"
            continue
        assert var in loader_vars or var in COMPOSE_ONLY_VARS, f".env.example sets {var}, which nothing reads"
        assert f"${{{var}" in compose_text, f".env.example sets {var}, but docker-compose.yml never passes it"


def test_prometheus_scrapes_the_ports_components_listen_on() -> None:
    from cloud.settings import CloudSettings
    from edge.settings import EdgeSettings

    config = yaml.safe_load((REPO / "deploy" / "prometheus" / "prometheus.yml").read_text())
    targets = {t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    scraped = {host: int(port) for host, port in (t.rsplit(":", 1) for t in targets) if host in SERVICES}
    assert scraped == METRICS_PORTS

    edge = load_from_env(EdgeSettings, service_env("edge"))
    assert (edge.metrics_host, edge.metrics_port) == ("0.0.0.0", scraped["edge"])
    cloud = load_from_env(CloudSettings, service_env("cloud"))
    assert (cloud.host, cloud.port) == ("0.0.0.0", scraped["cloud"])
    (sim_run,) = invocations("simulator")
    argv = list(sim_run.argv)
    assert int(argv[argv.index("--metrics-port") + 1]) == scraped["simulator"]
    for name, port in scraped.items():
        published = {str(p).split(":")[-1] for p in SERVICES[name].get("ports", [])}
        assert str(port) in published, f"{name} listens on {port} but does not publish it"
    rule_files = [Path(f).name for f in config["rule_files"]]
    for rule_file in rule_files:
        assert (REPO / "deploy" / "prometheus" / rule_file).exists()


def metric_names(exprs: list[str]) -> set[str]:
    names: set[str] = set()
    for expr in exprs:
        for name in re.findall(r"\bgridtokenx_[a-z0-9_]+", expr):
            names.add(re.sub(r"_(bucket|sum|count)$", "", name))
    return names


def test_dashboard_and_alerts_use_the_interface_metric_names() -> None:
    interfaces = (REPO / "docs" / "INTERFACES.md").read_text()
    known = set(re.findall(r"`(gridtokenx_[a-z0-9_]+)", interfaces))
    dashboard = json.loads((REPO / "deploy" / "grafana" / "dashboards" / "gridtokenx.json").read_text())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    dash_exprs = [t["expr"] for p in panels for t in p["targets"]]
    alerts = yaml.safe_load((REPO / "deploy" / "prometheus" / "alerts.yml").read_text())
    alert_exprs = [r["expr"] for g in alerts["groups"] for r in g["rules"]]
    for source, exprs in (("dashboard", dash_exprs), ("alerts", alert_exprs)):
        unknown = metric_names(exprs) - known
        assert not unknown, f"{source} uses {sorted(unknown)}, not in docs/INTERFACES.md"
    titles = " | ".join(p["title"].lower() for p in panels)
    for topic in ("throughput per hop", "buffer depth", "unminted backlog", "success rate", "latency",
                  "retry queue", "rejections by reason"):
        assert topic in titles, f"the dashboard has no panel for {topic}"
    datasources = yaml.safe_load(
        (REPO / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())["datasources"]
    uids = {d["uid"] for d in datasources}
    assert {t["datasource"]["uid"] for p in panels for t in p["targets"]} <= uids
    provider = yaml.safe_load((REPO / "deploy/grafana/provisioning/dashboards/gridtokenx.yml").read_text())
    dashboards_dir = provider["providers"][0]["options"]["path"]
    assert any(m.endswith(f":{dashboards_dir}:ro") and m.startswith("./deploy/grafana/dashboards")
               for m in SERVICES["grafana"]["volumes"])
    # The GridTokenX Phase 2 guide's four alert thresholds are all there.
    joined = "\n".join(alert_exprs)
    for expr in ("gridtokenx_unminted_backlog > 100", "gridtokenx_minting_success_rate < 95",
                 "gridtokenx_minting_latency_avg_seconds > 120", "gridtokenx_retry_queue_size > 50"):
        assert expr in joined


def test_brokers_find_the_files_the_credentials_one_shot_writes() -> None:
    (creds,) = [c for c in invocations("credentials") if c.argv[:2] == ("broker", "credentials")]
    out = Path(creds.argv[creds.argv.index("--out") + 1])
    assert "--tls" in creds.argv  # the configs declare a TLS listener: its certificates must exist
    volume = next(m.split(":")[0] for m in SERVICES["credentials"]["volumes"] if m.split(":")[1] == str(out))
    for role in ("edge", "cloud"):
        broker = SERVICES[f"{role}-broker"]
        mounts = {m.split(":")[1]: m.split(":")[0] for m in broker["volumes"]}
        assert mounts["/mosquitto/config"] == f"./broker-config/{role}"
        conf = (REPO / "broker-config" / role / "mosquitto.conf").read_text()
        files = dict(re.findall(r"^(password_file|acl_file|cafile|certfile|keyfile)\s+(\S+)", conf, re.M))
        assert files["acl_file"] == "/mosquitto/config/acl"
        # What the CLI writes under OUT: edge/passwd, cloud/passwd, certs/{ca.crt,server.crt,server.key}.
        expected = {"password_file": f"{role}/passwd", "cafile": "certs/ca.crt",
                    "certfile": "certs/server.crt", "keyfile": "certs/server.key"}
        for key, relative in expected.items():
            mount = next(m for m in mounts if files[key].startswith(m + "/") and m != "/mosquitto/config")
            assert mounts[mount] == volume, f"{role}-broker's {key} is not on the credentials volume"
            assert files[key][len(mount) + 1:] == relative, f"{role}-broker's {key} is not where the CLI writes"


def test_dockerfile_copies_everything_the_services_need() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    copied = {m.split()[0] for m in re.findall(r"^COPY\s+(?!--)(.+)$", dockerfile, re.M)}
    pyproject = (REPO / "pyproject.toml").read_text()
    packages = re.findall(r'"(\w+)\*"', pyproject.split("[tool.setuptools.packages.find]")[1].split("[")[0])
    assert set(packages) <= copied, f"packages not copied: {set(packages) - copied}"
    assert {"migrations", "broker-config", "pyproject.toml"} <= copied  # found next to the packages
    ignored = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()}
    assert not (copied & ignored)
    for source in copied:
        assert (REPO / source).exists(), source


def test_compose_file_is_valid_for_compose_v1_and_v2(tmp_path: Path) -> None:
    """Only top-level keys both Compose v1 (1.29, Debian's docker-compose) and v2 accept: no `name:`.
    When docker-compose v1 is installed, its own schema check runs too."""
    top = {k for k in COMPOSE if not k.startswith("x-")}
    assert top <= {"version", "services", "volumes", "networks", "configs", "secrets"}, top
    compose_v1 = shutil.which("docker-compose")
    if compose_v1 is None:
        return
    values, _ = env_example()
    (tmp_path / ".env").write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    result = subprocess.run([compose_v1, "--project-directory", str(REPO), "--env-file", str(tmp_path / ".env"),
                             "-f", str(REPO / "docker-compose.yml"), "config", "-q"],
                            capture_output=True, text=True, check=False, timeout=60)
    assert result.returncode == 0, result.stderr


def test_env_example_numbers_are_the_code_defaults() -> None:
    """A tuning number in .env.example is the default it claims to show (COMMIT_MAX said 1000, code 500)."""
    from cloud.settings import CloudSettings
    from edge.settings import EdgeSettings

    values, _ = env_example()
    for settings in (EdgeSettings, CloudSettings):
        for f in dataclasses.fields(settings):
            name = f.metadata.get("env")
            if name in values and f.type in ("int", "float", int, float) and "PORT" not in name:
                assert float(values[name]) == float(f.default), f"{name}: .env.example {values[name]}, code {f.default}"

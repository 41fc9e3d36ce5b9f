"""Run Mosquitto locally with the project's `broker-config/` files: demo, tests, bench, chaos.

The config files are written for the eclipse-mosquitto image; `render_config` rewrites their
listeners and paths for a local run on a free port, and drops the TLS listener unless asked.
`hash_password` writes Mosquitto's own PBKDF2-SHA512 ($7$) format, so thousands of meter
credentials are generated without calling `mosquitto_passwd` per meter.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import ipaddress
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from gridtokenx.errors import GridtokenxError
from runtime import assets
from runtime.files import write_atomic

Role = Literal["edge", "cloud"]

#: broker-config/ of the checkout, or its copy in the installed wheel (runtime/assets.py).
CONFIG_ROOT = assets.locate("broker-config")
PBKDF2_ITERATIONS = 101  # mosquitto_passwd's default
#: The commented-out client-certificate lines of the TLS listener in broker-config/*/mosquitto.conf.
CLIENT_CERT_LINES = ("# require_certificate true", "# use_identity_as_username true")


class BrokerError(GridtokenxError):
    pass


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    salt = salt or secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, PBKDF2_ITERATIONS, 64)
    return f"$7${PBKDF2_ITERATIONS}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def write_password_file(path: Path, users: Mapping[str, str], hashed: Mapping[str, str] | None = None) -> None:
    """Mosquitto's password file: `users` (plain passwords, hashed here) and `hashed` (already in
    Mosquitto's `$7$` format, e.g. handed over by a meter vendor)."""
    lines = [f"{user}:{hash_password(pw)}\n" for user, pw in users.items()]
    lines += [f"{user}:{digest}\n" for user, digest in (hashed or {}).items()]
    write_atomic(path, "".join(lines))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def mosquitto_binary() -> str:
    found = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
    if not found:
        raise BrokerError("mosquitto is not installed: run `apt-get install mosquitto` (or `./scripts/setup`)")
    return found


#: Where Debian (and so this machine) and the eclipse-mosquitto image keep the dynamic-security plugin.
DYNSEC_PLUGINS = ("/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so",
                  "/usr/lib/aarch64-linux-gnu/mosquitto_dynamic_security.so", "/usr/lib/mosquitto_dynamic_security.so")


#: The plugin's state before the agent disabled anyone: no clients; every check it does not know
#: about is deferred to password_file/acl_file.
DYNSEC_EMPTY = ('{"defaultACLAccess": {"publishClientSend": false, "publishClientReceive": false, '
                '"subscribe": false, "unsubscribe": false}, "clients": [], "groups": [], "roles": []}\n')


def dynsec_plugin() -> str:
    for path in DYNSEC_PLUGINS:
        if Path(path).exists():
            return path
    raise BrokerError("Mosquitto's dynamic-security plugin is not installed (it ships with Debian's "
                      "`mosquitto` package): run `apt-get install mosquitto`")


def render_config(role: Role, *, workdir: Path, port: int, tls_port: int | None = None,
                  certs_dir: Path | None = None, config_root: Path = CONFIG_ROOT,
                  client_certs: bool = False, bind: str = "127.0.0.1", log_to_stderr: bool = False,
                  fleet_port: int | None = None) -> Path:
    """Write a local copy of broker-config/{role}/mosquitto.conf into `workdir`; returns its path.

    `client_certs` turns on the documented option of the TLS listener: a client certificate signed
    by the CA is required, and its CN is the username (meters with secure elements). `bind` is the
    listeners' address; `log_to_stderr` also logs to the terminal (`gridtokenx broker run`).

    `fleet_port` adds a DEV-ONLY listener where clients choose their own client ids: the edge config
    makes the client id the username on every listener (no session takeover), so the simulator's
    `sim-fleet` user can multiplex meters over several connections only there. Never on a gateway."""
    source = (config_root / role / "mosquitto.conf").read_text().splitlines()
    data_dir = workdir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    replacements = {
        "plugin_opt_config_file": str(data_dir / "dynamic-security.json"),
        "password_file": str(workdir / "passwd"),
        "acl_file": str(workdir / "acl"),
        "persistence_location": f"{data_dir}/",
    }
    if certs_dir is not None:
        replacements |= {"cafile": str(certs_dir / "ca.crt"), "certfile": str(certs_dir / "server.crt"),
                         "keyfile": str(certs_dir / "server.key")}
    out: list[str] = []
    in_tls = False
    for line in source:
        words = line.split()
        if words[:1] == ["listener"]:
            in_tls = words[1] == "8883"
            if in_tls:
                if tls_port is None:
                    continue
                out.append(f"listener {tls_port} {bind}")
            else:
                out.append(f"listener {port} {bind}")
            continue
        if in_tls and tls_port is None:
            continue  # the TLS listener's own settings (listeners come last in broker-config/)
        if in_tls and client_certs and line.strip() in CLIENT_CERT_LINES:
            out.append(line.strip().lstrip("# "))
            continue
        if words[:1] == ["plugin"]:
            out.append(f"plugin {dynsec_plugin()}")
            continue
        if words and words[0] in replacements:
            out.append(f"{words[0]} {replacements[words[0]]}")
            continue
        if words[:1] == ["log_type"] and words[1:2] == ["notice"]:
            continue
        out.append(line)
    if fleet_port is not None:
        out += ["# DEV ONLY: several sim-fleet connections (their own client ids); see render_config.",
                f"listener {fleet_port} 127.0.0.1", "protocol mqtt"]
    out.append(f"log_dest file {workdir / 'mosquitto.log'}")
    if log_to_stderr:
        out.append("log_dest stderr")
    if os.geteuid() == 0:
        # Started as root, mosquitto would switch to user "mosquitto" and lose access to workdir.
        out.append("user root")
    dynsec = data_dir / "dynamic-security.json"
    if any(line.split()[:1] == ["plugin"] for line in out) and not dynsec.exists():
        dynsec.write_text(DYNSEC_EMPTY)
    shutil.copy(config_root / role / "acl", workdir / "acl")
    conf = workdir / "mosquitto.conf"
    conf.write_text("\n".join(out) + "\n")
    return conf


@dataclass
class Mosquitto:
    """A local Mosquitto process with the project's config for `role`; restartable on the same port."""

    role: Role
    workdir: Path
    users: dict[str, str]
    port: int = 0
    tls_port: int | None = None
    certs_dir: Path | None = None
    host: str = "127.0.0.1"
    password_file: Path | None = None
    client_certs: bool = False
    fleet_port: int | None = None
    """A dev-only listener with client ids of the client's choosing (render_config); 0 = a free port."""
    """TLS listener requires a client certificate whose CN is the username (see render_config)."""
    """A password file to use as is (e.g. from `gridtokenx broker credentials`); `users` then only
    needs the users a caller wants URLs for, and users missing from the file are appended."""
    config_root: Path = CONFIG_ROOT
    """Where {role}/mosquitto.conf and {role}/acl come from (tests may start a variant)."""
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port = free_port()
        if self.fleet_port == 0:
            self.fleet_port = free_port()

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def fleet_url(self) -> str:
        """The dev-only listener for several connections of one user (the simulator's --connections)."""
        if self.fleet_port is None:
            raise BrokerError("this broker was started without a fleet listener (fleet_port=0)")
        return f"mqtt://{self.host}:{self.fleet_port}"

    def url_for(self, user: str) -> str:
        return f"mqtt://{user}:{self.users[user]}@{self.host}:{self.port}"

    def add_users(self, users: Mapping[str, str]) -> None:
        """Add credentials; a running broker reloads its password file (SIGHUP)."""
        self.users.update(users)
        self._write_passwd()
        if self.running:
            assert self._proc is not None
            self._proc.send_signal(signal.SIGHUP)
            time.sleep(0.2)

    def _write_passwd(self) -> None:
        target = self.workdir / "passwd"
        if self.password_file is None:
            write_password_file(target, self.users)
            return
        given = self.password_file.read_text()
        present = {line.split(":", 1)[0] for line in given.splitlines() if ":" in line}
        extra = "".join(f"{u}:{hash_password(pw)}\n" for u, pw in self.users.items() if u not in present)
        write_atomic(target, given + ("" if given.endswith("\n") or not given else "\n") + extra)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self, timeout: float = 10.0) -> None:
        conf = render_config(self.role, workdir=self.workdir, port=self.port, tls_port=self.tls_port,
                             certs_dir=self.certs_dir, client_certs=self.client_certs,
                             config_root=self.config_root, fleet_port=self.fleet_port)
        self._write_passwd()
        self._proc = subprocess.Popen(
            [mosquitto_binary(), "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode() if self._proc.stderr else ""
                log = (self.workdir / "mosquitto.log")
                tail = log.read_text()[-2000:] if log.exists() else ""
                raise BrokerError(f"mosquitto ({self.role}) exited at start: {err}{tail}")
            with contextlib.suppress(OSError), socket.create_connection((self.host, self.port), timeout=0.2):
                return
            time.sleep(0.02)
        self.stop()
        raise BrokerError(f"mosquitto ({self.role}) did not listen on port {self.port} within {timeout}s")

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful stop (SIGTERM): persistence is saved."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._proc.stderr:
            self._proc.stderr.close()
        self._proc = None

    def kill(self) -> None:
        """SIGKILL: what a power cut does to the broker."""
        if self._proc is not None and self._proc.poll() is None:
            os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait()
        self.stop()

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> Mosquitto:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def generate_dev_certs(out: Path, *, hostname: str = "localhost", days: int = 825,
                       alt_names: Sequence[str] = ()) -> Path:
    """A dev CA and a server certificate for `hostname`, 127.0.0.1 and `alt_names` (DNS names or IP
    addresses, e.g. the compose service names), with openssl. An existing CA is reused, so clients
    that already trust it keep working. Returns `out`."""
    out.mkdir(parents=True, exist_ok=True)
    if not shutil.which("openssl"):
        raise BrokerError("openssl is not installed: run `apt-get install openssl`")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=out, check=True, capture_output=True)

    if not (out / "ca.crt").exists():
        run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
            "-days", str(days), "-subj", "/CN=GridTokenX dev CA")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
        "-subj", f"/CN={hostname}")
    ext = out / "server.ext"
    sans = [f"DNS:{hostname}", "IP:127.0.0.1"]
    for name in alt_names:
        kind = "IP" if _is_ip(name) else "DNS"
        if f"{kind}:{name}" not in sans:
            sans.append(f"{kind}:{name}")
    ext.write_text(f"subjectAltName={','.join(sans)}\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.crt", "-days", str(days), "-extfile", "server.ext")
    for name in ("ca.key", "server.key"):
        (out / name).chmod(0o600)
    return out


def generate_client_cert(certs_dir: Path, common_name: str, *, days: int = 825) -> tuple[Path, Path]:
    """A client certificate (CN = the broker username, e.g. a meter_id) signed by the dev CA in
    `certs_dir` (from generate_dev_certs). Returns (certificate, key) under certs_dir/clients/.
    A real secure element keeps its key inside and sends a CSR instead; this is for development."""
    if not (certs_dir / "ca.key").exists():
        raise BrokerError(f"no dev CA in {certs_dir}: generate it first (generate_dev_certs, or --tls)")
    out = certs_dir / "clients"
    out.mkdir(parents=True, exist_ok=True)
    key, csr, crt = out / f"{common_name}.key", out / f"{common_name}.csr", out / f"{common_name}.crt"
    ext = out / "client.ext"
    ext.write_text("extendedKeyUsage=clientAuth\n")
    for args in (
        ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={common_name}"],
        ["x509", "-req", "-in", str(csr), "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
         "-out", str(crt), "-days", str(days), "-extfile", str(ext)],
    ):
        subprocess.run(["openssl", *args], cwd=certs_dir, check=True, capture_output=True)
    key.chmod(0o600)
    csr.unlink()
    return crt, key


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True

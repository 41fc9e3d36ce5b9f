"""Meter keys on disk: `sim keygen` writes them, `sim run` reads them.

One `DIR/<meter_id>.key` per meter (mode 0600, a `protocol.keys.MeterKey` JSON) and `DIR/meters.csv`,
the registry export that `gridtokenx cloud meters import` and the broker credential generator read.
Keys are never regenerated: keygen only adds meters that do not exist yet.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from pathlib import Path

import base58
from solders.keypair import Keypair

from protocol import meters_csv
from protocol.keys import MeterKey, decode_key, encode_key
from protocol.meters_csv import MeterRow
from protocol.wire import secret_key_from_seed
from runtime.files import write_atomic
from simulator.errors import SimulatorError
from simulator.models import CAPACITY_RANGE_W, MIX, MeterType, unit

CSV_NAME = "meters.csv"
KEY_SUFFIX = ".key"


class KeyStoreError(SimulatorError):
    """The key directory is missing, unreadable or inconsistent; the message says how to fix it."""


def meter_id_for(index: int) -> str:
    return f"M-{index:05d}"


def type_plan(types: str) -> list[MeterType]:
    """`mix` or a comma list of meter types; raises KeyStoreError for an unknown name."""
    if types == "mix":
        return []
    plan: list[MeterType] = []
    for name in types.split(","):
        try:
            plan.append(MeterType(name.strip()))
        except ValueError as exc:
            known = ", ".join(t.value for t in MeterType)
            raise KeyStoreError(f"unknown meter type {name!r}: use mix or a comma list of {known}") from exc
    return plan


def _type_for(index: int, plan: list[MeterType], seed: int) -> MeterType:
    if plan:
        return plan[(index - 1) % len(plan)]
    u, acc = unit(seed, index, 0x7E), 0.0
    for meter_type, share in MIX:
        acc += share
        if u < acc:
            return meter_type
    return MIX[-1][0]


def new_key(index: int, *, plan: list[MeterType], seed: int | None) -> MeterKey:
    """A fresh meter key. With `seed` it is derived deterministically (dev and tests only)."""
    meter_id = meter_id_for(index)

    def material(label: str, size: int) -> bytes:
        if seed is None:
            return secrets.token_bytes(size)
        return hashlib.sha256(f"gridtokenx-sim/{seed}/{label}/{meter_id}".encode()).digest()[:size]

    signing_seed = material("ed25519", 32)  # drawn once: the key file must hold the seed of this public key
    public, _ = secret_key_from_seed(signing_seed)
    meter_type = _type_for(index, plan, seed or 0)
    low, high = CAPACITY_RANGE_W[meter_type]
    capacity = low + int(unit(seed or secrets.randbits(32), index, 0xCA) * (high - low)) // 100 * 100
    return MeterKey(
        meter_id=meter_id,
        secret_seed=base58.b58encode(signing_seed).decode(),
        public_key=base58.b58encode(public).decode(),
        mqtt_password=base58.b58encode(material("mqtt", 18)).decode(),
        wallet_address=str(Keypair.from_seed(material("wallet", 32)).pubkey()),
        meter_type=meter_type.value,
        capacity_w=capacity,
    )


def load_keys(directory: Path) -> list[MeterKey]:
    """Every key in `directory`, sorted by meter_id."""
    if not directory.is_dir():
        raise KeyStoreError(f"key directory {directory} does not exist: create it with "
                            f"`gridtokenx sim keygen --meters N --out {directory}`")
    keys: list[MeterKey] = []
    for path in sorted(directory.glob(f"*{KEY_SUFFIX}")):
        try:
            key = decode_key(path.read_bytes())
        except (OSError, ValueError) as exc:
            raise KeyStoreError(f"key file {path} is unreadable or not a meter key ({exc}); "
                                "restore it from backup or remove it") from exc
        if path.name != f"{key.meter_id}{KEY_SUFFIX}":
            raise KeyStoreError(f"key file {path} holds meter {key.meter_id}; rename it to "
                                f"{key.meter_id}{KEY_SUFFIX}")
        keys.append(key)
    if not keys:
        raise KeyStoreError(f"no meter keys in {directory}: run `gridtokenx sim keygen --meters N --out {directory}`")
    return keys


def registry_csv(keys: list[MeterKey]) -> bytes:
    return meters_csv.render(MeterRow(k.meter_id, k.public_key, k.wallet_address, k.meter_type, k.capacity_w)
                             for k in keys).encode()


@dataclass(frozen=True, slots=True)
class KeygenResult:
    directory: Path
    created: list[str]
    existing: int

    @property
    def total(self) -> int:
        return self.existing + len(self.created)


def keygen(directory: Path, meters: int, *, types: str = "mix", seed: int | None = None) -> KeygenResult:
    """Make sure `directory` holds keys for meters 1..`meters`; never touches an existing key file."""
    if meters < 1:
        raise KeyStoreError("--meters must be at least 1")
    plan = type_plan(types)
    directory.mkdir(parents=True, exist_ok=True)
    existing = {p.name.removesuffix(KEY_SUFFIX) for p in directory.glob(f"*{KEY_SUFFIX}")}
    created: list[str] = []
    for index in range(1, meters + 1):
        meter_id = meter_id_for(index)
        if meter_id in existing:
            continue
        path = directory / f"{meter_id}{KEY_SUFFIX}"
        # O_EXCL: a key file that appeared meanwhile (another keygen) is never overwritten.
        write_atomic(path, encode_key(new_key(index, plan=plan, seed=seed)), exclusive=True)
        created.append(meter_id)
    write_atomic(directory / CSV_NAME, registry_csv(load_keys(directory)), mode=0o644)
    return KeygenResult(directory=directory, created=created, existing=len(existing))

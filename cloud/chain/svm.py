"""A small Solana "cluster" over LiteSVM: the chain behind the embedded backend and `gridtokenx localnet`.

LiteSVM executes transactions with the real SPL Token, ATA and Memo programs but has no notion of
block height, blockhash lifetimes, signature history beyond its cache, or persistence. This module
adds exactly what the minter's safety argument depends on, with the semantics of a real cluster:

- every blockhash has a `last_valid_block_height`; a transaction whose blockhash is unknown or past
  it is refused (`BlockhashNotFound`), so "expired and no status" really means "can never land";
- a signature is processed at most once, forever (not only while LiteSVM's cache remembers it);
- each processed transaction (success or on-chain error) keeps slot, block time, memo and error;
- with a journal file, every account a transaction wrote and its history record are appended and
  fsynced *before* the caller learns the result, and replayed at start: a process that dies keeps
  the chain it reported (this is how the embedded backend survives a minter restart).
"""

from __future__ import annotations

import base64
import json
import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from solders.account import Account
from solders.hash import Hash
from solders.litesvm import LiteSVM
from solders.pubkey import Pubkey
from solders.transaction import VersionedTransaction
from solders.transaction_metadata import FailedTransactionMetadata

from cloud.errors import CloudError

MEMO_PROGRAM_ID = Pubkey.from_string("Memo1UhkJRfHyvLMcVucJwxXeuD728EqVDDwQDxFMNo")
DEFAULT_BLOCKHASH_TTL = 150  # slots, as on mainnet (MAX_PROCESSING_AGE)
COMPACT_AFTER_LINES = 5000  # journal lines at start beyond which it is rewritten as a snapshot
RECENT_FEE_SLOTS = 150  # getRecentPrioritizationFees looks this many slots back, as a real node does
COMPUTE_BUDGET_PROGRAM = "ComputeBudget111111111111111111111111111111"


class TxRefused(CloudError):
    """The transaction was not processed at all (bad blockhash, already processed, bad signature)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class TxRecord:
    signature: str
    slot: int
    block_time: int
    err: str | None
    memo: str | None
    signers: tuple[str, ...]
    logs: tuple[str, ...] = ()


def memo_of(tx: VersionedTransaction) -> str | None:
    msg = tx.message
    keys = msg.account_keys
    for ix in msg.instructions:
        if keys[ix.program_id_index] == MEMO_PROGRAM_ID:
            return bytes(ix.data).decode("utf-8", errors="replace")
    return None


class SvmLedger:
    """Thread-safe wrapper; localnet serves it from an executor, the embedded backend calls it inline."""

    def __init__(self, *, journal: Path | None = None, blockhash_ttl: int = DEFAULT_BLOCKHASH_TTL,
                 slot_secs: float = 0.4) -> None:
        self.slot_secs = slot_secs
        self._last_tick = time.monotonic()
        self.svm = LiteSVM().with_blockhash_check(False).with_transaction_history(0)
        self.blockhash_ttl = blockhash_ttl
        self.block_height = 0
        self.slot = 1
        self._blockhashes: dict[Hash, int] = {}
        self._latest = self.svm.latest_blockhash()
        self.history: dict[str, TxRecord] = {}
        self._by_address: dict[str, list[str]] = {}
        self._lock = threading.RLock()
        self._journal: IO[str] | None = None
        self._latest_accounts: dict[str, list[object]] = {}
        # (slot, micro-lamports per unit, writable accounts) of recently landed transactions.
        self.recent_prices: deque[tuple[int, int, frozenset[str]]] = deque(maxlen=4 * RECENT_FEE_SLOTS)
        if journal is not None:
            journal.parent.mkdir(parents=True, exist_ok=True)
            if journal.exists() and self._replay(journal) > COMPACT_AFTER_LINES:
                self._compact(journal)
            self._journal = journal.open("a", encoding="utf-8")
        # Hashes handed out before a restart are gone: jump past their validity so nobody waits.
        self.block_height += self.blockhash_ttl + 1
        self._new_block()

    def close(self) -> None:
        if self._journal is not None:
            self._journal.close()
            self._journal = None

    # -- blocks -----------------------------------------------------------------------------
    def _new_block(self) -> None:
        self.slot += 1
        self.svm.warp_to_slot(self.slot)
        self.svm.expire_blockhash()
        self._latest = self.svm.latest_blockhash()
        self._blockhashes[self._latest] = self.block_height + self.blockhash_ttl
        # Forget hashes that can never be valid again; keeps the map small on long runs.
        if len(self._blockhashes) > 4 * self.blockhash_ttl + 16:
            self._blockhashes = {h: v for h, v in self._blockhashes.items() if v >= self.block_height}

    def advance(self, blocks: int = 1) -> None:
        with self._lock:
            for _ in range(blocks):
                self.block_height += 1
                self._new_block()

    def tick(self) -> None:
        """Advance one block per `slot_secs` of wall time, so unlanded blockhashes expire on time."""
        with self._lock:
            now = time.monotonic()
            blocks = int((now - self._last_tick) / self.slot_secs)
            if blocks <= 0:
                return
            self._last_tick += blocks * self.slot_secs
            if blocks > 2:
                self.block_height += blocks - 1  # skipped blocks need no hash of their own
                self.slot += blocks - 1
            self.advance(1)

    def latest_blockhash(self) -> tuple[Hash, int]:
        self.tick()
        with self._lock:
            return self._latest, self._blockhashes[self._latest]

    def blockhash_valid(self, blockhash: Hash) -> bool:
        with self._lock:
            last_valid = self._blockhashes.get(blockhash)
            return last_valid is not None and last_valid >= self.block_height

    # -- transactions -----------------------------------------------------------------------
    def process(self, tx: VersionedTransaction, *, simulate_only: bool = False) -> TxRecord:
        """Execute `tx` once. Raises TxRefused when it cannot land; returns the record (err set when the
        transaction landed but failed, as a real cluster charges the fee and keeps the status)."""
        self.tick()
        with self._lock:
            sig = str(tx.signatures[0])
            if sig in self.history:
                raise TxRefused("AlreadyProcessed")
            if not self.blockhash_valid(tx.message.recent_blockhash):
                raise TxRefused("BlockhashNotFound")
            if simulate_only:
                sim = self.svm.simulate_transaction(tx)
                if isinstance(sim, FailedTransactionMetadata):
                    raise TxRefused(f"simulation failed: {sim.err()}")
                return TxRecord(sig, self.slot, int(time.time()), None, memo_of(tx), ())
            result = self.svm.send_transaction(tx)
            if isinstance(result, FailedTransactionMetadata):
                err = str(result.err())
                if not _landed_with_error(err):
                    raise TxRefused(err)
                logs: tuple[str, ...] = tuple(result.meta().logs())
            else:
                err = None
                logs = tuple(result.logs())
            msg = tx.message
            signers = tuple(str(k) for i, k in enumerate(msg.account_keys) if msg.is_signer(i))
            record = TxRecord(sig, self.slot, int(time.time()), err, memo_of(tx), signers, logs)
            writable = _writable_keys(tx)
            self.recent_prices.append((self.slot, unit_price(tx), frozenset(str(k) for k in writable)))
            self._remember(record)
            self.block_height += 1
            self._new_block()
            # Journaled with the height after this block: a restart then expires every hash issued so far.
            self._append({"t": "tx", "record": _record_json(record),
                          "accounts": self._accounts_json(writable)})
            return record

    def simulate_units(self, tx: VersionedTransaction) -> int:
        """Compute units `tx` consumes, executed against current state without keeping anything."""
        self.tick()
        with self._lock:
            sim = self.svm.simulate_transaction(tx)
            if isinstance(sim, FailedTransactionMetadata):
                raise TxRefused(f"simulation failed: {sim.err()}")
            return int(sim.meta().compute_units_consumed())

    def prioritization_fees(self, accounts: list[str]) -> list[tuple[int, int]]:
        """(slot, lowest price paid by a landed transaction writing one of `accounts`) per recent slot,
        0 for slots without one; like getRecentPrioritizationFees."""
        with self._lock:
            want = set(accounts)
            first = max(1, self.slot - RECENT_FEE_SLOTS + 1)
            by_slot: dict[int, int] = {}
            for slot, price, writable in self.recent_prices:
                if slot >= first and (not want or want & writable):
                    by_slot[slot] = min(price, by_slot.get(slot, price))
            return [(s, by_slot.get(s, 0)) for s in range(first, self.slot + 1)]

    def _remember(self, record: TxRecord) -> None:
        self.history[record.signature] = record
        for signer in record.signers:
            self._by_address.setdefault(signer, []).append(record.signature)

    def signatures_for(self, address: str, *, before: str | None = None, limit: int = 1000) -> list[TxRecord]:
        """Newest first, like getSignaturesForAddress (only signer addresses are indexed)."""
        with self._lock:
            sigs = self._by_address.get(address, [])
            end = len(sigs)
            if before is not None and before in self.history:
                end = sigs.index(before)
            return [self.history[s] for s in reversed(sigs[max(0, end - limit):end])]

    # -- accounts ---------------------------------------------------------------------------
    def get_account(self, address: Pubkey) -> Account | None:
        with self._lock:
            return self.svm.get_account(address)

    def airdrop(self, address: Pubkey, lamports: int) -> str:
        with self._lock:
            result = self.svm.airdrop(address, lamports)
            if isinstance(result, FailedTransactionMetadata):
                raise TxRefused(str(result.err()))
            sig = str(result.signature())
            self._append({"t": "airdrop", "accounts": self._accounts_json([address])})
            return sig

    # -- journal ----------------------------------------------------------------------------
    def _accounts_json(self, keys: list[Pubkey]) -> dict[str, list[object]]:
        out: dict[str, list[object]] = {}
        for key in keys:
            acc = self.svm.get_account(key)
            if acc is None:
                continue
            out[str(key)] = [acc.lamports, str(acc.owner), base64.b64encode(bytes(acc.data)).decode(),
                             acc.executable]
        return out

    def _append(self, entry: dict[str, object]) -> None:
        if self._journal is None:
            return
        entry["height"] = self.block_height
        entry["slot"] = self.slot
        entry["wall"] = time.time()
        self._journal.write(json.dumps(entry, separators=(",", ":")) + "\n")
        self._journal.flush()
        os.fsync(self._journal.fileno())

    def _replay(self, path: Path) -> int:
        """Load the journal; returns its line count. A torn last line (a crash mid-write, before the
        caller could learn of that transaction) is cut off so later appends start on a clean line."""
        lines = 0
        good_bytes = 0
        with path.open("rb") as fh:
            for raw in fh:
                if not raw.endswith(b"\n"):
                    break
                entry = json.loads(raw)
                good_bytes += len(raw)
                lines += 1
                for key, (lamports, owner, data, executable) in entry["accounts"].items():
                    self._latest_accounts[key] = [lamports, owner, data, executable]
                    self.svm.set_account(Pubkey.from_string(key), Account(
                        lamports=lamports, data=base64.b64decode(data), owner=Pubkey.from_string(owner),
                        executable=executable))
                if entry["t"] == "tx":
                    self._remember(_record_from_json(entry["record"]))
                # Wall-clock ticks after the last entry also issued hashes: count them as blocks too.
                ticks = max(0, int((time.time() - float(entry.get("wall", time.time()))) / self.slot_secs)) + 1
                self.block_height = max(self.block_height, int(entry["height"]) + ticks)
                self.slot = max(self.slot, int(entry["slot"]) + ticks)
        if good_bytes < path.stat().st_size:
            with path.open("r+b") as fh:
                fh.truncate(good_bytes)
                os.fsync(fh.fileno())
        return lines

    def _compact(self, path: Path) -> None:
        """Rewrite the journal as one snapshot of the latest accounts plus the signature history."""
        tmp = path.with_suffix(".compact")
        stamp = {"height": self.block_height, "slot": self.slot, "wall": time.time()}
        with tmp.open("w", encoding="utf-8") as fh:
            fh.write(json.dumps({"t": "snapshot", "accounts": self._latest_accounts, **stamp},
                                separators=(",", ":")) + "\n")
            for record in self.history.values():
                fh.write(json.dumps({"t": "tx", "record": _record_json(record), "accounts": {}, **stamp},
                                    separators=(",", ":")) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def unit_price(tx: VersionedTransaction) -> int:
    """The SetComputeUnitPrice a transaction carries (micro-lamports per unit), 0 without one."""
    msg = tx.message
    keys = msg.account_keys
    for ix in msg.instructions:
        data = bytes(ix.data)
        if str(keys[ix.program_id_index]) == COMPUTE_BUDGET_PROGRAM and data[:1] == b"\x03" and len(data) >= 9:
            return int.from_bytes(data[1:9], "little")
    return 0


def _writable_keys(tx: VersionedTransaction) -> list[Pubkey]:
    """Static account keys the transaction may write, from the message header (legacy and v0 alike;
    accounts loaded through lookup tables are not journaled: the minter does not use them)."""
    msg = tx.message
    h = msg.header
    keys = list(msg.account_keys)
    signers = h.num_required_signatures
    out = keys[:signers - h.num_readonly_signed_accounts]
    out += keys[signers:len(keys) - h.num_readonly_unsigned_accounts]
    return out


def _landed_with_error(err: str) -> bool:
    """Instruction errors land (fee charged, status kept); sanitisation/signature/blockhash ones do not."""
    return "InstructionError" in err


def _record_json(r: TxRecord) -> dict[str, object]:
    return {"sig": r.signature, "slot": r.slot, "time": r.block_time, "err": r.err, "memo": r.memo,
            "signers": list(r.signers)}


def _record_from_json(d: dict[str, object]) -> TxRecord:
    signers = d["signers"]
    assert isinstance(signers, list)
    return TxRecord(str(d["sig"]), int(str(d["slot"])), int(str(d["time"])),
                    None if d["err"] is None else str(d["err"]),
                    None if d["memo"] is None else str(d["memo"]), tuple(str(s) for s in signers))

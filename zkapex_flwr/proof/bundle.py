"""The proof bundle a client returns in the unlearning round: versioned, compact, strictly parsed.

Wire format: ``b"ZKAPEXB2"`` · u32 header length · UTF-8 JSON header · payload. The header names the
circuit, the layout, the request, and its proofs: for each proof, what each of its step slots holds —
``[block, step, columns]`` or ``null`` for padding — and where its raw proof bytes and public instances
lie in the payload. Instances are 32-byte field
elements, little-endian, as ezkl writes them. No weight, Fisher or data value is in a bundle; the
``meta`` field (prover timings) is informational and never trusted by the verifier.
"""
from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass, field

import numpy as np

MAGIC = b"ZKAPEXB3"
VERSION = 3
FIELD_MODULUS = 21888242871839275222246405745257275088548364400416034343698204186575808495617
MAX_BUNDLE_BYTES = 256 * 1024 * 1024
MAX_PROOF_BYTES = 1 << 20
MAX_RESIDUALS = 1 << 22


class MalformedBundle(ValueError):
    """The bytes are not a well-formed bundle (schema, size or type)."""


def felt_to_int(felt: bytes) -> int:
    v = int.from_bytes(felt, "little")
    return v - FIELD_MODULUS if v > FIELD_MODULUS // 2 else v


def int_to_felt(v: int) -> bytes:
    return (int(v) % FIELD_MODULUS).to_bytes(32, "little")


def _pack_residuals(instances: list[bytes], slots: int) -> tuple[bytes, int]:
    n2 = len(instances) // slots
    n = n2 // 2
    values = []
    for s in range(slots):
        part = instances[s * n2:(s + 1) * n2]
        if any(felt_to_int(f) for f in part[n:]):
            raise ValueError("cannot encode nonzero masked outputs: the verifier requires them to be zero")
        values += [felt_to_int(f) for f in part[:n]]
    if any(not -(2**63) <= v < 2**63 for v in values):
        raise ValueError("a residual does not fit in 64 bits")
    return zlib.compress(np.asarray(values, dtype="<i8").tobytes(), 6), len(values)


@dataclass(frozen=True)
class Slot:
    """What one step slot of a proof proves: step ``step`` of ``block``'s chain, using Ĥ ``columns``."""

    block: int
    step: int
    columns: tuple[int, ...]


@dataclass
class Proof:
    slots: list[Slot | None]  # None = padding slot
    proof: bytes
    instances: list[bytes]    # 32-byte little-endian field elements (all of them, as ezkl verifies)


@dataclass
class ProofBundle:
    circuit_id: str
    layout_digest: str
    request_id: str
    proofs: list[Proof]
    meta: dict = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        payload = bytearray()
        proofs = []
        for pr in self.proofs:
            p_off = len(payload)
            payload += pr.proof
            if any(len(f) != 32 for f in pr.instances) or len(pr.instances) % (2 * len(pr.slots)):
                raise ValueError("instances must be 32-byte field elements, two halves per step slot")
            packed, count = _pack_residuals(pr.instances, len(pr.slots))
            i_off = len(payload)
            payload += packed
            slots = [None if sl is None else [int(sl.block), int(sl.step), [int(c) for c in sl.columns]]
                     for sl in pr.slots]
            proofs.append({"slots": slots, "proof": [p_off, len(pr.proof)], "res": [i_off, len(packed), count]})
        header = json.dumps({"version": VERSION, "circuit_id": self.circuit_id, "layout": self.layout_digest,
                             "request_id": self.request_id, "proofs": proofs, "meta": self.meta},
                            separators=(",", ":")).encode()
        return MAGIC + struct.pack("<I", len(header)) + header + bytes(payload)

    @property
    def proof_bytes(self) -> int:
        return sum(len(pr.proof) for pr in self.proofs)

    @staticmethod
    def from_bytes(data: bytes, max_bytes: int = MAX_BUNDLE_BYTES) -> "ProofBundle":
        """Parse strictly; every defect raises :class:`MalformedBundle` naming it."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise MalformedBundle(f"bundle must be bytes, got {type(data).__name__}")
        data = bytes(data)
        if len(data) > max_bytes:
            raise MalformedBundle(f"bundle of {len(data)} bytes exceeds the limit of {max_bytes}")
        if len(data) < len(MAGIC) + 4 or not data.startswith(MAGIC):
            raise MalformedBundle("not a zkapex proof bundle (bad magic)")
        (hlen,) = struct.unpack_from("<I", data, len(MAGIC))
        start = len(MAGIC) + 4
        if start + hlen > len(data):
            raise MalformedBundle(f"header length {hlen} runs past the end of the bundle")
        try:
            header = json.loads(data[start:start + hlen].decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise MalformedBundle(f"header is not JSON: {err}") from None
        payload = memoryview(data)[start + hlen:]
        if not isinstance(header, dict):
            raise MalformedBundle("header is not an object")
        if header.get("version") != VERSION:
            raise MalformedBundle(f"unsupported bundle version {header.get('version')!r} (expected {VERSION})")
        for key in ("circuit_id", "layout", "request_id"):
            if not isinstance(header.get(key), str):
                raise MalformedBundle(f"header field '{key}' missing or not a string")
        raw_proofs = header.get("proofs")
        if not isinstance(raw_proofs, list):
            raise MalformedBundle("header field 'proofs' missing or not a list")

        def span(val, what, unit=1):
            if (not isinstance(val, list) or len(val) != 2 or not all(isinstance(v, int) and not isinstance(v, bool)
                                                                     for v in val)):
                raise MalformedBundle(f"{what} must be [offset, length] integers")
            off, n = val
            if off < 0 or n < 0 or off + n * unit > len(payload):
                raise MalformedBundle(f"{what} [{off}, {n}] lies outside the payload of {len(payload)} bytes")
            return off, n

        def integer(v):
            return isinstance(v, int) and not isinstance(v, bool)

        proofs = []
        for pi, rp in enumerate(raw_proofs):
            if not isinstance(rp, dict):
                raise MalformedBundle(f"proof {pi} is not an object")
            raw_slots = rp.get("slots")
            if not isinstance(raw_slots, list) or not raw_slots:
                raise MalformedBundle(f"proof {pi}: 'slots' must be a non-empty list")
            slots: list[Slot | None] = []
            for si, rs in enumerate(raw_slots):
                if rs is None:
                    slots.append(None)
                    continue
                if (not isinstance(rs, list) or len(rs) != 3 or not integer(rs[0]) or not integer(rs[1])
                        or not isinstance(rs[2], list) or not rs[2] or not all(integer(c) for c in rs[2])):
                    raise MalformedBundle(f"proof {pi} slot {si} must be null or [block, step, [columns…]]")
                if rs[0] < 0 or rs[1] < 0 or any(c < 0 for c in rs[2]):
                    raise MalformedBundle(f"proof {pi} slot {si} has a negative block, step or column")
                slots.append(Slot(rs[0], rs[1], tuple(rs[2])))
            p_off, p_len = span(rp.get("proof"), f"proof {pi} bytes")
            if p_len > MAX_PROOF_BYTES:
                raise MalformedBundle(f"proof {pi} of {p_len} bytes is oversized (limit {MAX_PROOF_BYTES})")
            res = rp.get("res")
            if not isinstance(res, list) or len(res) != 3 or not all(integer(v) for v in res):
                raise MalformedBundle(f"proof {pi}: 'res' must be [offset, length, count] integers")
            r_off, r_len = span(res[:2], f"proof {pi} residuals")
            count = res[2]
            if count <= 0 or count % len(slots) or count > MAX_RESIDUALS:
                raise MalformedBundle(f"proof {pi}: residual count {count} does not fit {len(slots)} slots")
            try:
                inflater = zlib.decompressobj()
                raw = inflater.decompress(bytes(payload[r_off:r_off + r_len]), 8 * count + 1)
            except zlib.error as err:
                raise MalformedBundle(f"proof {pi}: residuals are not zlib data: {err}") from None
            if len(raw) != 8 * count or inflater.unconsumed_tail:
                raise MalformedBundle(f"proof {pi}: residuals decode to {len(raw)} bytes, expected {8 * count}")
            values = np.frombuffer(raw, dtype="<i8").tolist()
            n = count // len(slots)
            zero = int_to_felt(0)
            inst = []
            for s_i in range(len(slots)):
                inst += [int_to_felt(v) for v in values[s_i * n:(s_i + 1) * n]] + [zero] * n
            proofs.append(Proof(slots, bytes(payload[p_off:p_off + p_len]), inst))
        meta = header.get("meta", {})
        return ProofBundle(header["circuit_id"], header["layout"], header["request_id"], proofs,
                           meta if isinstance(meta, dict) else {})

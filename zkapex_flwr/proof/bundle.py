"""The proof bundle a client returns in the unlearning round: versioned, compact, strictly parsed.

Wire format: ``b"ZKAPEXB3"`` · u32 header length · UTF-8 JSON header · payload. The header names the
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
HEADER_FIELDS = frozenset({"version", "circuit_id", "layout", "request_id", "proofs", "meta"})
PROOF_FIELDS = frozenset({"slots", "proof", "res"})


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
        part = instances[s * n2 : (s + 1) * n2]
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
    instances: list[bytes]  # 32-byte little-endian field elements (all of them, as ezkl verifies)


@dataclass(frozen=True)
class BundleHeader:
    """What a bundle's header claims, checked for form; its proofs are not decoded yet."""

    circuit_id: str
    layout_digest: str
    request_id: str
    meta: dict
    raw_proofs: list  # the header's proof entries, as parsed JSON
    payload: memoryview  # the bytes after the header


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
            slots = [
                None if sl is None else [int(sl.block), int(sl.step), [int(c) for c in sl.columns]] for sl in pr.slots
            ]
            proofs.append({"slots": slots, "proof": [p_off, len(pr.proof)], "res": [i_off, len(packed), count]})
        header = json.dumps(
            {
                "version": VERSION,
                "circuit_id": self.circuit_id,
                "layout": self.layout_digest,
                "request_id": self.request_id,
                "proofs": proofs,
                "meta": self.meta,
            },
            separators=(",", ":"),
        ).encode()
        return MAGIC + struct.pack("<I", len(header)) + header + bytes(payload)

    @property
    def proof_bytes(self) -> int:
        return sum(len(pr.proof) for pr in self.proofs)

    @staticmethod
    def from_bytes(
        data: bytes, max_bytes: int = MAX_BUNDLE_BYTES, *, residuals: int | None = None, max_proofs: int | None = None
    ) -> ProofBundle:
        """Parse strictly; every defect raises :class:`MalformedBundle` naming it.

        The encoding is canonical up to the header's JSON formatting, the zlib stream and ``meta``: every
        header field is known, proofs and their residuals are laid out in order without gaps or overlaps
        and the payload ends with the last proof. ``residuals`` (the circuit's residual count per proof)
        and ``max_proofs`` (how many proofs the request can need) let a verifier refuse a hostile bundle
        before decoding all of it. It is :meth:`parse_header` then :meth:`from_header`.
        """
        return ProofBundle.from_header(
            ProofBundle.parse_header(data, max_bytes), residuals=residuals, max_proofs=max_proofs
        )

    @staticmethod
    def parse_header(data: bytes, max_bytes: int = MAX_BUNDLE_BYTES) -> BundleHeader:
        """The bundle's header, checked, with no proof decoded yet.

        A verifier judges what the header claims (which circuit, which request) before it decodes any
        proof with that circuit's sizes: a bundle of another circuit is then named for its circuit, and
        no bundle is decoded beyond the sizes of the verifier's own circuit.
        """
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise MalformedBundle(f"bundle must be bytes, got {type(data).__name__}")
        data = bytes(data)
        if len(data) > max_bytes:
            raise MalformedBundle(f"bundle of {len(data)} bytes exceeds the limit of {max_bytes}")
        if len(data) < len(MAGIC) + 4 or not data.startswith(MAGIC):
            raise MalformedBundle(f"not a zkapex proof bundle (bad magic {data[: len(MAGIC)]!r}, expected {MAGIC!r})")
        (hlen,) = struct.unpack_from("<I", data, len(MAGIC))
        start = len(MAGIC) + 4
        if start + hlen > len(data):
            raise MalformedBundle(f"header length {hlen} runs past the end of the bundle ({len(data)} bytes)")

        def no_constant(name):
            raise MalformedBundle(f"header holds the non-finite number {name}")

        try:
            header = json.loads(data[start : start + hlen].decode("utf-8"), parse_constant=no_constant)
        except (UnicodeDecodeError, ValueError) as err:  # JSONDecodeError, int too long for int()
            if isinstance(err, MalformedBundle):
                raise
            raise MalformedBundle(f"header is not JSON: {err}") from None
        except RecursionError:
            raise MalformedBundle("header is not JSON: nested too deeply") from None
        payload = memoryview(data)[start + hlen :]
        if not isinstance(header, dict):
            raise MalformedBundle(f"header is not an object but a JSON {type(header).__name__}")
        unknown = sorted(set(header) - HEADER_FIELDS)
        if unknown:
            raise MalformedBundle(f"header has unknown field(s) {short_repr(unknown)}")
        version = header.get("version")
        if type(version) is not int or version != VERSION:
            raise MalformedBundle(f"unsupported bundle version {short_repr(version)} (expected {VERSION})")
        for key in ("circuit_id", "layout", "request_id"):
            if not isinstance(header.get(key), str):
                raise MalformedBundle(f"header field '{key}' missing or not a string: {short_repr(header.get(key))}")
        meta = header.get("meta")
        if not isinstance(meta, dict):
            raise MalformedBundle(f"header field 'meta' missing or not an object: {short_repr(meta)}")
        raw_proofs = header.get("proofs")
        if not isinstance(raw_proofs, list):
            raise MalformedBundle(f"header field 'proofs' missing or not a list: {short_repr(raw_proofs)}")
        return BundleHeader(header["circuit_id"], header["layout"], header["request_id"], meta, raw_proofs, payload)

    @staticmethod
    def from_header(head: BundleHeader, *, residuals: int | None = None, max_proofs: int | None = None) -> ProofBundle:
        """The bundle whose header :meth:`parse_header` returned: its proofs decoded, with the limits of
        :meth:`from_bytes`."""
        raw_proofs, payload = head.raw_proofs, head.payload
        if max_proofs is not None and len(raw_proofs) > max_proofs:
            raise MalformedBundle(f"bundle has {len(raw_proofs)} proofs, the request needs at most {max_proofs}")

        def integer(v):
            return isinstance(v, int) and not isinstance(v, bool)

        cursor = 0  # where the next proof's bytes must start

        def span(val, what, must_start):
            if not isinstance(val, list) or len(val) != 2 or not all(integer(v) for v in val):
                raise MalformedBundle(f"{what} must be [offset, length] integers, got {short_repr(val)}")
            off, n = val
            if off < 0 or n < 0 or off + n > len(payload):
                raise MalformedBundle(
                    f"{what} [{short_repr(off)}, {short_repr(n)}] lies outside the payload of {len(payload)} bytes"
                )
            if off != must_start:
                raise MalformedBundle(
                    f"{what} start at {off}, expected {must_start} (proofs and residuals lie "
                    "in order, without gaps or overlaps)"
                )
            return off, n

        proofs = []
        for pi, rp in enumerate(raw_proofs):
            if not isinstance(rp, dict):
                raise MalformedBundle(f"proof {pi} is not an object: {short_repr(rp)}")
            unknown = sorted(set(rp) - PROOF_FIELDS)
            if unknown:
                raise MalformedBundle(f"proof {pi} has unknown field(s) {short_repr(unknown)}")
            raw_slots = rp.get("slots")
            if not isinstance(raw_slots, list) or not raw_slots:
                raise MalformedBundle(f"proof {pi}: 'slots' must be a non-empty list, got {short_repr(raw_slots)}")
            slots: list[Slot | None] = []
            for si, rs in enumerate(raw_slots):
                if rs is None:
                    slots.append(None)
                    continue
                if (
                    not isinstance(rs, list)
                    or len(rs) != 3
                    or not integer(rs[0])
                    or not integer(rs[1])
                    or not isinstance(rs[2], list)
                    or not rs[2]
                    or not all(integer(c) for c in rs[2])
                ):
                    raise MalformedBundle(
                        f"proof {pi} slot {si} must be null or [block, step, [columns…]], got {short_repr(rs)}"
                    )
                if rs[0] < 0 or rs[1] < 0 or any(c < 0 for c in rs[2]):
                    raise MalformedBundle(
                        f"proof {pi} slot {si} has a negative block, step or column: {short_repr(rs)}"
                    )
                slots.append(Slot(rs[0], rs[1], tuple(rs[2])))
            p_off, p_len = span(rp.get("proof"), f"proof {pi} bytes", cursor)
            if p_len > MAX_PROOF_BYTES:
                raise MalformedBundle(f"proof {pi} of {p_len} bytes is oversized (limit {MAX_PROOF_BYTES})")
            res = rp.get("res")
            if not isinstance(res, list) or len(res) != 3 or not all(integer(v) for v in res):
                raise MalformedBundle(
                    f"proof {pi}: 'res' must be [offset, length, count] integers, got {short_repr(res)}"
                )
            r_off, r_len = span(res[:2], f"proof {pi} residuals", p_off + p_len)
            cursor = r_off + r_len
            count = res[2]
            if count <= 0 or count % len(slots) or count > MAX_RESIDUALS:
                raise MalformedBundle(f"proof {pi}: residual count {short_repr(count)} does not fit {len(slots)} slots")
            if residuals is not None and count != residuals:
                raise MalformedBundle(f"proof {pi}: residual count {count}, the circuit has {residuals}")
            try:
                inflater = zlib.decompressobj()
                raw = inflater.decompress(bytes(payload[r_off : r_off + r_len]), 8 * count + 1)
            except zlib.error as err:
                raise MalformedBundle(f"proof {pi}: residuals are not zlib data: {err}") from None
            if len(raw) != 8 * count or inflater.unconsumed_tail:
                more = "more than " if inflater.unconsumed_tail else ""
                raise MalformedBundle(f"proof {pi}: residuals decode to {more}{len(raw)} bytes, expected {8 * count}")
            if not inflater.eof or inflater.unused_data:
                raise MalformedBundle(f"proof {pi}: residuals are a truncated zlib stream or have trailing bytes")
            values = np.frombuffer(raw, dtype="<i8").tolist()
            n = count // len(slots)
            zero = int_to_felt(0)
            inst = []
            for s_i in range(len(slots)):
                inst += [int_to_felt(v) for v in values[s_i * n : (s_i + 1) * n]] + [zero] * n
            proofs.append(Proof(slots, bytes(payload[p_off : p_off + p_len]), inst))
        if cursor != len(payload):
            raise MalformedBundle(f"payload has {len(payload) - cursor} trailing bytes after the last proof")
        return ProofBundle(head.circuit_id, head.layout_digest, head.request_id, proofs, head.meta)


def short_repr(value, limit: int = 80) -> str:
    """A value for an error message, cut to ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


CIRCUIT_ID_HEX = 32  # CircuitSpec's circuit id: the first 32 hex digits of a SHA-256


def circuit_id_problem(circuit_id) -> str | None:
    """Why ``circuit_id`` cannot be a circuit id (``None`` when it has the form of one)."""
    if not isinstance(circuit_id, str):
        return f"circuit id must be a string, got {type(circuit_id).__name__}"
    if len(circuit_id) != CIRCUIT_ID_HEX or any(c not in "0123456789abcdef" for c in circuit_id):
        return f"circuit id {short_repr(circuit_id)} is not {CIRCUIT_ID_HEX} lowercase hex digits"
    return None

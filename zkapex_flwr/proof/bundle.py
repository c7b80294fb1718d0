"""The proof bundle a client returns in the unlearning round: versioned, compact, strictly parsed.

Wire format: ``b"ZKAPEXB1"`` · u32 header length · UTF-8 JSON header · payload. The header names the
circuit, the layout, the request, and per touched block its proof steps (the Ĥ columns each step uses
and where its raw proof bytes and public instances lie in the payload). Instances are 32-byte field
elements, little-endian, as ezkl writes them. No weight, Fisher or data value is in a bundle; the
``meta`` field (prover timings) is informational and never trusted by the verifier.
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field

MAGIC = b"ZKAPEXB1"
VERSION = 1
MAX_BUNDLE_BYTES = 256 * 1024 * 1024
MAX_PROOF_BYTES = 1 << 20


class MalformedBundle(ValueError):
    """The bytes are not a well-formed bundle (schema, size or type)."""


@dataclass
class StepProof:
    columns: list[int]
    proof: bytes
    instances: list[bytes]  # 32-byte little-endian field elements


@dataclass
class BlockProof:
    block: int
    steps: list[StepProof]


@dataclass
class ProofBundle:
    circuit_id: str
    layout_digest: str
    request_id: str
    blocks: list[BlockProof]
    meta: dict = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        payload = bytearray()
        blocks = []
        for bp in self.blocks:
            steps = []
            for st in bp.steps:
                p_off = len(payload)
                payload += st.proof
                i_off = len(payload)
                for felt in st.instances:
                    if len(felt) != 32:
                        raise ValueError("instances must be 32-byte field elements")
                    payload += felt
                steps.append({"cols": [int(c) for c in st.columns], "proof": [p_off, len(st.proof)],
                              "inst": [i_off, len(st.instances)]})
            blocks.append({"block": int(bp.block), "steps": steps})
        header = json.dumps({"version": VERSION, "circuit_id": self.circuit_id, "layout": self.layout_digest,
                             "request_id": self.request_id, "blocks": blocks, "meta": self.meta},
                            separators=(",", ":")).encode()
        return MAGIC + struct.pack("<I", len(header)) + header + bytes(payload)

    @property
    def proof_bytes(self) -> int:
        return sum(len(st.proof) for bp in self.blocks for st in bp.steps)

    @property
    def num_steps(self) -> int:
        return sum(len(bp.steps) for bp in self.blocks)

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
        raw_blocks = header.get("blocks")
        if not isinstance(raw_blocks, list):
            raise MalformedBundle("header field 'blocks' missing or not a list")

        def span(val, what, unit=1):
            if (not isinstance(val, list) or len(val) != 2 or not all(isinstance(v, int) and not isinstance(v, bool)
                                                                     for v in val)):
                raise MalformedBundle(f"{what} must be [offset, length] integers")
            off, n = val
            if off < 0 or n < 0 or off + n * unit > len(payload):
                raise MalformedBundle(f"{what} [{off}, {n}] lies outside the payload of {len(payload)} bytes")
            return off, n

        blocks = []
        for bi, rb in enumerate(raw_blocks):
            if not isinstance(rb, dict) or not isinstance(rb.get("block"), int) or isinstance(rb.get("block"), bool):
                raise MalformedBundle(f"block entry {bi} has no integer 'block'")
            steps_raw = rb.get("steps")
            if not isinstance(steps_raw, list) or not steps_raw:
                raise MalformedBundle(f"block {rb['block']} has no proof steps")
            steps = []
            for si, rs in enumerate(steps_raw):
                if not isinstance(rs, dict):
                    raise MalformedBundle(f"block {rb['block']} step {si} is not an object")
                cols = rs.get("cols")
                if not isinstance(cols, list) or not cols or not all(isinstance(c, int) and not isinstance(c, bool)
                                                                     for c in cols):
                    raise MalformedBundle(f"block {rb['block']} step {si}: 'cols' must be a non-empty integer list")
                p_off, p_len = span(rs.get("proof"), f"block {rb['block']} step {si} proof")
                if p_len > MAX_PROOF_BYTES:
                    raise MalformedBundle(f"block {rb['block']} step {si}: proof of {p_len} bytes is oversized")
                i_off, i_n = span(rs.get("inst"), f"block {rb['block']} step {si} instances", unit=32)
                inst = [bytes(payload[i_off + 32 * j:i_off + 32 * (j + 1)]) for j in range(i_n)]
                steps.append(StepProof(cols, bytes(payload[p_off:p_off + p_len]), inst))
            blocks.append(BlockProof(int(rb["block"]), steps))
        meta = header.get("meta", {})
        return ProofBundle(header["circuit_id"], header["layout"], header["request_id"], blocks,
                           meta if isinstance(meta, dict) else {})

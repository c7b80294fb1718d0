"""The witness of one block's certificate, split into proof steps of at most K masked columns.

For block b with personalized weights θp (d), normalised inverse Fisher Ĥ = C⁻¹/max|C⁻¹| and mask M
(k entries), the Group-OBS update is θu = θp − Ĥ[:, M] y with y = Ĥ[M, M]⁻¹ θp_M, so θu_M = 0.
All values are fixed-point at scale S (multiples of 2^-S) so that the committed values and the
circuit's arithmetic agree exactly. When k > K the columns are split into ⌈k/K⌉ chunks and the
update is applied as a chain θ_0 = θp → θ_1 → … → θu, one proof step per chunk:
θ_c = round(θ_{c−1} − Ĥ[:, M_c] y_c); the final step also zeroes θu_M (the circuit's m ⊙ θ_out
output, with m = 0 on intermediate steps). The chain telescopes to the single certificate.

A proof *unit* is a group of G consecutive blocks proven together in wide inputs (G = 1: one block):
the unit's positions are the union of its blocks' masked local positions, and a step's "stripe" j is
column p_j of every block's Ĥ, concatenated (docs/research/grouped-packing.md). The positions are proven
in sorted order, K per step (:func:`unit_columns`): the chain of a unit with k_u positions has exactly
⌈k_u/K⌉ steps, which the verifier derives from the mask alone. With G > 1 each step carries the
selector s[g, j] = [block g masks column p_j]; the circuit applies y ⊙ s, so a block's multipliers on a
position it does not mask have no effect.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass

import numpy as np

BINDING_BITS = 24  # bits per binding value (circuit.BINDING_CHUNKS of them)
SALT_BITS = 24  # bits per salt cell: k·2^-S is exact in float32 (ezkl reads inputs as f32) and quantises to k


def salt_cells(salt_key: bytes | None, values, scale: int) -> list[float]:
    """The salt cells of one committed vector: HMAC-SHA256(key, values) cut into ``SALT_CELLS`` integers
    of 24 bits (192 bits in all), as the float inputs ``k·2^-S`` (which quantise to exactly k). Deterministic in the key
    and the values, so the client recomputes the salt of any vector it committed, and a provider
    without the key cannot confirm a guess of the values. ``salt_key=None``: zero salt (public vectors)."""
    from .circuit import SALT_CELLS

    if salt_key is None:
        return [0.0] * SALT_CELLS
    digest = hmac.new(salt_key, np.ascontiguousarray(values, dtype=np.float64).tobytes(), hashlib.sha256).digest()
    step = SALT_BITS // 8
    return [int.from_bytes(digest[i * step : (i + 1) * step], "big") * 2.0**-scale for i in range(SALT_CELLS)]


def quantize(x, scale: int) -> np.ndarray:
    """Round to the fixed-point grid 2^-scale (values are then exact in float32 and in ezkl's felts)."""
    return np.round(np.asarray(x, dtype=np.float64) * 2.0**scale) / 2.0**scale


def normalized_inverse(c: np.ndarray, scale: int) -> np.ndarray:
    """Ĥ = C⁻¹ / max|C⁻¹| per block, quantised: ``c`` (…, d, d) SPD → same shape."""
    c = np.asarray(c, dtype=np.float64)
    h = np.linalg.inv(c)
    h = 0.5 * (h + np.swapaxes(h, -1, -2))
    h /= np.abs(h).max(axis=(-2, -1), keepdims=True)
    return quantize(h, scale)


@dataclass(frozen=True)
class Binding:
    """What a proof answers: the request, the round's nonce and the node, hashed into the circuit's
    binding input. The provider rebuilds it from its own records, so a proof made for another request,
    round or node fails the SNARK check. A local run without a provider binds the request id alone."""

    request_id: str
    nonce: str = ""
    node: str = ""

    @staticmethod
    def for_node(request_id: str, nonce: str, node_id: int) -> Binding:
        """The binding of a provider's round: what the client proves to and the verifier checks against."""
        return Binding(request_id, nonce, str(int(node_id)))

    def values(self) -> list[int]:
        """The binding input: the first 144 bits of SHA-256 over the canonical encoding, in 24-bit values."""
        from .circuit import BINDING_CHUNKS

        text = json.dumps(
            {"request": str(self.request_id), "nonce": str(self.nonce), "node": str(self.node)},
            sort_keys=True,
            separators=(",", ":"),
        )
        digest = hashlib.sha256(b"zkapex-binding|" + text.encode()).digest()
        step = BINDING_BITS // 8
        return [int.from_bytes(digest[i * step : (i + 1) * step], "big") for i in range(BINDING_CHUNKS)]


@dataclass
class Step:
    """One proof step of a unit of G blocks (G = 1: one block), all arrays block-major."""

    theta_in: np.ndarray  # (G, d)
    theta_out: np.ndarray  # (G, d)
    mask: np.ndarray  # (G, d) 0/1: the unit's mask on the final step, zeros before
    y: np.ndarray  # (G, len(columns)); 0 where a block does not mask that position
    columns: list[int]  # local positions (Ĥ columns) this step uses, shared by the unit's blocks
    h: np.ndarray  # (G, d, len(columns)) those columns of each block's Ĥ
    selector: np.ndarray | None = None  # (G, len(columns)) 0/1: block g masks column j (G > 1 circuits)

    def inputs(self, spec, salt_key: bytes | None = None) -> list[list[float]]:
        """Flat input lists in the circuit's ONNX input order, padded to ``spec.slots`` columns, each
        followed by its salt cells: keyed for θ_in, θ_out, y and the used stripes; zero for the public
        mask and selector and for unused column slots."""
        g, d = self.theta_in.shape
        k = len(self.columns)
        if k > spec.slots:
            raise ValueError(f"a step has {k} columns but the circuit has {spec.slots} slots")
        if g != spec.group or d != spec.d:
            raise ValueError(f"a step of {g} blocks of {d} does not fit the circuit's {spec.group} × {spec.d}")
        y = np.zeros((g, spec.slots))
        y[:, :k] = self.y
        stripes = [self.h[:, :, j].reshape(-1) for j in range(k)] + [np.zeros(g * d)] * (spec.slots - k)

        def salted(values, private: bool) -> list[float]:
            values = np.asarray(values, dtype=np.float64).reshape(-1)
            return values.tolist() + salt_cells(salt_key if private else None, values, spec.scale)

        head = [
            salted(self.theta_in, True),
            salted(self.theta_out, True),
            salted(self.mask.astype(float), False),
            salted(y, True),
        ]
        if spec.selector:
            if self.selector is None:
                raise ValueError("a wide-unit circuit needs each step's column selector")
            head.append(salted(selector_values(self.selector, spec), False))
        return head + [salted(v, j < k) for j, v in enumerate(stripes)]


def proof_units(mask, spec) -> tuple[np.ndarray, np.ndarray]:
    """A request's :class:`~zkapex_flwr.unlearning.UnlearningMask` in the proof units of ``spec``: the ids of
    the units it touches (T,), in order, and the boolean mask of every unit (n_units, G, d), unit u being
    Fisher blocks u·G … u·G + G − 1 (G = 1: one block)."""
    masks = mask.dense().numpy().reshape(-1, spec.group, spec.d)
    return np.flatnonzero(masks.any(axis=(1, 2))), masks


def unit_columns(unit_mask: np.ndarray, slots: int) -> list[list[int]]:
    """The canonical steps of a unit: its masked positions (union over its blocks), sorted, K per step."""
    positions = np.flatnonzero(np.atleast_2d(np.asarray(unit_mask, dtype=bool)).any(0))
    return [positions[i : i + slots].tolist() for i in range(0, positions.size, slots)]


def step_selector(unit_mask: np.ndarray, columns: list[int]) -> np.ndarray:
    """(G, len(columns)) bool: which of the unit's blocks mask each of the step's columns."""
    return np.atleast_2d(np.asarray(unit_mask, dtype=bool))[:, list(columns)]


def selector_values(selector: np.ndarray, spec) -> np.ndarray:
    """The selector input of one step: (G, K) 0/1 flattened, unused column slots 0."""
    sel = np.asarray(selector, dtype=bool)
    out = np.zeros((spec.group, spec.slots))
    out[:, : sel.shape[1]] = sel
    return out.reshape(-1)


def honest_unit_steps(theta_p: np.ndarray, h_hat: np.ndarray, masks: np.ndarray, spec) -> list[Step]:
    """The honest proof steps of a unit of G blocks: ``theta_p`` (G, d), ``h_hat`` (G, d, d) quantised Ĥ,
    ``masks`` (G, d) bool. The unit's positions are the union of its blocks' masked positions, proven
    K at a time; each block uses its own Group-OBS multipliers (0 at positions it does not mask)."""
    s = spec.scale
    theta = quantize(np.atleast_2d(theta_p), s)
    h = np.asarray(h_hat, dtype=np.float64).reshape(theta.shape[0], theta.shape[1], theta.shape[1])
    masks = np.atleast_2d(np.asarray(masks, dtype=bool))
    chunks = [np.asarray(c) for c in unit_columns(masks, spec.slots)]
    if not chunks:
        raise ValueError("a touched unit has no masked entry")
    g_count = theta.shape[0]
    y_full = np.zeros((g_count, theta.shape[1]))
    for g in range(g_count):
        idx = np.flatnonzero(masks[g])
        if idx.size:
            y_full[g, idx] = quantize(np.linalg.solve(h[g][np.ix_(idx, idx)], theta[g, idx]), s)
    steps, current = [], theta
    for c, cols in enumerate(chunks):
        yc = y_full[:, cols]
        hc = h[:, :, cols]
        nxt = quantize(current - np.einsum("gdk,gk->gd", hc, yc), s)
        last = c == len(chunks) - 1
        m = np.zeros_like(theta)
        if last:
            nxt[masks] = 0.0
            m[masks] = 1.0
        steps.append(Step(current, nxt, m, yc, cols.tolist(), hc, step_selector(masks, cols)))
        current = nxt
    return steps


def residual_tolerance(scale: int, masked: int, steps: int) -> float:
    """Largest honest |r| on any step: the rounding of θ_out (2^-(S+1)) plus, on the final step's masked
    entries, the rounding of y through Ĥ[M, M] (|Ĥ| ≤ 1) and of the earlier links: (k + G + 1)·2^-(S+1)."""
    return (masked + steps + 1) * 2.0 ** -(scale + 1)

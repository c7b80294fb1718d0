"""The column-form Group-OBS certificate as an EZKL (Halo2/KZG) circuit, built once per shape and cached.

One proof holds ``B`` step slots; a step covers one proof unit (G consecutive Fisher blocks of size
``d``; G = 1: one block) and up to ``K`` masked columns. Per step slot, for G = 1:

    inputs  (all ``polycommit``):  θ_in (d), θ_out (d), m (d), y (K), h_1 … h_K (d each)
    outputs (``public``):          r = [θ_out − θ_in + Σ_j y_j h_j ,  m ⊙ θ_out]      (2d)

and for G > 1 the step also takes a selector s (G·K): s[g, j] = 1 when block g masks the step's
column j. Each block's multipliers pass through it, r = [θ_out − θ_in + Σ_j (y ⊙ s)[:, j] h_j , m ⊙ θ_out],
so a block can move only along the columns it masks itself; the verifier rebuilds s from the
request's mask and checks its commitment as it checks m's (docs/proof-design.md §1, §4).

Every proof also takes the **binding** b (``BINDING_CHUNKS`` values, its last input) and outputs it
again as public values after the residuals: b encodes the request, the round's nonce and the node the
proof answers (:class:`~zkapex_flwr.proof.statement.Binding`). The verifier supplies b itself, so a proof
made for another request, round or node does not verify (docs/proof-design.md §2).

Every step input also ends in ``SALT_CELLS`` salt cells that no constraint reads. The client fills them,
for its private inputs (θ, y, Ĥ stripes), from a keyed PRF of the values (:func:`statement.salt_cells`),
so the KZG commitments in its registry and proofs are hiding; public inputs (m, s, padding) carry zero
salt, which is what the verifier commits to itself (docs/proof-design.md §3).

An unused step slot carries all-zero inputs (a true, empty statement); the verifier demands the zero
commitment for each of its inputs, so a real block cannot sit in a padding slot.

where h_j are columns of the block's normalised inverse Fisher Ĥ = C⁻¹ / max|C⁻¹| and m is the
block's 0/1 mask on the final step of a block (zero on intermediate steps, see ``statement.py``). With
``input_scale = param_scale = S`` and ``scale_rebase_multiplier = 10`` the residuals are exact integers
at scale 2S (3S with the selector; :attr:`CircuitSpec.residual_scale`), with no lookups; range checks on
inputs/outputs are off (``ignore_range_check_inputs_outputs``),
which costs the column form no soundness that matters (docs/proof-design.md §4) and saves 15–60×.

A circuit is identified by :attr:`CircuitSpec.circuit_id`, a digest of everything that changes its
keys: form, d, K, S, logrows, the ezkl version and the SRS. Keys live in the cache directory
(``ZKAPEX_CACHE``, default ``~/.cache/zkapex_flwr``) under that id, built under a file lock so that
concurrent clients (Ray workers) build each shape once.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..files import cache_dir

FORM = "col-v4"  # v2: wide units (G > 1) take the per-block column selector; v3: every proof is bound;
#                   v4: every step input carries salt cells (hiding commitments)
BINDING_CHUNKS = 6  # the binding input: 6 values of 24 bits (exact through fixed-point scales up to 2^24)
SALT_CELLS = 8  # cells appended to every step input, ignored by the arithmetic (statement.salt_cells)


@contextlib.contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ezkl_version() -> str:
    import importlib.metadata

    return importlib.metadata.version("ezkl")


# ----------------------------------------------------------------------------------------- SRS
_WARNED = False


def srs_file(logrows: int) -> Path:
    """The KZG structured reference string for ``logrows``.

    ``ZKAPEX_SRS_DIR`` points at a folder of ceremony SRS files named ``kzg{logrows}.srs`` (what a real
    deployment must use). Without it an *insecure* test SRS is generated offline with ``ezkl.gen_srs``
    and cached: fine for simulation, worthless against a provider who knows its toxic waste.
    """
    global _WARNED
    ceremony = os.environ.get("ZKAPEX_SRS_DIR")
    if ceremony:
        path = Path(ceremony) / f"kzg{logrows}.srs"
        if not path.exists():
            raise FileNotFoundError(f"ZKAPEX_SRS_DIR={ceremony} has no kzg{logrows}.srs")
        return path
    path = cache_dir() / "srs" / f"kzg{logrows}.srs"
    if not path.exists():
        import ezkl

        with _locked(path.with_suffix(".lock")):
            if not path.exists():
                tmp = path.with_suffix(".tmp")
                ezkl.gen_srs(str(tmp), logrows)
                tmp.replace(path)
    if not _WARNED:
        import warnings

        warnings.warn(
            "zkapex-flwr is using an INSECURE test SRS generated with ezkl.gen_srs (simulation only); "
            "set ZKAPEX_SRS_DIR to ceremony SRS files for a real deployment",
            stacklevel=2,
        )
        _WARNED = True
    return path


def srs_identity(logrows: int) -> str:
    """A short digest of the SRS file in use (part of the circuit id)."""
    path = srs_file(logrows)
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        h.update(fh.read(1 << 16))
    h.update(str(path.stat().st_size).encode())
    return h.hexdigest()[:16]


# ------------------------------------------------------------------------------------- circuit
@dataclass(frozen=True)
class CircuitSpec:
    d: int  # Fisher block size
    slots: int  # K: masked columns per proof step
    scale: int = 16  # fixed-point bits S
    steps: int = 1  # B: step slots per proof
    group: int = 1  # G: blocks per unit, packed into the same wide inputs

    def __post_init__(self) -> None:
        if self.d < 2 or self.slots < 1 or self.slots > self.d:
            raise ValueError(f"invalid circuit shape d={self.d}, slots={self.slots} (need 1 <= slots <= d)")
        if self.steps < 1:
            raise ValueError(f"a proof needs at least one step slot, got steps={self.steps}")
        if self.group < 1:
            raise ValueError(f"a unit needs at least one block, got group={self.group}")
        import math

        per = self.residual_scale - self.scale  # bits of one multiplier term above θ's scale
        bits = (self.slots + 1) * (per + math.log2(max(self.slots, 2))) + math.log2(self.d)
        if bits >= 250:
            raise ValueError(
                f"slots={self.slots} at scale {self.scale} is unsound without range checks: "
                f"(K+1)({per}+log2 K)+log2 d = {bits:.0f} bits must stay below 250 "
                f"(docs/proof-design.md §4); use fewer slots"
            )
        if not 8 <= self.scale <= 24:
            raise ValueError(f"fixed-point scale must be within 8..24 bits, got {self.scale}")

    @property
    def selector(self) -> bool:
        """Wide units carry the per-block column selector (a G = 1 unit's columns are all its own)."""
        return self.group > 1

    @property
    def residual_scale(self) -> int:
        """Fixed-point bits of the public residuals: 2S, or 3S when y passes through the selector."""
        return (3 if self.selector else 2) * self.scale

    @property
    def column_input(self) -> int:
        """Index, within a step slot, of the first Ĥ column input (after θ_in, θ_out, m, y and s)."""
        return 5 if self.selector else 4

    @property
    def inputs_per_step(self) -> int:
        return self.column_input + self.slots

    @property
    def num_residuals(self) -> int:
        """Public values per proof before the binding: 2·G·d per step slot."""
        return 2 * self.unit_size * self.steps

    @property
    def unit_size(self) -> int:
        return self.group * self.d

    @property
    def rows_model(self) -> int:
        """Rows used (cost model; G = 1 matched within ±1 row by measurement): B·G·(2dK + 4d)."""
        return self.steps * self.group * (2 * self.d * self.slots + 4 * self.d)

    def input_shapes(self) -> list[tuple[int, int]]:
        """Every step input is its values followed by ``SALT_CELLS`` salt cells; the binding comes last."""
        n = self.unit_size + SALT_CELLS
        small = [(1, self.group * self.slots + SALT_CELLS)] * (2 if self.selector else 1)  # y (and s)
        return ([(1, n)] * 3 + small + [(1, n)] * self.slots) * self.steps + [(1, BINDING_CHUNKS)]

    def name(self) -> str:
        return f"{FORM}_d{self.d}_K{self.slots}_S{self.scale}_B{self.steps}" + (
            f"_G{self.group}" if self.group > 1 else ""
        )


def _torch_module(spec: CircuitSpec):
    import torch
    from torch import nn

    per, g, d, k = spec.inputs_per_step, spec.group, spec.d, spec.slots

    class ColumnCertificate(nn.Module):
        def forward(self, *xs):
            outs = []
            for b in range(spec.steps):
                step = [x[:, :-SALT_CELLS] for x in xs[b * per : (b + 1) * per]]  # the salt enters no arithmetic
                theta_in, theta_out, m, y = step[:4]
                cols = step[spec.column_input :]
                if g == 1:
                    acc = theta_out - theta_in + torch.matmul(y, torch.cat(cols, dim=0))  # y (1, K) · (K, d)
                else:  # per block of the unit: θ_out − θ_in + Σ_j (y ⊙ s)[:, j] · stripe_j
                    acc = (theta_out - theta_in).reshape(g, d)
                    yy = (y * step[4]).reshape(g, k)
                    for j, col in enumerate(cols):
                        acc = acc + yy[:, j : j + 1] * col.reshape(g, d)
                    acc = acc.reshape(1, g * d)
                outs += [acc, m * theta_out]
            return torch.cat(outs, dim=1), xs[-1] + xs[-1]  # residuals, and the binding (2b: an op, not an alias)

    return ColumnCertificate()


@dataclass
class Circuit:
    """A compiled circuit with its keys on disk."""

    spec: CircuitSpec
    directory: Path
    logrows: int
    circuit_id: str
    setup_s: float
    pk_bytes: int
    vk_bytes: int

    @property
    def compiled(self) -> str:
        return str(self.directory / "net.ezkl")

    @property
    def settings(self) -> str:
        return str(self.directory / "settings.json")

    @property
    def pk(self) -> str:
        return str(self.directory / "pk.key")

    @property
    def vk(self) -> str:
        return str(self.directory / "vk.key")

    @property
    def srs(self) -> str:
        return str(srs_file(self.logrows))


def _calibration_inputs(spec: CircuitSpec) -> list[list[float]]:
    import numpy as np

    from .statement import Binding, honest_unit_steps, normalized_inverse  # local import: statement uses the spec

    rng = np.random.default_rng(1234)
    d, n = spec.d, spec.group
    g = rng.standard_normal((n, 2 * d, d))
    h = normalized_inverse(np.einsum("nmi,nmj->nij", g, g) / (2 * d) + 0.1 * np.eye(d), spec.scale)
    theta = rng.standard_normal((n, d)) * 0.05
    mask = np.zeros((n, d), dtype=bool)
    mask[:, rng.choice(d, size=min(spec.slots, max(1, d // 16)), replace=False)] = True
    steps = honest_unit_steps(theta, h, mask, spec)
    salted = steps[-1].inputs(spec, salt_key=b"calibration")  # salts of full size in the calibration data
    return salted * spec.steps + [[float(v) for v in Binding("calibration", "", "").values()]]


def get_circuit(spec: CircuitSpec) -> Circuit:
    """Load the circuit for ``spec`` from the cache, building and setting it up on first use."""
    import ezkl
    import torch

    base = cache_dir() / "circuits" / spec.name()
    meta = base / "circuit.json"
    with _locked(base.with_suffix(".lock")):
        if meta.exists():
            info = json.loads(meta.read_text())
            if info.get("ezkl") == ezkl_version():
                circ = Circuit(
                    spec, base, info["logrows"], info["circuit_id"], info["setup_s"], info["pk_bytes"], info["vk_bytes"]
                )
                if circ.circuit_id == _circuit_id(spec, circ.logrows, circ.vk):
                    return circ
        base.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        xs = tuple(torch.zeros(s) for s in spec.input_shapes())
        onnx = base / "net.onnx"
        torch.onnx.export(
            _torch_module(spec),
            xs,
            str(onnx),
            opset_version=17,
            dynamo=False,
            input_names=[f"x{i}" for i in range(len(xs))],
            output_names=["r", "binding"],
        )
        cal = base / "calibration.json"
        cal.write_text(json.dumps({"input_data": _calibration_inputs(spec)}))
        args = ezkl.PyRunArgs()
        args.input_visibility = "polycommit"
        args.param_visibility = "fixed"
        args.output_visibility = "public"
        args.input_scale = spec.scale
        args.param_scale = spec.scale
        args.scale_rebase_multiplier = 10
        args.ignore_range_check_inputs_outputs = True
        settings = base / "settings.json"
        ezkl.gen_settings(str(onnx), str(settings), py_run_args=args)
        ezkl.calibrate_settings(
            str(cal), str(onnx), str(settings), "resources", scales=[spec.scale], scale_rebase_multiplier=[10]
        )
        ezkl.compile_circuit(str(onnx), str(base / "net.ezkl"), str(settings))
        logrows = int(json.loads(settings.read_text())["run_args"]["logrows"])
        srs = srs_file(logrows)
        ezkl.setup(str(base / "net.ezkl"), str(base / "vk.key"), str(base / "pk.key"), srs_path=str(srs))
        setup_s = time.perf_counter() - t0
        circ = Circuit(
            spec,
            base,
            logrows,
            _circuit_id(spec, logrows, str(base / "vk.key")),
            setup_s,
            (base / "pk.key").stat().st_size,
            (base / "vk.key").stat().st_size,
        )
        meta.write_text(
            json.dumps(
                {
                    "spec": asdict(spec),
                    "logrows": logrows,
                    "circuit_id": circ.circuit_id,
                    "setup_s": setup_s,
                    "pk_bytes": circ.pk_bytes,
                    "vk_bytes": circ.vk_bytes,
                    "ezkl": ezkl_version(),
                }
            )
        )
        return circ


def _circuit_id(spec: CircuitSpec, logrows: int, vk_path: str) -> str:
    h = hashlib.sha256()
    h.update(
        json.dumps(
            {
                "form": FORM,
                **asdict(spec),
                "logrows": logrows,
                "ezkl": ezkl_version(),
                "srs": srs_identity(logrows),
                "salt_cells": SALT_CELLS,
                "binding": BINDING_CHUNKS,
            },
            sort_keys=True,
        ).encode()
    )
    with open(vk_path, "rb") as fh:
        h.update(fh.read())
    return h.hexdigest()[:32]

"""KZG commitments of the registry, exactly as they appear inside proofs.

With ``polycommit`` visibility every circuit input is committed with KZG over the circuit's Lagrange
basis; the commitment of input i is bytes [64·i, 64·i+64) of the raw proof (x‖y, big-endian). A
commitment depends only on the values, the scale S, logrows and the SRS, so the registry computes the
same bytes with ``ezkl.kzg_commit``. Many vectors are committed in one call by packing each into its
own chunk of 2^logrows − 6 usable rows (one commitment per chunk).

What a client registers after personalization (phase 2, before any mask is known), per proof unit u
(G consecutive Fisher blocks; G = 1: one block): the commitment of its quantised θp (G·d values) and of
each of its d stripes — stripe i is column i of every block's Ĥ_b = C_b⁻¹/max|C_b⁻¹|, concatenated.
Every committed vector ends in salt cells that the circuit ignores: the client fills them from a keyed
PRF of the values (:func:`~zkapex_flwr.proof.statement.salt_cells`), which makes the commitments hiding
against a provider who can guess low-entropy values (docs/proof-design.md §3).
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from dataclasses import dataclass

import numpy as np

from .circuit import Circuit

BLINDING_ROWS = 6
COMMITMENT_BYTES = 64
MAX_REGISTRY_BYTES = 1 << 30
_MEMBERS = {"theta.npy": 2, "columns.npy": 3, "meta.npy": 1}  # array name -> number of dimensions


class MalformedCommitments(ValueError):
    """The bytes are not a well-formed registry entry (archive, array names, dtypes or shapes)."""


def _g1_bytes(point) -> bytes:
    return bytes.fromhex(point.x)[::-1] + bytes.fromhex(point.y)[::-1]


def commit_vectors(
    circuit: Circuit, vectors: list[np.ndarray], chunk: int = 4096, salt_key: bytes | None = None
) -> list[bytes]:
    """64-byte KZG commitments of each vector (length ≤ d) followed by its salt cells, as the circuit's
    proofs will carry them (``salt_key=None``: zero salt, the commitment of a public vector)."""
    import ezkl

    from .statement import salt_cells

    usable = 2**circuit.logrows - BLINDING_ROWS
    zero = ezkl.float_to_felt(0.0, circuit.spec.scale)
    out: list[bytes] = []
    for start in range(0, len(vectors), chunk):
        felts: list[str] = []
        batch = vectors[start : start + chunk]
        for v in batch:
            cells = list(np.asarray(v, dtype=np.float64).reshape(-1)) + salt_cells(salt_key, v, circuit.spec.scale)
            if len(cells) > usable:
                raise ValueError(f"vector of {len(v)} values does not fit a 2^{circuit.logrows} column")
            felts += [ezkl.float_to_felt(float(x), circuit.spec.scale) for x in cells]
            felts += [zero] * (usable - len(cells))
        points = ezkl.kzg_commit(felts, circuit.vk, circuit.settings, circuit.srs)
        if len(points) < len(batch):  # ezkl appends one commitment of the (empty) tail chunk
            raise RuntimeError(f"kzg_commit returned {len(points)} commitments for {len(batch)} vectors")
        out += [_g1_bytes(g) for g in points[: len(batch)]]
    return out


@dataclass
class BlockCommitments:
    """A client's registry entry: per proof unit the θp commitment and the d stripe commitments of Ĥ."""

    circuit_id: str
    layout_digest: str
    theta: np.ndarray  # (n_units, 64) uint8
    columns: np.ndarray  # (n_units, d, 64) uint8

    def digest(self) -> str:
        h = hashlib.sha256(f"{self.circuit_id}|{self.layout_digest}|".encode())
        h.update(self.theta.tobytes())
        h.update(self.columns.tobytes())
        return h.hexdigest()

    def theta_of(self, block: int) -> bytes:
        return self.theta[block].tobytes()

    def column_of(self, block: int, index: int) -> bytes:
        return self.columns[block, index].tobytes()

    def with_theta(self, updates: dict[int, bytes]) -> BlockCommitments:
        """A new entry with θ commitments replaced (θu after a compliant round)."""
        theta = self.theta.copy()
        for b, c in updates.items():
            theta[b] = np.frombuffer(c, dtype=np.uint8)
        return BlockCommitments(self.circuit_id, self.layout_digest, theta, self.columns)

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        np.savez(
            buf,
            theta=self.theta,
            columns=self.columns,
            meta=np.frombuffer(f"{self.circuit_id}|{self.layout_digest}".encode(), dtype=np.uint8),
        )
        return buf.getvalue()

    def check_shape(self, spec, n_units: int) -> None:
        """Raise :class:`MalformedCommitments` unless the entry has one θ and d stripe commitments per unit."""
        if self.theta.shape != (n_units, COMMITMENT_BYTES):
            raise MalformedCommitments(
                f"θ commitments have shape {self.theta.shape}, expected "
                f"({n_units}, {COMMITMENT_BYTES}): one {COMMITMENT_BYTES}-byte commitment "
                f"per proof unit of the layout"
            )
        if self.columns.shape != (n_units, spec.d, COMMITMENT_BYTES):
            raise MalformedCommitments(
                f"Fisher stripe commitments have shape {self.columns.shape}, expected "
                f"({n_units}, {spec.d}, {COMMITMENT_BYTES}): {spec.d} {COMMITMENT_BYTES}-byte "
                f"commitments per proof unit"
            )

    @staticmethod
    def from_bytes(data: bytes, max_bytes: int = MAX_REGISTRY_BYTES) -> BlockCommitments:
        """Parse strictly (the bytes come from a client); every defect raises :class:`MalformedCommitments`.

        An entry is an uncompressed or deflated ``.npz`` of exactly three uint8 arrays: ``theta``
        (units, 64), ``columns`` (units, d, 64) and ``meta`` (``circuit_id|layout_digest`` in UTF-8).
        Array headers are checked before any array is read.
        """
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise MalformedCommitments(f"registry entry must be bytes, got {type(data).__name__}")
        data = bytes(data)
        if len(data) > max_bytes:
            raise MalformedCommitments(f"registry entry of {len(data)} bytes exceeds the limit of {max_bytes}")
        if not data.startswith(b"PK\x03\x04"):
            raise MalformedCommitments(f"registry entry is not an npz archive (starts with {data[:8]!r})")
        try:
            arrays = _read_npz(data, max_bytes)
        except MalformedCommitments:
            raise
        except Exception as err:  # zipfile and numpy's header parser raise many types (BadZipFile, TokenError…)
            raise MalformedCommitments(
                f"registry entry is not a valid npz archive: {type(err).__name__}: {str(err)[:200]}"
            ) from None
        theta, columns, meta = arrays["theta.npy"], arrays["columns.npy"], arrays["meta.npy"]
        try:
            circuit_id, layout = meta.tobytes().decode("utf-8").split("|")
        except (UnicodeDecodeError, ValueError):
            raise MalformedCommitments(
                f"registry entry 'meta' is not 'circuit_id|layout_digest': {meta.tobytes()[:80]!r}"
            ) from None
        if theta.shape[1:] != (COMMITMENT_BYTES,):
            raise MalformedCommitments(
                f"θ commitments are {theta.shape[1:]} bytes, expected {COMMITMENT_BYTES} (array shape {theta.shape})"
            )
        if columns.shape[2:] != (COMMITMENT_BYTES,):
            raise MalformedCommitments(
                f"Fisher stripe commitments are {columns.shape[2:]} bytes, expected "
                f"{COMMITMENT_BYTES} (array shape {columns.shape})"
            )
        if len(theta) < 1 or columns.shape[0] != len(theta):
            raise MalformedCommitments(
                f"registry entry has θ commitments for {len(theta)} units and stripe commitments for {columns.shape[0]}"
            )
        return BlockCommitments(circuit_id, layout, theta, columns)


def _read_npz(data: bytes, max_bytes: int) -> dict[str, np.ndarray]:
    """The three arrays of a registry entry, each header checked (uint8, dimensions, size) before reading."""
    out = {}
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        names = zf.namelist()
        if sorted(names) != sorted(_MEMBERS):
            raise MalformedCommitments(f"registry entry holds arrays {sorted(names)[:10]}, expected {sorted(_MEMBERS)}")
        for name, ndim in _MEMBERS.items():
            info = zf.getinfo(name)
            if info.file_size > max_bytes:
                raise MalformedCommitments(
                    f"registry entry array '{name}' of {info.file_size} bytes exceeds the limit of {max_bytes}"
                )
            with zf.open(info) as fh:
                version = np.lib.format.read_magic(fh)
                if version != (1, 0):
                    raise MalformedCommitments(
                        f"registry entry array '{name}' has npy format {version}, expected (1, 0)"
                    )
                shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
                if dtype != np.uint8 or len(shape) != ndim:
                    raise MalformedCommitments(
                        f"registry entry array '{name}' is {dtype} of shape {shape}, expected "
                        f"uint8 with {ndim} dimension(s)"
                    )
                size = int(np.prod(shape, dtype=object)) if shape else 1
                if size > info.file_size:
                    raise MalformedCommitments(
                        f"registry entry array '{name}' claims shape {shape}, more than its {info.file_size} bytes"
                    )
            with zf.open(info) as fh:
                out[name] = np.lib.format.read_array(fh, allow_pickle=False)
                if fh.read(1):  # reading to the end also checks the archive's CRC of the array
                    raise MalformedCommitments(f"registry entry array '{name}' has bytes after its data")
    return out


def register_blocks(
    circuit: Circuit,
    layout_digest: str,
    theta_blocks: np.ndarray,
    h_blocks: np.ndarray,
    progress=None,
    salt_key: bytes | None = None,
) -> BlockCommitments:
    """Commit quantised θp blocks ``(n, d)`` and the stripes of Ĥ blocks ``(n, d, d)``, per unit of G blocks,
    salted with ``salt_key`` (the client's secret; None: unsalted, not hiding)."""
    n, d = theta_blocks.shape
    g = circuit.spec.group
    if h_blocks.shape != (n, d, d) or d != circuit.spec.d:
        raise ValueError(
            f"registration shapes theta {theta_blocks.shape}, H {h_blocks.shape} do not match d={circuit.spec.d}"
        )
    if n % g:
        raise ValueError(f"{n} Fisher blocks do not split into proof units of {g} blocks")
    units = n // g
    theta = np.frombuffer(
        b"".join(commit_vectors(circuit, list(theta_blocks.reshape(units, g * d)), salt_key=salt_key)), dtype=np.uint8
    ).reshape(units, 64)
    stripes = h_blocks.reshape(units, g, d, d).transpose(0, 3, 1, 2).reshape(units, d, g * d)  # [u, i] = Ĥ[:, :, i]
    cols = []
    step = max(1, 4096 // d)
    task = progress.add_task("register commitments", total=units) if progress is not None else None
    for start in range(0, units, step):
        vecs = list(stripes[start : start + step].reshape(-1, g * d))
        cols.append(np.frombuffer(b"".join(commit_vectors(circuit, vecs, salt_key=salt_key)), dtype=np.uint8))
        if task is not None:
            progress.update(task, completed=min(units, start + step))
    if task is not None:
        progress.remove_task(task)
    return BlockCommitments(circuit.circuit_id, layout_digest, theta, np.concatenate(cols).reshape(units, d, 64))


_ZERO: dict[str, bytes] = {}


def zero_commitment(circuit: Circuit) -> bytes:
    """Commitment of an all-zero input (padding slots, the mask input of intermediate steps)."""
    if circuit.circuit_id not in _ZERO:
        _ZERO[circuit.circuit_id] = commit_vectors(circuit, [np.zeros(circuit.spec.unit_size)])[0]
    return _ZERO[circuit.circuit_id]

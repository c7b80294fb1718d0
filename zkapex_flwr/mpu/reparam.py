"""Function-preserving random reparameterizations of a transformer: the R_k of MPU's Pre-Process.

A reparameterization R maps a parameter state θ to another state R(θ) that computes the same function
(outputs equal up to float rounding on every input) and is exactly invertible by the server, which keeps
the random draw (:class:`Reparam`) secret. Every transform here is *linear* in the parameters, so the
same map sends an update (a difference of two states) back: ``invert_update(R(a) - R(b)) = a - b``.

Two kinds of site are found in a model (:func:`find_sites`):

**MLP hidden units** (a module with ``fc1``/``fc2`` Linear children, fc1's outputs = fc2's inputs:
timm ``Mlp`` in a ViT block, transformers ``OPTDecoderLayer``). With an element-wise activation σ,
``fc2(σ(fc1 x)) = W2 σ(W1 x + b1) + b2`` is unchanged when the hidden units are permuted by π:
``W1 → W1[π]``, ``b1 → b1[π]``, ``W2 → W2[:, π]`` (and any 1-D per-hidden-unit vector, e.g. a norm on
the hidden units, ``→ v[π]``).

**Attention heads** (timm ``Attention`` with a fused ``qkv`` Linear — rows ``[q heads | k heads | v heads]``,
head h at rows ``h·d_h … (h+1)·d_h`` of each third — and ``proj``; or transformers-style
``q_proj/k_proj/v_proj/out_proj``, as in OPT). Write head h's blocks as Q_h, K_h, V_h ∈ R^{d_h×D} with biases
q_h, k_h, v_h and the output projection's columns P_h ∈ R^{D×d_h}; the layer computes
``Σ_h P_h · softmax((Q_h x_i + q_h)ᵀ(K_h x_j + k_h)·s) (V_h x_j + v_h) + b_o``. With a head permutation π
and, per new head j, invertible A_j, B_j ∈ R^{d_h×d_h}:

* ``Q_j ← A_jᵀ Q_{π(j)}``, ``q_j ← A_jᵀ q_{π(j)}``, ``K_j ← A_j⁻¹ K_{π(j)}``, ``k_j ← A_j⁻¹ k_{π(j)}``:
  every score (Aᵀq)ᵀ(A⁻¹k) = qᵀk is unchanged;
* ``V_j ← B_j V_{π(j)}``, ``v_j ← B_j v_{π(j)}``, ``P_j ← P_{π(j)} B_j⁻¹``: the attention weights mix
  tokens and B mixes a head's features, so they commute and P B⁻¹ B V = P V.

``head_transform`` chooses A and B: ``"orthogonal"`` (the default: Haar-random orthogonal, A⁻¹ = Aᵀ,
well conditioned; plain SGD is equivariant under it), ``"general"`` (U·diag(s)·Vᵀ with singular values
log-uniform in [1/c, c], c = ``condition``; changes even SGD's geometry) or ``"none"`` (permutation only).
Adam is equivariant under permutations but not under rotations, so with Adam a copy's update differs
from the update on θ by more than the noise; the permutations alone keep it exact.

What is deliberately left alone: the residual stream (embeddings, positional embeddings, LayerNorms, the
classifier / LM head) — so tied weights (OPT's ``lm_head`` = ``embed_tokens``) stay tied and identical,
and pre- or post-LayerNorm placement does not matter. A q/k transform is applied only where q and k
reach the scores linearly: timm ``Attention`` without q/k norms and OPT (learned absolute positions).
Other transformers attention (e.g. rotary position embeddings, which act on pairs of a head's q/k
features) gets the head permutation and the v/out transform only; a layer with grouped-query attention
(fewer k/v heads than q heads) or a norm after the head merge is skipped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

State = dict[str, torch.Tensor]
HEAD_TRANSFORMS = ("orthogonal", "general", "none")


@dataclass(frozen=True)
class MLPSite:
    """The hidden units between ``fc1`` and ``fc2``: the state keys that carry them."""

    fc1_weight: str
    fc1_bias: str | None
    fc2_weight: str
    hidden_vectors: tuple[str, ...]  # other 1-D tensors indexed by hidden unit (a norm on the hidden units)
    hidden: int


@dataclass(frozen=True)
class Projection:
    """One of q/k/v: ``weight[offset : offset + heads·head_dim]`` (and the bias rows) of a Linear."""

    weight: str
    bias: str | None
    offset: int = 0


@dataclass(frozen=True)
class AttentionSite:
    """A multi-head attention layer: q/k/v row blocks and the output projection's input columns."""

    q: Projection
    k: Projection
    v: Projection
    out_weight: str
    heads: int
    head_dim: int
    qk_transform: bool  # whether q/k reach the scores linearly (an invertible A per head preserves them)


def _linear(module: nn.Module, name: str) -> nn.Linear | None:
    child = getattr(module, name, None)
    return child if isinstance(child, nn.Linear) else None


def _key(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _mlp_site(prefix: str, module: nn.Module) -> MLPSite | None:
    fc1, fc2 = _linear(module, "fc1"), _linear(module, "fc2")
    if fc1 is None or fc2 is None or fc1.out_features != fc2.in_features:
        return None  # e.g. a gated MLP (fc1 emits 2×hidden) is not a plain σ(W1 x) → W2 pair
    hidden = fc1.out_features
    vectors = []
    norm = getattr(module, "norm", None)
    if norm is not None and not isinstance(norm, nn.Identity):
        for pname, p in norm.named_parameters(recurse=False):
            if p.dim() != 1 or p.shape[0] != hidden:
                return None
            vectors.append(_key(prefix, f"norm.{pname}"))
    return MLPSite(
        fc1_weight=_key(prefix, "fc1.weight"),
        fc1_bias=_key(prefix, "fc1.bias") if fc1.bias is not None else None,
        fc2_weight=_key(prefix, "fc2.weight"),
        hidden_vectors=tuple(vectors),
        hidden=hidden,
    )


def _attention_site(prefix: str, module: nn.Module) -> AttentionSite | None:
    qkv, proj = _linear(module, "qkv"), _linear(module, "proj")
    if qkv is not None and proj is not None and hasattr(module, "num_heads"):  # timm Attention
        heads = int(module.num_heads)
        inner = proj.in_features
        if qkv.out_features != 3 * inner or inner % heads:
            return None
        if not isinstance(getattr(module, "norm", nn.Identity()), nn.Identity):
            return None  # a norm over the merged heads would need its own permutation
        qk_linear = all(isinstance(getattr(module, n, nn.Identity()), nn.Identity) for n in ("q_norm", "k_norm"))
        w, b = _key(prefix, "qkv.weight"), _key(prefix, "qkv.bias") if qkv.bias is not None else None
        return AttentionSite(
            q=Projection(w, b, 0),
            k=Projection(w, b, inner),
            v=Projection(w, b, 2 * inner),
            out_weight=_key(prefix, "proj.weight"),
            heads=heads,
            head_dim=inner // heads,
            qk_transform=qk_linear,
        )
    q, k, v = (_linear(module, n) for n in ("q_proj", "k_proj", "v_proj"))
    out_name = "out_proj" if _linear(module, "out_proj") is not None else "o_proj"
    out = _linear(module, out_name)
    if q is None or k is None or v is None or out is None:
        return None
    heads = getattr(module, "num_heads", None) or getattr(getattr(module, "config", None), "num_attention_heads", None)
    if not heads:
        return None
    heads = int(heads)
    inner = q.out_features
    if k.out_features != inner or v.out_features != inner or out.in_features != inner or inner % heads:
        return None  # grouped-query attention: k/v heads are shared, the head split differs
    proj = {
        n: Projection(_key(prefix, f"{n}.weight"), _key(prefix, f"{n}.bias") if m.bias is not None else None)
        for n, m in (("q_proj", q), ("k_proj", k), ("v_proj", v))
    }
    return AttentionSite(
        q=proj["q_proj"],
        k=proj["k_proj"],
        v=proj["v_proj"],
        out_weight=_key(prefix, f"{out_name}.weight"),
        heads=heads,
        head_dim=inner // heads,
        qk_transform=type(module).__name__.startswith("OPT"),  # learned positions: q/k enter the scores linearly
    )


def find_sites(model: nn.Module) -> tuple[list[MLPSite], list[AttentionSite]]:
    """The MLP and attention sites of ``model`` that a function-preserving reparameterization can touch."""
    mlps, attns = [], []
    for prefix, module in model.named_modules():
        if (site := _mlp_site(prefix, module)) is not None:
            mlps.append(site)
        if (site := _attention_site(prefix, module)) is not None:
            attns.append(site)
    return mlps, attns


# ---- head blocks -----------------------------------------------------------------------------------


def _rows(work: State, p: Projection, heads: int, head_dim: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Head blocks of a projection as float64 views (heads, head_dim, D) and (heads, head_dim)."""
    n = heads * head_dim
    w = work[p.weight][p.offset : p.offset + n].reshape(heads, head_dim, -1)
    b = work[p.bias][p.offset : p.offset + n].reshape(heads, head_dim) if p.bias is not None else None
    return w, b


def _set_rows(work: State, p: Projection, w: torch.Tensor, b: torch.Tensor | None) -> None:
    n = w.shape[0] * w.shape[1]
    work[p.weight][p.offset : p.offset + n] = w.reshape(n, -1)
    if p.bias is not None:
        work[p.bias][p.offset : p.offset + n] = b.reshape(n)


def _cols(work: State, key: str, heads: int, head_dim: int) -> torch.Tensor:
    return work[key][:, : heads * head_dim].reshape(-1, heads, head_dim)


def _set_cols(work: State, key: str, value: torch.Tensor) -> None:
    work[key][:, : value.shape[1] * value.shape[2]] = value.reshape(value.shape[0], -1)


def _left(m: torch.Tensor, x: torch.Tensor | None) -> torch.Tensor | None:
    """Per head: m_h @ x_h for x (H, d, D) or (H, d)."""
    if x is None:
        return None
    return torch.einsum("hij,hj...->hi...", m, x)


@dataclass
class Reparam:
    """One secret draw of R: a hidden-unit permutation per MLP site, and a head permutation with per-head
    q/k transforms A and v/out transforms B per attention site (stored in float64; identity when absent).

    :meth:`apply` computes R(θ), :meth:`invert` R⁻¹, :meth:`invert_update` the linear part of R⁻¹ (R has
    no affine part, so it is :meth:`invert` itself). Keys a state does not touch are passed through
    as the same tensor objects; touched tensors come back new, in their original dtype."""

    mlp: list[tuple[MLPSite, torch.Tensor]] = field(default_factory=list)
    attention: list[tuple[AttentionSite, torch.Tensor, torch.Tensor, torch.Tensor]] = field(default_factory=list)

    @classmethod
    def identity(cls) -> Reparam:
        return cls()

    def keys(self) -> set[str]:
        """The state keys R changes."""
        out: set[str] = set()
        for site, _ in self.mlp:
            out |= {site.fc1_weight, site.fc2_weight, *site.hidden_vectors}
            if site.fc1_bias:
                out.add(site.fc1_bias)
        for site, *_ in self.attention:
            for p in (site.q, site.k, site.v):
                out.add(p.weight)
                if p.bias:
                    out.add(p.bias)
            out.add(site.out_weight)
        return out

    def _map(self, state: State, forward: bool) -> State:
        keys = self.keys()
        missing = sorted(keys - set(state))
        if missing:
            raise KeyError(f"state lacks the reparameterized tensors {missing[:5]}")
        work = {k: state[k].detach().to(torch.float64).clone() for k in keys}
        for site, perm in self.mlp:
            self._mlp(work, site, perm, forward)
        for site, perm, a, b in self.attention:
            self._attn(work, site, perm, a, b, forward)
        out = dict(state)
        for k in keys:
            out[k] = work[k].to(state[k].dtype)
        return out

    @staticmethod
    def _mlp(work: State, site: MLPSite, perm: torch.Tensor, forward: bool) -> None:
        rows = [site.fc1_weight, *([site.fc1_bias] if site.fc1_bias else []), *site.hidden_vectors]
        for key in rows:
            t = work[key]
            if forward:
                work[key] = t[perm].clone()
            else:
                restored = torch.empty_like(t)
                restored[perm] = t
                work[key] = restored
        w2 = work[site.fc2_weight]
        if forward:
            work[site.fc2_weight] = w2[:, perm].clone()
        else:
            restored = torch.empty_like(w2)
            restored[:, perm] = w2
            work[site.fc2_weight] = restored

    @staticmethod
    def _attn(work: State, site: AttentionSite, perm, a, b, forward: bool) -> None:
        h, d = site.heads, site.head_dim
        (qw, qb), (kw, kb), (vw, vb) = (_rows(work, p, h, d) for p in (site.q, site.k, site.v))
        pw = _cols(work, site.out_weight, h, d)  # (D, H, d)
        a_t, a_inv, b_inv = a.transpose(1, 2), torch.linalg.inv(a), torch.linalg.inv(b)
        if forward:  # new head j from old head perm[j]

            def sel(x):
                return x[perm] if x is not None else None

            new = (
                (_left(a_t, sel(qw)), _left(a_t, sel(qb))),
                (_left(a_inv, sel(kw)), _left(a_inv, sel(kb))),
                (_left(b, sel(vw)), _left(b, sel(vb))),
            )
            new_p = torch.einsum("dhi,hij->dhj", pw[:, perm], b_inv)
        else:

            def put(x):
                if x is None:
                    return None
                y = torch.empty_like(x)
                y[perm] = x
                return y

            a_inv_t = a_inv.transpose(1, 2)
            new = (
                (put(_left(a_inv_t, qw)), put(_left(a_inv_t, qb))),
                (put(_left(a, kw)), put(_left(a, kb))),
                (put(_left(b_inv, vw)), put(_left(b_inv, vb))),
            )
            new_p = torch.empty_like(pw)
            new_p[:, perm] = torch.einsum("dhi,hij->dhj", pw, b)
        for p, (w, bias) in zip((site.q, site.k, site.v), new, strict=True):
            _set_rows(work, p, w, bias)
        _set_cols(work, site.out_weight, new_p)

    def apply(self, state: State) -> State:
        """R(state): the reparameterized state (same function when loaded into the model)."""
        return self._map(state, forward=True)

    def invert(self, state: State) -> State:
        """R⁻¹(state): exact inverse of :meth:`apply` (up to float64 → dtype rounding)."""
        return self._map(state, forward=False)

    def invert_update(self, delta: State) -> State:
        """Map an update (a difference of two states) in copy coordinates back: R is linear, so R⁻¹ itself."""
        return self._map(delta, forward=False)


def _orthogonal(n: int, count: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` Haar-random n×n orthogonal matrices (QR of a Gaussian, signs fixed by R's diagonal)."""
    g = torch.randn(count, n, n, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(g)
    return q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)


def _transforms(kind: str, n: int, count: int, condition: float, generator: torch.Generator) -> torch.Tensor:
    if kind == "none":
        return torch.eye(n, dtype=torch.float64).expand(count, n, n).clone()
    u = _orthogonal(n, count, generator)
    if kind == "orthogonal":
        return u
    v = _orthogonal(n, count, generator)
    log_c = math.log(max(condition, 1.0))
    s = torch.exp((torch.rand(count, n, generator=generator, dtype=torch.float64) * 2 - 1) * log_c)
    return u @ torch.diag_embed(s) @ v.transpose(1, 2)


def random_reparam(
    model: nn.Module,
    generator: torch.Generator,
    *,
    mlp: bool = True,
    heads: bool = True,
    head_transform: str = "orthogonal",
    condition: float = 2.0,
) -> Reparam:
    """Draw a random function-preserving reparameterization of ``model`` (see the module docstring).

    ``mlp``: permute every MLP site's hidden units. ``heads``: permute every attention site's heads and
    transform each head by ``head_transform`` (``"orthogonal"``, ``"general"`` with condition number ≤
    ``condition``², or ``"none"``); sites whose scores are not linear in q/k get A = I."""
    if head_transform not in HEAD_TRANSFORMS:
        raise ValueError(f"unknown head_transform '{head_transform}'; choose one of {HEAD_TRANSFORMS}")
    mlps, attns = find_sites(model)
    out = Reparam()
    if mlp:
        out.mlp = [(s, torch.randperm(s.hidden, generator=generator)) for s in mlps]
    if heads:
        for s in attns:
            perm = torch.randperm(s.heads, generator=generator)
            a = _transforms(head_transform if s.qk_transform else "none", s.head_dim, s.heads, condition, generator)
            b = _transforms(head_transform, s.head_dim, s.heads, condition, generator)
            out.attention.append((s, perm, a, b))
    return out

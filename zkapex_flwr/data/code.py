"""A real code corpus that ships with every Python: the standard library's own source.

It plays the role of CodeParrot in the paper. Each ``.py`` file belongs to a *package* (its top-level
module), which is the unit of both domain and deletion: the provider trains on some packages, each
client personalizes on others, and a deletion request can name a whole package. The byte-level BPE
tokenizer is trained here, on this corpus, with HF ``tokenizers`` and wrapped as a
``transformers.PreTrainedTokenizerFast``; it is cached on disk.
"""

from __future__ import annotations

import hashlib
import json
import os
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..files import cache_dir
from .splits import UnlearningSplits
from .tensors import TensorData

# Top-level stdlib entries that are tests, demos, vendored data or GUI toolkits rather than library code.
EXCLUDED = {
    "test",
    "tests",
    "idlelib",
    "turtledemo",
    "lib2to3",
    "ensurepip",
    "site-packages",
    "pydoc_data",
    "tkinter",
    "__pycache__",
    "config-3.11-x86_64-linux-gnu",
    "__phello__",
    "unittest",
    "encodings",
}  # encodings: generated codec tables, not written code


@dataclass(frozen=True)
class CodeFile:
    package: str
    path: Path


def stdlib_files(root: str | Path | None = None) -> list[CodeFile]:
    """Every library ``.py`` file of the running interpreter's standard library, sorted by path."""
    root = Path(root or sysconfig.get_paths()["stdlib"])
    if not root.is_dir():
        raise FileNotFoundError(f"standard library source not found at {root}")
    files = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        top = rel.parts[0]
        if top in EXCLUDED or any(p in EXCLUDED for p in rel.parts[:-1]) or "test" in path.stem.split("_"):
            continue
        package = top[:-3] if top.endswith(".py") else top
        if package.startswith("_"):
            package = package.lstrip("_") or package
        files.append(CodeFile(package, path))
    if not files:
        raise FileNotFoundError(f"no library .py file found under {root}")
    return files


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def build_tokenizer(files: list[CodeFile], vocab_size: int = 2048):
    """Train (or load from cache) a byte-level BPE tokenizer on ``files``."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    key = hashlib.sha256(json.dumps([vocab_size] + [str(f.path) for f in files]).encode()).hexdigest()[:16]
    path = cache_dir() / f"stdlib-bpe-{vocab_size}-{key}.json"
    if not path.exists():
        tok = ByteLevelBPETokenizer()
        tok.train_from_iterator(
            (_read(f.path) for f in files),
            vocab_size=vocab_size,
            min_frequency=2,
            special_tokens=["<pad>", "<s>", "</s>"],
            show_progress=False,
        )
        tmp = path.with_suffix(f".{os.getpid()}.tmp")  # concurrent writers (test workers, Ray) never share one
        tok.save(str(tmp))
        tmp.replace(path)
    return PreTrainedTokenizerFast(tokenizer_file=str(path), pad_token="<pad>", bos_token="<s>", eos_token="</s>")


def chunk_tokens(ids: list[int], seq_len: int) -> list[list[int]]:
    """Cut one file's token ids into non-overlapping windows of ``seq_len`` (the tail is dropped)."""
    return [ids[i : i + seq_len] for i in range(0, len(ids) - seq_len + 1, seq_len)]


def code_splits(
    *,
    client_id: int = 0,
    num_clients: int = 4,
    forget_package_: str = "json",
    seq_len: int = 64,
    vocab_size: int = 2048,
    provider_fraction: float = 0.6,
    max_provider_seqs: int = 6000,
    max_client_seqs: int = 1500,
    seed: int = 0,
    root: str | Path | None = None,
    client_keeps_forget: bool = True,
) -> tuple[UnlearningSplits, object]:
    """Build the roles of :class:`UnlearningSplits` for next-token prediction on stdlib code.

    Packages are shuffled: a ``provider_fraction`` share (always including ``forget_package_``) is the
    provider's pool; the rest is dealt to ``num_clients`` clients (their domains). Half of the forget
    package's sequences are in the provider's training data (D_f, as the request names them); the other
    half is never seen by anyone and serves as MIA non-members. With ``client_keeps_forget=False`` the
    request covers the whole federation: a third of the package is D_f, a third is dealt to the clients
    (each personalizes on its share, then drops it from ``client_retain``) and a third stays unseen.
    Returns ``(splits, tokenizer)``.
    """
    files = stdlib_files(root)
    packages = sorted({f.package for f in files})
    if forget_package_ not in packages:
        raise ValueError(f"forget package '{forget_package_}' is not in the standard library corpus")
    if not 0 <= client_id < num_clients:
        raise ValueError(f"client_id {client_id} is outside 0..{num_clients - 1}")
    tok = build_tokenizer(files, vocab_size)
    rng = np.random.default_rng(seed)
    others = [p for p in packages if p != forget_package_]
    rng.shuffle(others)
    n_prov = int(round(len(others) * provider_fraction))
    provider_pkgs = set(others[:n_prov])
    client_pkgs = [p for i, p in enumerate(others[n_prov:]) if i % num_clients == client_id]

    by_pkg: dict[str, list[list[int]]] = {}
    for f in files:
        if f.package in provider_pkgs or f.package in client_pkgs or f.package == forget_package_:
            by_pkg.setdefault(f.package, []).extend(chunk_tokens(tok(_read(f.path))["input_ids"], seq_len))

    def tensor(seqs: list[list[int]]) -> torch.Tensor:
        return torch.tensor(seqs, dtype=torch.long).reshape(-1, seq_len)

    def sample(seqs: list[list[int]], cap: int) -> list[list[int]]:
        if len(seqs) <= cap:
            return seqs
        keep = rng.choice(len(seqs), size=cap, replace=False)
        return [seqs[i] for i in sorted(keep)]

    forget_all = by_pkg.get(forget_package_, [])
    if len(forget_all) < 4:
        raise ValueError(f"forget package '{forget_package_}' has only {len(forget_all)} sequences of {seq_len} tokens")
    order = rng.permutation(len(forget_all))
    part = len(forget_all) // (2 if client_keeps_forget else 3)
    forget = [forget_all[i] for i in order[:part]]
    unseen = [forget_all[i] for i in order[part : 2 * part]]
    held = [forget_all[i] for j, i in enumerate(order[2 * part :]) if j % num_clients == client_id]
    provider_rest = sample(
        [s for p in sorted(provider_pkgs) for s in by_pkg.get(p, [])], max_provider_seqs - len(forget)
    )
    client = sample([s for p in client_pkgs for s in by_pkg.get(p, [])], max_client_seqs)
    perm = rng.permutation(len(client))
    n_test = max(1, len(client) // 5)
    client_test = [client[i] for i in perm[:n_test]]
    client_retain = [client[i] for i in perm[n_test:]]
    client_train = client_retain + held  # the client's own share of the package, dropped by the request

    retain_t = tensor(provider_rest)
    forget_t = tensor(forget)
    splits = UnlearningSplits(
        task="lm",
        provider_train=TensorData((torch.cat([retain_t, forget_t]),)),
        provider_retain=TensorData((retain_t,)),
        forget=TensorData((forget_t,)),
        client_train=TensorData((tensor(client_train),)),
        client_retain=TensorData((tensor(client_retain),)),
        client_test=TensorData((tensor(client_test),)),
        client_forget=TensorData((forget_t,)),
        client_unseen=TensorData((tensor(unseen),)),
        meta={
            "dataset": "stdlib-code",
            "client_id": client_id,
            "num_clients": num_clients,
            "forget_mode": "package",
            "forget_package": forget_package_,
            "seq_len": seq_len,
            "client_keeps_forget": client_keeps_forget,
            "client_forget_package_seqs": len(held),
            "vocab_size": len(tok),
            "client_packages": client_pkgs,
            "provider_packages": len(provider_pkgs),
        },
    )
    return splits, tok

"""Shared worlds of the adversarial tests: the smallest circuits that show each hole (d = 16, K = 2)."""

import pytest
import torch
from torch import nn

from zkapex_flwr.unlearning import BlockFisher, BlockLayout


class TwoLayers(nn.Module):
    """Two fc1 layers of 4 × 16: 8 Fisher blocks of d = 16 (two proof units of G = 4)."""

    def __init__(self, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.a = nn.Sequential()
        self.a.fc1 = nn.Linear(16, 4, bias=False)
        self.b = nn.Sequential()
        self.b.fc1 = nn.Linear(16, 4, bias=False)


def random_fisher(layout: BlockLayout, seed: int) -> BlockFisher:
    g = torch.Generator().manual_seed(seed)
    grads = torch.randn(48, layout.n_blocks, layout.block_size, generator=g, dtype=torch.float64)
    return BlockFisher(torch.einsum("mbi,mbj->bij", grads, grads) / 48, 48, layout)


@pytest.fixture(scope="package")
def two_layers():
    model = TwoLayers(0)
    layout = BlockLayout.from_model(model, 16)
    return model, layout, random_fisher(layout, 0)

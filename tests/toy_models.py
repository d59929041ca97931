"""Tiny torch modules for testing `tritonstack export torch` (imported by MODULE:FACTORY strings)."""

from __future__ import annotations

import torch


class MLP(torch.nn.Module):
    """16 → 32 → 4, float32 [batch, 16] in, [batch, 4] out."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TwoTower(torch.nn.Module):
    """Token ids [batch, seq] (dynamic seq) + features [batch, 8] → (pooled [batch, 8], score [batch, 1])."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.embed = torch.nn.Embedding(8, 8)
        self.head = torch.nn.Linear(16, 1)

    def forward(self, ids: torch.Tensor, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = self.embed(ids).mean(dim=1)
        return pooled, self.head(torch.cat([pooled, feats], dim=1))


class DataDependent(torch.nn.Module):
    """Python control flow on the batch size: tracing bakes in one branch, so parity at other sizes must fail."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > 2:
            return x * 2
        return -x


def make_mlp() -> torch.nn.Module:
    return MLP()


def make_two_tower() -> torch.nn.Module:
    return TwoTower()


def make_data_dependent() -> torch.nn.Module:
    return DataDependent()

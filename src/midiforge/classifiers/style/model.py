"""The style CNN: conv blocks over a log-mel clip, global average pooling, a linear head.

Small on purpose: a few thousand clips of rendered audio cannot fit a large network
without memorising pieces. Global average pooling makes the head independent of the
clip length, and the input BatchNorm learns the features' level and spread, so they
are saved with the model instead of as dataset statistics. The model is rebuilt from
its saved `CnnConfig` (`config.yaml` in the model folder).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch import nn

from midiforge.config import ConfigError


@dataclass
class CnnConfig:
    n_mels: int = 64
    n_classes: int = 4
    width: int = 32  # channels of the first block; later blocks double it, up to 4x
    dropout: float = 0.3  # before the linear head
    blocks: int = 4  # each halves frequency and time

    def validate_config(self) -> None:
        if self.n_classes < 2:
            raise ConfigError(f"n_classes {self.n_classes}: a classifier needs 2 or more styles")
        if self.width < 1 or self.blocks < 1:
            raise ConfigError("width and blocks must be >= 1")
        if self.n_mels < 2**self.blocks:
            raise ConfigError(
                f"n_mels {self.n_mels} is too few for {self.blocks} pooling blocks "
                f"(need >= {2**self.blocks})"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError("dropout must lie in [0, 1)")

    @classmethod
    def debug(cls, n_mels: int = 16, n_classes: int = 2) -> CnnConfig:
        """A model of a few hundred weights for tests: same code path as the real one."""
        return cls(n_mels=n_mels, n_classes=n_classes, width=4, dropout=0.0, blocks=2)

    def channels(self) -> list[int]:
        return [self.width * 2 ** min(i, 2) for i in range(self.blocks)]


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False),  # BatchNorm has the bias
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class StyleCnn(nn.Module):
    """(batch, 1, n_mels, frames) normalised log-mel -> (batch, n_classes) logits."""

    def __init__(self, cfg: CnnConfig) -> None:
        super().__init__()
        cfg.validate_config()
        self.cfg = cfg
        self.input_norm = nn.BatchNorm2d(1)
        chans = [1, *cfg.channels()]
        self.blocks = nn.Sequential(*(_block(a, b) for a, b in itertools.pairwise(chans)))
        self.dropout = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(chans[-1], cfg.n_classes)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.input_norm(mel))
        return self.head(self.dropout(x.mean(dim=(2, 3))))


def build_model(cfg: CnnConfig, seed: int | None = None) -> StyleCnn:
    """A fresh model; with `seed`, the same weights every time."""
    if seed is not None:
        torch.manual_seed(seed)
    return StyleCnn(cfg)


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

"""basic-pitch's network in PyTorch, with its weights read from the shipped `nmp.onnx`.

The ONNX graph is the reference (basic-pitch's TensorFlow code is not installed here):
- Front end (fixed, no gradients): nnAudio's CQT2010v2, 9 octaves of 36 bins computed
  with one pair of complex kernels on the audio halved 8 times by a low-pass filter,
  the top 309 bins scaled by sqrt(filter length), magnitude, then `NormalizedLog`
  (dB scaled to 0..1 per window), a one-channel BatchNorm and harmonic stacking
  (harmonics 0.5, 1..7 -> 8 channels of 264 bins).
- Heads (trainable, ~17k weights): contour (264 bins, 3 per semitone), note and onset
  (88 keys), exactly as `basic_pitch.models.model`. The exported graph has the heads'
  BatchNorms folded into their convolutions, so they are plain biased convolutions here;
  the front BatchNorm is kept as a trainable scale and shift.

Every constant (CQT kernels, low-pass filter, filter lengths, the log10 factor, the
BatchNorm) is read from the graph, so the port reproduces onnxruntime's outputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as nnf

from midiforge.transcription import constants as bp

N_CQT_BINS = 309  # min(ceil(12*log2(8)) + 88, floor(12*log2(11025/27.5))) semitones * 3
BINS_PER_OCTAVE = 36
N_OCTAVES = 9
KERNEL = 256
HARMONIC_SHIFTS = (-36, 0, 36, 57, 72, 84, 93, 101)  # round(36 * log2(h)), h = 0.5, 1..7
N_CONTOUR_BINS = 264

# Head convolutions: name -> (out, in, kh, kw), stride along frequency, activation.
HEADS = {
    "contour1": ((8, 8, 3, 39), 1),
    "contour2": ((1, 8, 5, 5), 1),
    "note1": ((32, 1, 7, 7), 3),
    "note2": ((1, 32, 7, 3), 1),
    "onset1": ((32, 8, 5, 5), 3),
    "onset2": ((1, 33, 3, 3), 1),
}


@dataclass
class FrontEndConstants:
    cqt_real: np.ndarray  # (36, 256)
    cqt_imag: np.ndarray  # (36, 256)
    lowpass: np.ndarray  # (256,)
    length_scale: np.ndarray  # (309,) sqrt of each CQT filter's length
    log10_factor: float  # the graph's 1/ln(10), rounded as TensorFlow stored it
    log_eps: float


class HarmonicCQT(nn.Module):
    """Audio (B, N) at 22,050 Hz -> normalized log CQT (B, frames, 309). No parameters."""

    def __init__(self, c: FrontEndConstants) -> None:
        super().__init__()
        self.constants = c  # kept so a trained model can be saved and rebuilt (export.py)
        # Real and imaginary kernels as one 72-channel convolution.
        kernels = np.concatenate([c.cqt_real, c.cqt_imag])[:, None, :].astype(np.float32)
        # Buffers, not parameters: the export stores each once and training never moves them.
        self.register_buffer("kernels", torch.from_numpy(kernels))
        self.register_buffer("lowpass", torch.from_numpy(c.lowpass.astype(np.float32)[None, None]))
        self.register_buffer(
            "length_scale", torch.from_numpy(c.length_scale.astype(np.float32)[None, None, :])
        )
        self.log10_factor = float(c.log10_factor)
        self.log_eps = float(c.log_eps)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        x = audio[:, None, :]
        hop = bp.FFT_HOP
        octaves = []  # top octave first
        for k in range(N_OCTAVES):
            if k:
                # nnAudio's downsampling_by_n: zero padding, 256-tap low-pass, stride 2
                x = nnf.conv1d(nnf.pad(x, (KERNEL // 2 - 1,) * 2), self.lowpass, stride=2)
                hop //= 2
            padded = nnf.pad(x, (KERNEL // 2,) * 2, mode="reflect")
            octaves.append(nnf.conv1d(padded, self.kernels, stride=hop))
        return self._normalized_log(self._magnitude(octaves))

    def _magnitude(self, octaves: list[torch.Tensor]) -> torch.Tensor:
        real = torch.cat([o[:, :BINS_PER_OCTAVE] for o in octaves[::-1]], dim=1)[:, -N_CQT_BINS:]
        imag = torch.cat([o[:, BINS_PER_OCTAVE:] for o in octaves[::-1]], dim=1)[:, -N_CQT_BINS:]
        mag = torch.sqrt(real.square() + imag.square()).transpose(1, 2)  # (B, T, 309)
        return mag * self.length_scale

    def _normalized_log(self, mag: torch.Tensor) -> torch.Tensor:
        db = 10.0 * self.log10_factor * torch.log(mag.square() + self.log_eps)
        db = db - db.amin(dim=(1, 2), keepdim=True)
        top = db.amax(dim=(1, 2), keepdim=True)
        return torch.where(top == 0, torch.zeros_like(db), db / torch.where(top == 0, 1.0, top))


def harmonic_stack(x: torch.Tensor) -> torch.Tensor:
    """(B, T, 309) -> (B, 8, T, 264): each channel the CQT shifted by one harmonic."""
    chans = []
    for s in HARMONIC_SHIFTS:
        if s > 0:
            chans.append(nnf.pad(x[..., s:], (0, s)))
        elif s < 0:
            chans.append(nnf.pad(x[..., :s], (-s, 0)))
        else:
            chans.append(x)
    return torch.stack(chans, dim=1)[..., :N_CONTOUR_BINS]


class BasicPitch(nn.Module):
    """(B, 43,844, 1) audio windows -> {'contour': (B,172,264), 'note', 'onset': (B,172,88)}."""

    def __init__(self, front: FrontEndConstants) -> None:
        super().__init__()
        self.cqt = HarmonicCQT(front)
        self.bn_scale = nn.Parameter(torch.ones(1))
        self.bn_shift = nn.Parameter(torch.zeros(1))
        for name, ((o, i, kh, kw), stride) in HEADS.items():
            pad = (kh // 2, _pad_w(kw, stride))
            self.add_module(name, nn.Conv2d(i, o, (kh, kw), stride=(1, stride), padding=pad))

    def head_state(self) -> dict[str, torch.Tensor]:
        """Everything but the fixed CQT buffers, which `FrontEndConstants` rebuild."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("cqt.")}

    def load_head_state(self, state: dict[str, torch.Tensor]) -> None:
        missing, unexpected = self.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("cqt.")]
        if missing or unexpected:
            raise KeyError(f"weights do not fit BasicPitch: missing {missing}, extra {unexpected}")

    def features(self, audio: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():  # the CQT has no parameters; skip its autograd graph
            logc = self.cqt(audio)
        return harmonic_stack(logc * self.bn_scale + self.bn_shift)

    def logits(self, audio: torch.Tensor) -> dict[str, torch.Tensor]:
        """Pre-sigmoid outputs (what the losses take), each (B, T, bins)."""
        x = self.features(audio.reshape(audio.shape[0], -1))
        contour = self.contour2(nnf.relu(self.contour1(x)))
        note_feat = nnf.relu(self.note1(torch.sigmoid(contour)))
        note = self.note2(note_feat)
        onset_feat = nnf.relu(self.onset1(x))
        onset = self.onset2(torch.cat([torch.sigmoid(note), onset_feat], dim=1))
        return {k: v[:, 0] for k, v in (("contour", contour), ("note", note), ("onset", onset))}

    def forward(self, audio: torch.Tensor, logits: bool = False) -> dict[str, torch.Tensor]:
        # `logits=True` is for training through DDP, which must see the forward call.
        out = self.logits(audio)
        return out if logits else {k: torch.sigmoid(v) for k, v in out.items()}


def _pad_w(kw: int, stride: int) -> int:
    # TensorFlow's "same" padding: over 264 bins it is symmetric for every head here.
    total = max((-(-N_CONTOUR_BINS // stride) - 1) * stride + kw - N_CONTOUR_BINS, 0)
    return total // 2

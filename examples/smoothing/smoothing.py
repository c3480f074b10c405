"""An exponential moving average with a learned rate per channel, on torchqrnn's ForgetMult.

    y_t = a * x_t + (1 - a) * y_{t-1},    a = sigmoid(logit), one logit per channel

is ``torchqrnn.forget_mult(a, x)`` with ``f`` constant in time: ``a.expand_as(x)`` is a stride-0 view, so
nothing of size ``T`` is materialised for it, and the gradient of the loss in each logit comes out of
ForgetMult's backward summed over time and batch. ``zero_phase=True`` runs the filter forward and then
backward (``reverse=True``) over the result, as ``scipy.signal.filtfilt`` does: a smoother with no lag that
needs the whole sequence.

The demonstration (from the repository's root; a few seconds):

    python examples/smoothing/smoothing.py

makes ``C`` channels of a random walk (step std ``q`` per channel, from smooth to jumpy) seen through
measurement noise (std ``r``), and fits each channel's rate to recover the clean walk by gradient descent on
the mean squared error. For this signal the best causal linear filter is known in closed form: the
steady-state Kalman filter of the local-level model, which *is* an EMA, with rate
``K = p / (p + r^2)`` where ``p = (q^2 + sqrt(q^4 + 4 q^2 r^2)) / 2``. The learned rates should land on
those gains; the script prints both, and the errors of the raw signal, the learned EMA, the Kalman EMA, and
the learned zero-phase smoother. The last line is a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

import torch
from torch import Tensor, nn

import torchqrnn


class Smoother(nn.Module):
    """Per-channel exponential moving average ``y_t = a x_t + (1 - a) y_{t-1}``, ``a = sigmoid(logit)``.

    ``forward(x (T, B, C)) -> y (T, B, C)``, starting from ``y_{-1} = x_0`` (so ``y_0 = x_0``: no pull
    towards zero at the start). ``zero_phase=True`` filters forward, then backward over the result.
    """

    def __init__(self, channels: int, rate: float = 0.5, zero_phase: bool = False) -> None:
        super().__init__()
        if not 0.0 < rate < 1.0:
            raise ValueError(f"Smoother: expected rate in (0, 1), got {rate!r}")
        self.logit = nn.Parameter(torch.full((channels,), math.log(rate / (1 - rate))))
        self.zero_phase = zero_phase

    @property
    def rate(self) -> Tensor:
        return torch.sigmoid(self.logit)

    def forward(self, x: Tensor) -> Tensor:
        a = self.rate.expand_as(x)  # (T, B, C), stride 0 in T and B
        y = torchqrnn.forget_mult(a, x, x[0])
        if self.zero_phase:
            y = torchqrnn.forget_mult(a, y, y[-1], reverse=True)  # reverse: h0 stands after the last step
        return y


def kalman_gain(q: Tensor, r: float) -> Tensor:
    """The steady-state Kalman gain of a random walk with step std ``q`` observed with noise std ``r``."""
    p = (q**2 + torch.sqrt(q**4 + 4 * q**2 * r**2)) / 2  # the predicted state variance at steady state
    return p / (p + r**2)


def random_walks(q: Tensor, r: float, steps: int, batch: int, seed: int) -> tuple[Tensor, Tensor]:
    """``(clean, noisy)``, both ``(steps, batch, channels)``: walks with per-channel step std ``q``."""
    generator = torch.Generator().manual_seed(seed)
    clean = torch.cumsum(torch.randn(steps, batch, len(q), generator=generator) * q, dim=0)
    noisy = clean + r * torch.randn(steps, batch, len(q), generator=generator)
    return clean, noisy


def fit(model: Smoother, clean: Tensor, noisy: Tensor, steps: int, lr: float) -> list[float]:
    """Adam on each channel's mean squared error; returns the loss of each step."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = ((model(noisy) - clean) ** 2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def per_channel_mse(estimate: Tensor, clean: Tensor) -> Tensor:
    return ((estimate - clean) ** 2).mean(dim=(0, 1))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--channels", type=int, default=6, help="channels, q from 0.01 to 1 (default: %(default)s)"
    )
    parser.add_argument(
        "--noise", type=float, default=1.0, help="measurement noise std r (default: %(default)s)"
    )
    parser.add_argument("--length", type=int, default=2000, help="steps per sequence (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=16, help="sequences per batch (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=300, help="Adam steps (default: %(default)s)")
    parser.add_argument("--lr", type=float, default=0.05, help="Adam's learning rate (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.channels < 1:
        parser.error(f"--channels: expected an integer >= 1, got {args.channels}")

    q = torch.logspace(-2, 0, args.channels)  # step std per channel: very smooth to jumpy
    train_clean, train_noisy = random_walks(q, args.noise, args.length, args.batch, args.seed)
    test_clean, test_noisy = random_walks(q, args.noise, args.length, args.batch, args.seed + 1)

    causal, zero_phase = Smoother(args.channels), Smoother(args.channels, zero_phase=True)
    fit(causal, train_clean, train_noisy, args.steps, args.lr)
    fit(zero_phase, train_clean, train_noisy, args.steps, args.lr)
    gains = kalman_gain(q, args.noise)
    kalman = Smoother(args.channels)
    with torch.no_grad():
        kalman.logit.copy_(torch.logit(gains))
        errors = {
            "noisy": per_channel_mse(test_noisy, test_clean),
            "learned": per_channel_mse(causal(test_noisy), test_clean),
            "kalman": per_channel_mse(kalman(test_noisy), test_clean),
            "zero_phase": per_channel_mse(zero_phase(test_noisy), test_clean),
        }

    print(
        f"{'q':>6} {'Kalman gain':>11} {'learned rate':>12} |  test MSE: {'noisy':>7} {'learned':>8} "
        f"{'Kalman':>8} {'zero-phase':>10}"
    )
    for c in range(args.channels):
        print(
            f"{q[c]:6.3f} {gains[c]:11.4f} {causal.rate[c]:12.4f} |  {'':9} {errors['noisy'][c]:7.3f} "
            f"{errors['learned'][c]:8.4f} {errors['kalman'][c]:8.4f} {errors['zero_phase'][c]:10.4f}"
        )
    summary = {
        "q": q.tolist(),
        "noise": args.noise,
        "kalman_gain": gains.tolist(),
        "learned_rate": causal.rate.tolist(),
        "zero_phase_rate": zero_phase.rate.tolist(),
        **{f"mse_{name}": values.tolist() for name, values in errors.items()},
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()

"""minGRU (Feng et al. 2024, "Were RNNs All We Needed?") on torchqrnn's ForgetMult.

minGRU drops the GRU's hidden-to-hidden products, which leaves a linear recurrence:

    z_t = sigmoid(W_z x_t),   h~_t = g(W_h x_t),   h_t = (1 - z_t) * h_{t-1} + z_t * h~_t

That is exactly ``torchqrnn.forget_mult(z, h~)``: ForgetMult's ``f`` is minGRU's update gate ``z``. The
paper trains it with a parallel scan in log space (its ``g`` keeps ``h~`` positive, so that it has a log);
this script puts the three ways of running the same recurrence side by side:

    forget_mult   torchqrnn's kernel (numba on CPU, Triton on CUDA)
    log_scan      the paper's log-space scan: cumsum and logcumsumexp, written here from its equations
    loop          a plain Python loop over time

and measures (from the repository's root; the corpus is ``../shared/data/pennchar``):

    python examples/mingru/mingru.py train --minutes 2    # a character model, bits per character
    python examples/mingru/mingru.py speed                # time per forward+backward, interleaved
    python examples/mingru/mingru.py grads                # gradient error against a float64 loop, by T

Each command prints a table and, last, one line of JSON with its figures.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

import torchqrnn
from torchqrnn.bench.timing import interleaved, machine_info, ratio

PENNCHAR = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "pennchar"
SCANS = ("forget_mult", "log_scan", "loop")


# -- the recurrence, three ways ----------------------------------------------------------------------------


def g(x: Tensor) -> Tensor:
    """The paper's activation for ``h~``: ``x + 0.5`` for ``x >= 0``, ``sigmoid(x)`` below; always > 0."""
    return torch.where(x >= 0, x + 0.5, torch.sigmoid(x))


def log_g(x: Tensor) -> Tensor:
    """``log(g(x))`` without forming ``g`` first: ``log(x + 0.5)`` above 0, ``-softplus(-x)`` below."""
    return torch.where(x >= 0, torch.log(F.relu(x) + 0.5), -F.softplus(-x))


def scan_forget_mult(k: Tensor, c: Tensor, h0: Tensor | None = None) -> Tensor:
    """minGRU's ``h`` for gate logits ``k`` and candidate pre-activations ``c``, both ``(T, B, H)``."""
    return torchqrnn.forget_mult(torch.sigmoid(k), g(c), h0)


def scan_log_space(k: Tensor, c: Tensor, h0: Tensor | None = None) -> Tensor:
    """The same ``h`` through the log-space parallel scan of the paper (section 3, appendix B).

    With ``a_t = 1 - z_t`` and ``b_t = z_t h~_t``, ``h_t = a_t h_{t-1} + b_t`` unrolls to
    ``h_t = A_t (h_0 + sum_{s <= t} b_s / A_s)`` where ``A_t = prod_{s <= t} a_s``. In logs:
    ``log h_t = a*_t + logcumsumexp_s(log b_s - a*_s)``, with ``a*_t = cumsum(log a)`` and ``h_0`` as a first
    term of the sum (``a*`` is 0 there). Every term is positive, which is why ``h~ = g(c) > 0``.
    """
    log_a = -F.softplus(k)  # log(1 - sigmoid(k))
    log_b = -F.softplus(-k) + log_g(c)  # log(sigmoid(k)) + log(h~)
    a_star = torch.cumsum(log_a, dim=0)
    terms = log_b - a_star
    if h0 is not None:  # log h0 at "step -1", where a* = 0
        terms = torch.cat([torch.log(h0).unsqueeze(0), terms])
        a_star = torch.cat([a_star.new_zeros(1, *a_star.shape[1:]), a_star])
    log_h = a_star + torch.logcumsumexp(terms, dim=0)
    h = torch.exp(log_h)
    return h if h0 is None else h[1:]


def scan_loop(k: Tensor, c: Tensor, h0: Tensor | None = None) -> Tensor:
    """The same ``h`` as the recurrence reads, one step at a time (PyTorch autograd)."""
    # unbind, not z[t]: each indexing's backward would write a gradient the size of all of z, O(T^2) in all
    z, candidate = torch.sigmoid(k).unbind(0), g(c).unbind(0)
    h = torch.zeros_like(c[0]) if h0 is None else h0
    steps = []
    for z_t, candidate_t in zip(z, candidate, strict=True):
        h = (1 - z_t) * h + z_t * candidate_t
        steps.append(h)
    return torch.stack(steps)


SCAN_FUNCTIONS: dict[str, Callable[[Tensor, Tensor, Tensor | None], Tensor]] = {
    "forget_mult": scan_forget_mult,
    "log_scan": scan_log_space,
    "loop": scan_loop,
}


# -- the module and a character model ----------------------------------------------------------------------


class MinGRU(nn.Module):
    """One minGRU layer: ``h_t = (1 - z_t) h_{t-1} + z_t g(W_h x_t)``, ``z_t = sigmoid(W_z x_t)``.

    ``forward(x (T, B, input_size), h0 (B, hidden_size) or None) -> (h (T, B, hidden_size), h_T (B, H))``.
    ``scan`` picks how the recurrence runs (``"forget_mult"``, ``"log_scan"`` or ``"loop"``); all three
    compute the same function, so a model trained with one runs with another.
    """

    def __init__(self, input_size: int, hidden_size: int, scan: str = "forget_mult") -> None:
        super().__init__()
        if scan not in SCAN_FUNCTIONS:
            raise ValueError(f"MinGRU: expected scan to be one of {SCANS}, got {scan!r}")
        self.hidden_size = hidden_size
        self.scan = scan
        self.linear = nn.Linear(input_size, 2 * hidden_size)  # rows [W_z; W_h]

    def forward(self, x: Tensor, h0: Tensor | None = None) -> tuple[Tensor, Tensor]:
        k, c = self.linear(x).chunk(2, dim=-1)  # gate logits, candidate pre-activations: (T, B, H) each
        h = SCAN_FUNCTIONS[self.scan](k, c, h0)
        return h, h[-1]


class CharModel(nn.Module):
    """Embedding, ``layers`` pre-norm residual minGRU blocks (``x + W_o minGRU(LayerNorm(x))``), a linear
    read-out: the shape of the paper's language model, small enough for a CPU."""

    def __init__(self, vocab: int, size: int, layers: int, scan: str = "forget_mult") -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, size)
        self.norms = nn.ModuleList(nn.LayerNorm(size) for _ in range(layers))
        self.rnns = nn.ModuleList(MinGRU(size, size, scan) for _ in range(layers))
        self.outs = nn.ModuleList(nn.Linear(size, size) for _ in range(layers))
        self.norm = nn.LayerNorm(size)
        self.head = nn.Linear(size, vocab)

    def forward(self, tokens: Tensor, state: list[Tensor] | None = None) -> tuple[Tensor, list[Tensor]]:
        """``tokens (T, B)`` -> ``(logits (T, B, vocab), every layer's last h)``."""
        x = self.embed(tokens)  # (T, B, size)
        last = []
        for i, (norm, rnn, out) in enumerate(zip(self.norms, self.rnns, self.outs, strict=True)):
            h, h_T = rnn(norm(x), None if state is None else state[i])
            x = x + out(h)
            last.append(h_T)
        return self.head(self.norm(x)), last


def read_chars(folder: Path) -> tuple[list[str], dict[str, Tensor]]:
    """pennchar's splits as tensors of character ids: characters are space-separated, ``_`` is a word break,
    and each line ends with an end-of-line symbol. Ids in order of first appearance in ``train.txt``."""
    symbols: dict[str, int] = {}
    splits = {}
    for split in ("train", "valid", "test"):
        path = folder / f"{split}.txt"
        if not path.is_file():
            raise FileNotFoundError(f"expected the pennchar corpus file {path} (train, valid, test .txt)")
        ids = []
        for line in path.read_text(encoding="utf-8").splitlines():
            for char in [*line.split(), "\n"]:
                if char not in symbols:
                    if split != "train":
                        raise ValueError(f"{path}: symbol {char!r} is not in train.txt")
                    symbols[char] = len(symbols)
                ids.append(symbols[char])
        splits[split] = torch.tensor(ids, dtype=torch.long)
    return list(symbols), splits


def columns(ids: Tensor, batch: int) -> Tensor:
    """``ids`` as ``batch`` contiguous streams side by side, ``(rows, batch)``; the tail that does not fill a
    row is dropped."""
    rows = len(ids) // batch
    return ids[: rows * batch].reshape(batch, rows).T.contiguous()


@torch.no_grad()
def bits_per_char(model: CharModel, ids: Tensor, batch: int = 64, bptt: int = 512) -> float:
    """Mean cross-entropy over ``ids`` in bits, every stream's state carried across segments."""
    model.eval()
    data = columns(ids, batch)
    state, total, count = None, 0.0, 0
    for i in range(0, data.shape[0] - 1, bptt):
        inputs, targets = data[i : i + bptt], data[i + 1 : i + 1 + bptt]
        inputs = inputs[: len(targets)]
        logits, state = model(inputs, state)
        total += F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum").item()
        count += targets.numel()
    model.train()
    return total / count / math.log(2)


def train(args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(args.seed)
    symbols, splits = read_chars(Path(args.data))
    model = CharModel(len(symbols), args.size, args.layers, args.scan)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    data = columns(splits["train"], args.batch_size)  # (rows, B)
    print(
        f"minGRU char model: {sum(p.numel() for p in model.parameters())} parameters, {len(symbols)} "
        f"symbols, {len(splits['train'])} training characters, scan={args.scan}"
    )
    budget = args.minutes * 60.0
    start, step, position, state, losses = time.perf_counter(), 0, 0, None, []
    while time.perf_counter() - start < budget and (args.steps is None or step < args.steps):
        if position + args.bptt + 1 > data.shape[0]:
            position, state = 0, None  # an epoch ends: start the streams again
        inputs = data[position : position + args.bptt]
        targets = data[position + 1 : position + 1 + args.bptt]
        position += args.bptt
        logits, state = model(inputs, state)
        state = [h.detach() for h in state]  # truncated backpropagation through time
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item() / math.log(2))
        step += 1
        if step % args.log_interval == 0:
            recent = sum(losses[-args.log_interval :]) / args.log_interval
            elapsed = time.perf_counter() - start
            rate = step * args.bptt * args.batch_size / elapsed
            print(
                f"step {step:5d}  {elapsed:6.1f} s  {rate:7.0f} chars/s  train {recent:.3f} bpc", flush=True
            )
    seconds = time.perf_counter() - start
    limit = args.eval_chars
    print("evaluating on valid and test ...", flush=True)
    valid = bits_per_char(model, splits["valid"][:limit])
    test = bits_per_char(model, splits["test"][:limit])
    print(
        f"after {seconds:.0f} s ({step} steps, {step * args.bptt * args.batch_size} characters): "
        f"valid {valid:.3f} bpc, test {test:.3f} bpc"
    )
    return {
        "command": "train",
        "scan": args.scan,
        "seconds": round(seconds, 1),
        "steps": step,
        "train_bpc_first": losses[0] if losses else None,
        "train_bpc_last": losses[-1] if losses else None,
        "valid_bpc": valid,
        "test_bpc": test,
        "size": args.size,
        "layers": args.layers,
        "batch_size": args.batch_size,
        "bptt": args.bptt,
        "threads": torch.get_num_threads(),
    }


# -- speed and accuracy ------------------------------------------------------------------------------------


def training_call(scan: Callable[..., Tensor], k: Tensor, c: Tensor, grad: Tensor) -> Callable[[], None]:
    """One forward+backward of ``scan`` (gradients accumulate in ``k`` and ``c``; only the time matters)."""
    return lambda: torch.autograd.backward(scan(k, c), grad)


def inference_call(scan: Callable[..., Tensor], k: Tensor, c: Tensor, grad: Tensor) -> Callable[[], None]:
    """One forward of ``scan`` without autograd."""

    def run() -> None:
        with torch.no_grad():
            scan(k, c)

    return run


def speed(args: argparse.Namespace) -> dict[str, Any]:
    """Time per call of each scan, forward+backward (training) and forward alone (inference), interleaved;
    ratios are medians of per-round ratios against ``forget_mult``."""
    results = []
    print(f"{'T':>6} {'B':>4} {'H':>5}  {'mode':9}  {'forget_mult':>12}  {'log_scan':>16}  {'loop':>16}")
    for T, B, H in args.shapes:
        k = torch.randn(T, B, H, requires_grad=True)
        c = torch.randn(T, B, H, requires_grad=True)
        grad = torch.randn(T, B, H)
        for mode, wrap in (("training", training_call), ("inference", inference_call)):
            candidates = {name: wrap(SCAN_FUNCTIONS[name], k, c, grad) for name in SCANS}
            samples = interleaved(candidates, rounds=args.rounds, min_seconds=args.min_seconds)
            row = {"T": T, "B": B, "H": H, "mode": mode}
            row |= {f"{name}_ms": samples[name].median * 1e3 for name in SCANS}
            row |= {
                f"{name}_over_forget_mult": ratio(samples[name], samples["forget_mult"]) for name in SCANS[1:]
            }
            results.append(row)
            print(
                f"{T:6d} {B:4d} {H:5d}  {mode:9}  {row['forget_mult_ms']:9.2f} ms  "
                f"{row['log_scan_ms']:7.2f} ms {row['log_scan_over_forget_mult']:5.1f}x  "
                f"{row['loop_ms']:7.2f} ms {row['loop_over_forget_mult']:5.1f}x",
                flush=True,
            )
    return {"command": "speed", "rows": results, "machine": machine_info()}


def relative_error(approx: Tensor, exact: Tensor) -> float:
    """``||approx - exact|| / ||exact||`` in float64; ``inf`` where ``approx`` is not finite."""
    approx = approx.double()
    if not torch.isfinite(approx).all():
        return math.inf
    return ((approx - exact).norm() / exact.norm()).item()


def outputs_and_gradients(
    scan: Callable[..., Tensor], k: Tensor, c: Tensor, weight: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """``h``, and the gradients in ``k`` and ``c`` of ``sum(h * weight)``, in the inputs' dtype."""
    k, c = k.detach().clone().requires_grad_(), c.detach().clone().requires_grad_()
    h = scan(k, c)
    dk, dc = torch.autograd.grad((h * weight).sum(), (k, c))
    return h.detach(), dk, dc


def gradient_errors(
    lengths: list[int], batch: int = 4, hidden: int = 64, seed: int = 0
) -> list[dict[str, Any]]:
    """Relative errors of float32 outputs and gradients of ``forget_mult`` and ``log_scan`` against a float64
    loop, at each sequence length. Gate logits and candidates are standard normal (so ``z`` is spread over
    (0, 1) as at initialisation), the loss is ``sum(h * w)`` for a random ``w``."""
    rows = []
    for T in lengths:
        generator = torch.Generator().manual_seed(seed)
        k, c, w = (torch.randn(T, batch, hidden, generator=generator, dtype=torch.float64) for _ in range(3))

        exact = outputs_and_gradients(scan_loop, k, c, w)
        row: dict[str, Any] = {"T": T}
        for name in ("forget_mult", "log_scan"):
            for part, approx, truth in zip(
                ("h", "dk", "dc"),
                outputs_and_gradients(SCAN_FUNCTIONS[name], k.float(), c.float(), w.float()),
                exact,
                strict=True,
            ):
                row[f"{name}_{part}"] = relative_error(approx, truth)
        rows.append(row)
    return rows


def grads(args: argparse.Namespace) -> dict[str, Any]:
    rows = gradient_errors(args.lengths, args.batch, args.hidden)
    print("relative error against a float64 loop (float32 inputs; h: outputs, dk / dc: gradients of the gate")
    print("logits and the candidates)")
    print(f"{'T':>6}  {'forget_mult h':>13} {'dk':>9} {'dc':>9}   {'log_scan h':>10} {'dk':>9} {'dc':>9}")
    for row in rows:
        print(
            f"{row['T']:6d}  {row['forget_mult_h']:13.1e} {row['forget_mult_dk']:9.1e} "
            f"{row['forget_mult_dc']:9.1e}   {row['log_scan_h']:10.1e} {row['log_scan_dk']:9.1e} "
            f"{row['log_scan_dc']:9.1e}"
        )
    return {"command": "grads", "batch": args.batch, "hidden": args.hidden, "rows": rows}


def shape(text: str) -> tuple[int, int, int]:
    try:
        T, B, H = (int(n) for n in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a shape TxBxH such as 1024x4x256, got {text!r}") from None
    return T, B, H


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's own setting)"
    )
    p = commands.add_parser(
        "train", help="train a minGRU character model on pennchar, report bits per char", parents=[common]
    )
    p.add_argument(
        "--data", default=str(PENNCHAR), help="folder with train/valid/test.txt (default: %(default)s)"
    )
    p.add_argument("--minutes", type=float, default=2.0, help="training time budget (default: %(default)s)")
    p.add_argument("--steps", type=int, default=None, help="stop after this many steps (default: no limit)")
    p.add_argument(
        "--scan", choices=SCANS, default="forget_mult", help="how the recurrence runs (default: %(default)s)"
    )
    p.add_argument("--size", type=int, default=256, help="embedding and hidden size (default: %(default)s)")
    p.add_argument("--layers", type=int, default=2, help="minGRU blocks (default: %(default)s)")
    p.add_argument(
        "--batch-size", type=int, default=32, help="streams trained side by side (default: %(default)s)"
    )
    p.add_argument(
        "--bptt", type=int, default=128, help="characters per training segment (default: %(default)s)"
    )
    p.add_argument("--lr", type=float, default=3e-3, help="Adam's learning rate (default: %(default)s)")
    p.add_argument(
        "--eval-chars",
        type=int,
        default=None,
        help="evaluate on the first N characters of valid and test (default: all)",
    )
    p.add_argument(
        "--log-interval", type=int, default=50, help="steps between progress lines (default: %(default)s)"
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p = commands.add_parser(
        "speed", help="time forget_mult, the log-space scan and a loop, interleaved", parents=[common]
    )
    p.add_argument(
        "--shapes",
        type=shape,
        nargs="+",
        default=[shape("256x16x256"), shape("1024x4x256")],
        help="TxBxH shapes to time (default: 256x16x256 1024x4x256)",
    )
    p.add_argument(
        "--rounds", type=int, default=9, help="interleaved rounds per shape (default: %(default)s)"
    )
    p.add_argument(
        "--min-seconds", type=float, default=0.05, help="least time per sample (default: %(default)s)"
    )
    p = commands.add_parser(
        "grads", help="gradient errors of forget_mult and the log-space scan by length", parents=[common]
    )
    p.add_argument(
        "--lengths",
        type=int,
        nargs="+",
        default=[64, 256, 1024, 4096, 16384],
        help="sequence lengths (default: 64 256 1024 4096 16384)",
    )
    p.add_argument("--batch", type=int, default=4, help="batch size (default: %(default)s)")
    p.add_argument("--hidden", type=int, default=64, help="hidden size (default: %(default)s)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)  # numba's kernels follow torch's setting
    summary = {"train": train, "speed": speed, "grads": grads}[args.command](args)
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()

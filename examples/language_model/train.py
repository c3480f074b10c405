"""Train an AWD-QRNN (or, for comparison, an AWD-LSTM) word-level language model.

A readable reimplementation of salesforce/awd-lstm-lm's ``main.py`` on ``torchqrnn``: variable-length
truncated BPTT, SGD that switches to averaged SGD when validation stalls, gradient clipping, activation
regularisation, evaluation on valid and test. ``--model LSTM`` runs the same harness with ``nn.LSTM``.

    # from the repository's root; the corpora are folders with train.txt, valid.txt, test.txt
    python examples/language_model/train.py --preset cpu-small --data ../shared/data/penn --minutes 10
    python examples/language_model/train.py --preset cpu-small --data ../shared/data/penn --model LSTM
    python examples/language_model/train.py --preset awd-ptb --data data/penn --save runs/PTB.pt  # a recipe
    python examples/language_model/train.py --resume runs/PTB.pt  # after a crash: on where it stopped
    torchrun --nproc_per_node 2 examples/language_model/train.py --preset cpu-small ...  # DDP

Every field of :class:`Config` is also an option (``--batch-size 20`` or awd-lstm-lm's ``--batch_size 20``);
the order of precedence is Config's defaults, then the preset, then the command line. A checkpoint is
written atomically (``--save``) at every evaluation; ``--resume`` restores the model, the optimizer, the data
position, the recurrent state and the random generators, so the resumed run takes the very steps the killed
one would have taken. SIGINT (Ctrl+C) or SIGTERM (``kill``, a scheduler's stop) finishes the step, evaluates,
saves (without ``--save``, beside the log under its name) and prints the command that resumes; a second one
stops at once. The last line printed is one JSON object summarising the run.

Each new run writes a new JSON-lines log: by default ``runs/<model>-<preset>-<date>-<time>.jsonl`` (``--out``
is the folder, which .gitignore covers); a run resumed with ``--resume`` appends to the log of the run it
continues. A new run refuses a ``--log`` or ``--save`` path that already exists, so an earlier run's log or
checkpoint is never mixed with or overwritten by another run's.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import random
import re
import shlex
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

# isort: split
from data import Corpus, batchify, get_batch
from model import RNNModel, detach


@dataclass
class Config:
    # The defaults are awd-lstm-lm's main.py defaults; a preset overrides some of them.
    preset: str = ""  # a recipe: "awd-ptb", "awd-wt2" or "cpu-small" (it overrides some of these defaults)
    data: str = "data/penn"  # folder with train.txt, valid.txt, test.txt
    model: str = "QRNN"  # "QRNN" or "LSTM"
    # model
    emsize: int = 400  # word embedding size, also the last layer's hidden size (tied weights)
    nhid: int = 1150  # hidden size of the other layers
    nlayers: int = 3  # recurrent layers
    # regularisation
    dropout: float = 0.4  # locked dropout on the last layer's output
    dropouth: float = 0.3  # locked dropout between layers
    dropouti: float = 0.65  # locked dropout on the embedded input
    dropoute: float = 0.1  # embedding dropout: fraction of words dropped from the vocabulary per batch
    wdrop: float = 0.5  # weight drop: LSTM hidden-to-hidden matrices, QRNN projections
    alpha: float = 2.0  # activation regularisation: alpha * mean(output^2) on the last (dropped) output
    beta: float = 1.0  # temporal activation regularisation: beta * mean((h_t - h_{t-1})^2), last layer
    # optimisation
    optimizer: str = "sgd"  # "sgd" (averaged SGD once validation stalls), "asgd" (from the start), "adam"
    lr: float = 30.0  # scaled per step by seq_len / bptt
    clip: float = 0.25  # gradient norm clipping, 0 = none
    wdecay: float = 1.2e-6  # weight decay
    nonmono: int = 5  # switch to ASGD when validation is worse than the best from `nonmono` evaluations ago
    batch_size: int = 80  # columns of the training stream, all ranks together
    bptt: int = 70  # mean sequence length (5% of segments use bptt / 2, then N(., 5) jitter)
    epochs: int = 8000  # passes over the training data
    # evaluation and logging
    eval_batch_size: int = 10  # columns of the validation stream
    test_batch_size: int = 1  # columns of the test stream
    eval_interval: int = 0  # evaluate (and checkpoint) every this many steps, besides each epoch's end
    log_interval: int = 200  # steps between progress-bar updates of loss and perplexity
    # run
    seed: int = 1111  # random seed of the weights, the dropout masks and the segment lengths
    minutes: float = 0.0  # wall-clock budget over all resumed runs (training and evaluations), 0 = none
    max_steps: int = 0  # optimizer steps over all resumed runs, 0 = none
    save: str = ""  # checkpoint path, written at every evaluation
    resume: str = ""  # checkpoint to continue from (its config, then this command line's options)
    log: str = ""  # JSON-lines log (start, each evaluation, summary); "" = a new file in `out`, "none" = none
    out: str = "runs"  # folder of the default log (created; .gitignore covers runs/)
    device: str = "auto"  # "auto" (cuda if available), "cpu", "cuda"


# awd-lstm-lm's README commands for word-level PTB and WT2, option for option (the rest are main.py's
# defaults, which are Config's); LSTM beside QRNN so that `--model LSTM` runs that model's own recipe.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "awd-ptb": {
        "QRNN": dict(data="data/penn", batch_size=20, clip=0.2, wdrop=0.1, nhid=1550, nlayers=4, emsize=400,
                     dropouth=0.3, seed=9001, dropouti=0.4, epochs=550),
        "LSTM": dict(data="data/penn", batch_size=20, dropouti=0.4, dropouth=0.25, seed=141, epochs=500),
    },
    "awd-wt2": {
        "QRNN": dict(data="data/wikitext-2", epochs=500, clip=0.25, dropouti=0.4, dropouth=0.2, nhid=1550,
                     nlayers=4, seed=4002, wdrop=0.1, batch_size=40),
        "LSTM": dict(data="data/wikitext-2", epochs=750, dropouth=0.2, seed=1882),
    },
    # Learns something in minutes on 2 CPU cores: small, lightly regularised, Adam (averaged SGD pays off
    # over many epochs; awd-lstm-lm's fast WikiText-103 QRNN recipe uses Adam too). The LSTM's nhid gives it
    # the QRNN's number of parameters.
    "cpu-small": {
        "QRNN": dict(data="data/penn", emsize=128, nhid=512, nlayers=2),
        "LSTM": dict(data="data/penn", emsize=128, nhid=256, nlayers=2),
    },
}  # fmt: skip
_SMALL = dict(dropout=0.1, dropouth=0.1, dropouti=0.1, dropoute=0.0, wdrop=0.0, alpha=0.0, beta=0.0,
              optimizer="adam", lr=6e-3, clip=0.25, batch_size=20, bptt=35, eval_batch_size=10,
              test_batch_size=10, eval_interval=300, log_interval=10, seed=1111)  # fmt: skip
for _model in ("QRNN", "LSTM"):
    PRESETS["cpu-small"][_model].update(_SMALL)


def _option_help() -> dict[str, str]:
    """Each Config field's help text: the comment on its line (Config's comments are the documentation)."""
    source = inspect.getsource(Config)
    return dict(re.findall(r"^    (\w+): [^=\n]+=[^#\n]+#\s*(.+)$", source, flags=re.MULTILINE))


def build_parser() -> argparse.ArgumentParser:
    """One option per Config field; an option not given is absent from the result (argparse.SUPPRESS)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    helps = _option_help()
    for f in fields(Config):
        # --batch-size, and awd-lstm-lm's spelling --batch_size
        names = {f"--{f.name.replace('_', '-')}", f"--{f.name}"}
        # argparse's ArgumentDefaultsHelpFormatter skips SUPPRESS defaults: the default is written here
        help_text = f"{helps[f.name]} (default: {f.default!r})".replace("%", "%%")
        parser.add_argument(
            *sorted(names), dest=f.name, type=type(f.default), default=argparse.SUPPRESS, help=help_text
        )
    return parser


def parse_args(argv: list[str] | None) -> tuple[Config, dict[str, Any] | None]:
    """The run's Config, and the checkpoint to resume from (or None)."""
    parser = build_parser()
    given = vars(parser.parse_args(argv))
    if given.get("resume"):
        checkpoint = torch.load(given["resume"], map_location="cpu", weights_only=True)
        return replace(Config(**checkpoint["config"]), **given), checkpoint
    if given.get("preset") and given["preset"] not in PRESETS:
        parser.error(f"--preset: expected one of {sorted(PRESETS)}, got {given['preset']!r}")
    model = given.get("model", Config.model)
    if model not in ("QRNN", "LSTM"):
        parser.error(f"--model: expected QRNN or LSTM, got {model!r}")
    if int(os.environ.get("RANK", "0")) == 0:  # under DDP rank 0 writes them, and checks them alone
        for option in ("log", "save"):
            path = given.get(option, "")
            if path not in ("", "none") and os.path.exists(path):
                parser.error(
                    f"--{option} {path}: it exists, and this is a new run; --resume CHECKPOINT continues "
                    "a run, otherwise give another path or remove it"
                )
    preset = PRESETS[given["preset"]][model] if given.get("preset") else {}
    return replace(Config(), **{**preset, **given}), None


def new_run_path(cfg: Config, suffix: str) -> str:
    """A file of its own in ``cfg.out`` (a new run's log, or the checkpoint of a run stopped by a signal
    without ``--save``), created here so that no other run takes it."""
    os.makedirs(cfg.out, exist_ok=True)
    stem = f"{cfg.model}-{cfg.preset or 'custom'}-{time.strftime('%Y%m%d-%H%M%S')}"
    for n in range(1, 1000):
        path = os.path.join(cfg.out, f"{stem}{suffix}" if n == 1 else f"{stem}-{n}{suffix}")
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"no free name {stem}-N{suffix} in {cfg.out!r}")


def signal_checkpoint_path(cfg: Config) -> str:
    """Where a run without ``--save`` saves when a signal stops it: beside its log, under the log's name
    (``runs/QRNN-cpu-small-<date>-<time>.pt``), or a new file in ``cfg.out`` when that is taken or there is
    no log."""
    if cfg.log not in ("", "none"):
        path = os.path.splitext(cfg.log)[0] + ".pt"
        if not os.path.exists(path):
            return path
    return new_run_path(cfg, ".pt")


@dataclass
class Progress:
    """Where training stands; saved in checkpoints so that a resumed run carries on exactly."""

    step: int = 0
    epoch: int = 1
    position: int = 0  # row of the training stream where the next segment starts
    tokens: int = 0  # training tokens processed, all ranks
    seconds: float = 0.0  # wall-clock seconds, all resumed runs
    eval_seconds: float = 0.0  # of which evaluating and checkpointing
    optimizer: str = "sgd"  # the optimizer in use: "sgd", "asgd" or "adam"
    val_losses: list[float] = field(default_factory=list)  # SGD's validation history (the ASGD trigger)
    loss_sum: float = 0.0  # sum of the training losses since the last scheduled evaluation
    loss_steps: int = 0  # and their number


def make_optimizer(kind: str, model: nn.Module, cfg: Config) -> torch.optim.Optimizer:
    if kind == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, weight_decay=cfg.wdecay)
    if kind == "asgd":  # t0 = 0, lambd = 0: a plain running mean of the weights from the switch on
        return torch.optim.ASGD(model.parameters(), lr=cfg.lr, t0=0, lambd=0.0, weight_decay=cfg.wdecay)
    if kind == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.wdecay)
    raise ValueError(f"expected optimizer 'sgd', 'asgd' or 'adam', got {kind!r}")


@contextmanager
def averaged_weights(model: nn.Module, optimizer: torch.optim.Optimizer) -> Iterator[None]:
    """With ASGD, swap in its running average of the weights (the model awd-lstm-lm evaluates and keeps)."""
    swapped = []
    if isinstance(optimizer, torch.optim.ASGD):
        with torch.no_grad():
            for p in model.parameters():
                if "ax" in optimizer.state.get(p, {}):
                    swapped.append((p, p.clone()))
                    p.copy_(optimizer.state[p]["ax"])
    try:
        yield
    finally:
        with torch.no_grad():
            for p, raw in swapped:
                p.copy_(raw)


@torch.no_grad()
def evaluate(model: RNNModel, source: Tensor, bptt: int, desc: str = "", show: bool = False) -> float:
    """Mean cross-entropy per token over ``source`` ``(rows, B)``, every rank's columns together.

    With ``show``, a progress bar (``desc``) counts the segments on stderr and vanishes when done."""
    model.eval()
    total = torch.zeros(2, dtype=torch.float64, device=source.device)  # [sum of losses, tokens]
    if source.shape[1] > 0:  # a rank can hold no column when the batch is smaller than the world
        state = model.init_state(source.shape[1])
        starts = range(0, source.shape[0] - 1, bptt)
        bar = tqdm(
            starts, desc=desc, unit="seg", leave=False, disable=not show, mininterval=1.0, dynamic_ncols=True
        )
        for i in bar:
            x, y = get_batch(source, i, bptt)
            logits, state, _, _ = model(x, state)
            total[0] += F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum")  # (T*B, V)
            total[1] += y.numel()
    if dist.is_initialized():
        dist.all_reduce(total)
    model.train()
    return (total[0] / total[1]).item()


def gather(obj: Any) -> list[Any]:
    """``obj`` from every rank, in rank order (just ``[obj]`` without DDP)."""
    if not dist.is_initialized():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def rng_state() -> dict[str, Tensor | None]:
    return {
        "cpu": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
    }


def save_atomically(obj: dict[str, Any], path: str) -> None:
    """Write next to ``path`` and rename: a run killed while saving leaves the previous checkpoint intact."""
    tmp = f"{path}.tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def log_record(path: str, record: dict[str, Any]) -> None:
    if path not in ("", "none"):
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    cfg, checkpoint = parse_args(argv)

    # -- devices and processes: torchrun sets WORLD_SIZE, RANK and LOCAL_RANK
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    if world > 1:
        dist.init_process_group("nccl" if cuda else "gloo")
    rank = dist.get_rank() if world > 1 else 0
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    master = rank == 0
    if cfg.batch_size % world:
        raise ValueError(f"expected batch_size divisible by the {world} processes, got {cfg.batch_size}")

    # -- data: each rank reads its own block of columns of the batched streams
    corpus = Corpus(cfg.data)
    ntoken = len(corpus)

    def columns(ids: Tensor, batch_size: int) -> Tensor:
        return batchify(ids, batch_size).tensor_split(world, dim=1)[rank].contiguous().to(device)

    train_data = columns(corpus.train, cfg.batch_size)  # (rows, batch_size / world)
    val_data = columns(corpus.valid, cfg.eval_batch_size)
    test_data = columns(corpus.test, cfg.test_batch_size)
    rows, local_batch = train_data.shape

    # -- model and optimizer
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    model = RNNModel(cfg.model, ntoken, cfg.emsize, cfg.nhid, cfg.nlayers, cfg.dropout, cfg.dropouth,
                     cfg.dropouti, cfg.dropoute, cfg.wdrop).to(device)  # fmt: skip
    params = sum(p.numel() for p in model.parameters())  # the tied matrix counts once
    progress = Progress(optimizer=cfg.optimizer)
    bptt_rng = random.Random(cfg.seed)  # segment lengths: the same stream on every rank
    torch.manual_seed(cfg.seed + rank)  # dropout masks: a different stream on each rank
    state = model.init_state(local_batch)
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        progress = Progress(**checkpoint["progress"])
        bptt_rng.setstate(checkpoint["bptt_rng"])
        state = [
            tuple(t.tensor_split(world, dim=1)[rank].to(device) for t in layer)
            for layer in checkpoint["state"]
        ]
        if len(checkpoint["rng"]) == world:  # with another number of processes, dropout draws differ
            torch.set_rng_state(checkpoint["rng"][rank]["cpu"])
            if cuda and checkpoint["rng"][rank]["cuda"] is not None:
                torch.cuda.set_rng_state(checkpoint["rng"][rank]["cuda"])
    optimizer = make_optimizer(progress.optimizer, model, cfg)
    if checkpoint is not None:
        optimizer.load_state_dict(checkpoint["optimizer"])
    trainer = DistributedDataParallel(model, device_ids=[device] if cuda else None) if world > 1 else model

    if master:
        if not cfg.log:  # a new run: a new log of its own (a resumed one keeps its run's log)
            cfg = replace(cfg, log=new_run_path(cfg, ".jsonl"))
        for path in (cfg.log, cfg.save):
            if path not in ("", "none") and os.path.dirname(path):
                os.makedirs(os.path.dirname(path), exist_ok=True)
        what = f"resumed at step {progress.step}" if checkpoint else "from scratch"
        print(f"{cfg.model} {params:,} parameters, {ntoken:,} words, {world} process(es) on {device}, {what}")
        print(json.dumps(asdict(cfg)))
        if cfg.log != "none":
            print(f"log: {cfg.log}")
        log_record(cfg.log, {"event": "start", "model": cfg.model, "params": params, "world_size": world,
                             "step": progress.step, "config": asdict(cfg)})  # fmt: skip

    # -- checkpoints and evaluation
    signalled = False  # a signal stopped the run (rank 0's, agreed by every rank in should_stop)
    saved_at = -1  # the step of the last checkpoint written to a file

    def checkpoint_now() -> None:
        nonlocal cfg, saved_at
        if signalled and not cfg.save and master:  # a signal always leaves a checkpoint
            cfg = replace(cfg, save=signal_checkpoint_path(cfg))
        full_state = [
            tuple(torch.cat(parts, dim=1) for parts in zip(*layers, strict=True))  # every rank's columns
            for layers in zip(*gather([tuple(t.detach().cpu() for t in s) for s in state]), strict=True)
        ]
        rngs = gather(rng_state())
        if master and cfg.save:
            averaged = None
            if isinstance(optimizer, torch.optim.ASGD):
                with averaged_weights(model, optimizer):
                    averaged = {k: v.clone() for k, v in model.state_dict().items()}
            save_atomically({"config": asdict(cfg), "vocab": corpus.words, "model": model.state_dict(),
                             "averaged": averaged, "optimizer": optimizer.state_dict(),
                             "progress": asdict(progress), "state": full_state, "rng": rngs,
                             "bptt_rng": bptt_rng.getstate()}, cfg.save)  # fmt: skip
        if cfg.save or signalled:  # (the same on every rank: only rank 0 holds the path)
            saved_at = progress.step

    def evaluate_and_checkpoint(train_loss: float, scheduled: bool) -> float:
        """Validate and save. Only scheduled evaluations (each epoch's end, every ``eval_interval`` steps)
        feed the ASGD trigger, so that a run stopped early and resumed takes the steps of an unbroken one."""
        nonlocal optimizer
        started = time.perf_counter()
        with averaged_weights(model, optimizer):
            val_loss = evaluate(model, val_data, cfg.bptt, "validating", show=master)
        stalled = len(progress.val_losses) > cfg.nonmono and val_loss > min(
            progress.val_losses[: len(progress.val_losses) - cfg.nonmono]
        )
        if progress.optimizer == "sgd" and scheduled:
            progress.val_losses.append(val_loss)
            if stalled:  # awd-lstm-lm's non-monotone trigger
                optimizer = make_optimizer("asgd", model, cfg)
                progress.optimizer = "asgd"
        progress.eval_seconds += time.perf_counter() - started
        progress.seconds = elapsed()
        checkpoint_now()
        record = {"event": "eval", "step": progress.step, "epoch": progress.epoch, "tokens": progress.tokens,
                  "seconds": round(elapsed(), 2), "train_loss": train_loss, "val_loss": val_loss,
                  "val_ppl": math.exp(val_loss), "optimizer": progress.optimizer}  # fmt: skip
        if master:
            tqdm.write(
                f"| step {progress.step:6d} | epoch {progress.epoch:3d} | {record['seconds']:8.1f}s | "
                f"train ppl {math.exp(train_loss):8.2f} | valid ppl {math.exp(val_loss):8.2f} | "
                f"{progress.optimizer}"
            )
            log_record(cfg.log, record)
        return val_loss

    # -- stopping: budget, epochs, a signal. SIGINT (Ctrl+C) or SIGTERM (what Slurm, Kubernetes and docker
    # send before they kill) finishes the step, evaluates and saves; a second signal stops at once.
    started_at, seconds_before = time.perf_counter(), progress.seconds

    def elapsed() -> float:
        return seconds_before + time.perf_counter() - started_at

    interrupted: signal.Signals | None = None
    stop_signals = (signal.SIGINT, signal.SIGTERM)

    def on_signal(signum: int, frame: Any) -> None:
        nonlocal interrupted
        interrupted = signal.Signals(signum)
        if master:  # os.write: print could reenter a write the signal interrupted
            message = (
                f"\n{interrupted.name}: finishing the step, then saving; a second signal stops at once\n"
            )
            os.write(2, message.encode())
        for sig, handler in previous_handlers.items():  # the second signal meets the usual handlers
            signal.signal(sig, handler)

    previous_handlers = {sig: signal.signal(sig, on_signal) for sig in stop_signals}

    def should_stop() -> bool:
        nonlocal signalled
        signalled = interrupted is not None
        stop = (
            signalled
            or (cfg.max_steps > 0 and progress.step >= cfg.max_steps)
            or (cfg.minutes > 0 and elapsed() >= 60 * cfg.minutes)
            or (progress.epoch >= cfg.epochs and progress.position >= rows - 2)
        )
        if world > 1:  # rank 0's clock and signals decide for everyone: all ranks take the same steps
            flags = torch.tensor([stop, signalled], dtype=torch.uint8, device=device)
            dist.broadcast(flags, src=0)
            stop, signalled = bool(flags[0].item()), bool(flags[1].item())
        return stop

    # -- training
    model.train()
    val_loss = math.nan
    evaluated_at = progress.step if checkpoint is not None else -1  # a checkpoint follows an evaluation
    # the training loss since the last scheduled evaluation, carried over a resume
    loss_sum = torch.tensor(progress.loss_sum, dtype=torch.float32, device=device)
    loss_steps = progress.loss_steps
    bar = None
    stop = should_stop()
    while not stop:
        if progress.position >= rows - 2:  # end of a pass over the data: next epoch, fresh state ("reset()")
            progress.epoch, progress.position, state = progress.epoch + 1, 0, model.init_state(local_batch)
        if bar is None:
            bar = tqdm(total=rows * cfg.batch_size, initial=progress.position * cfg.batch_size, unit="tok",
                       unit_scale=True, desc=f"epoch {progress.epoch}", disable=not master,
                       mininterval=1.0, dynamic_ncols=True)  # fmt: skip

        # A segment of random length (awd-lstm-lm): every token is at a different place in its segment from
        # one epoch to the next. The learning rate follows the length, so each token weighs the same.
        bptt = cfg.bptt if bptt_rng.random() < 0.95 else cfg.bptt / 2
        seq_len = max(5, int(bptt_rng.gauss(bptt, 5)))
        x, y = get_batch(train_data, progress.position, seq_len)  # (T, B / world) each
        lr = optimizer.param_groups[0]["lr"]
        optimizer.param_groups[0]["lr"] = lr * seq_len / cfg.bptt

        state = detach(state)  # backpropagate through this segment only
        logits, state, raw, dropped = trainer(x, state)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())  # mean over this rank's tokens (T*B, V)
        objective = loss
        if cfg.alpha:
            objective = objective + cfg.alpha * dropped.pow(2).mean()
        if cfg.beta:
            objective = objective + cfg.beta * (raw[1:] - raw[:-1]).pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        objective.backward()  # DDP averages the ranks' gradients: equal token counts make it the global mean
        if cfg.clip:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
        optimizer.step()
        optimizer.param_groups[0]["lr"] = lr

        progress.step += 1
        progress.position += seq_len
        progress.tokens += x.numel() * world
        progress.seconds = elapsed()
        loss_sum += loss.detach()
        loss_steps += 1
        bar.update(x.numel() * world)
        if cfg.log_interval and progress.step % cfg.log_interval == 0:
            train_loss = loss_sum.item() / loss_steps
            bar.set_postfix(loss=f"{train_loss:.3f}", ppl=f"{math.exp(train_loss):.1f}", lr=f"{lr:g}")

        end_of_epoch = progress.position >= rows - 2
        scheduled = end_of_epoch or (cfg.eval_interval > 0 and progress.step % cfg.eval_interval == 0)
        stop = should_stop()
        if scheduled or stop:
            train_loss = loss_sum.item() / loss_steps
            if scheduled:  # the running training loss restarts at the evaluations an unbroken run makes
                loss_sum, loss_steps = torch.zeros((), device=device), 0
            progress.loss_sum, progress.loss_steps = loss_sum.item(), loss_steps  # into the checkpoint
            val_loss = evaluate_and_checkpoint(train_loss, scheduled)
            evaluated_at = progress.step
            # A budget that ran out (or a signal that came) during the evaluation ends the run here
            stop = stop or should_stop()
        if end_of_epoch:
            bar.close()
            bar = None
    if bar is not None:
        bar.close()
    for sig, handler in previous_handlers.items():
        signal.signal(sig, handler)
    if signalled and saved_at != progress.step:  # it came during an evaluation of a run without --save
        checkpoint_now()
    if signalled and master:
        assert interrupted is not None
        launcher = ["torchrun", "--nproc_per_node", str(world)] if world > 1 else ["python"]
        resume = [*launcher, os.path.relpath(__file__), "--resume", cfg.save]
        print(
            f"interrupted by {interrupted.name} at step {progress.step}: checkpoint saved to {cfg.save}\n"
            f"resume with: {shlex.join(resume)}",
            flush=True,
        )
    if evaluated_at != progress.step:  # resumed a finished run: nothing trained, evaluate all the same
        val_loss = evaluate_and_checkpoint(math.nan, scheduled=False)

    # -- final evaluation and summary
    with averaged_weights(model, optimizer):
        test_loss = evaluate(model, test_data, cfg.bptt, "testing", show=master)
    train_seconds = progress.seconds - progress.eval_seconds
    summary = {
        "model": cfg.model,
        "preset": cfg.preset,
        "params": params,
        "tokens_per_sec": round(progress.tokens / max(train_seconds, 1e-9), 1),  # training steps only
        "val_ppl": round(math.exp(val_loss), 2),
        "test_ppl": round(math.exp(test_loss), 2),
        "epochs": round(progress.epoch - 1 + min(progress.position, rows) / rows, 3),
        "steps": progress.step,
        "seconds": round(progress.seconds, 1),
        "world_size": world,
        "optimizer": progress.optimizer,
    }
    if master:
        log_record(cfg.log, {"event": "summary", **summary})
        print(json.dumps(summary))
    if world > 1:
        dist.destroy_process_group()
    return summary


if __name__ == "__main__":
    main()

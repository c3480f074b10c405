"""examples/language_model: corpus and batching, training, resume, the time budget, DDP, plots, generation.

Every run here trains a tiny model on a tiny corpus the test writes (a toy grammar), for a few steps.
"""

from __future__ import annotations

import json
import os
import random
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("tqdm", reason="examples/language_model needs the `examples` extra (tqdm, matplotlib)")

ROOT = Path(__file__).resolve().parents[2]
LM = ROOT / "examples" / "language_model"
SHARED_PENN = ROOT.parent / "shared" / "data" / "penn"
sys.path.insert(0, str(LM))

import data  # noqa: E402
import generate  # noqa: E402
import model  # noqa: E402
import train  # noqa: E402

# A model small enough for a few dozen steps in well under a second each.
TINY = ["--emsize", "16", "--nhid", "24", "--nlayers", "2", "--batch-size", "4", "--bptt", "8",
        "--eval-batch-size", "4", "--test-batch-size", "2", "--lr", "5", "--log-interval", "5"]  # fmt: skip
NO_DROPOUT = ["--dropout", "0", "--dropouth", "0", "--dropouti", "0", "--dropoute", "0", "--wdrop", "0"]
SUMMARY_KEYS = {"model", "params", "tokens_per_sec", "val_ppl", "test_ppl", "epochs", "seconds"}


def write_corpus(folder: Path, lines: dict[str, int], seed: int = 0) -> Path:
    """A toy grammar: "the ADJ NOUN VERB the NOUN", one sentence a line, stray whitespace included."""
    rng = random.Random(seed)
    adjectives, nouns = ["big", "small", "red", "old"], ["cat", "dog", "bird", "fish"]
    verbs = ["eats", "sees"]
    folder.mkdir(parents=True, exist_ok=True)
    for split, count in lines.items():
        sentences = [
            f" the {rng.choice(adjectives)} {rng.choice(nouns)}  {rng.choice(verbs)} the\t{rng.choice(nouns)}"
            for _ in range(count)
        ]
        (folder / f"{split}.txt").write_text("\n".join(sentences) + "\n", encoding="utf-8")
    return folder


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread, and a busy machine stalls multi-threaded small ops badly."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"), {"train": 400, "valid": 40, "test": 40})


def run(corpus: Path, *args: str) -> dict[str, Any]:
    # default logs go to a folder beside the corpus, never into the repository
    return train.main(["--data", str(corpus), "--out", str(corpus.parent / "runs"), *TINY, *args])


def records(log: Path, event: str) -> list[dict[str, Any]]:
    return [r for r in map(json.loads, log.read_text().splitlines()) if r["event"] == event]


# -- corpus and batching


def test_corpus_tokenisation(tmp_path: Path) -> None:
    (tmp_path / "train.txt").write_text("a b\n  c a \n\n", encoding="utf-8")
    (tmp_path / "valid.txt").write_text("b d\n", encoding="utf-8")
    (tmp_path / "test.txt").write_text("e", encoding="utf-8")  # no final newline: still one line
    corpus = data.Corpus(str(tmp_path))
    assert corpus.words == ["a", "b", "<eos>", "c", "d", "e"]  # first appearance, train then valid then test
    assert corpus.train.tolist() == [0, 1, 2, 3, 0, 2, 2]  # the empty line is one <eos>
    assert corpus.valid.tolist() == [1, 4, 2]
    assert corpus.test.tolist() == [5, 2]
    with pytest.raises(FileNotFoundError, match=r"train\.txt"):
        data.Corpus(str(tmp_path / "missing"))


def test_batchify_and_get_batch() -> None:
    source = data.batchify(torch.arange(11), 3)  # 3 columns of 3 rows; tokens 9 and 10 dropped
    assert source.tolist() == [[0, 3, 6], [1, 4, 7], [2, 5, 8]]  # column b reads tokens [3b, 3b + 3)
    x, y = data.get_batch(source, 0, 2)
    assert x.tolist() == [[0, 3, 6], [1, 4, 7]] and y.tolist() == [[1, 4, 7], [2, 5, 8]]
    x, y = data.get_batch(source, 1, 5)  # cut at the end: the last row has no target
    assert x.tolist() == [[1, 4, 7]] and y.tolist() == [[2, 5, 8]]


@pytest.mark.skipif(not SHARED_PENN.is_dir(), reason="needs ../shared/data/penn")
def test_penn_counts_match_awd_lstm_lm() -> None:
    corpus = data.Corpus(str(SHARED_PENN))  # the counts in shared/data/README.md
    assert (corpus.train.numel(), corpus.valid.numel(), corpus.test.numel()) == (929_589, 73_760, 82_430)
    assert len(corpus) == 10_000


# -- the model and the presets


def test_weight_drop_keeps_plain_parameters() -> None:
    for rnn_type, name in (("QRNN", "rnns.0.linear.weight"), ("LSTM", "rnns.0.weight_hh_l0")):
        lm = model.RNNModel(rnn_type, 50, 8, 12, 2, 0, 0, 0, 0, wdrop=0.5)
        assert name in lm.state_dict()
        before = lm.get_parameter(name).detach().clone()
        words = torch.randint(50, (6, 3))
        torch.manual_seed(1)
        first, _, _, _ = lm(words, lm.init_state(3))
        first.sum().backward()
        torch.manual_seed(2)
        second, _, _, _ = lm(words, lm.init_state(3))
        assert not torch.equal(first, second)  # a new mask on every forward
        assert torch.equal(lm.get_parameter(name), before)  # the parameter itself is never dropped
        assert lm.get_parameter(name).grad is not None
        lm.eval()  # no weight drop in evaluation
        assert torch.equal(lm(words, lm.init_state(3))[0], lm(words, lm.init_state(3))[0])


def test_presets_are_awd_lstm_lm_readme_commands() -> None:
    cfg, _ = train.parse_args(["--preset", "awd-ptb"])  # the README's QRNN command on PTB, plus defaults
    expected = dict(model="QRNN", batch_size=20, clip=0.2, wdrop=0.1, nhid=1550, nlayers=4, emsize=400,
                    dropouth=0.3, seed=9001, dropouti=0.4, epochs=550, lr=30.0, bptt=70, dropout=0.4,
                    dropoute=0.1, alpha=2.0, beta=1.0, wdecay=1.2e-6, optimizer="sgd", nonmono=5)  # fmt: skip
    assert {k: getattr(cfg, k) for k in expected} == expected
    cfg, _ = train.parse_args(["--preset", "awd-wt2", "--batch_size", "10"])  # the command line wins
    assert (cfg.batch_size, cfg.nhid, cfg.dropouth, cfg.seed, cfg.clip) == (10, 1550, 0.2, 4002, 0.25)

    def params(preset: str, rnn_type: str, ntoken: int = 10_000) -> int:
        cfg, _ = train.parse_args(["--preset", preset, "--model", rnn_type])
        lm = model.RNNModel(rnn_type, ntoken, cfg.emsize, cfg.nhid, cfg.nlayers)
        return sum(p.numel() for p in lm.parameters())

    assert params("awd-ptb", "QRNN") == 24_020_150  # awd-lstm-lm's PTB QRNN: 24.0M
    assert params("awd-ptb", "LSTM") == 24_221_600  # and its PTB LSTM: 24.2M
    qrnn, lstm = params("cpu-small", "QRNN"), params("cpu-small", "LSTM")
    assert abs(lstm - qrnn) / qrnn < 0.005  # compared at equal size


# -- training runs


@pytest.mark.parametrize("rnn_type", ["QRNN", "LSTM"])
def test_a_few_steps_lower_the_loss(corpus: Path, tmp_path: Path, rnn_type: str) -> None:
    log = tmp_path / "log.jsonl"
    adam = ["--optimizer", "adam", "--lr", "0.02"]
    steps = ["--max-steps", "60", "--eval-interval", "15"]
    summary = run(corpus, "--model", rnn_type, *steps, *adam, *NO_DROPOUT, "--log", str(log))
    val = [r["val_loss"] for r in records(log, "eval")]
    assert len(val) == 4 and val[-1] < val[0] - 0.5
    assert summary["val_ppl"] < 5  # 12 words in the vocabulary; the grammar allows about 2.5 on average
    assert summary["model"] == rnn_type and summary["steps"] == 60


def test_resume_equals_an_uninterrupted_run(corpus: Path, tmp_path: Path) -> None:
    # Dropout on and ASGD from the start: the random generators and the averaged weights must carry over too.
    common = ["--model", "QRNN", "--optimizer", "asgd", "--eval-interval", "4", "--seed", "5"]
    whole, cut = tmp_path / "whole.pt", tmp_path / "cut.pt"
    expected = run(corpus, *common, "--max-steps", "10", "--save", str(whole))
    run(corpus, *common, "--max-steps", "6", "--save", str(cut))  # "killed" after the checkpoint at step 6
    resumed = train.main(["--resume", str(cut), "--max-steps", "10"])  # config and --save from the checkpoint
    assert {k: resumed[k] for k in ("val_ppl", "test_ppl", "steps", "epochs")} == {
        k: expected[k] for k in ("val_ppl", "test_ppl", "steps", "epochs")
    }
    a = torch.load(whole, weights_only=True)
    b = torch.load(cut, weights_only=True)
    for key in ("model", "averaged"):
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), (key, name)
    for pa, pb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True):
        assert all(torch.equal(pa[k], pb[k]) for k in ("ax", "eta", "mu", "step"))
    for la, lb in zip(a["state"], b["state"], strict=True):
        assert all(torch.equal(ta, tb) for ta, tb in zip(la, lb, strict=True))
    assert torch.equal(a["rng"][0]["cpu"], b["rng"][0]["cpu"]) and a["bptt_rng"] == b["bptt_rng"]
    untimed = lambda p: {k: v for k, v in p.items() if "seconds" not in k}
    assert untimed(a["progress"]) == untimed(b["progress"])


def test_minutes_budget_stops_cleanly(corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    log, checkpoint = tmp_path / "log.jsonl", tmp_path / "run.pt"
    summary = run(
        corpus, "--minutes", "0.03", "--epochs", "10000", "--log", str(log), "--save", str(checkpoint)
    )
    assert 0.03 * 60 <= summary["seconds"] < 60 and summary["steps"] > 0
    last_line = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last_line) == summary and SUMMARY_KEYS <= summary.keys()
    assert records(log, "summary")[0]["val_ppl"] == summary["val_ppl"]
    progress = torch.load(checkpoint, weights_only=True)["progress"]
    assert progress["step"] == summary["steps"]  # the checkpoint holds the very end of the run


def eval_losses(log: Path) -> dict[int, tuple[float, float]]:
    """Each evaluation's (training loss since the last scheduled one, validation loss), by step."""
    return {r["step"]: (r["train_loss"], r["val_loss"]) for r in records(log, "eval")}


def test_sigterm_saves_and_the_resumed_run_equals_an_uninterrupted_one(corpus: Path, tmp_path: Path) -> None:
    # Dropout and ASGD on: the random generators and the averaged weights must carry over too. No --save: a
    # signal leaves a checkpoint all the same.
    common = [*TINY, "--data", str(corpus), "--optimizer", "asgd", "--eval-interval", "4", "--seed", "7"]
    cut_log, whole_log = tmp_path / "cut.jsonl", tmp_path / "whole.jsonl"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, str(LM / "train.py"), *common, "--epochs", "1000", "--log", str(cut_log),
               "--out", str(tmp_path / "runs")]  # fmt: skip
    with subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as job:
        assert job.stdout is not None
        output = []
        for line in job.stdout:  # training has begun once the first evaluation is printed
            output.append(line)
            if line.startswith("| step"):
                job.send_signal(signal.SIGTERM)
                break
        output += job.stdout.readlines()
        assert job.wait(timeout=120) == 0, "".join(output)[-3000:]
    text = "".join(output)
    assert "SIGTERM: finishing the step, then saving; a second signal stops at once" in text
    found = re.search(r"^interrupted by SIGTERM at step (\d+): checkpoint saved to (.+)$", text, re.MULTILINE)
    assert found is not None, text[-3000:]
    step, saved = int(found[1]), found[2]
    assert saved == str(tmp_path / "cut.pt")  # no --save: beside the log, under its name
    resume = shlex.split(re.search(r"^resume with: (.+)$", text, re.MULTILINE)[1])  # type: ignore[index]
    assert resume == ["python", "examples/language_model/train.py", "--resume", saved]
    assert json.loads(output[-1])["steps"] == step  # the summary follows
    checkpoint = torch.load(saved, weights_only=True)
    assert checkpoint["progress"]["step"] == step  # the step the signal fell in was finished, then saved

    # resumed in this process (the command above, and a budget), against a run never interrupted
    end = step + 6  # a scheduled evaluation in between, unless the signal fell just before one
    train.main([*resume[2:], "--max-steps", str(end)])
    expected = train.main([*common, "--max-steps", str(end), "--log", str(whole_log),
                           "--save", str(tmp_path / "whole.pt")])  # fmt: skip
    resumed = json.loads(cut_log.read_text().splitlines()[-1])
    assert {k: resumed[k] for k in ("val_ppl", "test_ppl", "steps", "epochs")} == {
        k: expected[k] for k in ("val_ppl", "test_ppl", "steps", "epochs")
    }
    whole_losses, cut_losses = eval_losses(whole_log), eval_losses(cut_log)
    assert set(whole_losses) == {s for s in range(4, end, 4)} | {end}
    assert {s: cut_losses[s] for s in whole_losses} == whole_losses  # bit for bit
    a = torch.load(tmp_path / "whole.pt", weights_only=True)
    b = torch.load(saved, weights_only=True)
    for key in ("model", "averaged"):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), (key, name)
    for pa, pb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True):
        assert all(torch.equal(pa[k], pb[k]) for k in ("ax", "eta", "mu", "step"))


def test_a_signal_during_an_evaluation_ends_the_run_and_a_second_stops_at_once(
    corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture
) -> None:
    evaluate = train.evaluate
    log = tmp_path / "log.jsonl"

    calls = []

    def signalled_evaluate(*args: Any, **kwargs: Any) -> float:
        calls.append(args[3])  # (model, source, bptt, desc)
        if len(calls) == 1:
            signal.raise_signal(signal.SIGINT)  # during the scheduled validation at step 3
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(train, "evaluate", signalled_evaluate)
    summary = run(corpus, "--eval-interval", "3", "--max-steps", "20", "--log", str(log))
    assert summary["steps"] == 3 and [r["step"] for r in records(log, "eval")] == [3]
    assert calls == ["validating", "testing"]
    out = capfd.readouterr()  # (the signal's notice is written to file descriptor 2)
    assert "SIGINT: finishing the step" in out.err
    saved = re.search(r"^interrupted by SIGINT at step 3: checkpoint saved to (.+)$", out.out, re.MULTILINE)
    assert saved is not None and saved[1] == str(tmp_path / "log.pt")
    assert torch.load(saved[1], weights_only=True)["progress"]["step"] == 3
    # the log's name is taken: a new file in --out
    (tmp_path / "log2.pt").write_bytes(b"")
    monkeypatch.setattr(train, "evaluate", signalled_evaluate)
    calls.clear()
    run(corpus, "--eval-interval", "3", "--max-steps", "20", "--log", str(tmp_path / "log2.jsonl"))
    saved = re.search(r"checkpoint saved to (.+)$", capfd.readouterr().out, re.MULTILINE)
    assert saved is not None and Path(saved[1]).parent == corpus.parent / "runs"
    assert Path(saved[1]).name.startswith("QRNN-custom-") and Path(saved[1]).suffix == ".pt"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL

    def twice(*args: Any, **kwargs: Any) -> float:
        signal.raise_signal(signal.SIGINT)
        signal.raise_signal(signal.SIGINT)  # the usual handler again: KeyboardInterrupt, no save
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(train, "evaluate", twice)
    with pytest.raises(KeyboardInterrupt):
        run(corpus, "--eval-interval", "3", "--max-steps", "20", "--log", "none",
            "--save", str(tmp_path / "never.pt"))  # fmt: skip
    assert not (tmp_path / "never.pt").exists()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_budget_that_ends_during_an_evaluation_ends_the_run(
    corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    evaluate = train.evaluate
    log = tmp_path / "log.jsonl"

    def slow_evaluate(*args: Any, **kwargs: Any) -> float:
        time.sleep(1.5)  # the budget (1.2 s) runs out during the first validation
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(train, "evaluate", slow_evaluate)
    summary = run(corpus, "--eval-interval", "2", "--minutes", "0.02", "--epochs", "1000", "--log", str(log))
    assert summary["steps"] == 2  # no step after it, and no second evaluation
    assert [r["step"] for r in records(log, "eval")] == [2]


def test_ddp_two_processes_equal_one_process(corpus: Path, tmp_path: Path) -> None:
    # All dropouts off: each rank draws its own masks, so only then is the comparison exact.
    args = ["--data", str(corpus), *TINY, *NO_DROPOUT, "--max-steps", "5", "--seed", "3"]
    args += ["--out", str(tmp_path / "runs")]  # (torchrun's own parser takes --log for its --log-dir)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(LM / "train.py"), *args, "--save", str(tmp_path / "ddp.pt")]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    ddp_summary = json.loads(done.stdout.strip().splitlines()[-1])
    single_summary = train.main([*args, "--save", str(tmp_path / "single.pt")])
    assert ddp_summary["world_size"] == 2 and ddp_summary["steps"] == single_summary["steps"] == 5
    ddp = torch.load(tmp_path / "ddp.pt", weights_only=True)
    single = torch.load(tmp_path / "single.pt", weights_only=True)
    for name, value in single["model"].items():
        torch.testing.assert_close(ddp["model"][name], value, rtol=1e-4, atol=1e-5, msg=name)
    for layer_ddp, layer_single in zip(ddp["state"], single["state"], strict=True):  # gathered columns
        for t_ddp, t_single in zip(layer_ddp, layer_single, strict=True):
            torch.testing.assert_close(t_ddp, t_single, rtol=1e-4, atol=1e-5)
    assert ddp_summary["val_ppl"] == pytest.approx(single_summary["val_ppl"], rel=1e-4)
    assert ddp_summary["test_ppl"] == pytest.approx(single_summary["test_ppl"], rel=1e-4)


# -- the command line, the logs and the progress shown


def test_every_option_has_help_with_its_default(capsys: pytest.CaptureFixture) -> None:
    helps = train._option_help()
    fields = {f.name: f for f in train.fields(train.Config)}
    assert set(helps) == set(fields) and all(helps.values())  # one comment per Config field
    actions = {a.dest: a for a in train.build_parser()._actions if a.dest != "help"}
    assert set(actions) == set(fields)
    for name, action in actions.items():
        assert action.help == f"{helps[name]} (default: {fields[name].default!r})".replace("%", "%%")
    with pytest.raises(SystemExit):
        train.parse_args(["--help"])
    assert capsys.readouterr().out.count("(default:") == len(fields)


def test_each_new_run_starts_a_new_log_and_a_resumed_run_continues_it(corpus: Path, tmp_path: Path) -> None:
    out, checkpoint = tmp_path / "runs", tmp_path / "run.pt"
    common = ["--data", str(corpus), *TINY, "--out", str(out), "--eval-interval", "3"]
    train.main([*common, "--max-steps", "3", "--save", str(checkpoint)])
    train.main([*common, "--max-steps", "3"])  # the same command again: a log of its own
    logs = sorted(out.glob("QRNN-custom-*.jsonl"))
    assert len(logs) == 2
    for log in logs:
        assert len(records(log, "start")) == 1 and len(records(log, "summary")) == 1
    first = next(log for log in logs if records(log, "start")[0]["config"]["save"] == str(checkpoint))
    train.main(["--resume", str(checkpoint), "--max-steps", "6"])
    starts = records(first, "start")
    assert [r["step"] for r in starts] == [0, 3]  # appended to the run it continues
    import plot  # one run, resumed: one line

    (_, minutes, ppl), *others = plot.read_log(str(first))
    assert not others and len(ppl) == 2 and minutes == sorted(minutes)


def test_a_new_run_refuses_an_existing_log_or_checkpoint(
    corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    existing = tmp_path / "old.jsonl"
    existing.write_text('{"event": "start"}\n')
    for option in ("--log", "--save"):
        with pytest.raises(SystemExit) as exit_info:
            run(corpus, option, str(existing), "--max-steps", "1")
        assert exit_info.value.code == 2
        assert f"{option} {existing}: it exists, and this is a new run" in capsys.readouterr().err
    assert existing.read_text() == '{"event": "start"}\n'


def test_evaluation_shows_progress(corpus: Path, capsys: pytest.CaptureFixture) -> None:
    run(corpus, "--max-steps", "2", "--log", "none")
    err = capsys.readouterr().err
    assert "validating" in err and "testing" in err  # the bars of the final validation and test


def test_plot_draws_each_run_of_an_old_appended_log_apart(tmp_path: Path) -> None:
    import plot

    lines = []
    for run_seconds in ([60, 120], [30, 90, 150]):  # two runs appended to one file by an older train.py
        lines.append({"event": "start", "model": "QRNN", "params": 2e6, "step": 0})
        lines += [{"event": "eval", "seconds": s, "val_ppl": 100.0} for s in run_seconds]
    log = tmp_path / "old.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in lines))
    runs = plot.read_log(str(log))
    assert [label for label, _, _ in runs] == ["QRNN (2.0M params), run 1", "QRNN (2.0M params), run 2"]
    assert [minutes for _, minutes, _ in runs] == [[1.0, 2.0], [0.5, 1.5, 2.5]]


# -- after training: the plot and text generation


def test_plot_and_generate(corpus: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    import plot

    logs = []
    for rnn_type in ("QRNN", "LSTM"):
        logs.append(tmp_path / f"{rnn_type}.jsonl")
        run(corpus, "--model", rnn_type, "--max-steps", "12", "--eval-interval", "4", "--log", str(logs[-1]),
            "--save", str(tmp_path / f"{rnn_type}.pt"), *NO_DROPOUT)  # fmt: skip
    png = tmp_path / "ppl.png"
    plot.main([*map(str, logs), "--out", str(png)])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000

    vocab = set(torch.load(tmp_path / "QRNN.pt", weights_only=True)["vocab"])
    text = generate.main(["--checkpoint", str(tmp_path / "QRNN.pt"), "--words", "30", "--prompt", "the big"])
    words = text.split()
    assert words[:2] == ["the", "big"] and len(words) >= 20 and set(words) <= vocab

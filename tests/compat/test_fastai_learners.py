"""fastai's ``AWD_QRNN`` on the current fastai release, driven through fastai's own learners.

A language model and a classifier are trained for one short epoch on the first lines of Penn Treebank
(``../shared/data/penn``; the classifier learns a toy labelling: does a sentence hold a number, the token
``N``), then saved and loaded, asked to predict, exported and loaded back with ``load_learner``, as fastai's
users do. The classifier's ``SentenceEncoder`` feeds each batch in chunks of ``seq_len`` tokens and drops
the documents that have not started yet or have ended, without a ``reset()``: the batch under a saved window
context changes size, which fastai 2.3.1's QRNN met by trimming or zero-padding it.
"""

from __future__ import annotations

import io
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from fastai.text.all import (
    AWD_LSTM,
    BaseTokenizer,
    CategoryBlock,
    ColReader,
    ColSplitter,
    DataBlock,
    TextBlock,
    WeightDropout,
    awd_lstm_clas_split,
    awd_lstm_lm_split,
    language_model_learner,
    load_learner,
    text_classifier_learner,
)
from fastai.text.models.core import _model_meta
from torch import Tensor, nn

import torchqrnn.compat.fastai as compat
from torchqrnn.compat.fastai import AWD_QRNN, awd_qrnn_clas_config, awd_qrnn_lm_config

from ..nn.reference import reference_layer

PENN = Path(__file__).resolve().parents[3] / "shared" / "data" / "penn" / "train.txt"
SEQ_LEN = 16
# AWD_QRNN's configurations, shrunk: two layers of 24 units on 16-wide embeddings
SMALL = dict(emb_sz=16, n_hid=24, n_layers=2)


def small(config: dict[str, Any]) -> dict[str, Any]:
    return {**config, **SMALL}


@pytest.fixture(scope="module")
def sentences() -> pd.DataFrame:
    with PENN.open() as file:
        lines = [next(file).strip() for _ in range(200)]
    frame = pd.DataFrame({"text": lines})
    frame["label"] = ["number" if " N " in f" {line} " else "words" for line in lines]
    frame["is_valid"] = [index % 5 == 0 for index in range(len(lines))]
    return frame


def text_block(**kwargs: Any) -> TextBlock:
    # Penn Treebank is tokenized already: split on spaces, in this process (no tokenizer workers)
    return TextBlock.from_df("text", tok=BaseTokenizer(), n_workers=0, seq_len=SEQ_LEN, **kwargs)


@pytest.fixture(scope="module")
def lm_dls(sentences: pd.DataFrame) -> Any:
    block = DataBlock(
        blocks=text_block(is_lm=True, min_freq=1), get_x=ColReader("text"), splitter=ColSplitter()
    )
    return block.dataloaders(sentences, bs=16, num_workers=0)


@pytest.fixture(scope="module")
def clas_dls(sentences: pd.DataFrame, lm_dls: Any) -> Any:
    block = DataBlock(
        blocks=(text_block(vocab=lm_dls.vocab), CategoryBlock),
        get_x=ColReader("text"),
        get_y=ColReader("label"),
        splitter=ColSplitter(),
    )
    return block.dataloaders(sentences, bs=16, num_workers=0, seq_len=SEQ_LEN)


def fit_one_quiet_epoch(learn: Any, lr: float) -> None:
    with learn.no_bar(), learn.no_logging():
        learn.fit(1, lr)


def validate_quietly(learn: Any) -> list[float]:
    with learn.no_bar(), learn.no_logging():
        return [float(v) for v in learn.validate()]


def test_import_is_lazy_and_asking_registers_the_architecture() -> None:
    code = (
        "import sys, torchqrnn, torchqrnn.compat.fastai as compat\n"
        "assert not [m for m in sys.modules if m == 'fastai' or m.startswith('fastai.')], 'fastai imported'\n"
        "from torchqrnn.compat.fastai import AWD_QRNN\n"
        "from fastai.text.models.core import _model_meta\n"
        "print(AWD_QRNN in _model_meta, AWD_QRNN.__module__)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "torchqrnn.compat.fastai"]


def test_the_learner_metadata_is_fastai_2_3_1s() -> None:
    meta = _model_meta[AWD_QRNN]
    assert meta["split_lm"] is awd_lstm_lm_split and meta["split_clas"] is awd_lstm_clas_split
    assert meta["config_lm"] is awd_qrnn_lm_config and meta["config_clas"] is awd_qrnn_clas_config
    assert meta["hid_name"] == "emb_sz" and "url" not in meta  # no pretrained AWD-QRNN weights
    assert (awd_qrnn_lm_config["n_layers"], awd_qrnn_lm_config["n_hid"]) == (4, 1552)
    assert awd_qrnn_clas_config["weight_p"] == 0.5 and awd_qrnn_lm_config["tie_weights"]
    with pytest.raises(AttributeError, match="has no attribute 'AWD_GRU'"):
        compat.AWD_GRU  # noqa: B018


def test_the_encoder_is_built_as_fastai_built_it() -> None:
    encoder = AWD_QRNN(50, **SMALL, weight_p=0.2)
    first, last = encoder.rnns
    assert isinstance(first, compat.QRNN) and isinstance(first.layers[0], compat.QRNNLayer)
    assert [rnn.layers[0].window for rnn in encoder.rnns] == [2, 1]
    assert all(rnn.layers[0].save_prev_x for rnn in encoder.rnns)
    assert (first.input_size, first.hidden_size, last.input_size, last.hidden_size) == (16, 24, 24, 16)
    wrapped = first.layers[0].linear
    assert isinstance(wrapped, WeightDropout) and wrapped.weight_p == 0.2
    assert [h.shape for h in encoder.hidden] == [(1, 1, 24), (1, 1, 16)]  # one tensor per layer
    output = encoder(torch.randint(0, 50, (3, 7)))  # (B, T) token ids
    assert output.shape == (3, 7, 16) and [h.shape for h in encoder.hidden] == [(1, 3, 24), (1, 3, 16)]
    encoder(torch.randint(0, 50, (2, 7)))  # the batch shrinks: states and contexts are cut to it
    assert [h.shape for h in encoder.hidden] == [(1, 2, 24), (1, 2, 16)]
    bidirectional = AWD_QRNN(50, **SMALL, bidir=True)
    assert not bidirectional.rnns[0].layers[0].save_prev_x and bidirectional.rnns[0].bidirectional
    assert bidirectional(torch.randint(0, 50, (3, 7))).shape == (3, 7, 16)


def test_a_language_model_learner_trains_saves_loads_predicts_and_exports(
    lm_dls: Any, tmp_path: Path
) -> None:
    learn = language_model_learner(lm_dls, AWD_QRNN, config=small(awd_qrnn_lm_config), pretrained=False,
                                   path=tmp_path)  # fmt: skip
    lstm = language_model_learner(lm_dls, AWD_LSTM, config=small(awd_qrnn_lm_config), pretrained=False)
    assert len(learn.splitter(learn.model)) == len(lstm.splitter(lstm.model)) == 3  # 2 layers + embedding
    before = validate_quietly(learn)[0]
    fit_one_quiet_epoch(learn, 1e-2)
    after = validate_quietly(learn)[0]
    assert after < before - 0.05, (before, after)  # it learned something

    learn.save("lm")
    loaded = language_model_learner(lm_dls, AWD_QRNN, config=small(awd_qrnn_lm_config), pretrained=False,
                                    path=tmp_path).load("lm")  # fmt: skip
    assert validate_quietly(loaded)[0] == after

    with learn.no_bar():
        torch.manual_seed(1)
        text = learn.predict("the company said", n_words=4)
        learn.export("lm.pkl")
        exported = load_learner(tmp_path / "lm.pkl")
        torch.manual_seed(1)
        assert exported.predict("the company said", n_words=4) == text
    assert text.startswith("the company said") and len(text.split()) == 7


def test_a_classifier_learner_trains_through_batch_size_changes(
    lm_dls: Any, clas_dls: Any, tmp_path: Path
) -> None:
    lm = language_model_learner(lm_dls, AWD_QRNN, config=small(awd_qrnn_lm_config), pretrained=False,
                                path=tmp_path)  # fmt: skip
    lm.save_encoder("encoder")
    learn = text_classifier_learner(clas_dls, AWD_QRNN, config=small(awd_qrnn_clas_config), seq_len=SEQ_LEN,
                                    pretrained=False, path=tmp_path).load_encoder("encoder")  # fmt: skip
    encoder = learn.model[0].module
    assert torch.equal(
        encoder.rnns[0].layers[0].linear.weight_raw, lm.model[0].rnns[0].layers[0].linear.weight_raw
    )

    changes: list[tuple[int, int]] = []  # (saved context's batch, input's batch) where they differ

    def record(rnn: nn.Module, args: tuple[Tensor, ...]) -> None:
        saved = rnn.layers[0].prevX  # fastai's layout: (B, window - 1, n_in)
        if saved is not None and saved.shape[0] != args[0].shape[0]:
            changes.append((saved.shape[0], args[0].shape[0]))

    hook = encoder.rnns[0].register_forward_pre_hook(record)
    fit_one_quiet_epoch(learn, 1e-2)
    hook.remove()
    assert any(new < old for old, new in changes) and any(new > old for old, new in changes), changes
    loss = validate_quietly(learn)[0]
    assert torch.isfinite(torch.tensor(loss))

    learn.save("classifier")
    loaded = text_classifier_learner(clas_dls, AWD_QRNN, config=small(awd_qrnn_clas_config), seq_len=SEQ_LEN,
                                     pretrained=False, path=tmp_path).load("classifier")  # fmt: skip
    assert validate_quietly(loaded)[0] == loss

    sentence = "the N companies said they would sell N shares"
    with learn.no_bar():
        label, _, probabilities = learn.predict(sentence)
        learn.export("classifier.pkl")
        exported = load_learner(tmp_path / "classifier.pkl")
        assert exported.predict(sentence)[0] == label
        torch.testing.assert_close(exported.predict(sentence)[2], probabilities, rtol=0, atol=0)
    assert label in ("number", "words") and probabilities.shape == (2,)
    assert abs(float(probabilities.sum()) - 1) < 1e-5


# --- a whole model pickled by fastai 2.3.1 ----------------------------------------------------------------


class Fastai231QRNNLayer(nn.Module):
    """Exactly the instance attributes of fastai 2.3.1's ``QRNNLayer.__init__`` (it kept no sizes)."""

    __module__, __qualname__ = "fastai.text.models.qrnn", "QRNNLayer"

    def __init__(self, input_size: int, hidden_size: int, window: int) -> None:
        super().__init__()
        self.save_prev_x, self.zoneout, self.window = True, 0, window
        self.output_gate, self.batch_first, self.backward = True, True, False
        self.linear = nn.Linear(window * input_size, 3 * hidden_size)
        self.prevX: Tensor | None = None


class Fastai231QRNN(nn.Module):
    """Exactly the instance attributes of fastai 2.3.1's ``QRNN.__init__``."""

    __module__, __qualname__ = "fastai.text.models.qrnn", "QRNN"

    def __init__(self, layers: list[Fastai231QRNNLayer]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.n_layers, self.batch_first, self.dropout, self.bidirectional = len(layers), True, 0, False


def test_a_fastai_2_3_1_whole_model_pickle_reads_prev_x_in_its_layout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first, second = Fastai231QRNNLayer(3, 5, window=2), Fastai231QRNNLayer(5, 5, window=1)
    first.prevX = torch.randn(2, 1, 3)  # fastai's batch-first layout: (B, window - 1, n_in)
    stand_in = types.ModuleType("fastai.text.models.qrnn")
    stand_in.QRNN, stand_in.QRNNLayer = Fastai231QRNN, Fastai231QRNNLayer  # type: ignore[attr-defined]
    buffer = io.BytesIO()
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "fastai.text.models.qrnn", stand_in)
        torch.save(Fastai231QRNN([first, second]), buffer)

    # the documented way to load it: fastai's module name resolves to torchqrnn's compat module
    monkeypatch.setitem(sys.modules, "fastai.text.models.qrnn", compat)
    loaded = torch.load(io.BytesIO(buffer.getvalue()), weights_only=False)
    assert type(loaded) is compat.QRNN and all(type(layer) is compat.QRNNLayer for layer in loaded.layers)
    assert (loaded.num_layers, loaded.input_size, loaded.hidden_size) == (2, 3, 5)
    assert [layer.input_size for layer in loaded.layers] == [3, 5]
    torch.testing.assert_close(loaded.layers[0].prevX, first.prevX)

    x = torch.randn(2, 4, 3)  # (B, T, I)
    with torch.no_grad():
        output, h = loaded(x)
        hidden, _, _ = reference_layer(
            loaded.layers[0], x.transpose(0, 1), context=first.prevX.transpose(0, 1)
        )
        expected, last, _ = reference_layer(loaded.layers[1], hidden)
    torch.testing.assert_close(output, expected.transpose(0, 1))
    torch.testing.assert_close(h[1], last)
    torch.testing.assert_close(loaded.layers[0].prevX, x[:, -1:])

"""``QRNN``: a stack of QRNN layers, a drop-in for ``nn.GRU``."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, TypeVar

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.utils.rnn import PackedSequence

from ..ops import thresholds
from ..ops._dispatch import check_backend, shape_str
from ..ops.qrnn_step import cached_plan, without_plan
from ._repr import options_repr
from ._sequence import autocast_note, pack_like, state_dtype_ok, unpack
from .layer import QRNNLayer, StackCall, fused_stack_parameters

_T = TypeVar("_T")


def _per_layer(name: str, value: _T | Sequence[_T], num_layers: int) -> list[_T]:
    """One value for every layer, or a list with one entry per layer."""
    if isinstance(value, list | tuple):
        if len(value) != num_layers:
            raise ValueError(
                f"QRNN: expected {name} to have one entry per layer ({num_layers}), got {len(value)}"
            )
        return list(value)
    return [value] * num_layers  # type: ignore[list-item]


class QRNN(nn.Module):
    r"""A multi-layer Quasi-Recurrent Neural Network, with the interface of ``nn.GRU``.

    Each layer is a :class:`QRNNLayer` (see it for the equations). With ``bidirectional=True`` every layer
    runs both directions, as ``nn.GRU``, and concatenates them, so layer ``l + 1`` reads ``2 * hidden_size``
    features (unlike fastai's two independent towers). ``dropout`` applies to every layer's output but the
    last, in training only.

    Args:
        input_size: features of the input.
        hidden_size: features of each layer's state.
        num_layers: number of stacked layers (ignored when ``layers`` is given).
        bias: whether the projections have a bias.
        batch_first: input and output are ``(B, T, *)``; ``h0`` and ``h_n`` stay ``(L * D, B, H)``.
        dropout: dropout probability on the outputs of all layers but the last.
        bidirectional: run each layer in both directions.
        layers: prebuilt :class:`QRNNLayer` s (salesforce's argument); unidirectional only.
        window, save_prev_x, zoneout: one value, or a list with one entry per layer.
        output_gate, input_gate: pooling kind of every layer (fo-pooling by default).
        use_cuda: accepted for salesforce compatibility and ignored.
        backend: ``"auto"``, ``"reference"``, ``"cpu"`` or ``"triton"``, passed to every layer.

    Shapes (``D`` = 2 if bidirectional else 1, ``L`` = ``num_layers``):
        - input: ``(T, B, input_size)``, ``(B, T, input_size)`` with ``batch_first``, ``(T, input_size)``
          unbatched, or a :class:`~torch.nn.utils.rnn.PackedSequence`.
        - h0: ``(L * D, B, hidden_size)`` (``(L * D, hidden_size)`` unbatched), ordered
          ``[l0_fwd, l0_bwd, l1_fwd, ...]``; zeros when omitted. Or, as salesforce's QRNN took it, a list
          of ``L * D`` per-layer states in that order, each ``(B, hidden_size)`` or ``(1, B, hidden_size)``
          (a :class:`QRNNLayer`'s ``h_n``).
        - output: ``(T, B, D * hidden_size)`` in the input's layout, or a PackedSequence.
        - h_n: like h0. It holds the last *cell states* ``c``, so unlike ``nn.GRU`` ``h_n[-1]`` equals
          ``output[-1]`` only without an output gate (``h = o * c`` otherwise). With a PackedSequence each
          sequence's state is taken at its own last step (its first step for the reverse direction).

    Example::

        >>> qrnn = QRNN(32, 64, num_layers=2, window=[2, 1], dropout=0.1)
        >>> output, h_n = qrnn(torch.randn(50, 8, 32))
        >>> output.shape, h_n.shape
        (torch.Size([50, 8, 64]), torch.Size([2, 8, 64]))
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        layers: Sequence[QRNNLayer] | None = None,
        *,
        window: int | Sequence[int] = 1,
        save_prev_x: bool | Sequence[bool] = False,
        zoneout: float | Sequence[float] = 0.0,
        output_gate: bool = True,
        input_gate: bool = False,
        use_cuda: bool | None = None,
        backend: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(dropout, int | float) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"QRNN: expected dropout in [0, 1), got {dropout!r}")
        stacked = len(layers) if layers is not None else num_layers
        if dropout > 0 and stacked == 1:  # nn.GRU's warning, word for word: filters written for it apply
            warnings.warn(
                "dropout option adds dropout after all but last recurrent layer, so non-zero dropout expects "
                f"num_layers greater than 1, but got dropout={dropout} and num_layers={stacked}",
                stacklevel=2,
            )
        check_backend("QRNN", backend)
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.bias = bias
        self.batch_first = bool(batch_first)
        self.dropout = float(dropout)
        self.bidirectional = bool(bidirectional)
        if layers is not None:
            built = self._check_layers(layers, input_size, hidden_size, batch_first)
            if bidirectional:
                raise ValueError("QRNN: layers= builds a unidirectional stack; it cannot be bidirectional")
            self.num_layers = len(built)
            self.layers = nn.ModuleList(built)
            return
        if not isinstance(num_layers, int) or num_layers < 1:
            raise ValueError(f"QRNN: expected num_layers to be an integer >= 1, got {num_layers!r}")
        self.num_layers = num_layers
        windows = _per_layer("window", window, num_layers)
        zoneouts = _per_layer("zoneout", zoneout, num_layers)
        saves = _per_layer("save_prev_x", save_prev_x, num_layers)
        if bidirectional and any(saves):
            raise ValueError(
                "QRNN: save_prev_x cannot be used with bidirectional: the reverse direction would need the "
                "inputs that come after the chunk"
            )
        directions = 2 if bidirectional else 1

        def make(layer: int, backward: bool) -> QRNNLayer:
            return QRNNLayer(
                input_size if layer == 0 else hidden_size * directions,
                hidden_size,
                save_prev_x=saves[layer],
                zoneout=zoneouts[layer],
                window=windows[layer],
                output_gate=output_gate,
                batch_first=batch_first,
                backward=backward,
                input_gate=input_gate,
                bias=bias,
                backend=backend,
                device=device,
                dtype=dtype,
            )

        self.layers = nn.ModuleList([make(layer, False) for layer in range(num_layers)])
        if bidirectional:
            self.layers_bwd = nn.ModuleList([make(layer, True) for layer in range(num_layers)])

    @staticmethod
    def _check_layers(
        layers: Sequence[QRNNLayer], input_size: int, hidden_size: int, batch_first: bool
    ) -> list[QRNNLayer]:
        built = list(layers)
        if not built:
            raise ValueError("QRNN: expected layers to hold at least one QRNNLayer, got none")
        expected_input = input_size
        for index, layer in enumerate(built):
            if not isinstance(layer, QRNNLayer):
                raise TypeError(
                    f"QRNN: expected layers[{index}] to be a QRNNLayer, got {type(layer).__name__}"
                )
            if layer.input_size != expected_input or layer.hidden_size != hidden_size:
                raise ValueError(
                    f"QRNN: expected layers[{index}] to map {expected_input} -> {hidden_size} features, "
                    f"got {layer.input_size} -> {layer.hidden_size}"
                )
            if layer.batch_first != batch_first or layer.backward:
                raise ValueError(
                    f"QRNN: expected layers[{index}] with batch_first={batch_first} and backward=False, got "
                    f"batch_first={layer.batch_first}, backward={layer.backward}"
                )
            expected_input = hidden_size
        return built

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    def _stack(self) -> list[list[QRNNLayer]]:
        """The layers, one list of directions per depth: [[l0_fwd, l0_bwd], [l1_fwd, l1_bwd], ...]."""
        # read from the ModuleLists' own dicts: this runs on every call, streaming steps included
        forward: list[QRNNLayer] = list(self._modules["layers"]._modules.values())  # type: ignore[union-attr,arg-type]
        if not self.bidirectional:
            return [[layer] for layer in forward]
        backward: list[QRNNLayer] = list(self.layers_bwd)  # type: ignore[arg-type]
        return [[layer, *backward[depth : depth + 1]] for depth, layer in enumerate(forward)]

    def reset(self) -> None:
        """Forget every layer's saved window context (``save_prev_x``); call it before each new sequence."""
        for directions in self._stack():
            for layer in directions:
                layer.reset()

    def flatten_parameters(self) -> None:
        """No-op, for code written for ``nn.LSTM`` / ``nn.GRU`` (a QRNN's weights need no flattening)."""

    def reset_parameters(self) -> None:
        for directions in self._stack():
            for layer in directions:
                layer.reset_parameters()

    def forward(
        self, input: Tensor | PackedSequence, h0: Tensor | Sequence[Tensor] | None = None
    ) -> tuple[Tensor | PackedSequence, Tensor]:
        stack = self._stack()
        firsts = [directions[0] for directions in stack]  # the forward layer of each depth
        saving = [layer.save_prev_x and layer.window > 1 for layer in firsts]
        if isinstance(input, PackedSequence) and any(saving):
            raise ValueError(
                "QRNN: save_prev_x keeps each sequence's last steps for the next call, but a PackedSequence "
                "holds sequences of different lengths; pass a padded tensor instead"
            )
        contexts = [layer.prev_x if save else None for layer, save in zip(firsts, saving, strict=True)]
        output, h_n, new_contexts = self._forward_checked(input, h0, contexts, stack)
        for layer, save, context in zip(firsts, saving, new_contexts, strict=True):
            if save:
                layer.__dict__["prev_x"] = context.detach()  # a plain attribute: skip Module.__setattr__
        return output, h_n

    def forward_stream(
        self, input: Tensor, h0: Tensor | None = None, contexts: Sequence[Tensor | None] | None = None
    ) -> tuple[Tensor, Tensor, list[Tensor]]:
        """Run one chunk of longer sequences, carrying every layer's window context in and out.

        ``contexts`` holds one ``(window - 1, B, layer input size)`` tensor (time-major) per layer, or
        ``None`` for zeros; the returned list feeds the next chunk. Nothing is stored on the module, so this
        works under DataParallel, DDP and ``torch.compile``. Unidirectional stacks only.
        """
        if self.bidirectional:
            raise ValueError("QRNN.forward_stream: a bidirectional QRNN needs whole sequences")
        if isinstance(input, PackedSequence):
            raise ValueError("QRNN.forward_stream: pass a padded tensor; packed sequences cannot continue")
        contexts = [None] * self.num_layers if contexts is None else list(contexts)
        if len(contexts) != self.num_layers:
            raise ValueError(f"QRNN.forward_stream: expected {self.num_layers} contexts, got {len(contexts)}")
        output, h_n, new_contexts = self._forward_checked(input, h0, contexts, self._stack())
        return output, h_n, new_contexts  # type: ignore[return-value]  # a Tensor for Tensor input

    def _forward_checked(
        self,
        input: Tensor | PackedSequence,
        h0: Tensor | Sequence[Tensor] | None,
        contexts: list[Tensor | None],
        stack: list[list[QRNNLayer]],
    ) -> tuple[Tensor | PackedSequence, Tensor, list[Tensor]]:
        first = stack[0][0]
        lengths = None
        if isinstance(input, PackedSequence):
            if any(c is not None for c in contexts):
                raise ValueError(
                    "QRNN: a saved window context (save_prev_x) cannot continue into a PackedSequence of "
                    "different lengths; call reset() first or pass a padded tensor"
                )
            x, host_lengths = unpack(input, self.input_size, self.batch_first, "QRNN")
            first.check_input(x, "QRNN")
            # once, rather than in every layer and direction, forward and backward: the kernels read lengths
            # on the input's device (packing the output needs them on the host)
            lengths = host_lengths.to(x.device, non_blocking=True)
            batch_first, unbatched = self.batch_first, False
        else:
            first.check_input(input, "QRNN")
            unbatched = input.dim() == 2
            x, batch_first = (input.unsqueeze(1), False) if unbatched else (input, self.batch_first)
        states = self._check_h0(h0, x, batch_first, unbatched)
        if unbatched:
            contexts = [c if c is None or c.dim() != 2 else c.unsqueeze(1) for c in contexts]
        # (each layer's context against the stack's input: the same batch, device and, under autocast, the
        # same accepted dtypes as its own input's)
        contexts = [
            directions[0]._check_context(c, x, batch_first, owner=f"QRNN layers[{depth}]")
            for depth, (directions, c) in enumerate(zip(stack, contexts, strict=True))
        ]
        if lengths is None:
            stepped = self._single_step(x, states, contexts, stack, batch_first)
            if stepped is not None:
                out, h_n, stepped_contexts = stepped
                if unbatched:
                    return out.squeeze(1), h_n.squeeze(1), [c.squeeze(1) for c in stepped_contexts]
                return out, h_n, stepped_contexts

        finals: list[Tensor] = []
        new_contexts: list[Tensor] = []
        for depth, directions in enumerate(stack):
            outputs = []
            for direction, layer in enumerate(directions):
                index = depth * self.num_directions + direction
                owner = f"QRNN {'layers_bwd' if direction else 'layers'}[{depth}]"
                context = contexts[depth] if direction == 0 else None
                state = None if states is None else states[index]
                # called as a module, so that hooks on a layer run (see QRNNLayer.forward's stack)
                call = StackCall(context, lengths, batch_first, owner)
                out, h_n, new_context = layer(x, state, stack=call)
                outputs.append(out)
                finals.append(h_n)
                if direction == 0:
                    new_contexts.append(new_context)
            x = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=2)
            if self.dropout and depth < self.num_layers - 1:
                x = F.dropout(x, self.dropout, self.training)

        h_n = finals[0].unsqueeze(0) if len(finals) == 1 else torch.stack(finals)  # (a view: no copy)
        if isinstance(input, PackedSequence):
            return pack_like(x, host_lengths, input, batch_first), h_n, new_contexts
        if unbatched:
            return x.squeeze(1), h_n.squeeze(1), [c.squeeze(1) for c in new_contexts]
        return x, h_n, new_contexts

    def _single_step(
        self,
        x: Tensor,
        states: Tensor | None,
        contexts: list[Tensor | None],
        stack: list[list[QRNNLayer]],
        batch_first: bool,
    ) -> tuple[Tensor, Tensor, list[Tensor]] | None:
        """One batch-1 inference step through the whole stack in one kernel call (``qrnn_step.cached_plan``):
        no per-layer module dispatch, the weights' addresses kept from step to step. Only where
        :func:`~torchqrnn.nn.layer.fused_stack_parameters` says so (as for a :class:`~torchqrnn.Stepper`);
        None otherwise (the layer loop)."""
        time_dim = 1 if batch_first else 0
        if x.shape[time_dim] != thresholds.SINGLE_STEP or x.shape[1 - time_dim] != 1 or self.bidirectional:
            return None
        layers = [directions[0] for directions in stack]
        state = None if states is None else states[0]
        parameters = fused_stack_parameters(self, layers, x, contexts, state)
        if parameters is None:
            return None
        options = [(layer.window, False, layer.output_gate, layer.input_gate) for layer in layers]
        scales = [layer._forget_scale() for layer in layers]
        plan = cached_plan(self, parameters, options, scales)
        if plan is None:
            return None
        hidden = self.hidden_size
        return plan.run(x, contexts, states, (1, 1, hidden), (len(layers), 1, hidden))

    def __getstate__(self) -> dict[str, Any]:
        return without_plan(super().__getstate__())

    def _check_h0(
        self, h0: Tensor | Sequence[Tensor] | None, x: Tensor, batch_first: bool, unbatched: bool
    ) -> Tensor | None:
        if h0 is None:
            return None
        count = self.num_layers * self.num_directions
        batch = x.shape[0 if batch_first else 1]
        expected = (count, self.hidden_size) if unbatched else (count, batch, self.hidden_size)
        if isinstance(h0, list | tuple):
            h0 = self._stack_states(h0, expected[1:], x)
        if not isinstance(h0, Tensor):
            raise TypeError(
                f"QRNN: expected h0 to be a Tensor or a list of per-layer Tensors, got {type(h0).__name__}"
            )
        if tuple(h0.shape) != expected:
            raise RuntimeError(f"QRNN: Expected hidden size {expected}, got {shape_str(h0)}")
        if not state_dtype_ok(h0, x):
            raise RuntimeError(
                f"QRNN: expected h0 of dtype {x.dtype} (the input's{autocast_note(x)}), got {h0.dtype}. "
                f"Convert it: h0.to({x.dtype})"
            )
        if h0.device != x.device:
            raise RuntimeError(f"QRNN: expected h0 on {x.device} (the input's), got {h0.device}")
        return h0.unsqueeze(1) if unbatched else h0

    def _stack_states(self, states: Sequence[object], shape: tuple[int, ...], x: Tensor) -> Tensor:
        """salesforce's form of ``h0``: one state per layer (it indexed ``hidden[i]``), each ``(B, H)`` or
        ``(1, B, H)`` (a layer's ``h_n``), in ``h_n``'s order; stacked into ``(L * D, B, H)``."""
        count = self.num_layers * self.num_directions
        if len(states) != count:
            raise ValueError(
                f"QRNN: expected h0 as a list to hold one state per layer and direction ({count}), got "
                f"{len(states)}"
            )
        checked = []
        for index, state in enumerate(states):
            if not isinstance(state, Tensor):
                raise TypeError(f"QRNN: expected h0[{index}] to be a Tensor, got {type(state).__name__}")
            if tuple(state.shape) not in (shape, (1, *shape)):
                raise RuntimeError(
                    f"QRNN: Expected hidden size {shape} or {(1, *shape)} for h0[{index}], got "
                    f"{shape_str(state)}"
                )
            if not state_dtype_ok(state, x) or state.device != x.device:
                raise RuntimeError(
                    f"QRNN: expected h0[{index}] of dtype {x.dtype} on {x.device} (the input's"
                    f"{autocast_note(x)}), got {state.dtype} on {state.device}"
                )
            checked.append(state.reshape(shape))
        return torch.stack(checked)

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        if self.bidirectional:
            self._check_not_two_towers(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _check_not_two_towers(self, state_dict: dict[str, Tensor], prefix: str) -> None:
        """A fastai bidirectional checkpoint's layers >= 1 read H features where ours read 2H: say why."""
        for name in ("layers", "layers_bwd"):
            for depth, layer in enumerate(getattr(self, name)):
                weight = state_dict.get(f"{prefix}{name}.{depth}.linear.weight")
                if depth == 0 or not isinstance(weight, Tensor) or weight.dim() != 2:
                    continue
                if weight.shape[1] != layer.window * self.hidden_size:  # not a tower's: window x H inputs
                    continue
                raise RuntimeError(
                    f"QRNN: cannot load this checkpoint: {prefix}{name}.{depth}.linear.weight has "
                    f"{weight.shape[1]} input columns (window {layer.window} x {self.hidden_size} features), "
                    f"expected {layer.window * layer.input_size} "
                    f"(window {layer.window} x {layer.input_size}). "
                    "It looks like fastai's bidirectional QRNN, which ran two independent towers: its layer "
                    "l + 1 of each direction read only that direction's hidden_size features. torchqrnn's "
                    "bidirectional layers, like nn.GRU's, read both directions of the layer below "
                    f"(2 x {self.hidden_size} features), so the weights of layers >= 1 cannot be reused. "
                    "Single-layer bidirectional checkpoints and unidirectional ones load unchanged."
                )

    def extra_repr(self) -> str:
        defaults = {
            "num_layers": 1,
            "bias": True,
            "batch_first": False,
            "dropout": 0.0,
            "bidirectional": False,
        }
        return options_repr(self, defaults, self.input_size, self.hidden_size)

"""``QRNNLayer``: one QRNN layer, one direction: a windowed projection and the fused pooling."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.modules import module as _module
from torch.nn.utils.rnn import PackedSequence

from ..ops import thresholds
from ..ops._autograd import transformed
from ..ops._dispatch import SUPPORTED_DTYPES, check_backend, resolve_backend, shape_str
from ..ops.linear import linear
from ..ops.qrnn_pool import gate_count, qrnn_pool
from ..ops.qrnn_step import cached_plan, pool_step, run_step, without_plan
from ._repr import options_repr
from ._sequence import autocast_note, check_input, pack_like, state_dtype_ok, unpack


class StackCall(NamedTuple):
    """What a :class:`QRNN` passes a layer it calls (``layer(x, h0, stack=StackCall(...))``): the window
    context, the lengths of a packed batch (on the input's device), the layout of ``x``, and the name its
    errors give (the ``QRNN`` and which of its layers)."""

    context: Tensor | None
    lengths: Tensor | None
    batch_first: bool
    owner: str


# The weight types of a projection the layer may compute itself (anything else may override the product).
_PLAIN_TENSORS = (nn.Parameter, Tensor)
# torch's own nn.Linear.forward and F.linear: a patch of either (a profiler's, a distributed wrapper's, a
# test's) must be called, so the layer computes the product itself only while both are these. (A forward
# patched before this import is not torch's own: then the module is always called.)
_TORCH_LINEAR_FORWARD = (
    nn.Linear.forward
    if (nn.Linear.forward.__module__, nn.Linear.forward.__qualname__)
    == ("torch.nn.modules.linear", "Linear.forward")
    else None
)
_TORCH_F_LINEAR = torch._C._nn.linear
_CPU = torch.device("cpu")
# Options a whole-model pickle of salesforce's (or fastai's) layer lacks, with the values its layers had.
_UPGRADE_DEFAULTS: dict[str, Any] = {
    "input_gate": False,
    "batch_first": False,
    "backward": False,
    "backend": "auto",
    "prev_x": None,
    "save_prev_x": False,
    "zoneout": 0.0,
    "output_gate": True,
}


class QRNNLayer(nn.Module):
    r"""One Quasi-Recurrent layer (Bradbury et al., 2017): a convolution over time, then f/fo/ifo-pooling.

    .. math::
        \begin{aligned}
        [Z; F; O; I]_t &= W [x_t; x_{t-1}; \dots; x_{t-w+1}] + b \\
        z_t = \tanh(Z_t), \quad f_t &= \sigma(F_t), \quad o_t = \sigma(O_t), \quad i_t = \sigma(I_t) \\
        c_t &= i_t \odot z_t + (1 - f_t) \odot c_{t-1} \qquad (i_t = f_t \text{ without an input gate}) \\
        h_t &= o_t \odot c_t \qquad (h_t = c_t \text{ without an output gate; no tanh on } c_t)
        \end{aligned}

    With ``backward=True`` the layer runs from the last step to the first and its window looks ahead:
    ``[x_t; x_{t+1}; ...]``. Positions outside the sequence read zeros, or the saved inputs (``save_prev_x``).

    Args:
        input_size: features of ``x``.
        hidden_size: features of ``h``; defaults to ``input_size``.
        save_prev_x: keep the last ``window - 1`` input steps (detached; the first ones with ``backward``) as
            the window context of the next call, so that a sequence run in chunks equals it run whole, to
            rounding (the projection's sums, a few ulps). Call :meth:`reset` at the start of a new sequence.
            :meth:`forward_stream` does the same without mutating the module (for DataParallel, DDP and
            ``torch.compile``).
        zoneout: probability of keeping a unit's previous state. Training multiplies ``f`` by a Bernoulli
            ``(1 - zoneout)`` mask (no rescaling); evaluation multiplies ``f`` by ``1 - zoneout``.
        window: width of the convolution over time, any integer >= 1.
        output_gate: fo-pooling (``h = o * c``); ``False`` gives f-pooling (``h = c``).
        use_cuda: accepted for salesforce compatibility and ignored: the tensors' device picks the kernel.
        batch_first: input and output are ``(B, T, *)``.
        backward: run the recurrence from the last step to the first (the reverse half of a bidirectional
            QRNN); the final state is then the one at ``t = 0``.
        input_gate: ifo-pooling: a separate input gate ``i`` in place of ``f`` in front of ``z``.
        bias: whether the projection has a bias.
        backend: ``"auto"``, ``"reference"``, ``"cpu"`` or ``"triton"`` (see :func:`torchqrnn.forget_mult`).

    Shapes (``G`` gates: 2, plus 1 each for the output and input gate):
        - input: ``(T, B, input_size)``, ``(B, T, input_size)`` with ``batch_first``, ``(T, input_size)``
          unbatched, or a :class:`~torch.nn.utils.rnn.PackedSequence`.
        - hidden: ``(B, hidden_size)`` or ``(1, B, hidden_size)``; ``(hidden_size,)`` or ``(1, hidden_size)``
          unbatched. Zeros when omitted.
        - output: ``(T, B, hidden_size)`` (as the input's layout), or a PackedSequence.
        - h_n: ``(1, B, hidden_size)`` (``(1, hidden_size)`` unbatched): the last *cell state* ``c``, not
          ``h``, as salesforce's and fastai's layers.

    Attributes:
        linear: the projection ``nn.Linear(window * input_size, G * hidden_size)``, gate rows
            ``[Z; F; O; I]``, input columns ``[x_t; x_{t-1}; ...]`` (``[x_t; x_{t+1}; ...]`` backward).
        prev_x: the saved window context ``(window - 1, B, input_size)``, or ``None``.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int | None = None,
        save_prev_x: bool = False,
        zoneout: float = 0.0,
        window: int = 1,
        output_gate: bool = True,
        use_cuda: bool | None = None,
        *,
        batch_first: bool = False,
        backward: bool = False,
        input_gate: bool = False,
        bias: bool = True,
        backend: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        hidden_size = input_size if hidden_size is None else hidden_size
        for name, value in (("input_size", input_size), ("hidden_size", hidden_size), ("window", window)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"QRNNLayer: expected {name} to be an integer >= 1, got {value!r}")
        if not 0.0 <= zoneout < 1.0:
            raise ValueError(f"QRNNLayer: expected zoneout in [0, 1), got {zoneout!r}")
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.save_prev_x = bool(save_prev_x)
        self.zoneout = float(zoneout)
        self.window = window
        self.output_gate = bool(output_gate)
        self.input_gate = bool(input_gate)
        self.batch_first = bool(batch_first)
        self.backward = bool(backward)
        self.bias = bool(bias)
        self.backend = check_backend("QRNNLayer", backend)
        gates = gate_count(self.output_gate, self.input_gate)
        self.linear = nn.Linear(
            window * input_size, gates * hidden_size, bias=bias, device=device, dtype=dtype
        )
        self.prev_x: Tensor | None = None

    def reset_parameters(self) -> None:
        """``nn.Linear``'s default initialisation, as both reference implementations."""
        self.linear.reset_parameters()

    def reset(self) -> None:
        """Forget the saved window context: call at the start of each new sequence with ``save_prev_x``."""
        self.prev_x = None

    @property
    def prevX(self) -> Tensor | None:  # (both reference implementations' name)
        """The saved window context, under salesforce's and fastai's name: read it, assign it, or assign
        ``None`` to reset (same as :meth:`reset`)."""
        return self.prev_x

    @prevX.setter
    def prevX(self, value: Tensor | None) -> None:
        if value is not None and not isinstance(value, Tensor):
            raise TypeError(f"QRNNLayer: expected prevX to be a Tensor or None, got {type(value).__name__}")
        self.prev_x = None if value is None else value.detach()

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Unpickle, upgrading whole-model pickles of salesforce/pytorch-qrnn 0.2.1 and of fastai.

        Their layers stored ``prevX`` (here ``prev_x``) and ``use_cuda`` (ignored here), lacked the options
        added since (defaults: seq-first, forward, no input gate, ``backend="auto"``), and salesforce's stored
        ``hidden_size=None`` when it was left out (it meant ``input_size``)."""
        state = dict(state)
        if "prevX" in state:
            state["prev_x"] = state.pop("prevX")
        state.pop("use_cuda", None)
        for name, default in _UPGRADE_DEFAULTS.items():
            state.setdefault(name, default)
        linear = state.get("_modules", {}).get("linear")
        state.setdefault("bias", getattr(linear, "bias", None) is not None)
        if state.get("hidden_size") is None:
            state["hidden_size"] = state["input_size"]
        super().__setstate__(state)

    def forward(
        self, input: Tensor | PackedSequence, hidden: Tensor | None = None, *, stack: StackCall | None = None
    ) -> Any:
        """``(output, h_n)`` of ``input`` from ``hidden`` (see the class docstring for shapes).

        ``stack`` is how a :class:`QRNN` calls its layers, as modules so that hooks on them run: on its
        checked, padded 3-D input, with the window context and lengths it carries, returning
        ``(output, h_n (B, H), next context)`` (what :meth:`run` returns); not for other callers.
        """
        if stack is not None:
            return self.run(input, hidden, *stack)  # type: ignore[arg-type]  # a QRNN's checked tensor
        saving = self.save_prev_x and self.window > 1
        output, h_n, new_context = self._forward_checked(
            input, hidden, self.prev_x if saving else None, saving=self.save_prev_x
        )
        if saving:  # (saving means window > 1: there is a context)
            self.__dict__["prev_x"] = new_context.detach()  # a plain attribute: skip Module.__setattr__
        return output, h_n

    def forward_stream(
        self, input: Tensor, hidden: Tensor | None = None, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Run one chunk of a longer sequence with the window context passed in and returned, not saved.

        ``context`` is ``(window - 1, B, input_size)`` time-major whatever ``batch_first`` (as ``h0`` in
        ``nn.GRU``), zeros when ``None``; the returned one feeds the next chunk (it is not detached). Returns
        ``(output, h_n, context)``. The module is not mutated, so this works under DataParallel, DDP and
        ``torch.compile``.
        """
        if isinstance(input, PackedSequence):
            raise ValueError(
                "QRNNLayer.forward_stream: a PackedSequence has sequences of different lengths, which cannot "
                "continue into a next chunk; pass a padded tensor of sequences that all go on"
            )
        return self._forward_checked(input, hidden, context, saving=True)  # type: ignore[return-value]

    def _forward_checked(
        self, input: Tensor | PackedSequence, hidden: Tensor | None, context: Tensor | None, saving: bool
    ) -> tuple[Tensor | PackedSequence, Tensor, Tensor]:
        """The one validation of every call, single steps included; then :meth:`run`."""
        if isinstance(input, PackedSequence):
            if saving and self.window > 1:
                raise ValueError(
                    "QRNNLayer: save_prev_x keeps each sequence's last steps for the next call, but a "
                    "PackedSequence holds sequences of different lengths; pass a padded tensor instead"
                )
            x, lengths = unpack(input, self.input_size, self.batch_first, "QRNNLayer")
            self.check_input(x, "QRNNLayer")
            h0 = self._check_hidden(hidden, x, self.batch_first)
            output, h_n, new_context = self.run(x, h0, None, lengths.to(x.device), self.batch_first)
            return pack_like(output, lengths, input, self.batch_first), h_n.unsqueeze(0), new_context
        self.check_input(input, "QRNNLayer")
        if input.dim() == 2:  # unbatched: a batch of one, time-major
            x = input.unsqueeze(1)
            h0 = self._check_hidden(hidden, x, False, unbatched=True)
            context = self._check_context(context, x, False, unbatched=True)
            output, h_n, new_context = self.run(x, h0, context, None, False)
            return output.squeeze(1), h_n, new_context.squeeze(1)
        h0 = self._check_hidden(hidden, input, self.batch_first)
        context = self._check_context(context, input, self.batch_first)
        output, h_n, new_context = self.run(input, h0, context, None, self.batch_first)
        return output, h_n.unsqueeze(0), new_context

    def check_input(self, input: object, owner: str) -> Tensor:
        """``input`` as the projection takes it: 2-D or 3-D, ``input_size`` features, on the device and of
        the dtype of the projection's parameters (where it has any: a quantized module has none)."""
        return check_input(input, self.input_size, self._parameter_like(), owner)

    def _parameter_like(self) -> Tensor | None:
        """The tensor whose dtype and device inputs must match: the projection's ``weight`` parameter, else
        the first floating-point parameter of whatever module ``linear`` is (a wrapper's raw weight, say)."""
        weight = self._modules["linear"]._parameters.get("weight")  # type: ignore[union-attr]  # (no __getattr__)
        if weight is not None and weight.is_floating_point():
            return weight
        for tensor in self.linear.parameters():
            if tensor.is_floating_point():
                return tensor
        return None

    def _plain_linear(self) -> tuple[Tensor, Tensor | None] | None:
        """``(weight, bias)`` of ``self.linear`` if calling it is exactly ``F.linear(x, weight, bias)``, else
        None.

        That holds for an ``nn.Linear`` itself (not a subclass: parametrizations and quantized modules are
        subclasses or other classes), with no hooks on it nor global module hooks (pruning and the old
        ``weight_norm`` are pre-hooks), no ``forward`` patched onto the instance or the class, no patched
        ``torch.nn.functional.linear``, and weights that are plain tensors (not tensor subclasses). Only then
        may the layer compute the product itself, on its fast paths (oneDNN products, the fused single step);
        any other module is called. (Read from the module's dicts: each ``Module.__getattr__`` costs about a
        microsecond on a streaming step.)
        """
        linear = self._modules["linear"]
        if (
            type(linear) is not nn.Linear
            or linear._forward_hooks
            or linear._forward_pre_hooks
            or linear._backward_hooks
            or linear._backward_pre_hooks
            or _module._global_forward_hooks
            or _module._global_forward_pre_hooks
            or _module._global_backward_hooks
            or _module._global_backward_pre_hooks
            or "forward" in linear.__dict__
            or nn.Linear.forward is not _TORCH_LINEAR_FORWARD
            or F.linear is not _TORCH_F_LINEAR
        ):
            return None
        parameters = linear._parameters
        weight, bias = parameters.get("weight"), parameters.get("bias")
        if (
            weight is None
            or type(weight) not in _PLAIN_TENSORS
            or (bias is not None and type(bias) not in _PLAIN_TENSORS)
        ):
            return None  # a tensor subclass, or a weight moved out of the parameters (called as the module)
        return weight, bias

    def _project(self, source: Tensor, owner: str) -> Tensor:
        """The gates ``[Z; F; O; I]`` of ``source``: ``self.linear(source)``, computed by the layer itself
        (:func:`~torchqrnn.ops.linear.linear`: oneDNN where faster) where that is exactly the same."""
        count = gate_count(self.output_gate, self.input_gate)
        width = count * self.hidden_size
        in_features = getattr(self.linear, "in_features", None)
        if isinstance(in_features, int) and in_features != source.shape[-1]:
            raise RuntimeError(
                f"{owner}: expected linear.in_features = window * input_size = {source.shape[-1]}, got "
                f"{in_features} (from {type(self.linear).__name__})"
            )
        plain = self._plain_linear()
        if plain is not None and not transformed():  # (torch.func: its autograd needs the module's ops)
            gates = linear(source, *plain, self.backend)
        else:
            gates = self.linear(source)
            if not isinstance(gates, Tensor):
                raise TypeError(
                    f"{owner}: expected linear ({type(self.linear).__name__}) to return a Tensor, got "
                    f"{type(gates).__name__}"
                )
        if gates.shape[:-1] != source.shape[:-1] or gates.shape[-1] != width:
            raise RuntimeError(
                f"{owner}: expected linear.out_features = {width} ({count} gates x hidden_size "
                f"{self.hidden_size}) for input of shape {shape_str(source)}, got output of shape "
                f"{shape_str(gates)} from {type(self.linear).__name__}"
            )
        return gates

    def run(
        self,
        x: Tensor,
        h0: Tensor | None,
        context: Tensor | None,
        lengths: Tensor | None,
        batch_first: bool,
        owner: str = "QRNNLayer",
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The layer on checked 3-D input: ``(output, h_n (B, H), new context (window - 1, B, I))``.

        ``lengths`` marks later steps of each sequence as padding, which must be zero in ``x``; ``owner``
        is the name errors give (a ``QRNN``'s, when it calls its layers).
        """
        time_dim = 1 if batch_first else 0
        scale = self._forget_scale()
        single = x.shape[time_dim] == thresholds.SINGLE_STEP and lengths is None
        plain = self._one_inference_step(x, context, h0) if single else None
        if plain is not None and x.shape[1 - time_dim] == 1:
            # streaming, batch 1: window, product and pooling of the step in one kernel call, no autograd
            options = [(self.window, self.backward, self.output_gate, self.input_gate)]
            plan = cached_plan(self, [plain], options, [scale])
            if plan is not None:
                hidden = self.hidden_size
                output, states, contexts = plan.run(x, [context], h0, (1, 1, hidden), (1, hidden))
                return output, states, contexts[0]
        source, new_context = self._window(x, context, time_dim)
        if plain is not None:
            # streaming: the product of the single step, then its pooling in one kernel, no autograd
            output, h_n = run_step(
                source, *plain, h0, self.output_gate, self.input_gate, scale, "cpu",
                output_shape=(*source.shape[:-1], self.hidden_size),
            )  # fmt: skip
            return output, h_n, new_context
        # (T, B, G*H) or (B, T, G*H), gate blocks [Z; F; O; I]
        gates = self._project(source, owner)
        if single and self._inference_step_ok(gates, (gates, h0)):
            # a projection called as its module (quantized, hooked, ...), then the pooling of the one step
            # by the step's gates kernel: the pooling op's arithmetic, without its dispatch
            output, h_n = pool_step(gates, h0, self.output_gate, self.input_gate, scale)
            return output, h_n, new_context
        mask = None
        if self.zoneout > 0.0 and self.training:
            mask = torch.empty(
                (*gates.shape[:2], self.hidden_size), dtype=torch.bool, device=gates.device
            ).bernoulli_(1.0 - self.zoneout)
        if h0 is not None and h0.dtype != gates.dtype:
            # autocast: the projection ran in lower precision; the pooling accumulates in float32 either way
            h0 = h0.to(gates.dtype)
        output, h_n = qrnn_pool(
            gates,
            h0,
            output_gate=self.output_gate,
            input_gate=self.input_gate,
            forget_mask=mask,
            forget_scale=scale,
            lengths=lengths,
            batch_first=batch_first,
            reverse=self.backward,
            backend=self.backend,
        )
        return output, h_n, new_context

    def _one_inference_step(
        self, x: Tensor, context: Tensor | None, h0: Tensor | None
    ) -> tuple[Tensor, Tensor | None] | None:
        """The plain projection's ``(weight, bias)`` if :func:`qrnn_step` can run this single step exactly as
        the generic path would: a plain ``nn.Linear`` and what :meth:`_inference_step_ok` asks of the
        input, context, state and weights. None otherwise."""
        plain = self._plain_linear()
        if plain is None or not self._inference_step_ok(x, (x, context, h0, *plain)):
            return None
        return plain

    def _inference_step_ok(self, like: Tensor, tensors: tuple[Tensor | None, ...]) -> bool:
        """Whether a single step may skip autograd and the pooling op for the step kernels: nothing among
        ``tensors`` requires grad (where grad is on), all of the dtype of ``like`` (a float type the kernels
        take: float32/64, bfloat16 or float16 weights a user converted the model to), on the CPU, no random
        mask, no autocast, not tracing, no ``torch.func`` transform, the CPU kernels. The one decision for
        the fused step (:meth:`_one_inference_step`) and for the pooling of one step after a called
        projection. (``Tensor.is_cpu`` rather than ``.device``: a device object costs 0.4 us a read.)"""
        dtype = like.dtype
        if not like.is_cpu or dtype not in SUPPORTED_DTYPES or (self.training and self.zoneout > 0.0):
            return False
        grad = torch.is_grad_enabled()
        for t in tensors:
            if t is not None and (t.dtype != dtype or (grad and t.requires_grad)):
                return False
        return not (
            torch.compiler.is_compiling()
            or torch.jit.is_tracing()  # (a trace cannot record a kernel: the generic path says what works)
            or transformed()
            or torch.is_autocast_enabled("cpu")
            or resolve_backend(self.backend, _CPU) != "cpu"
        )

    def _forget_scale(self) -> float:
        """What evaluation multiplies ``f`` by: ``1 - zoneout`` (training draws a mask instead: 1)."""
        return 1.0 - self.zoneout if self.zoneout > 0.0 and not self.training else 1.0

    def __getstate__(self) -> dict[str, Any]:
        return without_plan(super().__getstate__())

    def _window(self, x: Tensor, context: Tensor | None, time_dim: int) -> tuple[Tensor, Tensor]:
        """The convolution's input ``[x_t; x_{t-1}; ...]`` (``[x_t; x_{t+1}; ...]`` backward) and the context
        the next chunk needs: the last ``window - 1`` steps (the first ones backward), time-major."""
        steps, span = x.shape[time_dim], self.window - 1
        if span == 0:
            return x, x.new_empty(0, x.shape[1 - time_dim], x.shape[2])
        if context is None:
            shape = list(x.shape)
            shape[time_dim] = span
            edge = x.new_zeros(shape)
        else:  # (under autocast a context may be float32 where x has the autocast dtype, or the reverse)
            edge = (context.transpose(0, 1) if time_dim == 1 else context).to(x.dtype)
        if self.backward:
            padded = torch.cat([x, edge], time_dim)  # (T + w - 1) steps: x, then what follows it
            shifts = [padded.narrow(time_dim, k, steps) for k in range(self.window)]
            new_context = padded.narrow(time_dim, 0, span)
        else:
            padded = torch.cat([edge, x], time_dim)  # what precedes x, then x
            shifts = [padded.narrow(time_dim, span - k, steps) for k in range(self.window)]
            new_context = padded.narrow(time_dim, steps, span)
        return torch.cat(shifts, 2), (new_context.transpose(0, 1) if time_dim == 1 else new_context)

    def _check_hidden(
        self, hidden: Tensor | None, x: Tensor, batch_first: bool, unbatched: bool = False
    ) -> Tensor | None:
        """``hidden`` as ``(B, H)``. Accepted as ``(B, H)`` or ``(1, B, H)`` (the shape the layer returns);
        unbatched as ``(H,)`` or ``(1, H)``."""
        if hidden is None:
            return None
        if not isinstance(hidden, Tensor):
            raise TypeError(f"QRNNLayer: expected hidden to be a Tensor, got {type(hidden).__name__}")
        batch = x.shape[0 if batch_first else 1]
        size = self.hidden_size
        allowed = ((size,), (1, size)) if unbatched else ((batch, size), (1, batch, size))
        if tuple(hidden.shape) not in allowed:
            raise RuntimeError(
                f"QRNNLayer: Expected hidden size {allowed[0]} or {allowed[1]}, got {shape_str(hidden)}"
            )
        if not state_dtype_ok(hidden, x):
            raise RuntimeError(
                f"QRNNLayer: expected hidden of dtype {x.dtype} (the input's"
                f"{autocast_note(x)}), got {hidden.dtype}. Convert it: hidden.to({x.dtype})"
            )
        if not (hidden.is_cpu and x.is_cpu) and hidden.device != x.device:
            raise RuntimeError(f"QRNNLayer: expected hidden on {x.device} (the input's), got {hidden.device}")
        return hidden if hidden.dim() == 2 else hidden.reshape(batch, size)  # (a view op costs a microsecond)

    def _check_context(
        self,
        context: Tensor | None,
        x: Tensor,
        batch_first: bool,
        unbatched: bool = False,
        owner: str = "QRNNLayer",
    ) -> Tensor | None:
        """``context`` as ``(window - 1, B, I)``; unbatched as ``(window - 1, I)``. ``owner`` is the name
        errors give (a ``QRNN``'s, when it checks its layers' contexts)."""
        if context is None or self.window == 1:
            return None
        if not isinstance(context, Tensor):
            raise TypeError(f"{owner}: expected context to be a Tensor, got {type(context).__name__}")
        batch = x.shape[0 if batch_first else 1]
        span, size = self.window - 1, self.input_size
        # a context saved (save_prev_x) from batched input meets unbatched input, or the other way round
        hint = "; if it is the context saved by save_prev_x from an earlier call, call reset() first"
        if unbatched:
            if tuple(context.shape) != (span, size):
                raise RuntimeError(
                    f"{owner}: expected context of shape {(span, size)} (unbatched input), got "
                    f"{shape_str(context)}{hint}"
                )
            context = context.unsqueeze(1)
        elif context.dim() != 3 or context.shape[0] != span or context.shape[2] != size:
            raise RuntimeError(
                f"{owner}: expected context of shape {(span, batch, size)}, got {shape_str(context)}{hint}"
            )
        elif context.shape[1] != batch:
            raise RuntimeError(
                f"{owner}: the window context holds a batch of {context.shape[1]} but the input has "
                f"{batch}; call reset() before a new sequence or batch size"
            )
        if not state_dtype_ok(context, x) or (
            not (context.is_cpu and x.is_cpu) and context.device != x.device
        ):
            raise RuntimeError(
                f"{owner}: expected context of dtype {x.dtype}{autocast_note(x)} on {x.device}, got "
                f"{context.dtype} on {context.device}. Convert it: context.to({x.dtype}), or call reset() to "
                "drop a context saved before the model was converted"
            )
        return context

    def extra_repr(self) -> str:
        defaults = {
            "window": 1,
            "output_gate": True,
            "input_gate": False,
            "zoneout": 0.0,
            "save_prev_x": False,
            "batch_first": False,
            "backward": False,
            "bias": True,
            "backend": "auto",
        }
        return options_repr(self, defaults, self.input_size, self.hidden_size)


def fused_stack_parameters(
    owner: nn.Module, layers: list[QRNNLayer], x: Tensor, contexts: list[Tensor | None], state: Tensor | None
) -> list[tuple[Tensor, Tensor | None]] | None:
    """The one decision whether a batch-1 step of a stack of ``layers`` (of ``owner``: a ``QRNN``, or a
    layer itself) may run fused in one kernel call, for :meth:`QRNN._single_step` and
    :class:`~torchqrnn.Stepper`: each layer would take its own single-step path
    (:meth:`QRNNLayer._one_inference_step`, on the stack's input ``x``, the layer's context and a state
    ``state``), and calling the layers as modules could change nothing (no hooks, no dropout between layers
    drawn). Returns each layer's plain ``(weight, bias)``, or None."""
    dropout = owner.training and bool(owner.__dict__.get("dropout"))  # (a QRNN's, between its layers)
    if dropout or _module._global_forward_hooks or _module._global_forward_pre_hooks:
        return None
    parameters = []
    for layer, context in zip(layers, contexts, strict=True):
        if layer._forward_hooks or layer._forward_pre_hooks:
            return None
        plain = layer._one_inference_step(x, context, state)
        if plain is None:
            return None
        parameters.append(plain)
    return parameters

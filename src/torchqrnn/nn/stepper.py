"""``Stepper``: online inference one time step per call, the state kept inside, at the matvec's speed."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.nn.modules import module as _module

from ..ops.qrnn_step import fused_step_kernels
from .layer import QRNNLayer, fused_stack_parameters
from .qrnn import QRNN

if TYPE_CHECKING:
    from .streaming import StreamingQRNN

__all__ = ["Stepper"]


class Stepper:
    r"""Feed a unidirectional :class:`QRNN` (or a :class:`StreamingQRNN`'s, or one :class:`QRNNLayer`) one
    time step per call, its cell states and window contexts kept inside: online inference.

    ``stepper(x_t)`` takes ``(batch_size, input_size)`` (or ``(input_size,)`` with ``batch_size=1``) and
    returns the step's output, ``(batch_size, hidden_size)`` (or ``(hidden_size,)``), equal to the
    model's output at that step of the whole sequence, to rounding (see :class:`StreamingQRNN`). No
    gradient is taken: outputs never require grad. A stepper runs in the model's dtype, made for the dtype
    and device its parameters have when it is made: autocast does not apply (convert the model, e.g.
    ``model.to(torch.bfloat16)``, for a bfloat16 step, then make the stepper).

    A module call checks its arguments and decides its path on every call, which costs more than the
    step's matrix-vector product at 320 units. A stepper makes the checks and the decision once and keeps
    its state in place; at batch 1 on the CPU a call is one kernel call (each layer's window, the
    platform's matrix-vector product, the gates and the state update), whose cost beyond the product is a
    few microseconds (1.1-1.3x the product at 320 units on the CPU measured: see the performance page).
    What could change between calls is checked on each: the input's dtype, device and shape, the
    parameters (in-place changes are seen; replaced ones, or a new mode, hooks or deterministic algorithms
    make the stepper decide again). Elsewhere (a batch over 1, a GPU, a quantized or wrapped projection,
    hooks on a layer) each call is the model's own ``forward_stream`` with the state carried, under
    ``torch.no_grad()``.

    Args:
        model: a unidirectional :class:`QRNN`, a :class:`StreamingQRNN`, or a :class:`QRNNLayer`; it is
            shared, not copied, and run in its current mode (``.eval()`` for inference).
        batch_size: how many independent streams each call steps.

    Attributes:
        state: ``(h, *contexts)``: the cell states ``(L, B, H)`` and each layer's window context ``(w_l -
            1, B, I_l)``, as :meth:`StreamingQRNN.initial_state` lays them out (copies). Set it to resume.
    """

    def __init__(self, model: QRNN | StreamingQRNN | QRNNLayer, batch_size: int = 1) -> None:
        from .streaming import StreamingQRNN  # (which imports this module)

        if isinstance(model, StreamingQRNN):
            model = model.qrnn
        if isinstance(model, QRNN):
            if model.bidirectional:
                raise ValueError(
                    "Stepper: expected a unidirectional QRNN, got bidirectional=True; the reverse direction "
                    "starts at each sequence's end, so it cannot run step by step"
                )
            layers: list[QRNNLayer] = list(model.layers)  # type: ignore[arg-type]
        elif isinstance(model, QRNNLayer):
            layers = [model]
        else:
            raise TypeError(
                f"Stepper: expected a torchqrnn.QRNN, StreamingQRNN or QRNNLayer, got {type(model).__name__}"
            )
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"Stepper: expected batch_size to be an integer >= 1, got {batch_size!r}")
        self.model, self.layers, self.batch_size = model, layers, batch_size
        self.input_size, self.hidden_size = layers[0].input_size, layers[-1].hidden_size
        like = layers[0]._parameter_like()  # (a quantized projection has none: float32 on the CPU)
        self.dtype, self.device = (
            (torch.float32, torch.device("cpu")) if like is None else (like.dtype, like.device)
        )
        self._h = torch.zeros(len(layers), batch_size, self.hidden_size, dtype=self.dtype, device=self.device)
        self._contexts = [
            torch.zeros(layer.window - 1, batch_size, layer.input_size, dtype=self.dtype, device=self.device)
            for layer in layers
        ]
        self._fast: _FusedSteps | None = None
        self._prepared: tuple[Any, ...] | None = None
        self._prepare()

    def __getstate__(self) -> dict[str, Any]:
        # the fused step's plan holds raw addresses of this stepper's buffers: a copy (deepcopy, pickle)
        # decides again for its own
        return {**self.__dict__, "_fast": None, "_prepared": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._prepare()

    def reset(self) -> None:
        """Back to the state before a sequence's first step: zero cell states and contexts."""
        self._h.zero_()
        for context in self._contexts:
            context.zero_()

    @property
    def state(self) -> tuple[Tensor, ...]:
        return (self._h.clone(), *(c.clone() for c in self._contexts))

    @state.setter
    def state(self, state: tuple[Tensor, ...] | list[Tensor]) -> None:
        expected = [tuple(self._h.shape), *(tuple(c.shape) for c in self._contexts)]
        got = [tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__ for t in state]
        if got != expected:
            raise ValueError(f"Stepper.state: expected (h, *contexts) of shapes {expected}, got {got}")
        for t in state:
            if t.dtype != self.dtype or t.device != self.device:
                raise ValueError(
                    f"Stepper.state: expected tensors of dtype {self.dtype} on {self.device} (the model's), "
                    f"got {t.dtype} on {t.device}"
                )
        with torch.no_grad():
            for buffer, value in zip((self._h, *self._contexts), state, strict=True):
                buffer.copy_(value)

    def __call__(self, input: Tensor) -> Tensor:
        fast = self._fast
        if fast is not None and isinstance(input, Tensor) and input.dtype is self.dtype and input.is_cpu:
            shape = fast.output_shapes.get(input.shape)
            if shape is not None:
                if not fast.usable():
                    self._prepare()  # a parameter was replaced, or a mode, hook or global setting changed
                    return self(input)
                source = input if input.is_contiguous() else input.contiguous()
                out = fast.empty(shape, self.dtype)
                fast.kernel(fast.plan, fast.scales, fast.like, source.data_ptr(), out.data_ptr())
                return out
        if self._prepared != self._conditions():
            self._prepare()
            if self._fast is not None:
                return self(input)
        return self._generic(input)

    def _generic(self, input: Tensor) -> Tensor:
        """The step by the model's own ``forward_stream``, the state carried in and written back."""
        if not isinstance(input, Tensor) or input.dim() not in (1, 2):
            what = (
                f"a Tensor of shape {tuple(input.shape)}"
                if isinstance(input, Tensor)
                else type(input).__name__
            )
            raise ValueError(
                f"Stepper: expected input of shape ({self.batch_size}, {self.input_size})"
                f"{f' or ({self.input_size},)' if self.batch_size == 1 else ''}, got {what}"
            )
        unbatched = input.dim() == 1
        if (unbatched and self.batch_size != 1) or (not unbatched and input.shape[0] != self.batch_size):
            raise ValueError(
                f"Stepper: expected input of shape ({self.batch_size}, {self.input_size}) (batch_size="
                f"{self.batch_size}), got {tuple(input.shape)}"
            )
        x = input.reshape(1, self.batch_size, input.shape[-1])  # (T = 1, B, I), time-major
        with torch.no_grad(), torch.autocast(self.device.type, enabled=False):
            if isinstance(self.model, QRNN):
                batch_first = self.model.batch_first
                x = x.transpose(0, 1) if batch_first else x
                output, h_n, contexts = self.model.forward_stream(x, self._h, self._contexts)
            else:
                batch_first = self.model.batch_first
                x = x.transpose(0, 1) if batch_first else x
                output, h_n, context = self.model.forward_stream(x, self._h, self._contexts[0])
                contexts = [context]
            self._h.copy_(h_n)
            for buffer, context in zip(self._contexts, contexts, strict=True):
                buffer.copy_(context)
        output = output.reshape(self.batch_size, self.hidden_size)
        return output[0] if unbatched else output

    def _conditions(self) -> tuple[Any, ...]:
        """What the choice of path depends on beyond the parameters: each layer's mode, zoneout and hooks,
        global hooks, deterministic algorithms (autocast never applies: see the class docstring)."""
        return (
            self.model.training,
            tuple((layer.training, layer.zoneout) for layer in self.layers),
            any(bool(layer._forward_hooks or layer._forward_pre_hooks) for layer in self.layers),
            bool(_module._global_forward_hooks or _module._global_forward_pre_hooks),
            torch.are_deterministic_algorithms_enabled(),
        )

    def _prepare(self) -> None:
        """Decide the path: the fused in-place step where, at batch 1, a module call would fuse the step
        (:func:`~torchqrnn.nn.layer.fused_stack_parameters` decides for both); the model's
        ``forward_stream`` otherwise."""
        self._prepared = self._conditions()
        self._fast = None
        if self.batch_size != 1 or self.device.type != "cpu":
            return
        x = torch.zeros(1, 1, self.input_size, dtype=self.dtype)
        with torch.no_grad(), torch.autocast("cpu", enabled=False):
            parameters = fused_stack_parameters(self.model, self.layers, x, list(self._contexts), self._h[0])
        if parameters is None:
            return
        kernels = fused_step_kernels()
        contiguous = all(w.is_contiguous() and (b is None or b.is_contiguous()) for w, b in parameters)
        if not kernels.stack_available(self.dtype) or not contiguous:
            return  # (a non-contiguous weight would be read through a copy, which misses its changes)
        self._fast = _FusedSteps(self, parameters, kernels)


class _FusedSteps:
    """The fused in-place step: the stack's plan (``qrnn_step.cpu.StackPlan``, which the module path's
    batch-1 steps use too), the addresses of the stepper's contexts (each updated in place) and states, and
    what :meth:`usable` checks before each call."""

    def __init__(
        self, stepper: Stepper, parameters: list[tuple[Tensor, Tensor | None]], kernels: Any
    ) -> None:
        layers = stepper.layers
        options = [(layer.window, layer.backward, layer.output_gate, layer.input_gate) for layer in layers]
        self.stack = kernels.StackPlan(parameters, options, [layer._forget_scale() for layer in layers])
        self.kernel, self.empty = kernels.step_stack, kernels.empty
        # per layer, what each call checks: its projection module still the same, that module's weight and
        # bias still the tensors read through their addresses (the plan holds them, so their storage
        # lives), at those addresses; the layer's mode and zoneout (its forget scale)
        self.watched: list[tuple[Any, ...]] = []
        for (w, b), layer in zip(parameters, layers, strict=True):
            linear = layer._modules["linear"]
            self.watched.append((
                layer, layer._modules, linear, linear._parameters, w, w.data_ptr(), b,  # type: ignore[union-attr]
                0 if b is None else b.data_ptr(), layer.training, layer.zoneout,
            ))  # fmt: skip
        # with the stepper's contexts and cell states, each read and written in place
        self.plan = self.stack.addressed(stepper._contexts, stepper._contexts, stepper._h, stepper._h)
        self.scales, self.like = self.stack.scales, self.stack.like
        size, hidden = stepper.input_size, stepper.hidden_size
        self.output_shapes = {torch.Size([1, size]): (1, hidden), torch.Size([size]): (hidden,)}

    def usable(self) -> bool:
        """Whether the step may run as planned: every parameter read still the module's, at the address
        planned; each layer in its mode and zoneout, without hooks; no global hooks or deterministic
        algorithms (:meth:`Stepper._conditions`, polled here at a fraction of its cost)."""
        for layer, modules, linear, parameters, w, w_at, b, b_at, training, zoneout in self.watched:
            if (
                modules.get("linear") is not linear
                or parameters.get("weight") is not w
                or w.data_ptr() != w_at
                or parameters.get("bias") is not b
                or (b is not None and b.data_ptr() != b_at)
                or layer.training is not training
                or layer.zoneout != zoneout
                or layer._forward_hooks
                or layer._forward_pre_hooks
            ):
                return False
        return not (
            _module._global_forward_hooks
            or _module._global_forward_pre_hooks
            or torch.are_deterministic_algorithms_enabled()
        )

"""Input checks and PackedSequence handling shared by the modules."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from ..ops._dispatch import shape_str


def state_dtype_ok(state: Tensor, x: Tensor) -> bool:
    """A state (``h0``, a window context) has the input's dtype, or under autocast the autocast dtype or
    float32 (the dtype autocast casts from): the states a layer returns there, and those made for its
    parameters (:meth:`StreamingQRNN.initial_state`), feed the next call whatever layer of a stack they
    belong to (a layer above the first reads its input in the autocast dtype)."""
    if state.dtype == x.dtype:
        return True
    device = x.device.type
    return torch.is_autocast_enabled(device) and state.dtype in (
        torch.get_autocast_dtype(device),
        torch.float32,
    )


def autocast_note(x: Tensor) -> str:
    """The words an error about a state's dtype adds under autocast (see :func:`state_dtype_ok`)."""
    device = x.device.type
    if not torch.is_autocast_enabled(device):
        return ""
    return f", or {torch.get_autocast_dtype(device)} or torch.float32 under autocast"


def check_input(input: object, input_size: int, weight: Tensor | None, owner: str) -> Tensor:
    """A 2-D (unbatched) or 3-D float tensor of ``input_size`` features, on the parameters' device and of
    their dtype (``weight``: a tensor of the projection's parameters; None where it has none, as a quantized
    projection, which then checks its input itself)."""
    if not isinstance(input, Tensor):
        raise TypeError(
            f"{owner}: expected input to be a Tensor or PackedSequence, got {type(input).__name__}"
        )
    if input.dim() not in (2, 3):
        raise ValueError(
            f"{owner}: Expected input to be 2-D (T, input_size) unbatched or 3-D (T, B, input_size), "
            f"got {input.dim()}-D of shape {shape_str(input)}"
        )
    if not input.is_floating_point():
        raise RuntimeError(f"{owner}: expected a floating-point input, got {input.dtype}")
    if input.shape[-1] != input_size:
        raise RuntimeError(
            f"{owner}: input.size(-1) must be equal to input_size. "
            f"Expected {input_size}, got {input.shape[-1]}"
        )
    if weight is None:
        return input
    # (both on the CPU decided without building device objects: each costs 0.4 us, a streaming step's share)
    if not (input.is_cpu and weight.is_cpu) and input.device != weight.device:
        raise RuntimeError(
            f"{owner}: expected input on {weight.device} (the parameters'), got {input.device}"
        )
    if input.dtype != weight.dtype and not torch.is_autocast_enabled(input.device.type):
        raise RuntimeError(
            f"{owner}: expected input of dtype {weight.dtype} (the parameters'), got {input.dtype}. "
            f"Convert the input: input.to({weight.dtype}), or the model: model.to({input.dtype})"
        )
    return input


def unpack(packed: PackedSequence, input_size: int, batch_first: bool, owner: str) -> tuple[Tensor, Tensor]:
    """Zero-padded ``(T, B, I)`` (``(B, T, I)``) data in the original batch order, and the lengths (CPU)."""
    data = packed.data
    if data.dim() != 2 or data.shape[1] != input_size:
        raise ValueError(
            f"{owner}: expected PackedSequence data of shape (N, {input_size}), got {shape_str(data)} "
            "(pack (T, B, I) input with pack_padded_sequence(..., batch_first=False), (B, T, I) with True)"
        )
    padded, lengths = pad_packed_sequence(packed, batch_first=batch_first)
    return padded, lengths


def pack_like(output: Tensor, lengths: Tensor, like: PackedSequence, batch_first: bool) -> PackedSequence:
    """Pack padded ``output`` with exactly the batch order (sorted/unsorted indices) of ``like``."""
    if like.sorted_indices is not None:
        output = output.index_select(0 if batch_first else 1, like.sorted_indices)
        lengths = lengths[like.sorted_indices.cpu()]
    packed = pack_padded_sequence(output, lengths, batch_first=batch_first, enforce_sorted=True)
    return PackedSequence(packed.data, packed.batch_sizes, like.sorted_indices, like.unsorted_indices)

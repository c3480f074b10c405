"""Every size at which the ops change path, in one place, so that the tests can cross each one.

No behaviour may change at any of these other than rounding (SPEC §6): ``tests/test_properties.py`` draws
sizes on both sides of each. The modules that branch import their threshold from here (and say there why
it has its value).
"""

from __future__ import annotations

# ops/linear.py: a projection of at least this many rows (T * B) may take oneDNN's products (the GEMM probe);
# below, always F.linear.
ONEDNN_MIN_ROWS = 256
# ops/_cpu.py: a CPU kernel call of fewer elements (T * B * H) runs on the calling thread alone; at least
# 2 * MIN_CHUNK columns (B * H) are needed for two jobs, and no job is wider than MAX_CHUNK columns.
PARALLEL_MIN_NUMEL = 1 << 16
MIN_CHUNK, MAX_CHUNK = 256, 8192
# nn/layer.py: a call of this many steps, with nothing that needs a gradient, is one fused inference step
# (ops/qrnn_step); of batch 1 its product is torch's BLAS called inside the kernel, of a larger batch
# F.linear then the gates kernel.
SINGLE_STEP = 1
# ops/forget_mult/triton.py (and the pooling's Triton kernels): the chunked scan runs below this many
# columns (B * H) for sequences of at least 2 * TRITON_MIN_CHUNK_STEPS steps; chunks aim at
# TRITON_TARGET_COLUMNS columns x chunks, at most TRITON_MAX_CHUNKS of them.
TRITON_CHUNKED_BELOW_COLUMNS = 16384
TRITON_MIN_CHUNK_STEPS = 32
TRITON_TARGET_COLUMNS = 65536
TRITON_MAX_CHUNKS = 1024

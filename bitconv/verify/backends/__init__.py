"""Arithmetic backends of the one decoder layer (`graph.py`): `float32` (transformers'
operation order, any activation scheme, any dtype), `int8_torch` (exact int8 GEMMs with the
"a8" rule fused into torch ops: CUDA, and the CPU outside float32), `int8_cpu` (the same
with numba row kernels: the CPU in float32). A new backend is one file with the six steps
of `graph.Backend` and a line in `Runner.backend_for`."""

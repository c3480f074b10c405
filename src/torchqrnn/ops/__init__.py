"""Functional ops, one folder each: reference loop, kernels, and the dispatcher in its ``__init__``."""

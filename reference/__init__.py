"""References outside the runtime package: the PyTorch twin the parity tests and benchmarks compare to."""

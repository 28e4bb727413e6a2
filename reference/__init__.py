"""References outside the runtime: the PyTorch twin the parity tests compare to (torch_twin, which
re-exports jaxgpt.bench.torch_twin: the package ships it for `jaxgpt bench`)."""

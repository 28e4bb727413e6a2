"""Compiled autoregressive sampling with a KV cache (`jaxgpt.sample.decode`)."""

"""Figures of a trained model and of its runs (`python -m jaxgpt.viz --help`)."""

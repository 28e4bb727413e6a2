"""Export a jaxgpt run to Hugging Face transformers: hf.py converts the weights and the config,
tokenizer.py the tokenizer, cli.py is `jaxgpt export --out_dir=RUN --to=DIR` (`python -m jaxgpt.export`)."""

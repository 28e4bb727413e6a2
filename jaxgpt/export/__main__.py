"""`python -m jaxgpt.export --out_dir=RUN --to=DIR`: the export's command line (jaxgpt.export.cli.main)."""

from jaxgpt.cli import main_guard
from jaxgpt.export.cli import main

if __name__ == "__main__":
    main_guard(main)

"""The course notebooks' source, one module per chapter (chNN.py: NAME and CELLS) and what they
share (cells.py). notebooks/build_notebooks.py writes the .ipynb files from them."""

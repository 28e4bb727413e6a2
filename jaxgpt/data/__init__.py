"""Text into tokens: tokenizers, corpora and token files with their batch samplers, and the sharded
token store for corpora too large for memory."""

"""Chapter 02's cells (02_texto_vira_numero.ipynb)."""

from chapters.cells import CORPUS_SETTING, code, md, preamble, results

NAME = "02_texto_vira_numero"
CELLS = preamble(NAME, "02", "Texto vira número",
                "Text becomes numbers: word, character and BPE tokenization; token embeddings plus "
                "position embeddings; and the sliding-window (x, y) pairs a language model trains on.",
                CORPUS_SETTING + "TEXT_CHARS = 20_000 if SMALL else 400_000\nBPE_VOCAB = 300 if SMALL else 1024") + [
    code("""
from jaxgpt.data.corpus import resolve_corpus

text = resolve_corpus(CORPUS).text[:TEXT_CHARS]
sample = text[1000:1200]
print(sample)
"""),
    md("""
## Three tokenizers

- **words**: split on whitespace; a huge vocabulary, and unseen words are a problem.
- **characters**: tiny vocabulary, long sequences (`tokenizer="char"`).
- **BPE** (byte-pair encoding): start from bytes, repeatedly merge the most frequent pair; the
  vocabulary size is a choice (`tokenizer="bpe"`); GPT-2's is a BPE of 50,257 tokens
  (`tokenizer="gpt2"`, works offline).
"""),
    code("""
from jaxgpt.data.tokenizers import build_tokenizer

words = sorted(set(text.split()))
print(f"words: {len(words):,} distinct in {len(text):,} characters")

char_tok = build_tokenizer("char", text)
bpe_tok = build_tokenizer("bpe", text, vocab_size=BPE_VOCAB)
gpt2_tok = build_tokenizer("gpt2")
line = "def tokenize(text):"
for name, tk in (("char", char_tok), ("bpe", bpe_tok), ("gpt2", gpt2_tok)):
    ids = tk.encode(line)
    pieces = [tk.decode([i]) for i in ids]
    assert tk.decode(ids) == line      # lossless
    print(f"{name:5s} vocab {tk.vocab_size:6,}: {len(ids):2d} tokens {pieces}")
"""),
    md("""
## Embeddings: a table lookup, plus positions

A token id indexes a row of the embedding table `wte` (V x D). Attention by itself ignores order,
so GPT-2 adds a learned position embedding `wpe` (block_size x D). In jaxgpt's GPT these are the
parameters `wte/embedding` and `wpe/embedding`; the input of the first block is their sum.
"""),
    code("""
import flax.linen as nn

V, D, T = char_tok.vocab_size, 16, 8
ids_T = jnp.asarray(char_tok.encode(line[:T]))
key_tok, key_pos = jax.random.split(jax.random.key(0))
wte = nn.Embed(V, D)
wpe = nn.Embed(T, D)
p_tok = wte.init(key_tok, ids_T)["params"]           # {"embedding": (V, D)}: data
p_pos = wpe.init(key_pos, jnp.arange(T))["params"]
x_TD = wte.apply({"params": p_tok}, ids_T) + wpe.apply({"params": p_pos}, jnp.arange(T))
assert jnp.allclose(x_TD, p_tok["embedding"][ids_T] + p_pos["embedding"][:T])   # a lookup, nothing more
print("x", x_TD.shape)
"""),
    md("""
## Sliding windows: (x, y) pairs

From a stream of token ids, a training example is a window of T tokens `x` and the same window
shifted by one, `y`: at every position the target is the next token. By hand with `vmap` over
window starts, then with jaxgpt's sampler (random starts from an explicit seed):
"""),
    code("""
from jaxgpt.data.corpus import BatchSampler

tokens = jnp.asarray(char_tok.encode(text), jnp.int32)
T = 16

def window(start):
    chunk = jax.lax.dynamic_slice(tokens, (start,), (T + 1,))
    return chunk[:-1], chunk[1:]

starts = jnp.array([0, 100, 2000])
x_BT, y_BT = jax.vmap(window)(starts)            # three windows, no Python loop
for x, y in zip(x_BT[:2], y_BT[:2]):
    print(repr(char_tok.decode([int(i) for i in x])), "->", repr(char_tok.decode([int(i) for i in y])))
assert jnp.array_equal(x_BT[:, 1:], y_BT[:, :-1])

sampler = BatchSampler(np.asarray(tokens), seed=0)
xs, ys = sampler.sample(4, T)                    # (4, T) each
assert (xs[:, 1:] == ys[:, :-1]).all()
assert (BatchSampler(np.asarray(tokens), seed=0).sample(4, T)[0] == xs).all()   # same seed, same batch
print(xs.shape, ys.shape)
"""),
] + results("""
    "char_vocab": int(char_tok.vocab_size), "bpe_vocab": int(bpe_tok.vocab_size),
    "gpt2_vocab": int(gpt2_tok.vocab_size),
    "bpe_chars_per_token": len(sample) / len(bpe_tok.encode(sample)),   # compression of the sample above
    "gpt2_chars_per_token": len(sample) / len(gpt2_tok.encode(sample)),
""")

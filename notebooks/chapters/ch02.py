"""Chapter 02's cells (02_texto_vira_numero.ipynb)."""

from chapters.cells import code, hidden, md, preamble, results

NAME = "02_texto_vira_numero"

# The exercises' reference solutions: shown in a collapsed <details> block, and carried rot13-encoded
# in the checking cell, which runs them only while the learner's cell is still the stub.
SOLUTION_1 = '''
def make_char_tokenizer(corpus):
    vocab = sorted(set(corpus))
    stoi = {ch: i for i, ch in enumerate(vocab)}
    unk = len(vocab)
    encode = lambda s: [stoi.get(ch, unk) for ch in s]
    decode = lambda ids: "".join(vocab[i] if i < unk else "\\ufffd" for i in ids)
    return encode, decode, unk + 1
'''
SOLUTION_2 = '''
def bpe_encode(word, merges):
    toks = tuple(word)
    for pair in merges:
        toks = merge(toks, pair)
    return list(toks)
'''

CELLS = preamble(NAME, "02", "Texto vira número", """
A model computes with numbers, not letters. This chapter turns Tiny Shakespeare into the numbers a
GPT reads, one step at a time.

**What you will learn**

- why text must become numbers, and why whole words make a poor vocabulary;
- a character tokenizer built by hand: its vocabulary, `encode`, `decode`, and what to do with a
  character it has never seen;
- byte-pair encoding (BPE) step by step: count the pairs, merge the most frequent one, repeat;
- jaxgpt's three tokenizers (`char`, `bpe`, `gpt2`) and what each costs in tokens;
- embeddings: a token id is a row number in a table of vectors;
- the training pairs: every *context -> next token* pair hidden in one window of text, then batches
  of windows;
- the GPT's input: token embeddings plus position embeddings.
""", '''CORPUS = "shakespeare"  # the text: shakespeare or stdlib (both shipped, offline), or a .txt path
TEXT_CHARS = 20_000 if SMALL else 400_000  # how much of it the library's BPE learns from
BPE_VOCAB = 300 if SMALL else 1024         # the library BPE's vocabulary size (256 bytes + merges + 1)
HAND_MERGES = 12 if SMALL else 20          # merges of the hand-made BPE below''') + [
    md("""
## 1. Text is not numbers

Here is the text the whole course reads: Tiny Shakespeare, about a million characters of the plays
(shipped inside jaxgpt, so it works offline). A neural network multiplies and adds; before it can
read a single line, every piece of this text needs a number.
"""),
    code("""
from jaxgpt.data.corpus import resolve_corpus

text = resolve_corpus(CORPUS).text
print(f"{len(text):,} characters. The opening:\\n")
print(text[:250])
"""),
    md("""
## 2. A first idea: one number per word

Split on spaces, give each distinct word a number. It works for a sentence, but look at the
vocabulary it needs, and at how many words of the play's second half it has never seen (each would
have no number at all):
"""),
    code("""
half = len(text) // 2
seen_words = set(text[:half].split())
later_words = text[half:].split()
unseen = [w for w in later_words if w not in seen_words]
print(f"distinct words in the first half: {len(seen_words):,}")
print(f"words of the second half never seen in the first: {len(unseen):,} of {len(later_words):,}"
      f" ({len(unseen) / len(later_words):.1%}), e.g. {unseen[:6]}")
"""),
    md("""
Words fail twice: the vocabulary is huge (every `speak`, `speak.`, `Speak,` is its own word), and a
new word has no id. Real tokenizers pick smaller pieces. The smallest is the character.

## 3. A character tokenizer, by hand

The **vocabulary** is the sorted list of distinct characters. Two dictionaries map between them and
ids: `stoi` (string to integer) and `itos` (integer to string). `encode` turns text into ids,
`decode` turns ids back into text.
"""),
    code("""
chars = sorted(set(text))
stoi = {ch: i for i, ch in enumerate(chars)}
itos = {i: ch for ch, i in stoi.items()}
print(f"{len(chars)} characters in the vocabulary:", repr("".join(chars)))

def encode(s):
    return [stoi[ch] for ch in s]

def decode(ids):
    return "".join(itos[i] for i in ids)

line = "To be, or not to be"
ids = encode(line)
print(ids)
print(repr(decode(ids)))
assert decode(encode(line)) == line  # lossless: nothing is lost on the way
"""),
    md("""
### Unknown characters

The vocabulary only knows what the corpus contained. Tiny Shakespeare has no `é` (nor any
emoji), so `encode("café")` has no id for `é`. Two common answers: reserve an **unknown** id
(`<unk>`) and map every stranger to it (simple, but the text can no longer be decoded exactly), or
work on **bytes**, which can spell anything (what BPE below and GPT-2 do).
"""),
    code("""
try:
    encode("café")
except KeyError as e:
    print("KeyError: no id for", e)

UNK = len(chars)                               # one more id, after the real characters
def encode_or_unk(s):
    return [stoi.get(ch, UNK) for ch in s]

def decode_or_unk(ids):
    return "".join(itos.get(i, "?") for i in ids)

ids = encode_or_unk("café au lait")
print(ids, "->", repr(decode_or_unk(ids)))     # the é is gone for good
"""),
    md("""
## 4. Byte-pair encoding, step by step

Characters give a tiny vocabulary but long sequences: every `the` costs three tokens. **BPE** starts
from single characters and learns to glue frequent neighbours together:

1. count every pair of adjacent tokens;
2. merge the most frequent pair into one new token, everywhere;
3. repeat, as many times as the vocabulary size you want allows.

Like GPT-2, we first cut the text into words (each keeps its leading space) so that a merge never
glues the end of one word to the start of the next. A small text, the first 2,000 characters of the
play:
"""),
    code("""
import re
from collections import Counter

small_text = text[:2000]
word_counts = Counter(re.findall(r" ?[A-Za-z]+| ?[^A-Za-z\\s]+|\\s+", small_text))
pieces = {w: tuple(w) for w in word_counts}     # each word as a tuple of tokens, characters at first
print(len(word_counts), "distinct words, e.g.", list(word_counts)[:8])

def count_pairs(pieces, word_counts):
    pairs = Counter()
    for w, n in word_counts.items():
        toks = pieces[w]
        for a, b in zip(toks, toks[1:]):
            pairs[a, b] += n                     # a word that occurs n times counts n times
    return pairs

def merge(toks, pair):
    out, i = [], 0
    while i < len(toks):
        if i + 1 < len(toks) and (toks[i], toks[i + 1]) == pair:
            out.append(toks[i] + toks[i + 1])
            i += 2
        else:
            out.append(toks[i])
            i += 1
    return tuple(out)

def n_tokens(pieces, word_counts):
    return sum(len(pieces[w]) * n for w, n in word_counts.items())

print("top pairs before any merge:", count_pairs(pieces, word_counts).most_common(5))
"""),
    md("""
Now the loop: each line below is one merge, with how often the pair occurred and how many tokens
the 2,000 characters take afterwards.
"""),
    code("""
merges = []
print(f"start: {n_tokens(pieces, word_counts)} tokens")
for step in range(1, HAND_MERGES + 1):
    pair, count = count_pairs(pieces, word_counts).most_common(1)[0]
    merges.append(pair)
    pieces = {w: merge(toks, pair) for w, toks in pieces.items()}
    print(f"merge {step:2d}: {pair[0]!r:8} + {pair[1]!r:8} -> {pair[0] + pair[1]!r:10}"
          f" ({count:2d} times)  now {n_tokens(pieces, word_counts)} tokens")

hand_compression = len(small_text) / n_tokens(pieces, word_counts)
print(f"{hand_compression:.3f} characters per token after {len(merges)} merges")
print("how a few words are cut now:", [pieces[w] for w in ("First", " Citizen", " the", " people")])
"""),
    md("""
`' t' + 'he' -> ' the'`: a frequent word becomes a single token, built from smaller merges. A word
never seen in training still encodes: apply the merges in the order they were learned, and whatever
is not merged stays as single characters (exercise 2 below). Nothing is ever unknown, provided the
base alphabet covers everything: that is why real BPEs start from the 256 **bytes** rather than
characters.

jaxgpt's `bpe` tokenizer does exactly this (byte-level, with GPT-4's word-splitting rule, trained by
the `rustbpe` library). Trained on the same 2,000 characters, its first merges are ours:
"""),
    code("""
from jaxgpt.data.tokenizers import build_tokenizer

lib_small = build_tokenizer("bpe", small_text, vocab_size=256 + len(merges) + 1)  # bytes + merges + <|endoftext|>
lib_merges = [r.decode("utf-8", "replace") for r in lib_small.ranks[256:]]        # ids 256, 257, ... are the merges
ours = [a + b for a, b in merges]
for i, (m_ours, m_lib) in enumerate(zip(ours, lib_merges), 1):
    print(f"{i:2d}  ours {m_ours!r:12} library {m_lib!r:12} {'same' if m_ours == m_lib else ''}")
assert ours[:5] == lib_merges[:5]
"""),
    md("""
The two lists part ways later only where the word-splitting rules differ (the library keeps `:` and
the newline after it together, for instance) or where two pairs tie.

## 5. jaxgpt's tokenizers

The library has three, behind one interface (`encode`, `decode`, `vocab_size`):

- `char`: the characters of the corpus (65 for Tiny Shakespeare), our tokenizer of section 3;
- `bpe`: a byte-level BPE learned from the corpus, of the size you choose (section 4);
- `gpt2`: OpenAI's GPT-2 BPE, 50,257 tokens learned from web text (it works offline).

One line of the play, cut by each (`·` marks a space):
"""),
    code("""
char_tok = build_tokenizer("char", text)
bpe_tok = build_tokenizer("bpe", text[:TEXT_CHARS], vocab_size=BPE_VOCAB)
gpt2_tok = build_tokenizer("gpt2")
assert char_tok.encode(line) == encode(line)       # the library's char tokenizer is ours

sample = text[1000:1400]
verse = "ROMEO:\\nBut, soft! what light through yonder window breaks?"
for name, tk in (("char", char_tok), ("bpe", bpe_tok), ("gpt2", gpt2_tok)):
    ids = tk.encode(verse)
    assert tk.decode(ids) == verse                   # every one is lossless
    pieces_shown = "|".join(tk.decode([i]).replace(" ", "·").replace("\\n", "⏎") for i in ids)
    print(f"{name:5s} vocabulary {tk.vocab_size:6,}: {len(ids):3d} tokens, "
          f"{len(sample) / len(tk.encode(sample)):.2f} characters per token on a longer sample")
    print("     ", pieces_shown)
"""),
    md("""
The trade-off: a bigger vocabulary means shorter sequences (more text fits in the model's context,
fewer steps to generate) but a bigger embedding table and rarer tokens to learn. The course's
models use `char` on Tiny Shakespeare: 65 ids, small and fast to train on a CPU.

Unknown characters, again: `char` refuses them, the byte-level ones spell them out in bytes.
"""),
    code("""
stranger = "Café, 3 €"
try:
    char_tok.encode(stranger)
except ValueError as e:
    print("char:", e)
for name, tk in (("bpe", bpe_tok), ("gpt2", gpt2_tok)):
    ids = tk.encode(stranger)
    assert tk.decode(ids) == stranger
    print(f"{name}: {ids} -> {tk.decode(ids)!r}")
"""),
    md("""
## 6. Embeddings: an id picks a row

An id is only a name: 23 is not "more" than 22. The model turns each id into a vector of D learned
numbers by looking up row `id` of an **embedding table** of shape (V, D). In Flax that table is
`nn.Embed`; its parameters are plain data, and the lookup is indexing, nothing more. Training moves
these rows so that tokens used alike end up close (chapter 05 draws them).

Names in this course end with their shape (chapter 00): `table_VD` is (vocabulary, width), `x_TD`
is (time, width), `x_BTD` adds a batch axis.
"""),
    code("""
import flax.linen as nn

V, D = char_tok.vocab_size, 8
wte = nn.Embed(V, D)                                      # token embedding, as in GPT-2
wte_params = wte.init(jax.random.key(0), jnp.zeros((1,), jnp.int32))["params"]
table_VD = wte_params["embedding"]
ids_T = jnp.asarray(char_tok.encode("To be"))
x_TD = wte.apply({"params": wte_params}, ids_T)
assert jnp.array_equal(x_TD, table_VD[ids_T])             # a table lookup
print("table", table_VD.shape, "-> 'To be' becomes", x_TD.shape)
print(np.round(np.asarray(x_TD), 2))
"""),
    md("""
## 7. Sliding window: context -> next token

A language model learns one thing: given the text so far, predict the next token. One window of
`T + 1` tokens from the corpus holds **T** training examples at once: for every t, the context is
tokens `0..t` and the target is token `t + 1`. Here is every pair of one window:
"""),
    code("""
tokens = np.asarray(char_tok.encode(text), np.int32)
T = 8
start = text.index("Before")                        # the first line of speech
chunk = tokens[start:start + T + 1]
x_T, y_T = chunk[:-1], chunk[1:]                  # the input, and the same window shifted by one
print("x:", x_T, repr(char_tok.decode(x_T)))
print("y:", y_T, repr(char_tok.decode(y_T)))
for t in range(T):
    context, target = x_T[:t + 1], y_T[t]
    print(f"{char_tok.decode(context)!r:>12} -> {char_tok.decode([target])!r}")
"""),
    md("""
The model sees every context length from 1 to T, which is why it can later start generating from a
prompt of any length up to T. The same pairs with the `bpe` tokenizer: fewer, longer steps.
"""),
    code("""
bpe_ids = bpe_tok.encode(text[:200])[:T + 1]
for t in range(T):
    context = bpe_tok.decode(bpe_ids[:t + 1])
    print(f"{context!r:>44} -> {bpe_tok.decode([bpe_ids[t + 1]])!r}")
"""),
    md("""
## 8. Batches of windows

Training takes B windows at once, from random places in the text. By hand: `vmap` maps the
one-window function over B start positions (no Python loop). jaxgpt's `BatchSampler` does the same
from an explicit seed, so a run is reproducible.
"""),
    code("""
from jaxgpt.data.corpus import BatchSampler

tokens_j = jnp.asarray(tokens)

def window(start):
    chunk = jax.lax.dynamic_slice(tokens_j, (start,), (T + 1,))
    return chunk[:-1], chunk[1:]

starts_B = jax.random.randint(jax.random.key(1), (4,), 0, len(tokens) - T - 1)
x_BT, y_BT = jax.vmap(window)(starts_B)
assert jnp.array_equal(x_BT[:, 1:], y_BT[:, :-1])
for x, y in zip(x_BT, y_BT):
    print(repr(char_tok.decode(x)), "->", repr(char_tok.decode(y)))

sampler = BatchSampler(tokens, seed=0)
xs, ys = sampler.sample(4, T)                      # (4, T) each
assert (xs[:, 1:] == ys[:, :-1]).all()
assert (BatchSampler(tokens, seed=0).sample(4, T)[0] == xs).all()   # same seed, same batch
print("BatchSampler:", xs.shape, ys.shape)
"""),
    md("""
## 9. The GPT's input: tokens plus positions

Attention (next chapter) treats its inputs as a set: shuffle the tokens and it computes the same
thing for each. So GPT-2 adds a second table, a learned **position embedding** `wpe` of shape
(block_size, D): row t is added to the token at position t. The sum is what the first transformer
block reads; in jaxgpt's GPT these are the parameters `wte/embedding` and `wpe/embedding`.
"""),
    code("""
wpe = nn.Embed(T, D)                                       # one row per position 0..T-1
wpe_params = wpe.init(jax.random.key(2), jnp.arange(T))["params"]
tok_BTD = wte.apply({"params": wte_params}, x_BT)
pos_TD = wpe.apply({"params": wpe_params}, jnp.arange(T))
h_BTD = tok_BTD + pos_TD                                   # broadcast over the batch
print("tokens", tok_BTD.shape, "+ positions", pos_TD.shape, "->", h_BTD.shape)

# the same letter at two positions now gets two different vectors
row = np.asarray(x_BT[0])
same = [(i, j) for i in range(T) for j in range(i + 1, T) if row[i] == row[j]]
if same:
    i, j = same[0]
    assert jnp.array_equal(tok_BTD[0, i], tok_BTD[0, j]) and not jnp.array_equal(h_BTD[0, i], h_BTD[0, j])
    print(f"{char_tok.decode([row[i]])!r} at positions {i} and {j}: same token vector, different input vector")
"""),
    md("""
## Summary

- A model reads numbers: **text -> tokens -> ids -> embedding vectors (+ positions)**.
- A **character tokenizer** is a sorted vocabulary and two dictionaries; it is lossless but cannot
  encode a character it never saw (an `<unk>` id loses information; bytes do not).
- **BPE** repeatedly merges the most frequent adjacent pair; frequent words become single tokens,
  rare ones stay in pieces, and a byte-level BPE can encode any text.
- jaxgpt offers `char`, `bpe` and `gpt2`: more tokens in the vocabulary, fewer tokens per text.
- An **embedding** is a row lookup in a (V, D) table; GPT-2 adds a (block_size, D) position table.
- One window of T + 1 tokens gives T **context -> next token** examples; a batch is B windows.
"""),
    md(f"""
## Exercises

**Exercise 1: a character tokenizer that never fails.** Write `make_char_tokenizer(corpus)` returning
`(encode, decode, vocab_size)`, where `encode` maps any character missing from `corpus` to one extra
id `<unk>` (the last id) and `decode` writes that id as `"�"`. Known text must round-trip exactly.

<details><summary>Solution</summary>

The vocabulary is `sorted(set(corpus))`; the unknown id is `len(vocabulary)`, so `vocab_size` is one
more than the number of characters. `encode` uses `stoi.get(ch, unk)`; `decode` looks ids up in the
vocabulary, with `"�"` for the extra id.

```python
# solution (try it yourself first)
{SOLUTION_1.strip(chr(10))}
```
</details>

**Exercise 2: encode a new word with the learned merges.** Write `bpe_encode(word, merges)`: start
from the word's characters and apply the learned `merges` (the list of pairs from section 4) **in the
order they were learned**, each to the whole word. It must work for words the merges never saw, like
`" thee"` or `" Citizens"`.

<details><summary>Solution</summary>

Order matters: a later merge may use a token an earlier one made (`' t' + 'he'` needs both `' t'`
and `'he'` first). The section 4 helper `merge(toks, pair)` already merges one pair everywhere, so:

```python
# solution (try it yourself first)
{SOLUTION_2.strip(chr(10))}
```
</details>
"""),
    code("""
# Your answers: replace the bodies (as given, they return None: the check then runs the reference solution).
def make_char_tokenizer(corpus):
    return None

def bpe_encode(word, merges):
    return None
"""),
    code(f"""
# Checks your answers. A stub that still returns None is replaced by the reference solution
# (the collapsed blocks above; here rot13-encoded, so that it does not spoil the exercise).
import codecs

if make_char_tokenizer("ab") is None:
    print("Exercise 1 not answered yet: checking the reference solution")
    exec(codecs.decode({hidden(SOLUTION_1)}, "rot13"))
enc1, dec1, size1 = make_char_tokenizer(text)
assert size1 == len(set(text)) + 1, "vocab_size: the characters plus one <unk>"
assert dec1(enc1(text[:500])) == text[:500], "known text must round-trip"
ids1 = enc1("café")
assert len(ids1) == 4 and ids1[-1] == size1 - 1 and all(0 <= i < size1 for i in ids1), ids1
assert dec1(ids1) == "caf\\ufffd", dec1(ids1)
print("Exercise 1: correct")

if bpe_encode(" the", merges) is None:
    print("Exercise 2 not answered yet: checking the reference solution")
    exec(codecs.decode({hidden(SOLUTION_2)}, "rot13"))
for word in (" thee", " Citizens", " the", "First", " people"):
    got = bpe_encode(word, merges)
    assert "".join(got) == word, f"the tokens must spell the word: {{got}}"
    # fully merged: no two neighbours form a learned pair
    assert not any((a, b) in merges for a, b in zip(got, got[1:])), f"{{word!r}}: a learned merge is left: {{got}}"
    print(f"{{word!r:12}} -> {{got}}")
for w in list(word_counts)[:50]:                     # on the training words it agrees with the loop of section 4
    assert bpe_encode(w, merges) == list(pieces[w]), w
print("Exercise 2: correct")
"""),
] + results("""
    "char_vocab": int(char_tok.vocab_size), "bpe_vocab": int(bpe_tok.vocab_size),
    "gpt2_vocab": int(gpt2_tok.vocab_size),
    "hand_bpe_chars_per_token": hand_compression,                        # section 4, on 2,000 characters
    "bpe_chars_per_token": len(sample) / len(bpe_tok.encode(sample)),   # compression of a 400-character sample
    "gpt2_chars_per_token": len(sample) / len(gpt2_tok.encode(sample)),
""")

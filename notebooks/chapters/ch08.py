"""Chapter 08's cells (08_extras.ipynb)."""

from chapters.cells import code, hidden, md, preamble, results, show_png

SOLUTION_1 = """
def kv_cache_bytes(cfg, batch, capacity, bytes_per_value=4):
    # keys and values (2) x layers x sequences x positions x width (heads x head size)
    return 2 * cfg.n_layer * batch * capacity * cfg.n_embd * bytes_per_value
"""
SOLUTION_2 = """
def ctrl_penalty(logits_V, previous_ids, penalty):
    seen_V = jnp.zeros(logits_V.shape, bool).at[jnp.asarray(previous_ids)].set(True)
    penalized_V = jnp.where(logits_V > 0, logits_V / penalty, logits_V * penalty)
    return jnp.where(seen_V, penalized_V, logits_V)
"""

NAME = "08_extras"
CELLS = preamble(NAME, "08", "Extras",
                "A laboratory on the course model (the GPT chapter 05 pretrained on Tiny Shakespeare): how "
                "generation works inside, what it gets wrong, and where to go from here.\n\n"
                "**What you will learn**\n\n"
                "- what the model can read: its 65-character vocabulary, and its 128-character context window;\n"
                "- the **KV cache**: what it stores, why generation without it redoes the whole window for every "
                "token, and how much faster it is (timed);\n"
                "- a model outside what it has read: it answers anyway, in the only style it knows;\n"
                "- **multi-turn prompting**: a dialogue written in the play's format, and how the context window "
                "limits the turns it remembers;\n"
                "- temperature, top-k and top-p, as distributions and as text;\n"
                "- two limitations measured: **repetition** (and how sampling or a repetition penalty reduces it) "
                "and **hallucination** (invented words and names);\n"
                "- how the format of a prompt steers a base model, seen in its next-token distribution;\n"
                "- where to go next: preference tuning (RLHF, DPO), retrieval (RAG), and what jaxgpt offers.",
                'CORPUS = "shakespeare"  # the course model\'s corpus: the hallucination check looks words up in it\n'
                "N_DRAWS = 200 if SMALL else 10_000  # random draws that approximate one distribution\n"
                "N_NEW = 60 if SMALL else 300  # characters generated per sample in the experiments\n"
                "# The course model (chapter 05 pretrains it; opened first, this chapter trains it, with a message).\n"
                "# Default ~/.cache/jaxgpt/course-model ($JAXGPT_COURSE_MODEL_DIR moves it); small settings keep it in WORK.\n"
                "from jaxgpt.course.model import course_model_dir\n"
                "COURSE_MODEL_DIR = course_model_dir(WORK, SMALL)") + [
    md("""
## 1. The course model and what it can read

Every experiment here uses the model chapter 05 pretrained: 4 blocks, 4 heads, width 128, trained on
Tiny Shakespeare one character at a time. If you opened this chapter first, the next cell trains it
(a few minutes on a CPU) and says so; otherwise it just loads it.
"""),
    code("""
from jaxgpt.course.model import ensure_course_model
from jaxgpt.train.checkpoint import load_inference_params
from jaxgpt.train.run_dir import RunDir
from jaxgpt.data.corpus import resolve_corpus

ensure_course_model(COURSE_MODEL_DIR, SMALL)
cfg, params = load_inference_params(COURSE_MODEL_DIR)
tok = RunDir(COURSE_MODEL_DIR).read_tokenizer()
corpus_text = resolve_corpus(CORPUS).text
print(f"{cfg.n_layer} layers, width {cfg.n_embd}, context {cfg.block_size} characters, {cfg.num_params():,} parameters")
print(f"vocabulary ({tok.vocab_size} characters): {tok.decode(list(range(tok.vocab_size)))!r}")
"""),
    md("""
The vocabulary is every character of the corpus and nothing else: no digits but `3`, no accents, no
`#` or `@`. A character the model never saw has no id, so the tokenizer refuses it. A small model
like ours has to clean its input first: strip accents, turn any other unknown character into a space.
"""),
    code("""
import re
import unicodedata

def clean(text):
    \"\"\"text with accents stripped and every character outside the vocabulary turned into a space.\"\"\"
    plain = "".join(c for c in unicodedata.normalize("NFD", text) if unicodedata.category(c) != "Mn")
    known = set(tok.decode(list(range(tok.vocab_size))))
    return "".join(c if c in known else " " for c in plain)

raw = "Café at 7 o'clock, naïve Roméo! #love"
try:
    tok.encode(raw)
except ValueError as err:
    print("encode refuses it:", err)
print(f"cleaned: {clean(raw)!r} -> {len(tok.encode(clean(raw)))} ids")
"""),
    md("""
## 2. The prompt and the context window

The model predicts the next character from the characters before it, but only from the last
`block_size` = 128 of them: its position embeddings stop there. A short prompt gives it little to go
on; a longer one sets the scene (below, the opening of Richard III's first speech). And whatever
came before the last 128 characters is simply gone: a 400-character prompt and its last 128
characters alone give the *same* continuation.

A helper first: `continue_text(prompt, n, **sampling)` runs jaxgpt's `generate` and returns the new
characters (greedy with `temperature=0`).
"""),
    code("""
from jaxgpt import generate

def continue_text(prompt, n=N_NEW, seed=0, **sampling):
    ids = tok.encode(prompt)
    out = generate(cfg, params, [ids], n, rng=jax.random.key(seed), **sampling)[0]
    return tok.decode([int(t) for t in out[len(ids):]])

short_prompt = "GLOUCESTER:\\n"
end = corpus_text.index("GLOUCESTER:\\nNow is the winter") + len(short_prompt) + 60
long_prompt = corpus_text[end - 400:end]   # the 400 characters up to a line into the speech
for name, prompt in (("short", short_prompt), ("long", long_prompt)):
    print(f"--- {name} prompt ({len(prompt)} characters), its end: {prompt[-60:]!r}")
    print(continue_text(prompt, 120, temperature=0.8, seed=4))
cropped = long_prompt[-cfg.block_size:]
assert continue_text(long_prompt, 120, temperature=0.8, seed=4) == continue_text(cropped, 120, temperature=0.8, seed=4)
print(f"\\nthe {len(long_prompt)}-character prompt and its last {cfg.block_size} characters: the same continuation")
"""),
    md("""
## 3. The KV cache: generating without redoing the past

Generating is a loop: run the model, pick the next character, append it, run again. Done naively,
every step runs the model over the whole window again, although only one character is new. Look at
what attention needs for the new position: its query, and the **keys and values of every earlier
position**. With a causal mask those earlier keys and values never change when a character is
appended (position 5 cannot see position 6). So we compute them once and keep them: that store is
the **KV cache**. Each step then runs the model on one position only, reads the cache, and writes
its own key and value into it.

jaxgpt's cache holds, for each layer, a keys array and a values array of shape
(batch × heads, capacity, head size); `generate` fills it from the prompt in one pass (the *prefill*),
then decodes every new token inside one compiled loop (`lax.while_loop`, no Python per token).
"""),
    code("""
from jaxgpt.model.gpt import GPT, init_kv_cache

caches = init_kv_cache(cfg, batch_size=1, capacity=cfg.block_size)
print(f"{len(caches)} layers, each (keys, values) of shape {caches[0][0].shape} = (batch x heads, capacity, head size)")
cache_bytes = sum(k.nbytes + v.nbytes for k, v in caches)
print(f"the cache takes {cache_bytes / 1024:.0f} KiB for one sequence of {cfg.block_size} characters")
"""),
    md("""
By hand with the model's `decode` method: the prompt fills the cache (prefill), then one new
character runs **alone**, reading the cache. Its logits are those of the full forward pass over the
whole sequence, up to float32 rounding (the two paths add the same numbers in a different order).
"""),
    code("""
model = GPT(cfg)
ids = tok.encode("ROMEO:\\nBut soft")
T0 = len(ids)
valid_BS = jnp.ones((1, cfg.block_size), bool)   # no padding: every slot may hold a real token
prefill_logits, caches = model.apply({"params": params}, jnp.asarray([ids[:-1]]), jnp.arange(T0 - 1)[None],
                                     caches, jnp.int32(0), valid_BS, method=GPT.decode)
step_logits, caches = model.apply({"params": params}, jnp.asarray([ids[-1:]]), jnp.asarray([[T0 - 1]]),
                                  caches, jnp.int32(T0 - 1), valid_BS, method=GPT.decode)
full_logits = model.apply({"params": params}, jnp.asarray([ids]))
print("one position with the cache vs the full forward pass: max |difference| =",
      f"{float(jnp.abs(step_logits[0, 0] - full_logits[0, -1]).max()):.2e}")
np.testing.assert_allclose(step_logits[0, 0], full_logits[0, -1], atol=1e-4)
"""),
    md("""
Now a timing. The same prompt, the same number of new characters (up to the 128-character window),
greedy, two ways:

- **naive**: a Python loop that, for every new character, runs the jit-compiled forward pass over the
  whole 128-slot window (the characters so far, left-aligned, and causal masking makes the slots
  after them irrelevant) and reads the logits at the last real position;
- **cached**: `generate`, the KV cache in a compiled loop.

Both must pick the same characters. They compute the same function in a different order, so their
logits differ by float32 rounding (about 1e-5 here): the greedy choice can only differ where the two
best logits are closer than that, which we check does not happen.
"""),
    code("""
import time

forward = jax.jit(lambda p, x: model.apply({"params": p}, x))

def naive_greedy(prompt_ids, n):
    buf = np.zeros((1, cfg.block_size), np.int32)
    buf[0, :len(prompt_ids)] = prompt_ids
    length, new, logits = len(prompt_ids), [], []
    for _ in range(n):
        last = forward(params, jnp.asarray(buf))[0, length - 1]   # the whole window, every step
        nxt = int(jnp.argmax(last))
        new.append(nxt); logits.append(np.asarray(last))
        buf[0, length] = nxt
        length += 1
    return new, np.stack(logits)

prompt_ids = tok.encode("ROMEO:\\n")
n_new = cfg.block_size - len(prompt_ids)          # fill the window exactly
naive_greedy(prompt_ids, 2); generate(cfg, params, [prompt_ids], n_new, temperature=0)   # compile both first

def best_time(fn, repeats=3):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter(); result = fn(); times.append(time.perf_counter() - t0)
    return min(times), result

naive_s, (naive_ids, naive_logits) = best_time(lambda: naive_greedy(prompt_ids, n_new))
cached_s, (cached_out, cached_logits) = best_time(
    lambda: generate(cfg, params, [prompt_ids], n_new, temperature=0, return_logits=True))
cached_ids = [int(t) for t in cached_out[0, len(prompt_ids):]]
kv_cache_speedup = naive_s / cached_s
print(f"naive : {n_new / naive_s:8.0f} tokens/s")
print(f"cached: {n_new / cached_s:8.0f} tokens/s   ({kv_cache_speedup:.1f}x faster)")
logit_gap = float(np.abs(naive_logits - cached_logits[0]).max())
print(f"same {n_new} greedy characters: {naive_ids == cached_ids}; largest logit difference {logit_gap:.1e}")
assert naive_ids == cached_ids
print(repr(tok.decode(cached_ids)))
"""),
    md("""
Part of the gain is the cache (one position per step instead of 128) and part is the compiled loop
(no Python between tokens); on a GPU and with long contexts the first dominates. Past the window, the
learned positions end: `generate` then re-runs the model on the last 128 characters for each new one,
exactly like nanoGPT (`window_stride=s` trades some context for speed). A cache is not free either:
it grows with layers × context × width, which is why long-context models spend so much memory on it
(exercise 1).

## 4. Outside what it has read

A model only knows its training text. Ask ours about something Shakespeare never wrote about and it
does not say "I don't know": it continues in the only style it has, confidently.
"""),
    code("""
modern = clean("Tell me how a computer works.\\n")
print(repr(modern))
print(continue_text(modern, 200, temperature=0.8, seed=1))
"""),
    md("""
## 5. Multi-turn prompting

A chat is just text in a fixed format. Our model read plays, so its format is the play's: a speaker's
name and a colon on one line, the speech, a blank line. Build the prompt from a list of
(speaker, line) turns, end it with the next speaker's name, and the model writes that speaker's
reply; cut the reply at the first blank line (the end of the speech), add it to the turns, and go on.
Chat models (chapter 07) are trained on exactly such formats, with special tokens for the roles
instead of names, which is why they answer in turn and stop.
"""),
    code("""
def dialogue(turns, next_speaker):
    \"\"\"The turns in the play's format, ending with the next speaker's name.\"\"\"
    return "".join(f"{who}:\\n{line}\\n\\n" for who, line in turns) + f"{next_speaker}:\\n"

def reply(turns, speaker, seed):
    text = continue_text(dialogue(turns, speaker), 150, temperature=0.8, top_k=20, seed=seed)
    return text.split("\\n\\n")[0].strip()

turns = [("ROMEO", "What light is that which breaks through yonder window?")]
for round_, (speaker, line) in enumerate([("ROMEO", "Speak again, bright angel, speak to me."),
                                          ("ROMEO", "By whom shall I swear, my love?")]):
    turns.append(("JULIET", reply(turns, "JULIET", seed=round_)))
    turns.append((speaker, line))
turns.append(("JULIET", reply(turns, "JULIET", seed=7)))
conversation = dialogue(turns[:-1], "JULIET") + turns[-1][1]
print(conversation)
"""),
    md("""
Every turn makes the prompt longer, but the model sees only the last 128 characters. Here is what
it actually read when it wrote JULIET's last reply: the first turns had already fallen out of its
window. Real chat models have windows of thousands of tokens, and the same limit: the oldest turns
are dropped (or summarized) once the conversation outgrows it.
"""),
    code("""
last_prompt = dialogue(turns[:-1], "JULIET")
seen = last_prompt[-cfg.block_size:]
print(f"prompt: {len(last_prompt)} characters; the model reads the last {len(seen)}:")
print("..." + seen)
first_line = turns[0][1]
print(f"\\nthe first line still in view: {first_line in seen}")
"""),
    md("""
## 6. Temperature, top-k and top-p

The model's output at the last position is a vector of logits, one per character; softmax turns it
into probabilities. Sampling divides the logits by a temperature T first: T < 1 sharpens the
distribution (towards greedy), T > 1 flattens it (more surprises). By hand, after `ROMEO:\\n`:
"""),
    code("""
import matplotlib.pyplot as plt
from jaxgpt.viz import figures as viz

prompt = "ROMEO:\\n"
ids = tok.encode(prompt)
logits_V = forward(params, jnp.asarray([ids]))[0, -1]
fig, ax = plt.subplots(figsize=(7, 3.5))
order = jnp.argsort(-logits_V)[:15]
for T in (0.5, 1.0, 2.0):
    p = jax.nn.softmax(logits_V / T)
    ax.plot(range(15), p[order], "o-", label=f"T = {T}")
ax.set_xticks(range(15), [viz.token_label(tok, int(i), quotes=False) for i in order], fontfamily="monospace")
ax.set_xlabel("next character (most likely first)"); ax.set_ylabel("probability"); ax.legend(); ax.grid(alpha=0.3)
ax.set_title("after 'ROMEO:\\\\n': one distribution at three temperatures"); fig.tight_layout(); plt.show()
"""),
    md("""
A draw is `jax.random.categorical(key, logits / T)`. With `vmap` over many keys, the frequencies
approach the probabilities: sampling is exactly "pick by probability".
"""),
    code("""
probs_V = jax.nn.softmax(logits_V)
top_ids = np.asarray(jnp.argsort(-logits_V)[:5])
keys = jax.random.split(jax.random.key(0), N_DRAWS)
draws = jax.vmap(lambda key: jax.random.categorical(key, logits_V))(keys)
freq = np.bincount(np.asarray(draws), minlength=logits_V.shape[0]) / N_DRAWS
for i in top_ids:
    print(f"{viz.token_label(tok, int(i)):6s} p = {float(probs_V[i]):.3f}  drawn {freq[i]:.3f}")
"""),
    md("""
- **top-k** keeps the k most likely characters and renormalizes;
- **top-p** (nucleus) keeps the smallest set of most likely characters whose probability reaches p.

jaxgpt's filters (`jaxgpt.sample.decode.top_k_filter`, `top_p_filter`) set the others' logits to
−inf; checked here against the definitions computed by sorting:
"""),
    code("""
from jaxgpt.sample.decode import top_k_filter, top_p_filter

kept_k = np.isfinite(np.asarray(top_k_filter(logits_V, 5)))
assert set(np.flatnonzero(kept_k)) == set(top_ids)

p_sorted = np.sort(np.asarray(probs_V))[::-1]
n_nucleus = int(np.searchsorted(np.cumsum(p_sorted), 0.9) + 1)   # smallest prefix with mass >= 0.9
kept_p = np.isfinite(np.asarray(top_p_filter(logits_V, 0.9)))
print(f"top-k 5 keeps {kept_k.sum()} characters; top-p 0.9 keeps {kept_p.sum()} (by sorting: {n_nucleus})")
assert kept_p.sum() == n_nucleus
"""),
    md("""
The same prompt continued greedily, at three temperatures, with top-k and with top-p, each with the
same explicit key (`python -m jaxgpt.viz --out_dir=RUN --what=decoding --prompt=...` draws it from
the command line):
"""),
    show_png(),
    code("""
settings = viz.DEFAULT_SETTINGS[:3] if SMALL else viz.DEFAULT_SETTINGS   # small: greedy and two temperatures
decoded = viz.compare_decoding(cfg, params, tok, prompt, os.path.join(WORK, "decoding.png"), settings=settings,
                               max_new_tokens=80)
for label, text in decoded:
    print(f"{label:18s} {text[:70]!r}")
show(os.path.join(WORK, "decoding.png"))
"""),
    md("""
## 7. Limitations: repetition and hallucination

### Repetition

Greedy decoding is deterministic, and its context is finite: once the likeliest continuation leads
back to a context it was in before, the text loops forever. We measure it as the fraction of
10-character pieces of a sample that already appeared earlier in the same sample, for greedy text,
for sampled text (temperature 0.8), and for greedy text with a **repetition penalty**.

jaxgpt has no repetition penalty, so here is a tiny one, in the spirit of CTRL's (Keskar et al.,
2019) and of Hugging Face's `no_repeat_ngram_size`: before picking a character, look at the last few
characters written; every character that, in the text so far, followed that same run of characters
gets its logit lowered by `penalty`. A continuation the text has already used becomes less likely,
so a loop has to find another way out. It needs a decoding loop of our own: the jit-compiled forward
on the last 128 characters, one character at a time.
"""),
    code("""
def window(ids):
    \"\"\"(1, block_size) int32: the last block_size ids, left-aligned, and the index of the last one.\"\"\"
    kept = ids[-cfg.block_size:]
    buf = np.zeros((1, cfg.block_size), np.int32)
    buf[0, :len(kept)] = kept
    return jnp.asarray(buf), len(kept) - 1

def penalized_greedy(prompt, n, penalty=3.0, context=4):
    ids = tok.encode(prompt)
    for _ in range(n):
        buf, last = window(ids)
        logits = np.array(forward(params, buf)[0, last])
        tail = ids[len(ids) - context:]
        followers = {ids[i + context] for i in range(len(ids) - context) if ids[i:i + context] == tail}
        for t in followers:
            logits[t] -= penalty
        ids.append(int(np.argmax(logits)))
    return tok.decode(ids[len(tok.encode(prompt)):])

def repeated_fraction(text, n=10):
    seen, repeats = set(), 0
    for i in range(len(text) - n + 1):
        piece = text[i:i + n]
        repeats += piece in seen
        seen.add(piece)
    return repeats / max(1, len(text) - n + 1)

repetition_samples = {
    "greedy": continue_text(prompt, N_NEW, temperature=0),
    "temperature 0.8": continue_text(prompt, N_NEW, temperature=0.8, seed=3),
    "greedy + penalty": penalized_greedy(prompt, N_NEW),
}
repetition = {name: repeated_fraction(text) for name, text in repetition_samples.items()}
for name, text in repetition_samples.items():
    print(f"--- {name}: {repetition[name]:.0%} of its 10-character pieces seen before")
    print(text[:240])
"""),
    code("""
fig, ax = plt.subplots(figsize=(7, 3))
bars = ax.barh(list(repetition)[::-1], [100 * v for v in list(repetition.values())[::-1]], color=["C2", "C1", "C0"])
ax.bar_label(bars, fmt="%.0f%%", padding=3); ax.set_xlim(0, 105)
ax.set_xlabel("% of 10-character pieces already seen in the same text")
ax.set_title(f"repetition in {N_NEW} characters after 'ROMEO:\\\\n'"); ax.grid(alpha=0.3, axis="x")
fig.tight_layout(); plt.show()
"""),
    md("""
### Hallucination

A language model produces what is *plausible*, not what is *true* or even *real*. Ours writes words
that look English and names that look like characters, and some of them exist nowhere in
Shakespeare: the model made them up, with the same confidence as the rest. Count the words of a
text sampled at temperature 0.8 that never occur in the corpus, and the speakers it introduces that
are in no play. (For a model this small many are near-misses of real words; a bigger model invents
less often, and more convincingly.)
"""),
    code("""
WORD = re.compile(r"[A-Za-z']+")
known_words = {w.lower() for w in WORD.findall(corpus_text)}
SPEAKER = re.compile(r"^([A-Z][A-Z' ]*[A-Z]):$", re.MULTILINE)   # a name in capitals on its own line
known_speakers = set(SPEAKER.findall(corpus_text))

sample = continue_text("\\n", 4 * N_NEW, temperature=0.8, seed=11)
words = [w.strip("'") for w in WORD.findall(sample) if w.strip("'")]
invented = sorted({w for w in words if w.lower() not in known_words})
unknown_word_fraction = sum(w.lower() not in known_words for w in words) / max(1, len(words))
speakers = SPEAKER.findall(sample)
print(sample[:400])
print(f"\\n{len(words)} words, {unknown_word_fraction:.1%} never in the corpus, such as {invented[:20]}")
print(f"speakers: {sorted(set(speakers))}; invented: {sorted(set(speakers) - known_speakers)}")
"""),
    md("""
Bigger models hallucinate less often but in the same way, and more convincingly: a wrong date or an
invented reference in fluent prose. Nothing in next-token training rewards saying "I don't know"
(section 8 gives pointers to what does).

## 8. The prompt steers the model

A base model does not follow instructions: it continues text. An instruction is just another text to
continue, and our model has never seen one. What steers it is the **format**: put the request in the
form of the text it was trained on (a speaker, a colon, the start of a speech) and it continues that
speech on the topic. That is prompt engineering, in miniature; chapter 07's instruction tuning is the
way to make a model follow plain requests.
"""),
    code("""
as_instruction = "Explain what love is, in simple words.\\n"
as_play = "FRIAR LAURENCE:\\nLove, my son, is"
for name, p in (("an instruction", as_instruction), ("the play's format", as_play)):
    print(f"--- {name}: {p!r}")
    print(continue_text(p, 160, temperature=0.8, top_k=20, seed=5))
"""),
    md("""
The same effect, one character ahead: the next-character distribution after `ROMEO` (a name: the
colon should come next) and after `ROMEO:\\n` (a speech begins: a capital letter). Two figures drawn
with `jaxgpt.viz` (`python -m jaxgpt.viz --out_dir=RUN --what=next_token --prompt=...`):
"""),
    code("""
next_token = {}
for p in ("ROMEO", "ROMEO:\\n"):
    next_token[p] = viz.next_token_probs(cfg, params, tok.encode(p), k=10)
    name = "next_token_" + re.sub(r"\\W", "_", p) + ".png"
    show(viz.plot_next_token(next_token[p], tok, os.path.join(WORK, name), p))
np.testing.assert_allclose(next_token["ROMEO:\\n"][0], probs_V[next_token["ROMEO:\\n"][1]], rtol=1e-5)
"""),
    md("""
## 9. Where to go next

The course built the whole pipeline: text → tokens → embeddings → attention → GPT → pretraining →
fine-tuning → instruction tuning. What separates our model from an assistant is mostly scale and two
further steps:

- **Preference tuning (RLHF, DPO).** After instruction tuning, people compare pairs of answers; a
  model is tuned to prefer the better one. RLHF trains a reward model on those comparisons and
  optimizes against it with reinforcement learning
  ([InstructGPT, Ouyang et al., 2022](https://arxiv.org/abs/2203.02155)); DPO gets the same from the
  comparisons directly, with a loss as simple as cross-entropy
  ([Rafailov et al., 2023](https://arxiv.org/abs/2305.18290)). This is what teaches a model to be
  helpful, to refuse, and to say "I don't know".
- **Retrieval-augmented generation (RAG).** Instead of trusting what the weights remember, look up
  relevant passages in a document store and put them into the prompt
  ([Lewis et al., 2020](https://arxiv.org/abs/2005.11401)): the answer can then quote facts the model
  never memorized, the main remedy for hallucination in practice. In miniature, below: retrieve the
  corpus's lines that share the most words with a question and use them as the prompt's start.
"""),
    code("""
from collections import Counter

lines = [line for line in corpus_text.split("\\n") if len(line) > 20]
line_words = [{w.lower() for w in WORD.findall(line)} for line in lines]
document_frequency = Counter(w for words_ in line_words for w in words_)

def retrieve(question, k=2):
    \"\"\"The k lines of the corpus that share the rarest words with the question (a toy retriever:
    each shared word scores log(lines / lines containing it), so "the" counts for little).\"\"\"
    q = {w.lower() for w in WORD.findall(question)}
    score = lambda i: sum(np.log(len(lines) / document_frequency[w]) for w in q & line_words[i])
    return [lines[i] for i in sorted(range(len(lines)), key=score, reverse=True)[:k]]

question = "Juliet, tell me of the rose: what is in a name?"
passages = retrieve(question)
print("retrieved:", passages)
rag_prompt = "\\n".join(passages) + "\\n\\nJULIET:\\n"
print("--- continued with the passages in the prompt:")
print(continue_text(rag_prompt, 160, temperature=0.8, top_k=20, seed=2))
"""),
    md("""
And in jaxgpt:

- `python train.py --init_from=gpt2 ...` and `finetune.py --init_from=gpt2` start from OpenAI's GPT-2
  weights (124M parameters, a BPE vocabulary): the same code, a real pretrained model;
  `configs/finetune_shakespeare_gpt2.py` fine-tunes it on Tiny Shakespeare;
- `python sweep.py configs/sweep_cpu.py --out_dir=sweep-cpu` runs a small scaling study: a grid of
  model sizes and compute budgets, and the fits that say which size a budget should buy
  ([docs/sweeps.md](../docs/sweeps.md));
- `python sample.py --out_dir=<run>` samples any run, such as the course model.

## Summary

- A model reads only its vocabulary and its context window; input outside the vocabulary has to be
  cleaned, and text before the window's start has no effect at all.
- The KV cache keeps each layer's keys and values of the positions already seen, so each new token
  runs the model on one position; with a compiled loop it generated the same greedy text many times
  faster than re-running the whole window.
- A base model answers everything in its training style; its "chat" is a format (speaker turns),
  bounded by the window.
- Temperature, top-k and top-p reshape one distribution; greedy decoding loops, sampling and a
  repetition penalty break the loops.
- Hallucination is built in: the model writes what is plausible, inventing words and names.
- Beyond this course: preference tuning (RLHF, DPO) and retrieval (RAG).

## Exercises

**Exercise 1: the memory of a KV cache.** Write `kv_cache_bytes(cfg, batch, capacity, bytes_per_value=4)`:
the bytes a KV cache takes (keys and values, every layer, every head). The check compares it with the
arrays `init_kv_cache` allocates for the course model, and prints what GPT-2 small (12 layers, width
768, context 1024) needs per sequence.

<details><summary>Solution</summary>

```python
def kv_cache_bytes(cfg, batch, capacity, bytes_per_value=4):
    # keys and values (2) x layers x sequences x positions x width (heads x head size)
    return 2 * cfg.n_layer * batch * capacity * cfg.n_embd * bytes_per_value
```
</details>

**Exercise 2: a CTRL repetition penalty.** Write `ctrl_penalty(logits_V, previous_ids, penalty)`:
the logits of every token that appears in `previous_ids` are divided by `penalty` when positive and
multiplied by it when negative (both make the token less likely); the others are unchanged. The
check tests those properties and that `penalty=1` changes nothing.

<details><summary>Solution</summary>

```python
def ctrl_penalty(logits_V, previous_ids, penalty):
    seen_V = jnp.zeros(logits_V.shape, bool).at[jnp.asarray(previous_ids)].set(True)
    penalized_V = jnp.where(logits_V > 0, logits_V / penalty, logits_V * penalty)
    return jnp.where(seen_V, penalized_V, logits_V)
```
</details>
"""),
    code("""
# Your answers: replace the bodies (as given, they return None: the check then runs the reference solution).
def kv_cache_bytes(cfg, batch, capacity, bytes_per_value=4):
    return None

def ctrl_penalty(logits_V, previous_ids, penalty):
    return None
"""),
    code(f"""
# Checks your answers. A stub that still returns None is replaced by the reference solution
# (the collapsed blocks above; here rot13-encoded, so that it does not spoil the exercise).
import codecs
from jaxgpt.model.config import GPTConfig

if kv_cache_bytes(cfg, 1, 1) is None:
    print("Exercise 1 not answered yet: checking the reference solution")
    exec(codecs.decode({hidden(SOLUTION_1)}, "rot13"))
if ctrl_penalty(logits_V, [0], 2.0) is None:
    print("Exercise 2 not answered yet: checking the reference solution")
    exec(codecs.decode({hidden(SOLUTION_2)}, "rot13"))
# Check exercise 1: the arrays init_kv_cache allocates
for batch, capacity in ((1, cfg.block_size), (3, 16)):
    allocated = sum(k.nbytes + v.nbytes for k, v in init_kv_cache(cfg, batch, capacity))
    assert kv_cache_bytes(cfg, batch, capacity) == allocated, (batch, capacity, allocated)
gpt2_small = GPTConfig(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768)
print(f"exercise 1: correct; GPT-2 small's cache for one 1024-token sequence: "
      f"{{kv_cache_bytes(gpt2_small, 1, 1024) / 2**20:.0f}} MiB in float32")

# Check exercise 2: seen tokens less likely (both signs), others unchanged, penalty 1 changes nothing
logits = jnp.asarray([2.0, -1.0, 0.5, 3.0, -2.0])
out = np.asarray(ctrl_penalty(logits, [0, 1, 1], 2.0))
np.testing.assert_allclose(out, [1.0, -2.0, 0.5, 3.0, -2.0])
np.testing.assert_allclose(np.asarray(ctrl_penalty(logits_V, ids, 1.0)), np.asarray(logits_V))
penalized = ctrl_penalty(logits_V, ids, 1.5)
assert bool(jnp.all(penalized[jnp.asarray(ids)] < logits_V[jnp.asarray(ids)]))
top = int(jnp.argmax(logits_V))
p_after = float(jax.nn.softmax(ctrl_penalty(logits_V, [top], 3.0))[top])
print(f"exercise 2: correct; after 'ROMEO:\\\\n', {{tok.decode([top])!r}} (already used, say) drops from "
      f"p = {{float(probs_V[top]):.3f}} to {{p_after:.3f}} with penalty 3")
"""),
] + results("""
    "kv_cache_speedup": float(kv_cache_speedup),
    "naive_tokens_per_s": float(n_new / naive_s), "cached_tokens_per_s": float(n_new / cached_s),
    "greedy_repeated_fraction": float(repetition["greedy"]),
    "sampled_repeated_fraction": float(repetition["temperature 0.8"]),
    "penalized_repeated_fraction": float(repetition["greedy + penalty"]),
    "unknown_word_fraction": float(unknown_word_fraction),
    "top_token_probability": float(probs_V[top_ids[0]]),
    "top_k_5_kept": int(kept_k.sum()), "top_p_0.9_kept": int(kept_p.sum()),
    "max_draw_frequency_error": max(abs(float(freq[i]) - float(probs_V[i])) for i in top_ids),
""")

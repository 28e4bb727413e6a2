"""jaxgpt bench --task=sample: decoding speed of jaxgpt.generate against the PyTorch twin's naive and
KV-cached generate and transformers' GPT2LMHeadModel.generate, on the same random weights (see
jaxgpt.bench.cli's docstring for what each row measures). jax, torch and transformers are imported
when a run needs them: --help and flag errors answer without loading them, and torch and
transformers stay optional (--torch=False, --hf=False; without them installed, their rows are
skipped with one line saying so)."""

from __future__ import annotations

import dataclasses
import itertools
import sys
import time
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from jaxgpt.bench.common import comparison_runs, emit_record, int_list, machine, table_stream, timed
from jaxgpt.cli import CLIError, Option

Row = Tuple[str, int, Any, str, float, float]  # (impl, batch, new tokens, compile s, median s, tokens/s)

SAMPLE_OPTIONS: Dict[str, Option] = {
    "n_layer": Option(6, "layers"),
    "n_head": Option(6, "heads"),
    "n_embd": Option(384, "width"),
    "vocab_size": Option(65, "vocabulary"),
    "block_size": Option(256, "context length"),
    "compute_dtype": Option("float32", "JAX compute dtype", choices=("float32", "bfloat16")),
    "prompt_len": Option(16, "prompt tokens per row"),
    "new_tokens": Option("500,240", "comma-separated max_new_tokens values to time", type=object),
    "batch_sizes": Option("1,8", "comma-separated batch sizes", type=object),
    "naive_tokens": Option(200, "tokens timed for the naive torch generate"),
    "decode_chunks": Option("0", "comma-separated GPTConfig.decode_chunk values to time jaxgpt with (0: attend "
                                   "over the whole KV cache; c > 0: read it c slots at a time, up to the filled "
                                   "length)", type=object),
    "window_stride": Option(1, "jaxgpt generate's window_stride past block_size (1 = nanoGPT's exact window, "
                               "as the torch rows)"),
    "temperature": Option(0.8, "sampling temperature (0 = greedy)"),
    "top_k": Option(200, "top-k filter (0 = none)"),
    "torch": Option(True, "also time the PyTorch twin (naive and, with torch_cached, KV-cached)"),
    "torch_cached": Option(True, "also time the twin's KV-cached generate (slow past block_size, where it "
                                 "re-runs the window per token)"),
    "hf": Option(True, "also time Hugging Face transformers' KV-cached GPT2LMHeadModel.generate on the same "
                       "weights, the reference of the decoding goal (needs torch and transformers; "
                       "prompt + new tokens must fit in block_size)"),
}


@dataclasses.dataclass(frozen=True)
class _Setup:
    """What every timed run of one task=sample invocation shares."""

    opts: Dict[str, Any]
    cfg: Any  # the GPTConfig of the random model
    params: Any  # its weights, on the host
    temperature: float
    top_k: Optional[int]
    greedy: bool
    decode_chunks: List[int]
    torch_model: Any  # the twin holding the same weights, or None
    hf_model: Any  # transformers' GPT2LMHeadModel holding them, or None


def run_sample(opts: Dict[str, Any]) -> None:
    import jax  # lazy: see the module docstring

    from jaxgpt.model.gpt import GPT  # lazy: see the module docstring

    batch_sizes = int_list("batch_sizes", opts["batch_sizes"])
    new_tokens = int_list("new_tokens", opts["new_tokens"])
    decode_chunks = int_list("decode_chunks", opts["decode_chunks"], minimum=0)
    cfg = _model_config(opts)
    temperature, top_k = opts["temperature"], opts["top_k"] or None
    use_torch = comparison_runs(opts, "torch", ["torch"], "the PyTorch twin's rows (torch naive, torch cached)")
    use_hf = comparison_runs(opts, "hf", ["torch", "transformers"], "transformers' generate rows (hf generate)")
    key = jax.random.key(opts["seed"])
    params = GPT(cfg).init(key, np.zeros((1, 1), np.int32))["params"]
    params = jax.device_get(params)
    rs = np.random.default_rng(opts["seed"])
    torch_model = _torch_twin(cfg, params, opts["threads"]) if use_torch else None
    hf_model = _hf_model(cfg, params, opts["threads"]) if use_hf else None
    setup = _Setup(opts, cfg, params, temperature, top_k, temperature == 0, decode_chunks, torch_model, hf_model)
    _print_header(setup)
    rows: List[Row] = []
    for B in batch_sizes:
        prompt = rs.integers(0, cfg.vocab_size, size=(B, opts["prompt_len"])).astype(np.int32)
        rows += _time_batch(setup, B, prompt, new_tokens)
    _print_table(opts, rows)
    _emit_records(setup, rows)


def _model_config(opts: Dict[str, Any]):
    from jaxgpt.model.config import GPTConfig  # lazy (it imports jax): see the module docstring

    cfg = GPTConfig(vocab_size=opts["vocab_size"], block_size=opts["block_size"], n_layer=opts["n_layer"],
                    n_head=opts["n_head"], n_embd=opts["n_embd"], dropout=0.0,
                    compute_dtype=opts["compute_dtype"])
    if not 1 <= opts["prompt_len"] <= cfg.block_size:
        raise CLIError(f"--prompt_len must be in [1, block_size={cfg.block_size}], got {opts['prompt_len']}")
    if not 1 <= opts["window_stride"] <= cfg.block_size:
        raise CLIError(f"--window_stride must be in [1, block_size={cfg.block_size}], got {opts['window_stride']}")
    return cfg


def _torch_twin(cfg, params, threads: int):
    """The PyTorch twin (jaxgpt.bench.torch_twin) holding exactly `params`, eval mode."""
    import torch  # lazy and optional: see the module docstring

    from jaxgpt.bench.torch_twin import TorchGPT, flax_to_torch  # lazy: see the module docstring

    if threads:
        torch.set_num_threads(threads)
    torch_model = TorchGPT(cfg.replace(compute_dtype="float32"))
    torch_model.load_state_dict(flax_to_torch(params, cfg))
    torch_model.eval()
    return torch_model


def _print_header(s: _Setup) -> None:
    import jax  # lazy: see the module docstring (run_sample loaded it)

    opts, cfg, out = s.opts, s.cfg, table_stream(s.opts)
    torch_version = ""
    if s.torch_model:
        import torch  # lazy: see the module docstring (_torch_twin loaded it)

        torch_version = f"; torch {torch.__version__} with {torch.get_num_threads()} threads"
    print(f"# bench sample: {cfg.n_layer} layers, {cfg.n_head} heads, {cfg.n_embd} wide, vocab {cfg.vocab_size}, "
          f"block {cfg.block_size}, {cfg.compute_dtype}; prompt {opts['prompt_len']} tokens; "
          f"jax window_stride {opts['window_stride']}; "
          f"{'greedy' if s.greedy else f'temperature {s.temperature}, top_k {s.top_k}'}", file=out)
    print(f"# machine: {machine()}; jax {jax.__version__} on {jax.devices()[0].platform}"
          + torch_version + ("; XLA single-threaded" if opts["threads"] == 1 else ""), file=out)


def _time_batch(s: _Setup, B: int, prompt, new_tokens: List[int]) -> List[Row]:
    """Every implementation's rows for batch size B, printed to stderr as they come."""
    rows: List[Row] = []
    naive_tps = idx = gen = None
    if s.torch_model is not None:
        row, idx, gen = _time_torch_naive(s, B, prompt)
        naive_tps = row[5]
        rows.append(row)
        _print_row(row, naive_tps)
    for N in new_tokens:
        for chunk in s.decode_chunks:
            rows.append(_time_jax(s, B, prompt, N, chunk))
            _print_row(rows[-1], naive_tps)
        if s.hf_model is not None and s.opts["prompt_len"] + N > s.cfg.block_size:
            print(f"# hf generate skipped for {N} new tokens: {s.opts['prompt_len']} + {N} > block_size "
                  f"{s.cfg.block_size}, past its positions", file=table_stream(s.opts))
        elif s.hf_model is not None:
            row, hf_tokens = _time_hf(s, B, prompt, N)
            rows.append(row)
            _print_row(row, naive_tps)
            if s.greedy:  # the same weights and argmax: the tokens should agree (up to near-ties)
                _print_greedy_agreement(s, B, prompt, N, hf_tokens)
        if s.torch_model is not None and s.opts["torch_cached"]:
            rows.append(_time_torch_cached(s, B, N, idx, gen))
            _print_row(rows[-1], naive_tps)
    return rows


def _time_torch_naive(s: _Setup, B: int, prompt):
    """(the row, the prompt as a torch tensor, the generator the twin's cached runs go on drawing from)."""
    import torch  # lazy and optional: see the module docstring

    idx = torch.tensor(prompt, dtype=torch.long)
    n = s.opts["naive_tokens"]
    gen = torch.Generator().manual_seed(s.opts["seed"])
    t0 = time.perf_counter()
    s.torch_model.generate_naive(idx, n, temperature=s.temperature or 1.0, top_k=s.top_k, greedy=s.greedy,
                                 generator=gen)
    dt = time.perf_counter() - t0
    return ("torch naive", B, f"{n} (first)", "-", dt, B * n / dt), idx, gen


def _time_jax(s: _Setup, B: int, prompt, N: int, chunk: int) -> Row:
    import jax  # lazy: see the module docstring (run_sample loaded it)

    from jaxgpt.sample.decode import generate  # lazy: see the module docstring

    seeds = itertools.count(s.opts["seed"])
    chunk_cfg = s.cfg.replace(decode_chunk=chunk)

    def jax_run():  # a fresh key per call; the compiled functions are reused
        out = generate(chunk_cfg, s.params, prompt, N, rng=jax.random.key(next(seeds)),
                       temperature=s.temperature, top_k=s.top_k, window_stride=s.opts["window_stride"])
        assert out.shape == (B, s.opts["prompt_len"] + N)

    t0 = time.perf_counter()
    jax_run()
    first = time.perf_counter() - t0
    med, _ = timed(jax_run, s.opts["repeats"], s.opts["max_seconds"])
    impl = "jax generate" + (f" (decode_chunk {chunk})" if len(s.decode_chunks) > 1 else "")
    return (impl, B, N, f"{max(first - med, 0.0):.2f}", med, B * N / med)


def _time_hf(s: _Setup, B: int, prompt, N: int):
    """(transformers' generate's row, its tokens from the warm-up call)."""
    import torch  # lazy and optional: see the module docstring

    hf_idx = torch.tensor(prompt, dtype=torch.long)
    hf_kwargs = dict(attention_mask=torch.ones_like(hf_idx), max_new_tokens=N, min_new_tokens=N,
                     use_cache=True, pad_token_id=0,
                     **(dict(do_sample=False) if s.greedy else
                        dict(do_sample=True, temperature=s.temperature, top_k=s.top_k or 0)))

    def hf_run():
        with torch.no_grad():
            return s.hf_model.generate(hf_idx, **hf_kwargs)

    hf_tokens = hf_run().numpy()  # warm-up
    med, _ = timed(hf_run, s.opts["repeats"], s.opts["max_seconds"])
    return ("hf generate", B, N, "-", med, B * N / med), hf_tokens


def _print_greedy_agreement(s: _Setup, B: int, prompt, N: int, hf_tokens) -> None:

    from jaxgpt.sample.decode import generate  # lazy: see the module docstring

    ours = generate(s.cfg, s.params, prompt, N, temperature=0)
    same = int(np.sum(ours[:, s.opts["prompt_len"]:] == hf_tokens[:, s.opts["prompt_len"]:]))
    print(f"# greedy tokens equal to hf generate's: {same} of {B * N} (batch {B})", file=table_stream(s.opts))


def _time_torch_cached(s: _Setup, B: int, N: int, idx, gen) -> Row:
    def torch_run():
        s.torch_model.generate_cached(idx, N, temperature=s.temperature or 1.0, top_k=s.top_k,
                                      greedy=s.greedy, generator=gen)

    torch_run()  # warm-up (allocator, threads)
    med, _ = timed(torch_run, s.opts["repeats"], s.opts["max_seconds"])
    return ("torch cached", B, N, "-", med, B * N / med)


def _print_table(opts: Dict[str, Any], rows: List[Row]) -> None:
    out = table_stream(opts)
    header = "| impl | batch | new tokens | compile s | time s (median) | tokens/s | vs torch naive | vs hf generate |"
    print(file=out)
    print(header, file=out)
    print("|---|---|---|---|---|---|---|---|", file=out)
    naive = {r[1]: r[5] for r in rows if r[0] == "torch naive"}
    hf = {(r[1], r[2]): r[5] for r in rows if r[0] == "hf generate"}
    for r in rows:
        vs_hf = f"{r[5] / hf[(r[1], r[2])]:.2f}x" if (r[1], r[2]) in hf else "-"
        print(f"{_format_row(r, naive.get(r[1]))} {vs_hf} |", file=out)


def _emit_records(s: _Setup, rows: List[Row]) -> None:
    """One --json record per row; a jax row's reference is transformers' generate where it ran, else
    the twin's cached generate."""
    import jax  # lazy: see the module docstring (run_sample loaded it)

    opts = s.opts
    config = {k: opts[k] for k in SAMPLE_OPTIONS
              if k not in ("batch_sizes", "new_tokens", "torch", "torch_cached", "hf", "decode_chunks")}
    refs = {}
    for name in ("torch cached", "hf generate"):
        refs.update({(r[1], r[2]): (name, r[5]) for r in rows if r[0] == name})
    device = f"{jax.devices()[0].platform}: {machine()}"
    for impl, B, N, compile_s, t, tps in rows:
        is_jax = impl.startswith("jax generate")
        reference, ref_tps = refs[(B, N)] if is_jax and (B, N) in refs else (None, None)
        chunk = {"decode_chunk": int(impl.split()[-1].rstrip(")")) if "decode_chunk" in impl else s.decode_chunks[0]}
        emit_record(opts, {"task": "sample", "impl": impl,
                           "config": {**config, "batch_size": B, "new_tokens": N, **(chunk if is_jax else {})},
                           "device": device, "tokens_per_sec": tps,
                           "ms_per_step": 1000 * t / (N if isinstance(N, int) else opts["naive_tokens"]),
                           "mfu": None, "reference": reference, "reference_tokens_per_sec": ref_tps,
                           "ratio": tps / ref_tps if reference else None})


def _hf_model(cfg, params, threads: int):
    """transformers' GPT2LMHeadModel holding exactly `params` (GPT-2 architecture only), eval mode."""
    import torch  # lazy and optional: see the module docstring
    import transformers  # lazy: see the module docstring

    from jaxgpt.model.pretrained import params_to_gpt2_state  # lazy: see the module docstring

    if threads:
        torch.set_num_threads(threads)
    hf_cfg = transformers.GPT2Config(
        vocab_size=cfg.vocab_size, n_positions=cfg.block_size, n_embd=cfg.n_embd, n_layer=cfg.n_layer,
        n_head=cfg.n_head, activation_function="gelu_new" if cfg.gelu == "tanh" else "gelu",
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, layer_norm_epsilon=cfg.layer_norm_eps,
        tie_word_embeddings=cfg.tie_embeddings, bos_token_id=0, eos_token_id=None)
    model = transformers.GPT2LMHeadModel(hf_cfg)
    state = {k: torch.from_numpy(v) for k, v in params_to_gpt2_state(params, cfg).items()}
    model.load_state_dict(state, strict=True)
    return model.eval()


def _format_row(row: Row, naive_tps) -> str:
    impl, B, N, compile_s, t, tps = row
    ratio = f"{tps / naive_tps:.1f}x" if naive_tps else "-"
    return f"| {impl} | {B} | {N} | {compile_s} | {t:.3f} | {tps:.0f} | {ratio} |"


def _print_row(row: Row, naive_tps) -> None:
    print(_format_row(row, naive_tps), file=sys.stderr, flush=True)  # progress while it runs

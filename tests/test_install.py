"""The wheel, installed (not editable) into a fresh virtual environment, works from an empty folder:
`jaxgpt train shakespeare_char` (tiny) and `jaxgpt sample`, with the configs and the corpus the
package ships, and `import jaxgpt` resolves to the installed copy, not the checkout.

Fast and offline: the wheel is built without build isolation (the running setuptools) from a copy
of the package (the checkout gets no build/ or egg-info), the venv is made without pip and gets the
wheel through this interpreter's pip (`pip --python`), and this environment's packages (jax, flax,
...) are visible through a .pth file that lists its site-packages after the venv's own: the wheel's
jaxgpt wins, and nothing is downloaded.
"""

import os
import shutil
import site
import subprocess
import sys

from helpers import REPO

# The built-in config cut down to seconds: one layer, four steps, one eval batch.
TINY_INSTALLED = ["--n_layer=1", "--n_head=2", "--n_embd=32", "--block_size=32", "--batch_size=4", "--max_iters=4",
                  "--lr_decay_iters=4", "--warmup_iters=1", "--eval_interval=4", "--eval_iters=1", "--log_interval=2",
                  "--num_samples=0", "--progress=False"]


def _run(cmd, cwd, env, timeout=300):
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout}\n{proc.stderr}"
    return proc


def _fresh_venv_with_the_wheel(tmp_path):
    """(the venv's bin folder, its site-packages) with the wheel of this checkout installed."""
    src, dist, venv = tmp_path / "src", tmp_path / "dist", tmp_path / "venv"
    shutil.copytree(REPO / "jaxgpt", src / "jaxgpt", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    _run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(dist), str(src)], tmp_path, os.environ)
    (wheel,) = dist.glob("jaxgpt-*.whl")
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path, os.environ)
    python = venv / "bin" / "python"
    _run([*pip, "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)], tmp_path, os.environ)
    purelib = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path,
                   os.environ).stdout.strip()
    # After the venv's own site-packages (a .pth adds its lines at the end of sys.path): this
    # environment's packages, but not its .pth files (an editable jaxgpt's finder is one of them).
    with open(os.path.join(purelib, "zz_running_environment.pth"), "w", encoding="utf-8") as f:
        f.write("\n".join(site.getsitepackages()) + "\n")
    return venv / "bin", purelib


def test_the_wheel_in_a_fresh_venv_trains_and_samples_from_an_empty_folder(tmp_path):
    bin_dir, purelib = _fresh_venv_with_the_wheel(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    # No checkout on the path: not PYTHONPATH, not the working folder.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "JAXGPT_DEBUG")}
    env["JAX_PLATFORMS"] = "cpu"

    where = _run([str(bin_dir / "python"), "-c", "import jaxgpt; print(jaxgpt.__file__)"], empty, env).stdout
    assert where.strip() == os.path.join(purelib, "jaxgpt", "__init__.py")

    train = _run([str(bin_dir / "jaxgpt"), "train", "shakespeare_char", "--out_dir=run", *TINY_INSTALLED], empty, env)
    assert "iter 4: train loss" in train.stdout and "vocab 65" in train.stdout, train.stdout  # the shipped corpus
    sample = _run([str(bin_dir / "jaxgpt"), "sample", "--out_dir=run", "--start=ROMEO:", "--max_new_tokens=5",
                   "--num_samples=1"], empty, env)
    assert sample.stdout.startswith("ROMEO:"), sample.stdout
    assert sorted(os.listdir(empty)) == ["run"]  # the run directory, and nothing else in the working folder

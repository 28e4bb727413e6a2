"""The course model (jaxgpt.course.model): where it lives, and that chapters 06-08 build it once."""

import os

from jaxgpt.course.model import COURSE_MODEL_ENV, course_model_dir, course_model_options, ensure_course_model
from jaxgpt.train.run_dir import RunDir


def test_the_course_model_lives_in_the_cache_unless_moved(monkeypatch, tmp_path):
    monkeypatch.delenv(COURSE_MODEL_ENV, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert course_model_dir() == str(tmp_path / "home" / ".cache" / "jaxgpt" / "course-model")
    assert course_model_dir(str(tmp_path), small=True) == str(tmp_path / "course-model")  # tests stay in WORK
    assert course_model_dir(str(tmp_path)) == course_model_dir()  # full settings share one model
    monkeypatch.setenv(COURSE_MODEL_ENV, str(tmp_path / "elsewhere"))
    assert course_model_dir(str(tmp_path), small=True) == str(tmp_path / "elsewhere")


def test_a_missing_course_model_is_built_once_with_a_message(capsys, tmp_path):
    out = str(tmp_path / "course-model")
    assert ensure_course_model(out, small=True) == out
    first = capsys.readouterr().out
    assert "is not in" in first and "training it now, 20 iterations" in first
    assert RunDir(out).checkpoint_steps()[-1] == 20
    ensure_course_model(out, small=True)
    assert capsys.readouterr().out.strip() == f"the course model: {out}"
    options = course_model_options(small=False)
    assert (options["block_size"], options["n_layer"], options["n_embd"], options["tokenizer"]) == (128, 4, 128, "char")
    assert os.path.isfile(RunDir(out).tokenizer_path)

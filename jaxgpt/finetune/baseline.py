"""The baseline beside every classifier: character n-gram TF-IDF and logistic regression, in numpy/scipy.

What a fine-tuned GPT must beat to be worth its minutes. `fit_baseline(splits)` fits it on the
train split, chooses its regularization C on val, and scores val and test (seconds):

  - Features (`NgramTfidf`): the character 1-4-grams of each text, lowercased, runs of two or more
    whitespace characters read as one space; the vocabulary is the train split's n-grams; each count
    is multiplied by the smooth idf ln((1 + n) / (1 + df)) + 1 and each row scaled to unit L2 norm.
    That is scikit-learn's TfidfVectorizer(analyzer="char", ngram_range=(1, 4)) exactly, columns in
    the same (sorted) order: tests/test_finetune_baseline.py compares the two to 1e-12.
  - Model (`fit_logistic`): L2-regularized logistic regression, a sigmoid for two classes and a
    softmax over all K for more, the intercept unpenalized, minimizing
        mean log loss + ||W||^2 / (2 C n)
    (scikit-learn's lbfgs objective) with scipy's L-BFGS-B on the sparse matrix.
  - C: the best val accuracy over C_GRID (ties: the lower val log loss), each fit warm-started from
    the one before (ascending C), to scikit-learn's default tolerance; the test split is scored once,
    with that C.

It reads every character of every text (no block size), which is what a GPT with a cut or
windowed context competes against.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import scipy.optimize
import scipy.sparse
import scipy.special

from jaxgpt.finetune.classify_data import Splits

try:  # optional (scikit-learn's dependency): OpenBLAS's threads slow L-BFGS-B's vector steps 10-20x on busy cores
    from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover - then the fit runs with the BLAS's own threads
    threadpool_limits = None

__all__ = ["NGRAM_RANGE", "C_GRID", "NgramTfidf", "normalize_text", "fit_logistic", "logistic_scores",
           "log_loss", "objective", "BaselineResult", "fit_baseline", "describe_baseline"]

NGRAM_RANGE = (1, 4)
C_GRID = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0)  # half-decades around the usual optimum
WHITESPACE_RUNS = re.compile(r"\s\s+")  # scikit-learn's: a single tab or newline stays as it is
CHUNK_CHARS = 1 << 22  # characters handled per vectorized pass: bounds the memory of long corpora
MAX_ALPHABET = 55_107  # (MAX_ALPHABET + 1) ** 4 < 2 ** 63: a 4-gram is one int64 key


def normalize_text(text: str) -> str:
    """What the n-grams are read from: lowercase, whitespace runs as one space."""
    return WHITESPACE_RUNS.sub(" ", text.lower())


class NgramTfidf:
    """Character n-gram TF-IDF, fitted on train texts (module docstring). Each n-gram is one int64
    key: its characters' ranks in the sorted train alphabet (1-based) as base-B digits, left-aligned
    and zero-padded, so the keys sort as the strings do ("a" < "ab" < "b") and the columns come out
    in scikit-learn's order."""

    def __init__(self, ngram_range: Tuple[int, int] = NGRAM_RANGE):
        self.min_n, self.max_n = ngram_range
        if not 1 <= self.min_n <= self.max_n:
            raise ValueError(f"ngram_range must be 1 <= min <= max, got {ngram_range}")
        self.alphabet: Optional[np.ndarray] = None  # sorted code points of the train texts
        self.vocabulary: Optional[np.ndarray] = None  # sorted int64 keys of the train n-grams
        self.idf: Optional[np.ndarray] = None

    def _char_ids(self, texts: Sequence[str]) -> Tuple[np.ndarray, np.ndarray]:
        """(ids of the texts' characters, concatenated: 1..V, 0 where the train texts lack it; lengths)."""
        lengths = np.fromiter((len(t) for t in texts), np.int64, len(texts))
        points = np.frombuffer("".join(texts).encode("utf-32-le"), np.uint32).astype(np.int64)
        at = np.minimum(np.searchsorted(self.alphabet, points), len(self.alphabet) - 1)
        ids = np.where(self.alphabet[at] == points, at + 1, 0)
        return np.minimum(ids, MAX_ALPHABET), lengths  # a larger alphabet shares its last id (rare)

    def _keys(self, texts: Sequence[str]) -> Tuple[np.ndarray, np.ndarray]:
        """(row of each n-gram, its key) for texts already normalized; n-grams with an unseen character
        are left out (no train n-gram has one)."""
        ids, lengths = self._char_ids(texts)
        base = min(len(self.alphabet), MAX_ALPHABET) + 1
        rows = np.repeat(np.arange(len(texts)), lengths)
        end = np.repeat(np.cumsum(lengths), lengths)  # where each position's text ends
        position = np.arange(len(ids))
        all_rows, all_keys = [], []
        key = np.zeros(len(ids), np.int64)
        known = np.ones(len(ids), bool)
        for n in range(1, self.max_n + 1):
            valid = position + n <= end
            shifted = np.zeros(len(ids), np.int64)  # the n-th character of the n-gram at each position
            m = max(len(ids) - n + 1, 0)
            shifted[:m] = ids[n - 1:n - 1 + m]
            key = key + shifted * base ** (self.max_n - n)
            known &= shifted > 0
            if n >= self.min_n:
                keep = valid & known
                all_rows.append(rows[keep])
                all_keys.append(key[keep])
        return np.concatenate(all_rows), np.concatenate(all_keys)

    def _chunks(self, texts: Sequence[str]):
        """(first row, normalized texts) in pieces of about CHUNK_CHARS characters."""
        start, size, piece = 0, 0, []
        for text in texts:
            piece.append(normalize_text(text))
            size += len(text)
            if size >= CHUNK_CHARS:
                yield start, piece
                start, size, piece = start + len(piece), 0, []
        if piece or start == 0:
            yield start, piece

    def fit(self, texts: Sequence[str]) -> "NgramTfidf":
        self.fit_transform(texts)
        return self

    def fit_transform(self, texts: Sequence[str]) -> scipy.sparse.csr_matrix:
        """Fit on these texts (alphabet, vocabulary, idf) and return their features."""
        self.alphabet = np.array(sorted({ord(c) for t in texts for c in normalize_text(t)}), np.int64)
        if len(self.alphabet) == 0:
            raise ValueError("the n-gram baseline needs non-empty train texts")
        keys = [np.unique(self._keys(piece)[1]) for _, piece in self._chunks(texts)]
        self.vocabulary = np.unique(np.concatenate(keys))
        counts = self._counts(texts)
        df = np.bincount(counts.indices, minlength=len(self.vocabulary))  # one entry per (text, n-gram)
        self.idf = np.log((1.0 + len(texts)) / (1.0 + df)) + 1.0
        return self._tfidf(counts)

    def _counts(self, texts: Sequence[str]) -> scipy.sparse.csr_matrix:
        """(texts, vocabulary) raw n-gram counts; n-grams outside the vocabulary are dropped."""
        blocks = []
        for _, piece in self._chunks(texts):
            rows, keys = self._keys(piece)
            column = np.minimum(np.searchsorted(self.vocabulary, keys), len(self.vocabulary) - 1)
            known = self.vocabulary[column] == keys
            block = scipy.sparse.coo_matrix((np.ones(int(known.sum())), (rows[known], column[known])),
                                            shape=(len(piece), len(self.vocabulary))).tocsr()
            block.sum_duplicates()
            blocks.append(block)
        return scipy.sparse.vstack(blocks, format="csr")

    def transform(self, texts: Sequence[str]) -> scipy.sparse.csr_matrix:
        """(texts, features) float64: counts times idf, rows of unit L2 norm (a text with no known
        n-gram stays a zero row)."""
        if self.vocabulary is None:
            raise ValueError("fit the n-gram TF-IDF on train texts first")
        return self._tfidf(self._counts(texts))

    def _tfidf(self, counts: scipy.sparse.csr_matrix) -> scipy.sparse.csr_matrix:
        x = counts.multiply(self.idf[None, :]).tocsr()
        norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=1)).ravel())
        return (scipy.sparse.diags(1.0 / np.where(norms > 0, norms, 1.0)) @ x).tocsr()

    def feature_names(self) -> List[str]:
        """The n-gram of each column (for inspection and the comparison with scikit-learn)."""
        base = min(len(self.alphabet), MAX_ALPHABET) + 1
        names = []
        for key in self.vocabulary.tolist():
            digits = [(key // base ** (self.max_n - 1 - k)) % base for k in range(self.max_n)]
            names.append("".join(chr(int(self.alphabet[d - 1])) for d in digits if d))
        return names


# ---------------------------------------------------------------------------- logistic regression

def logistic_scores(x, weights: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """(N, K') decision values: K' = 1 (binary: the logit of class 1) or K."""
    return np.asarray(x @ weights) + bias[None, :]


def objective(theta: np.ndarray, x, y: np.ndarray, n_classes: int, strength: float):
    """(f, grad) of mean log loss + strength / 2 * ||W||^2 (the intercept unpenalized) at theta =
    [W.ravel(), b]. Binary: one column and a sigmoid; else K columns and a softmax."""
    n, d = x.shape
    k = 1 if n_classes == 2 else n_classes
    weights, bias = theta[:d * k].reshape(d, k), theta[d * k:]
    z = logistic_scores(x, weights, bias)
    if k == 1:
        z = z[:, 0]
        loss = np.mean(np.logaddexp(0.0, z) - y * z)
        residual = (scipy.special.expit(z) - y)[:, None] / n
    else:
        log_norm = scipy.special.logsumexp(z, axis=1)
        loss = np.mean(log_norm - z[np.arange(n), y])
        residual = np.exp(z - log_norm[:, None])
        residual[np.arange(n), y] -= 1.0
        residual /= n
    grad_w = np.asarray(x.T @ residual) + strength * weights
    f = loss + 0.5 * strength * float(np.sum(weights * weights))
    return f, np.concatenate([grad_w.ravel(), residual.sum(axis=0)])


def fit_logistic(x, y: np.ndarray, n_classes: int, c: float, start: Optional[np.ndarray] = None,
                 tol: float = 1e-4, max_iter: int = 100) -> np.ndarray:
    """theta = [W.ravel(), b] minimizing scikit-learn's objective for this C (module docstring) from
    `start` (zeros when None), by L-BFGS-B to a projected gradient below tol or max_iter iterations
    (scikit-learn's defaults: a baseline, not a solver benchmark; the tests fit tighter)."""
    n, d = x.shape
    k = 1 if n_classes == 2 else n_classes
    theta = np.zeros(d * k + k) if start is None else start
    result = scipy.optimize.minimize(objective, theta, args=(x, np.asarray(y), n_classes, 1.0 / (c * n)),
                                     method="L-BFGS-B", jac=True,
                                     options={"maxiter": max_iter, "gtol": tol, "ftol": 64 * np.finfo(float).eps,
                                              "maxls": 50})
    return result.x


def _split_theta(theta: np.ndarray, d: int, n_classes: int) -> Tuple[np.ndarray, np.ndarray]:
    k = 1 if n_classes == 2 else n_classes
    return theta[:d * k].reshape(d, k), theta[d * k:]


def predict(x, theta: np.ndarray, n_classes: int) -> np.ndarray:
    """Class ids: binary, class 1 where the logit is > 0 (as scikit-learn); else the argmax."""
    z = logistic_scores(x, *_split_theta(theta, x.shape[1], n_classes))
    return (z[:, 0] > 0).astype(np.int64) if n_classes == 2 else np.argmax(z, axis=1)


def log_loss(x, y: np.ndarray, theta: np.ndarray, n_classes: int) -> float:
    """Mean log loss of the class ids y."""
    return float(objective(theta, x, np.asarray(y), n_classes, 0.0)[0])


# ---------------------------------------------------------------------------------- the baseline

@dataclasses.dataclass(frozen=True)
class BaselineResult:
    c: float  # chosen on val
    val_accuracy: float
    test_accuracy: float
    val_accuracy_by_c: Dict[float, float]
    features: int
    seconds: float

    def metrics(self) -> Dict[str, float]:
        """The keys of the run's final metrics.jsonl event (deterministic: the seconds go to the printed line)."""
        return {"baseline_C": self.c, "baseline_val_accuracy": self.val_accuracy,
                "baseline_test_accuracy": self.test_accuracy, "baseline_features": self.features}


def fit_baseline(splits: Splits, c_grid: Sequence[float] = C_GRID) -> BaselineResult:
    """The n-gram TF-IDF logistic regression fitted on the train split, C chosen on val, scored on test."""
    t0 = time.perf_counter()
    with threadpool_limits(1) if threadpool_limits is not None else contextlib.nullcontext():
        return _fit_baseline(splits, c_grid, t0)


def _fit_baseline(splits: Splits, c_grid: Sequence[float], t0: float) -> BaselineResult:
    vectorizer = NgramTfidf()
    x = {"train": vectorizer.fit_transform(splits.train.texts),
         **{name: vectorizer.transform(splits.split(name).texts) for name in ("val", "test")}}
    y = {name: np.asarray(splits.split(name).label_ids, np.int64) for name in ("train", "val", "test")}
    n_classes = len(splits.labels)
    best, best_key, by_c, theta = None, None, {}, None
    for c in sorted(c_grid):
        theta = fit_logistic(x["train"], y["train"], n_classes, c, start=theta)
        accuracy = float(np.mean(predict(x["val"], theta, n_classes) == y["val"]))
        by_c[c] = accuracy
        key = (accuracy, -log_loss(x["val"], y["val"], theta, n_classes))
        if best_key is None or key > best_key:
            best, best_key = (c, theta), key
    c, theta = best
    test = float(np.mean(predict(x["test"], theta, n_classes) == y["test"]))
    return BaselineResult(c, by_c[c], test, by_c, len(vectorizer.vocabulary), time.perf_counter() - t0)


def describe_baseline(result: BaselineResult) -> str:
    """The end-of-run line's words for it."""
    lo, hi = NGRAM_RANGE
    return (f"baseline (char {lo}-{hi}-gram TF-IDF + logistic regression, {result.features:,} n-grams, C={result.c:g} "
            f"chosen on val, {result.seconds:.1f}s): val accuracy {result.val_accuracy:.4f}, test accuracy "
            f"{result.test_accuracy:.4f}")

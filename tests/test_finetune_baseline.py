"""The n-gram baseline (jaxgpt.finetune.baseline) against scikit-learn and against hand computations."""

import math

import numpy as np
import pytest
import scipy.sparse
import scipy.special
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

from jaxgpt.finetune import baseline
from jaxgpt.finetune.classify_data import Split, Splits

WORDS = ["win", "FREE", "prize", "call", "Now", "ok", "lunch", "home", "soon", "love", "£100", "naïve", "2day"]


def generated_texts(n, seed, extra=""):
    """Texts with what the reading must get right: case, runs of spaces, tabs and newlines (a single
    one stays, a run becomes a space), non-ASCII characters, a one-character and an empty text."""
    rng = np.random.default_rng(seed)
    texts = []
    for _ in range(n):
        words = [WORDS[i] for i in rng.integers(0, len(WORDS), rng.integers(1, 9))]
        gaps = [rng.choice([" ", "  ", "\t", "\n", " \n\t "]) for _ in words]
        texts.append("".join(w + g for w, g in zip(words, gaps)).strip() + extra)
    return texts + ["x", ""]


def test_tfidf_equals_scikit_learns_char_ngrams():
    train, other = generated_texts(60, 0), generated_texts(20, 1, extra=" ☃ZZ")  # ☃ is not in train
    ours = baseline.NgramTfidf()
    x_train = ours.fit_transform(train)
    sk = TfidfVectorizer(analyzer="char", ngram_range=baseline.NGRAM_RANGE)
    sk_train = sk.fit_transform(train)
    assert ours.feature_names() == list(sk.get_feature_names_out())  # same n-grams, same column order
    # The same float64 arithmetic in another order: differences of a few ulps of values <= 1
    assert abs(x_train - sk_train).max() < 1e-12
    assert abs(ours.transform(other) - sk.transform(other)).max() < 1e-12
    assert x_train[len(train) - 1].nnz == 0  # the empty text: a zero row


def test_tfidf_by_hand():
    assert baseline.normalize_text("A  b\tC\n\nd") == "a b\tc d"  # runs of 2+ whitespace become one space
    # texts "ab" and "B", 1-2-grams: n-grams a, ab, b; df 1, 1, 2 of n = 2 texts
    tfidf = baseline.NgramTfidf((1, 2))
    x = tfidf.fit_transform(["ab", "B"]).toarray()
    assert tfidf.feature_names() == ["a", "ab", "b"]
    rare, common = math.log(3 / 2) + 1, math.log(3 / 3) + 1  # ln((1 + n) / (1 + df)) + 1
    row = np.array([rare, rare, common])
    np.testing.assert_allclose(x, [row / np.linalg.norm(row), [0, 0, 1]], rtol=0, atol=1e-15)


def _features(seed, n_classes, n=90):
    """A small TF-IDF problem whose class shows in its words, with overlap (not separable)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, n)
    texts = [" ".join(WORDS[(3 * c + int(rng.integers(0, 6))) % len(WORDS)] for _ in range(5)) for c in labels]
    return baseline.NgramTfidf((1, 1)).fit_transform(texts), labels


def _hessian(x, y, theta, n_classes, strength, step=1e-5):
    """The objective's Hessian by central differences of its exact gradient (a few hundred parameters
    here); their error, O(step^2) times the third derivatives, is far below the eigenvalue it feeds."""
    columns = []
    for j in range(len(theta)):
        e = np.zeros(len(theta))
        e[j] = step
        plus = baseline.objective(theta + e, x, y, n_classes, strength)[1]
        minus = baseline.objective(theta - e, x, y, n_classes, strength)[1]
        columns.append((plus - minus) / (2 * step))
    h = np.stack(columns, axis=1)
    return (h + h.T) / 2


@pytest.mark.parametrize("n_classes", [2, 3])
def test_logistic_regression_equals_scikit_learns(n_classes):
    x, y = _features(n_classes, n_classes)
    n, d = x.shape
    c = 3.0
    ours = baseline.fit_logistic(x, y, n_classes, c, tol=1e-10)
    sk = LogisticRegression(C=c, tol=1e-10, max_iter=10_000).fit(x, y)
    k = 1 if n_classes == 2 else n_classes
    theirs = np.concatenate([sk.coef_.T.reshape(d, k).ravel(), sk.intercept_])
    np.testing.assert_array_equal(baseline.predict(x, ours, n_classes), sk.predict(x))
    # The tolerance, derived: the objective f is strongly convex with modulus mu = the smallest
    # eigenvalue of its Hessian (on the directions that change the model: the softmax's intercepts are
    # fixed up to a common shift, which both fits keep at a zero sum). Near the optimum theta*,
    # |theta - theta*| <= |grad f(theta)| / mu for either fit, so the two differ by at most the sum.
    strength = 1.0 / (c * n)
    grad = {name: np.linalg.norm(baseline.objective(t, x, y, n_classes, strength)[1])
            for name, t in (("ours", ours), ("theirs", theirs))}
    h = _hessian(x, y, ours, n_classes, strength)
    if n_classes > 2:  # restrict to zero-sum intercepts: project out the common shift
        shift = np.zeros(len(ours))
        shift[d * k:] = 1 / math.sqrt(k)
        basis = np.linalg.svd(np.eye(len(ours)) - np.outer(shift, shift))[0][:, :-1]
        h = basis.T @ h @ basis
        assert abs(ours[d * k:].sum()) < 1e-9 and abs(theirs[d * k:].sum()) < 1e-9
    mu = np.linalg.eigvalsh(h)[0]
    assert mu > 0
    bound = (grad["ours"] + grad["theirs"]) / mu
    assert np.linalg.norm(ours - theirs) <= 2 * bound + 1e-12  # 2: the Hessian varies between the points
    assert bound < 1e-3  # and the bound says something: both fits are at the optimum


def test_logistic_regression_by_hand():
    """Two points x = +1 (class 1) and x = -1 (class 0): by symmetry b = 0, and the optimum of
    mean log loss + w^2 / (2 C n) satisfies sigmoid(-w) = w / (2 C) (set the derivative to zero)."""
    x = scipy.sparse.csr_matrix(np.array([[1.0], [-1.0]]))
    for c in (0.5, 1.0, 4.0):
        w, b = baseline.fit_logistic(x, np.array([1, 0]), 2, c, tol=1e-12)
        assert abs(b) < 1e-9
        assert abs(scipy.special.expit(-w) - w / (2 * c)) < 1e-9


def test_the_baseline_chooses_c_on_val_and_scores_test_once():
    texts = {name: generated_texts(40, seed) for seed, name in enumerate(("train", "val", "test"))}

    def split(name):  # the label: whether the text says "free" (any case)
        return Split(tuple(texts[name]), np.array([int("free" in t.lower()) for t in texts[name]], np.int32))

    splits = Splits(("ham", "spam"), split("train"), split("val"), split("test"), balanced=False)
    result = baseline.fit_baseline(splits, c_grid=(0.1, 10.0, 1000.0))
    assert set(result.val_accuracy_by_c) == {0.1, 10.0, 1000.0}
    assert result.val_accuracy == max(result.val_accuracy_by_c.values()) == result.val_accuracy_by_c[result.c]
    # the same C through scikit-learn scores test the same
    sk_x = TfidfVectorizer(analyzer="char", ngram_range=(1, 4)).fit(texts["train"])
    model = LogisticRegression(C=result.c, max_iter=10_000).fit(sk_x.transform(texts["train"]), splits.train.label_ids)
    assert result.test_accuracy == pytest.approx(np.mean(model.predict(sk_x.transform(texts["test"]))
                                                         == splits.test.label_ids))
    assert set(result.metrics()) == {"baseline_C", "baseline_val_accuracy", "baseline_test_accuracy",
                                     "baseline_features"}

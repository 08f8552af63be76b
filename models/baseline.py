"""TF-IDF + logistic regression over titles: the bar the neural models must clear.

Why keep it: a linear model of title n-grams is what a catalog team would build in an afternoon. If the
BERT + CNN ensemble does not beat it on the same products, the extra machinery is not paying its way.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score


def fit_predict(
    train_texts: Sequence[str], train_y: np.ndarray, test_texts: Sequence[str], c: float = 10.0,
    max_iter: int = 300,
) -> np.ndarray | None:
    """Fit on titles (word 1-2 grams, sublinear tf; rows with label ``-1`` ignored), predict every test text.

    ``None`` when the training labels have fewer than two classes.
    """
    tr = train_y >= 0
    if len(np.unique(train_y[tr])) < 2:
        return None
    vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1, lowercase=True)
    xtr = vec.fit_transform([t for t, k in zip(train_texts, tr, strict=True) if k])
    clf = LogisticRegression(C=c, max_iter=max_iter)
    clf.fit(xtr, train_y[tr])
    return np.asarray(clf.predict(vec.transform(list(test_texts))))


def score(pred: np.ndarray | None, y: np.ndarray) -> dict[str, float]:
    """Accuracy and macro-F1 over rows with a label (``y >= 0``)."""
    m = y >= 0
    if pred is None or m.sum() == 0:
        return {"n": int(m.sum()), "accuracy": 0.0, "macro_f1": 0.0}
    return {
        "n": int(m.sum()),
        "accuracy": float(accuracy_score(y[m], pred[m])),
        "macro_f1": float(f1_score(y[m], pred[m], average="macro", labels=np.unique(y[m]))),
    }


def tfidf_logreg(
    train_texts: Sequence[str], train_y: np.ndarray, test_texts: Sequence[str], test_y: np.ndarray,
    c: float = 10.0, max_iter: int = 300,
) -> dict[str, float]:
    """Fit and score in one call (see :func:`fit_predict`)."""
    return score(fit_predict(train_texts, train_y, test_texts, c, max_iter), test_y)

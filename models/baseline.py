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


def tfidf_logreg(
    train_texts: Sequence[str], train_y: np.ndarray, test_texts: Sequence[str], test_y: np.ndarray,
    c: float = 10.0, max_iter: int = 300,
) -> dict[str, float]:
    """Fit on titles (word 1-2 grams, sublinear tf) and score accuracy / macro-F1 on the test rows.

    Rows with label ``-1`` are ignored on both sides.
    """
    tr = train_y >= 0
    te = test_y >= 0
    if tr.sum() == 0 or te.sum() == 0 or len(np.unique(train_y[tr])) < 2:
        return {"n": int(te.sum()), "accuracy": 0.0, "macro_f1": 0.0}
    vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1, lowercase=True)
    xtr = vec.fit_transform([t for t, k in zip(train_texts, tr, strict=True) if k])
    xte = vec.transform([t for t, k in zip(test_texts, te, strict=True) if k])
    clf = LogisticRegression(C=c, max_iter=max_iter)
    clf.fit(xtr, train_y[tr])
    pred = clf.predict(xte)
    y = test_y[te]
    return {
        "n": int(te.sum()),
        "accuracy": float(accuracy_score(y, pred)),
        "macro_f1": float(f1_score(y, pred, average="macro", labels=np.unique(y))),
    }

"""Practitioners' baselines for multi-view classification with views (and labels) missing.

Every baseline takes the same standardised arrays (:func:`standardise`): a training and
a test :class:`ViewArrays`, the number of classes ``C`` and a seed, and returns the test
set's class probabilities ``(N_test, C)`` together with a dict of what it chose (its
regularisation). Regularisation is chosen by cross-validation on the labelled training
rows only, scored by held-out log-loss: :class:`~sklearn.linear_model.LogisticRegressionCV`
over :data:`CS` with stratified :data:`FOLDS`-fold splits, the MLP's ``alpha`` over
:data:`ALPHAS` on one stratified internal validation split. The supervised baselines fit
on labelled rows only (label ``-1`` = unlabelled); standardisation, imputers and the
semi-supervised ones also use the unlabelled training rows' features.

(a) :func:`logistic` and (b) :func:`mlp`: concatenated views, mean imputation plus one
missingness indicator per view; (c) :func:`late_fusion`: one logistic regression per
view, fitted where the view is present, pooled over the views an example has, linearly
(mean of probabilities) and logarithmically (mean of log-probabilities, renormalised);
(d) :func:`knn_logistic`: KNNImputer then logistic regression; (e) :func:`label_spreading`
(kNN kernel, mean-imputed features) and (f) :func:`self_training` (self-training around
the cross-validated logistic regression), for few labels.
"""

from __future__ import annotations

import inspect
import warnings
from dataclasses import dataclass

import numpy as np

#: Inverse regularisation strengths tried by the logistic regressions (log grid).
CS = np.logspace(-4, 2, 10)
#: Folds of the cross-validation (fewer when the largest class has fewer labels).
FOLDS = 3
#: L2 penalties tried by the MLP, and its hidden width.
ALPHAS = (1e-2, 1e-1, 1.0)
EPOCHS = 40
HIDDEN = 256
#: Neighbours tried by label spreading.
NEIGHBOURS = (5, 10, 20)
MAX_ITER = 2000


@dataclass(frozen=True)
class ViewArrays:
    """One split's views as arrays.

    Attributes:
        x: ``(N, D)`` float64, the views concatenated (``D = sum d_m``), standardised
            with the training split's observed cells; NaN where a view is hidden.
        masks: ``(N, M)`` bool, True where a view is observed.
        labels: ``(N,)`` int64, ``-1`` where unlabelled.
        slices: ``M`` column slices of ``x``, one per view.
    """

    x: np.ndarray
    masks: np.ndarray
    labels: np.ndarray
    slices: tuple[slice, ...]

    def mean_imputed(self, indicators: bool = True) -> np.ndarray:
        """``(N, D [+ M])``: hidden cells at the training mean (0 after standardising),
        plus one 0/1 column per view that is 1 where the view is hidden."""
        x = np.nan_to_num(self.x, nan=0.0)
        return np.hstack([x, (~self.masks).astype(np.float64)]) if indicators else x

    @property
    def labelled(self) -> np.ndarray:
        """Indices of the labelled rows."""
        return np.flatnonzero(self.labels >= 0)


def training_stats(train) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``view -> (mean, sd)`` per feature over the training split's observed cells (a
    constant feature gets sd 1)."""
    stats = {}
    for m in train.modalities:
        x, seen = train.features[m], train.masks[m]
        if not seen.any():
            raise ValueError(f"view {m!r}: no training example has it")
        scale = x[seen].std(0)
        scale[scale == 0] = 1.0
        stats[m] = (x[seen].mean(0), scale)
    return stats


def standardise(train, test) -> tuple[ViewArrays, ViewArrays]:
    """:class:`ViewArrays` of two :class:`pyro_mm.MultimodalData` splits, both scaled by
    the training split's :func:`training_stats`. The inputs are not changed."""
    out = {"train": [], "test": []}
    slices, start = [], 0
    for m, (loc, scale) in training_stats(train).items():
        x = train.features[m]
        for name, data in (("train", train), ("test", test)):
            z = (data.features[m] - loc) / scale
            z[~data.masks[m]] = np.nan
            out[name].append(z)
        slices.append(slice(start, start + x.shape[1]))
        start += x.shape[1]

    def arrays(name, data):
        labels = data.labels if data.labels is not None else np.full(len(data), -1)
        return ViewArrays(np.hstack(out[name]), np.stack([data.masks[m] for m in
                                                          data.modalities], 1),
                          np.asarray(labels, dtype=np.int64), tuple(slices))

    return arrays("train", train), arrays("test", test)


def _cv(labels: np.ndarray, seed: int, folds: int = FOLDS):
    """Stratified folds, as many as the largest class allows (at least 2); a smaller
    class then misses some folds' training part, which the fits tolerate."""
    from sklearn.model_selection import StratifiedKFold

    largest = np.bincount(labels).max()
    return StratifiedKFold(n_splits=int(min(folds, max(2, largest))), shuffle=True,
                           random_state=seed)


def _full(probs: np.ndarray, classes: np.ndarray, num_classes: int) -> np.ndarray:
    """``(N, C)`` from a classifier's columns for ``classes``: a class it never saw in
    training gets probability 0 (and so costs the NLL's floor when it is the truth)."""
    out = np.zeros((len(probs), num_classes))
    out[:, classes] = probs
    return out


def _logistic_cv(x: np.ndarray, y: np.ndarray, seed: int):
    """A fitted :class:`LogisticRegressionCV` (L2, lbfgs, multinomial, log-loss CV); with
    no class of two labelled rows there is nothing to cross-validate on, and scikit-learn's
    default ``LogisticRegression(C=1)`` is fitted instead (a view with very few labels)."""
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV

    if np.bincount(y).max() < 2:
        return LogisticRegression(C=1.0, max_iter=MAX_ITER).fit(x, y)

    options = dict(Cs=CS, cv=_cv(y, seed), scoring="neg_log_loss", max_iter=MAX_ITER)
    accepted = inspect.signature(LogisticRegressionCV).parameters
    # Newer scikit-learn warns unless these are given; older ones do not know them.
    for key, value in (("l1_ratios", (0.0,)), ("use_legacy_attributes", False)):
        if key in accepted:
            options[key] = value
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class")
        return LogisticRegressionCV(**options).fit(x, y)


def _chosen_c(model) -> float:
    return float(np.ravel(model.C_ if hasattr(model, "C_") else model.C)[0])


def logistic(train: ViewArrays, test: ViewArrays, num_classes: int, seed: int):
    """(a) Logistic regression on the concatenated views with mean imputation and
    missingness indicators; C by CV. Returns ``(probs (N_test, C), {"C": ...})``."""
    rows = train.labelled
    model = _logistic_cv(train.mean_imputed()[rows], train.labels[rows], seed)
    probs = model.predict_proba(test.mean_imputed())
    return _full(probs, model.classes_, num_classes), {"C": _chosen_c(model)}


def _mlp(alpha: float, seed: int, rows: int):
    from sklearn.neural_network import MLPClassifier

    return MLPClassifier(hidden_layer_sizes=(HIDDEN,), alpha=alpha, max_iter=EPOCHS,
                         batch_size=min(128, rows), random_state=seed)


def mlp(train: ViewArrays, test: ViewArrays, num_classes: int, seed: int):
    """(b) One-hidden-layer MLP (ReLU, Adam, :data:`EPOCHS` epochs at most) on the same inputs as
    (a); ``alpha`` chosen on one stratified validation split of the labelled rows (the
    first fold of :func:`_cv` with 5 folds), then refitted on all of them.
    Returns ``(probs (N_test, C), {"alpha": ...})``."""
    from sklearn.exceptions import ConvergenceWarning

    from .metrics import nll

    rows = train.labelled
    x, y = train.mean_imputed()[rows], train.labels[rows]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=ConvergenceWarning)
        warnings.filterwarnings("ignore", message="The least populated class")
        fit, val = next(_cv(y, seed, folds=5).split(x, y))
        scores = []
        for alpha in ALPHAS:
            net = _mlp(alpha, seed, len(fit)).fit(x[fit], y[fit])
            probs = _full(net.predict_proba(x[val]), net.classes_, num_classes)
            scores.append(nll(probs, y[val]))
        alpha = ALPHAS[int(np.argmin(scores))]
        net = _mlp(alpha, seed, len(rows)).fit(x, y)
    probs = net.predict_proba(test.mean_imputed())
    return _full(probs, net.classes_, num_classes), {"alpha": alpha}


def per_view_log_probs(train: ViewArrays, test: ViewArrays, num_classes: int, seed: int):
    """``(N_test, M, C)`` log-probabilities of one CV'd logistic regression per view,
    each fitted on the labelled training rows that have the view; ``-inf`` for a class
    that view's training rows lack; NaN where the test example lacks the view.
    Returns it and ``{"C": [per view]}``."""
    out = np.full((len(test.x), len(train.slices), num_classes), np.nan)
    chosen = []
    for j, cols in enumerate(train.slices):
        rows = np.flatnonzero((train.labels >= 0) & train.masks[:, j])
        model = _logistic_cv(train.x[rows][:, cols], train.labels[rows], seed)
        here = test.masks[:, j]
        logp = np.full((here.sum(), num_classes), -np.inf)
        logp[:, model.classes_] = model.predict_log_proba(test.x[here][:, cols])
        out[here, j] = logp
        chosen.append(_chosen_c(model))
    return out, {"C": chosen}


def linear_pool(log_probs: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """``(N, C)``: the mean over the views an example has of their probabilities."""
    p = np.where(masks[..., None], np.exp(log_probs), 0.0)
    return p.sum(1) / masks.sum(1, keepdims=True)


def log_pool(log_probs: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """``(N, C)``: softmax of the mean over the views an example has of their
    log-probabilities (a class some present view rules out keeps probability 0). With
    very few labels two views can rule out every class between them (each never saw
    some): such a row gets equal probabilities, the pool having no evidence left."""
    from scipy.special import softmax

    total = np.where(masks[..., None], log_probs, 0.0).sum(1)
    total[np.isneginf(total).all(1)] = 0.0
    return softmax(total / masks.sum(1, keepdims=True), axis=1)


def late_fusion(train: ViewArrays, test: ViewArrays, num_classes: int, seed: int):
    """(c) Per-view logistic regressions pooled over the views each test example has.
    Returns ``({"linear pool": (N_test, C), "log pool": (N_test, C)}, {"C": [...]})``,
    both pools from the same fits."""
    log_probs, info = per_view_log_probs(train, test, num_classes, seed)
    return {"linear pool": linear_pool(log_probs, test.masks),
            "log pool": log_pool(log_probs, test.masks)}, info


def knn_impute(train: ViewArrays, test: ViewArrays, neighbours: int = 5):
    """``(train x, test x)`` with hidden cells filled by a :class:`KNNImputer` fitted
    on every training row (labelled or not)."""
    from sklearn.impute import KNNImputer

    if not (np.isnan(train.x).any() or np.isnan(test.x).any()):
        return train.x, test.x
    imputer = KNNImputer(n_neighbors=neighbours).fit(train.x)
    return imputer.transform(train.x), imputer.transform(test.x)


def knn_logistic(train: ViewArrays, test: ViewArrays, num_classes: int, seed: int):
    """(d) KNNImputer (5 neighbours), then logistic regression with C by CV.
    Returns ``(probs (N_test, C), {"C": ...})``."""
    xs, xt = knn_impute(train, test)
    rows = train.labelled
    model = _logistic_cv(xs[rows], train.labels[rows], seed)
    return _full(model.predict_proba(xt), model.classes_, num_classes), \
        {"C": _chosen_c(model)}


def _spread(x, labels, neighbours):
    from sklearn.semi_supervised import LabelSpreading

    return LabelSpreading(kernel="knn", n_neighbors=neighbours, max_iter=100).fit(x, labels)


def _unreached_to_prior(probs: np.ndarray, prior: np.ndarray) -> tuple[np.ndarray, int]:
    """Rows the graph gave no mass (NaN or all zero: no labelled row reachable) get
    the labelled rows' class frequencies; returns the probabilities and their count."""
    bad = ~np.isfinite(probs).all(1) | (np.nan_to_num(probs).sum(1) <= 0)
    probs = probs.copy()
    probs[bad] = prior
    return probs, int(bad.sum())


def label_spreading(train: ViewArrays, test: ViewArrays, num_classes: int, seed: int):
    """(e) Label spreading with a kNN kernel on the mean-imputed training features
    (every training row; unlabelled ones carry -1), neighbours chosen by CV (the held-
    out fold's labels hidden, scored by log-loss of its spread labels). Test rows get
    the kernel-weighted spread labels of their training neighbours; a test row with no
    labelled row reachable gets the labelled class frequencies (counted in the info as
    ``unreached``). Returns ``(probs (N_test, C), info)``."""
    from .metrics import nll

    x, labels = train.mean_imputed(indicators=False), train.labels
    rows = train.labelled
    prior = np.bincount(labels[rows], minlength=num_classes) / len(rows)
    scores = []
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class")
        folds = list(_cv(labels[rows], seed).split(rows, labels[rows]))
    for k in NEIGHBOURS:
        losses = []
        for _, val in folds:
            hidden = labels.copy()
            hidden[rows[val]] = -1
            model = _spread(x, hidden, k)
            dist = _full(model.label_distributions_[rows[val]], model.classes_, num_classes)
            losses.append(nll(_unreached_to_prior(dist, prior)[0], labels[rows[val]]))
        scores.append(np.mean(losses))
    k = NEIGHBOURS[int(np.argmin(scores))]
    model = _spread(x, labels, k)
    with np.errstate(invalid="ignore", divide="ignore"):
        raw = model.predict_proba(test.mean_imputed(indicators=False))
    probs, unreached = _unreached_to_prior(_full(raw, model.classes_, num_classes), prior)
    return probs, {"n_neighbors": k, "unreached": unreached}


def self_training(train: ViewArrays, test: ViewArrays, num_classes: int, seed: int):
    """(f) Self-training (scikit-learn's, threshold 0.75, 10 rounds at most) around
    logistic regression on (a)'s inputs, its C chosen by CV on the labelled rows; the
    unlabelled training rows are the pool it labels. Returns ``(probs, info)``."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.semi_supervised import SelfTrainingClassifier

    x, rows = train.mean_imputed(), train.labelled
    c = _chosen_c(_logistic_cv(x[rows], train.labels[rows], seed))
    model = SelfTrainingClassifier(LogisticRegression(C=c, max_iter=MAX_ITER),
                                   threshold=0.75, max_iter=10).fit(x, train.labels)
    added = int((model.labeled_iter_ > 0).sum())
    probs = model.predict_proba(test.mean_imputed())
    return _full(probs, model.classes_, num_classes), {"C": c, "self_labelled": added}


#: The baselines of the fully labelled benchmark, by row label.
SUPERVISED = {
    "(a) logistic, mean imputation + indicators": logistic,
    "(b) MLP, mean imputation + indicators": mlp,
    "(c) late fusion, per-view logistic": late_fusion,
    "(d) KNNImputer + logistic": knn_logistic,
}
#: The semi-supervised ones added for few labels.
SEMI_SUPERVISED = {
    "(e) label spreading (kNN), mean imputation": label_spreading,
    "(f) self-training logistic, mean imputation + indicators": self_training,
}

"""One detection setting end to end, for the notebook dashboard (``ifkit.widgets.plot_detection_dashboard``).

Also reachable as ``ifkit.experiments.detection.explore``.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from ifkit.experiments.detection import FAST, INFLUENCE, REFERENCE, Runs, model_state, prepare, score_method


def explore(dataset: str = "digits", noise: str = "symmetric", rate: float = 0.3, method: str = "vm", seed: int = 0,
            n_train: int = 400, n_val: int = 150, epochs: int = 300, runs: Runs | None = None) -> dict:
    """One detection setting end to end, for a notebook dashboard (``ifkit.widgets.plot_detection_dashboard``).

    Builds the split and the memorising MLP of ``FAST`` with the given sizes (digits: 8x8; fashion: 14x14
    Fashion-MNIST), and scores every training point with ``method`` and with the training loss at theta* (the
    simplest reference). ``runs``: trained models to reuse and add to (``Runs``): a dashboard that keeps one dict
    retrains only when the setting changes.

    Returns:
        {"dataset", "noise", "rate", "method", "seed": the arguments; "scores": {method: (n_train,) scores, "loss":
        ...}; "flipped": (n_train,) bool; "state": ``model_state``; "images": (n_train, ...) training inputs;
        "given", "clean": (n_train,) given and clean labels; "classes": class names} -- what
        ``ifkit.viz.plot_detection_setting`` draws.
    """
    methods = INFLUENCE + REFERENCE
    if method not in methods:
        raise ValueError(f"unknown method {method!r}; choose from {methods}")
    cfg = replace(FAST, n_train=n_train, n_val=n_val, epochs=epochs, progress=False)
    if dataset == "fashion":
        cfg = replace(cfg, dataset="fashion", image_size=14, n_test=1000)
    elif dataset != "digits":
        raise ValueError(f"unknown dataset {dataset!r}; use 'digits' or 'fashion'")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # models this small run fastest on one thread (and a busy machine hurts 2 less)
    try:
        s = prepare(cfg, noise, float(rate), seed, runs=runs)
        scores = {method: score_method(method, s, seed, {})}
        if method != "loss":
            scores["loss"] = score_method("loss", s, seed, {})
        state = model_state(s)
    finally:
        torch.set_num_threads(threads)
    return {"dataset": dataset, "noise": noise, "rate": float(rate), "method": method, "seed": seed,
            "scores": scores, "flipped": s.flipped, "state": state, "images": s.train[0], "given": s.train[1],
            "clean": s.split.y_train_clean, "classes": s.split.classes}


__all__ = ["explore"]

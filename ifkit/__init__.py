"""ifkit: influence functions with flat validation minima, on torch.func.

    scores = ifkit.score(method, model, train=(X, y), val=(Xv, yv), **options)       # (n_train,)
    table  = ifkit.pairwise(method, model, train=(X, y), queries=(Xq, yq), **options)  # (n_queries, n_train)

Higher score = more harmful (more likely mislabelled); pairwise negative = helpful.

VM/FVM fine-tune a copy of the model on S_val to theta~; ``point = ifkit.flat_point("vm", model, train, val)``
keeps that theta~ as a value: ``ifkit.score("vm", model, train, val, at=point)`` (and pairwise / diagnose) score
there without fine-tuning again, sharing one validation curvature.

Save a model for ``ifkit score-shards`` or another process with ``ifkit.save_model(model, path, args=...)``
and read it back with ``ifkit.load_model(path)``: plain data, no pickled code (ifkit/modelfile.py).

Scoring one model with several methods? Share its training gradients: ``cache = ifkit.GradCache()``, then pass
``cache_grads=cache`` to each call (ifkit/core/cache.py).

Layers, each importing only the ones below it (tests/test_layers.py checks):

    core/         torch.func primitives, per-layer gradient factors, the gradient cache, sharding, the engine
    curvature/    solvers, each curvature once (solve / quad / factored quad) and the one factory that builds them
    optim/        training loops, full-batch fits and retraining, SAM / LPF-SGD, flat fine-tuning on S_val
    data/, models, metrics, results      datasets and noise, the kit's models, AUCs, result files
    modelfile     save_model / load_model: model files that run no code when loaded
    methods/      one function per method and one frozen options type per family, one static REGISTRY
    api           keyword arguments parsed into typed options, input checks, ``score`` / ``pairwise``
    sharpness     validation sharpness and the paper's sign-error bound
    diagnosis     ``ifkit.diagnose(model, train, val)``: the trust report to read before acting on VM/FVM scores
    cleaning      ``ifkit.clean(model, train, val, checkpoints=...)``: best-val checkpoint, report, flags, relabels
    viz/, experiments/, widgets, bench, cli
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["score", "pairwise", "flat_point", "diagnose", "clean", "METHODS", "GradCache", "save_model", "load_model"]


def __getattr__(name: str):
    # Loaded on first use, so that `import ifkit.core.func` (or any lower layer) does not import every layer.
    if name in ("score", "pairwise", "flat_point"):
        from . import api

        return getattr(api, name)
    if name == "FlatPoint":
        from .methods.flat import FlatPoint

        return FlatPoint
    if name in ("diagnose", "Diagnosis"):
        # The module is ``diagnosis``, not ``diagnose``: importing a submodule binds its name on the package,
        # which would shadow the function ifkit.diagnose.
        from . import diagnosis

        return getattr(diagnosis, name)
    if name in ("clean", "Cleaning"):
        from . import cleaning

        return getattr(cleaning, name)
    if name == "METHODS":
        from .methods import REGISTRY

        return tuple(REGISTRY)
    if name in ("save_model", "load_model"):
        from . import modelfile

        return getattr(modelfile, name)
    if name == "GradCache":
        from .core.cache import GradCache

        return GradCache
    raise AttributeError(f"module 'ifkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])

"""ifkit: influence functions with flat validation minima, on torch.func.

    scores = ifkit.score(method, model, train=(X, y), val=(Xv, yv), **options)       # (n_train,)
    table  = ifkit.pairwise(method, model, train=(X, y), queries=(Xq, yq), **options)  # (n_queries, n_train)

Higher score = more harmful (more likely mislabelled); pairwise negative = helpful.

Scoring one model with several methods? Share its training gradients: ``cache = ifkit.GradCache()``, then pass
``cache_grads=cache`` to each call (ifkit/gradcache.py).
"""

from . import ekfac_influence as _ekfac_influence  # noqa: F401  (registers "ekfac")
from . import estimators as _estimators
from . import flat_influence as _flat_influence  # noqa: F401  (registers "vm" and "fvm")
from .estimators import pairwise, score
from .gradcache import GradCache

__version__ = "0.1.0"


def __getattr__(name: str):
    # METHODS is read from the registry on access, so methods registered by higher layers (VM/FVM) appear too.
    if name == "METHODS":
        return _estimators.methods()
    raise AttributeError(f"module 'ifkit' has no attribute {name!r}")


__all__ = ["score", "pairwise", "METHODS", "GradCache"]

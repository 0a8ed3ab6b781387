"""The model-free half of the counterfactual tests (LDS and removal refits), shared by gen-lds (text) and
gen-lds-image (images).

A benchmark that scores attribution by "does the top of the ranking share the query's class (or style)" measures
a PROXY. The two tests here retrain and look instead (TRAK, Park et al. 2023); what a refit IS (which model,
which recipe, which loss) is the caller's, passed in as ``refit(keep) -> (Q,) query losses``. Everything else --
the random subsets, the removal sets, the loop over removals, the rows written to the results table and their
summary -- is the same for text and images and lives here:

* ``subset_masks``: M seeded random subsets of alpha n training points;
* ``lds_rows``: per method, the LDS of its (Q, n) scores against the refits' measured losses
  (``ifkit.metrics.lds``) with a bootstrap interval, paired differences with the reference methods
  (``ifkit.metrics.lds_difference``) and the proxy (class AUC, recall) of the same scores beside it;
* ``removal_sets`` / ``removal`` / ``removal_rows``: remove a query's top k by a method, refit, and compare the
  query's loss increase with that after removing k random training points of the query's group.

"group" is the proxy's ground truth: the class (text) or the style (images).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

from ifkit.metrics import lds, lds_difference, mean_interval, ranking_metrics

REFERENCES = ("tracin", "datainf")  # every method's LDS is also compared with theirs, paired (columns vs_*)
Refit = Callable[[np.ndarray], Tensor]  # (n,) bool mask of the training points kept -> (Q,) query losses


def subset_masks(n: int, m: int, alpha: float, seed: int) -> np.ndarray:
    """(m, n) bool: m random subsets of round(alpha n) of the n training points (seeded, the same every run)."""
    rng = np.random.default_rng([seed, 2023])
    masks = np.zeros((m, n), dtype=bool)
    for j in range(m):
        masks[j, rng.choice(n, int(round(alpha * n)), replace=False)] = True
    return masks


def removal_sets(tables: dict[str, Tensor], train_group, query_group, query: int, k: int, seed: int,
                 baseline: str = "same") -> dict[str, np.ndarray]:
    """method -> the k training indices it ranks most helpful for ``query`` (most negative first), and "random":
    k random training points of the query's group (``baseline="same"``, the test's control) or of the other
    groups (``"other"``: points the proxy calls irrelevant), seeded by seed, query and k."""
    train_group, query_group = np.asarray(train_group), np.asarray(query_group)
    out = {m: torch.argsort(P[query], stable=True)[:k].numpy() for m, P in tables.items()}
    if baseline not in ("same", "other"):
        raise ValueError(f"baseline={baseline!r}: use 'same' (the query's group) or 'other' (the other groups)")
    same = train_group == query_group[query]
    pool = np.flatnonzero(same if baseline == "same" else ~same)
    if k > len(pool):
        raise ValueError(f"k={k} but the query's {baseline} group has {len(pool)} training points; pick k <= {len(pool)}")
    rng = np.random.default_rng([seed, query, k] if baseline == "same" else [seed, query, k, 1])
    out["random"] = np.sort(rng.choice(pool, k, replace=False))
    return out


def removal(refit: Refit, n: int, tables: dict[str, Tensor], train_group, query_group, queries: Sequence[int],
            ks: Sequence[int], seed: int, baseline: str = "same", desc: str = "removal",
            progress: bool = False) -> pd.DataFrame:
    """One row per query, k and method (and "random", ``removal_sets``): the removed points, the share of them in
    the query's group (column ``same_class``), the query's loss before (all n points) and after the refit without
    them, and the increase.

    ``refit`` should cache by the points left out: identical removal sets (two methods agreeing on the top k)
    then share one refit. Cost: up to len(queries) x len(ks) x (len(tables) + 1) refits of n - k points, plus one
    of all n."""
    train_group, query_group = np.asarray(train_group), np.asarray(query_group)
    before = refit(np.ones(n, dtype=bool))  # (Q,)
    rows, jobs = [], [(q, k) for q in queries for k in ks]
    for q, k in tqdm(jobs, desc=desc, disable=not progress, leave=False):
        for method, idx in removal_sets(tables, train_group, query_group, q, k, seed, baseline).items():
            keep = np.ones(n, dtype=bool)
            keep[idx] = False
            after = refit(keep)
            rows.append({"query": q, "k": k, "method": method, "removed": idx.tolist(),
                         "same_class": float((train_group[idx] == query_group[q]).mean()),
                         "loss_before": float(before[q]), "loss_after": float(after[q]),
                         "increase": float(after[q] - before[q])})
    return pd.DataFrame(rows)


def removal_queries(query_group, n: int) -> list[int]:
    """The first query of each of ``n`` evenly spaced groups (the benchmarks' example queries)."""
    query_group = np.asarray(query_group)
    groups = np.unique(query_group)
    picks = groups[np.linspace(0, len(groups) - 1, n).round().astype(int)] if n else []
    return [int(np.flatnonzero(query_group == g)[0]) for g in picks]


def lds_rows(tables: dict[str, Tensor], masks: np.ndarray, losses: np.ndarray, train_group, query_group,
             n_boot: int, seed: int) -> list[dict]:
    """Per method an "lds" row (k = 0): its LDS [interval] on the refits (masks (M, n), losses (M, Q)), the class
    AUC and recall of the same scores (the proxy), and LDS(method) - LDS(ref) with a paired interval for every
    reference in ``REFERENCES`` that was scored (columns vs_<ref>, vs_<ref>_low, vs_<ref>_high)."""
    rows = []
    for m, P in tables.items():
        r = lds(P, masks, losses, n_boot, seed)
        auc, recall, _ = ranking_metrics(P, train_group, query_group)
        paired = {}
        for ref in REFERENCES:  # LDS(m) - LDS(ref) on the same refits, with a paired interval
            if ref in tables and ref != m:
                d, lo, hi = lds_difference(P, tables[ref], masks, losses, n_boot, seed)
                paired.update({f"vs_{ref}": d, f"vs_{ref}_low": lo, f"vs_{ref}_high": hi})
        rows.append({"measure": "lds", "k": 0, "method": m, "value": r.lds, "low": r.low, "high": r.high,
                     "auc": auc, "recall": recall, "n_subsets": len(masks), "n_queries": int(np.isfinite(
                         r.per_query).sum()), **paired})
    return rows


def removal_rows(m: str, removed: pd.DataFrame, ks: Sequence[int], n_boot: int, seed: int) -> list[dict]:
    """Method ``m``'s "removal" rows, one per k: value = mean over the queries of (its increase - the random
    removal's increase) with a bootstrap interval over the queries (``ifkit.metrics.mean_interval``)."""
    rows = []
    for k in ks:
        mine = removed[(removed.method == m) & (removed.k == k)].set_index("query")
        rand = removed[(removed.method == "random") & (removed.k == k)].set_index("query")
        excess = mine["increase"] - rand.loc[mine.index, "increase"]  # (queries,)
        value, low, high = mean_interval(excess.to_numpy(), n_boot, seed)
        rows.append({"measure": "removal", "k": k, "method": m, "value": value, "low": low, "high": high,
                     "increase": float(mine["increase"].mean()), "random_increase": float(rand["increase"].mean()),
                     "same_class": float(mine["same_class"].mean()), "loss_before": float(mine["loss_before"].mean()),
                     "n_queries": len(mine)})
    return rows


def summary(df: pd.DataFrame, by: Sequence[str] = ("task", "variant", "method")) -> pd.DataFrame:
    """LDS (with interval), class AUC and the removal excess per k, one row per ``by`` group (means over seeds;
    AUC in %)."""
    by = list(by)
    lds_rows = df[df.measure == "lds"].groupby(by, sort=False).agg(
        lds=("value", "mean"), low=("low", "mean"), high=("high", "mean"), auc=("auc", "mean"), seeds=("seed", "nunique"))
    lds_rows["auc"] *= 100
    rem = df[df.measure == "removal"].pivot_table(index=by, columns="k", values="value", sort=False)
    rem.columns = [f"removal_k{k}" for k in rem.columns]
    return lds_rows.join(rem).reset_index()


__all__ = ["REFERENCES", "Refit", "lds_rows", "removal", "removal_queries", "removal_rows", "removal_sets",
           "subset_masks", "summary"]

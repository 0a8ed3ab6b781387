"""Counterfactual tests on the image benchmark (ifkit/experiments/gen_lds_image.py): refits with gen-image's
recipe, the removal test, the resumable runner and its table; the shared pieces (ifkit/experiments/
counterfactual.py) are also checked through gen-lds (tests/test_lds.py)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from ifkit.experiments import EXPERIMENTS, META, discover
from ifkit.experiments import counterfactual as CF
from ifkit.experiments import gen_image as G
from ifkit.experiments import gen_lds_image as LI
from ifkit.experiments.cache import Cache
from ifkit.results import SCHEMAS

TINY = G.Config(dataset="digits", image_size=8, styles=("inverted", "flipped"), n_train_per_style=12,
                n_val_per_style=4, n_pretrain=100, pretrain_epochs=2, lora_epochs=3, hidden=16, latent=4,
                n_checkpoints=2, methods=("graddot", "tracin", "datainf"), n_examples=1, n_samples=8)
CFG = LI.Config(images=(replace(TINY, variant="harder", style_prompt=False),
                        replace(TINY, styles=("framed", "dotted"), variant="protocol")),
                n_subsets=4, ks=(2,), removal_queries=2, n_boot=50)


@pytest.fixture(scope="module")
def setting():
    return LI.prepare(TINY, 0)


def test_a_refit_on_every_image_is_gen_images_fine_tuned_model(setting):
    """keep = all: the refit IS gen-image's fine-tuned model (same pretraining, recipe and seed), so its query
    losses and score tables match a run of gen-image's own steps bit for bit; half the images give other losses."""
    s = setting
    data = G.build_data(TINY, 0)
    tuned, checkpoints = G.finetune_lora(TINY, G.pretrain(TINY, data, 0, False), data, 0, False)
    full = LI.refit(TINY, s.base, s.data, np.ones(TINY.n_train, bool), 0)
    torch.testing.assert_close(full, LI.query_losses(tuned, data, 0), rtol=0, atol=0)
    train, val = G.attribution_sets(tuned, data, 0)
    torch.testing.assert_close(full, G.loss_fn(tuned(val[0]), val[1]).detach(), rtol=0, atol=0)  # training's loss
    for m in TINY.methods:
        torch.testing.assert_close(s.tables[m], G.pairwise(m, TINY, tuned, train, val, checkpoints, 0), rtol=0, atol=0)
    half = LI.refit(TINY, s.base, s.data, CF.subset_masks(TINY.n_train, 1, 0.5, 0)[0], 0)
    assert half.shape == full.shape and not torch.equal(half, full)


def test_removal_sets_other_style_control(setting):
    s = setting
    same = CF.removal_sets(s.tables, s.data.s_train, s.data.s_val, 1, 3, 0)
    other = CF.removal_sets(s.tables, s.data.s_train, s.data.s_val, 1, 3, 0, baseline="other")
    assert (s.data.s_train[same["random"]] == s.data.s_val[1]).all()
    assert (s.data.s_train[other["random"]] != s.data.s_val[1]).all() and len(set(other["random"])) == 3
    assert all((same[m] == other[m]).all() for m in TINY.methods)  # only the control changes
    with pytest.raises(ValueError, match="'same'"):
        CF.removal_sets(s.tables, s.data.s_train, s.data.s_val, 1, 3, 0, baseline="all")


def test_gen_lds_image_writes_checked_rows_and_resumes_from_its_cache(tmp_path):
    cache = Cache(tmp_path, "gen-lds-image", enabled=True)
    df = LI.measure(CFG, [0], tmp_path, progress=False, mode="test", cache=cache)
    assert len(df) == 2 * 3 * 2 and set(df.task) == {"style"}  # variants x methods x (lds, removal k=2)
    lds_rows = df[df.measure == "lds"]
    assert (lds_rows.n_subsets == 4).all() and lds_rows.value.between(-1, 1).all()
    assert (lds_rows.low <= lds_rows.value).all() and (lds_rows.value <= lds_rows.high).all()
    assert lds_rows.vs_tracin.notna().sum() == 4 and lds_rows.vs_datainf.notna().sum() == 4  # paired, not self
    rem = df[df.measure == "removal"]
    assert (rem.n_queries == 2).all() and np.allclose(rem.value, rem.increase - rem.random_increase)
    assert tuple(LI.KEY) == SCHEMAS[LI.FILENAME].key
    assert set(df.columns) >= set(SCHEMAS[LI.FILENAME].required) | {"auc", "alpha", "mode", "seconds"}
    misses = cache.misses
    (tmp_path / LI.FILENAME).unlink()  # the table is lost, the cached work is not: same rows, no retraining
    cache2 = Cache(tmp_path, "gen-lds-image", enabled=True)
    again = LI.measure(CFG, [0], tmp_path, progress=False, mode="test", cache=cache2)
    assert cache2.misses == 0 and cache2.hits >= misses
    cols = [c for c in df.columns if c != "seconds"]
    pd.testing.assert_frame_equal(again[cols], df[cols])  # bit-identical rows from the cache
    assert LI.measure(CFG, [0], tmp_path, variants=["harder"], progress=False, mode="test").variant.eq("harder").all()
    assert not LI.summary(df).empty


def test_gen_lds_image_is_registered_with_its_times():
    discover()
    assert EXPERIMENTS["gen-lds-image"] is LI.run
    meta = META["gen-lds-image"]
    assert meta.parts == G.VARIANTS and not meta.in_all and meta.seconds[1] <= 30
    assert [c.variant for c in LI.FULL.images] == list(G.VARIANTS) and LI.FULL.images[0] == G.FULL
    assert all(replace(c, methods=G.FAST.methods) == G.CONFIGS["fast"][c.variant] for c in LI.FAST.images)


# Smallest per-query margin seen at FAST size (protocol and harder, seeds 0-1, graddot / TracIn / VM): 0.004;
# smallest mean over 4 queries: 0.029 (the query losses are ~0.5 per pixel). The bar is half that mean.
REMOVAL_MARGIN = 0.015


def test_removing_a_querys_top_images_hurts_it_more_than_removing_other_style_images():
    """The counterfactual test can fail: at FAST size (gen-image's protocol settings, seed 0), removing a query's
    10 most helpful images by TracIn and refitting raises the query's loss by more than removing 10 random images
    of other styles, for each of 4 queries (one per style), and by REMOVAL_MARGIN on average."""
    cfg = replace(G.CONFIGS["fast"]["protocol"], methods=("tracin",))
    s = LI.prepare(cfg, 0)
    queries = CF.removal_queries(s.data.s_val, 4)
    r = LI.removal(s, 0, queries, [10], baseline="other").pivot_table(index="query", columns="method",
                                                                       values="increase")
    excess = r["tracin"] - r["random"]  # (4,)
    assert (excess > 0).all() and excess.mean() > REMOVAL_MARGIN, r


# ------------------------------------------------------------------------------ RESULTS.md quotes the table
def _signed(x: float) -> str:
    return "-" if pd.isna(x) else f"{x:+.4f}"


def image_lds_markdown(df: pd.DataFrame) -> str:
    """RESULTS.md's table of the counterfactual tests on images, made from results/generation_lds_image.csv
    (full-size rows, means over seeds): per variant, the methods by LDS, with the style AUC of the same scores
    and the removal excess beside."""
    side = LI.summary(df[df["mode"] == "full"])
    by = side.groupby("variant")
    side["r_lds"] = by["lds"].rank(ascending=False, method="min").astype(int)
    side["r_auc"] = by["auc"].rank(ascending=False, method="min").astype(int)
    ks = sorted(int(c.removeprefix("removal_k")) for c in side if c.startswith("removal_k"))
    lines = ["| variant | method | LDS [95% interval] | rank by LDS | style AUC (%) | rank by AUC | "
             + " | ".join(f"removal k={k}" for k in ks) + " |", "|---" * (6 + len(ks)) + "|"]
    order = {v: i for i, v in enumerate(G.VARIANTS)}
    side = side.assign(o=side.variant.map(order)).sort_values(["o", "r_lds", "method"])
    for r in side.itertuples():
        cells = [r.variant, r.method, f"{r.lds:.3f} [{r.low:.3f}, {r.high:.3f}]", str(r.r_lds), f"{r.auc:.1f}",
                 str(r.r_auc), *(_signed(getattr(r, f"removal_k{k}")) for k in ks)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def test_results_md_image_lds_table_is_the_csvs():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    df = pd.read_csv(root / "results" / LI.FILENAME)
    full = df[df["mode"] == "full"]
    assert set(full.method) == set(LI.FULL.images[0].methods) and set(full.variant) == set(G.VARIANTS)
    assert (full[full.measure == "lds"].n_subsets == LI.FULL.n_subsets).all()
    assert image_lds_markdown(df) in (root / "RESULTS.md").read_text()


def image_lds_headline(df: pd.DataFrame) -> str:
    """RESULTS.md's sentence naming the best method by LDS per variant (mean over the full-size seeds), with its
    paired differences over TracIn and DataInf (columns vs_tracin, vs_datainf): mean, per-seed range, and in how
    many seeds the paired 95% interval lies above 0."""
    rows = df[(df["mode"] == "full") & (df.measure == "lds")]
    parts = []
    for variant in G.VARIANTS:
        g = rows[rows.variant == variant]
        best = g.groupby("method")["value"].mean().idxmax()
        b = g[g.method == best]
        margins = [f"{b[f'vs_{ref}'].mean():+.3f} over {ref} (seeds {b[f'vs_{ref}'].min():+.3f} to "
                   f"{b[f'vs_{ref}'].max():+.3f}, interval above 0 in {(b[f'vs_{ref}_low'] > 0).sum()} of {len(b)})"
                   for ref in CF.REFERENCES if ref != best]
        parts.append(f"{variant}: **{best}**, LDS {b['value'].mean():.3f}, " + " and ".join(margins))
    return "Best by LDS (mean over seeds; paired differences on the same refits): " + "; ".join(parts) + "."


def test_results_md_names_the_best_image_method_by_lds_from_the_csv():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    text = " ".join((root / "RESULTS.md").read_text().split())
    assert image_lds_headline(pd.read_csv(root / "results" / LI.FILENAME)) in text


def image_removal_sentence(df: pd.DataFrame) -> str:
    """RESULTS.md's sentence on the removal test: in how many (variant, seed, method, k) rows the interval over
    the queries lies above 0, and the range of the excess per variant and k."""
    r = df[(df["mode"] == "full") & (df.measure == "removal")]
    ranges = [f"{v} k={k} {g.value.min():+.3f} to {g.value.max():+.3f}"
              for (v, k), g in sorted(r.groupby(["variant", "k"]), key=lambda x: (G.VARIANTS.index(x[0][0]), x[0][1]))]
    return (f"the excess is above 0 in every row, its interval over the {int(r.n_queries.max())} queries in "
            f"{(r.low > 0).sum()} of {len(r)} (variant x seed x method x k; per row {', '.join(ranges)})")


def test_results_md_removal_sentence_is_the_csvs():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    df = pd.read_csv(root / "results" / LI.FILENAME)
    assert (df[(df["mode"] == "full") & (df.measure == "removal")].value > 0).all()
    text = " ".join((root / "RESULTS.md").read_text().split())
    assert image_removal_sentence(df) in text

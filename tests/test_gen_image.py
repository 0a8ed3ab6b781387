"""The image generation experiment (ifkit/experiments/gen_image.py), its styles (ifkit/data/styles.py), its generator
(ConditionalVAE) and training loops (ifkit/optim/generative.py)."""

from __future__ import annotations

import warnings

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure
from tolerances import FLOAT32, FLOAT32_SAME, FLOAT32_SAME_SMALL, FLOAT32_TRACIN_ATOL_SCALE

import ifkit
from ifkit import viz
from ifkit.core.func import make_problem, per_sample_grads
from ifkit.data import styles
from ifkit.experiments import gen_image as G
from ifkit.experiments import generation_results as GR
from ifkit.models import ConditionalVAE, add_lora, lora_names

TINY = G.Config(dataset="digits", image_size=8, styles=("inverted", "flipped"), n_train_per_style=12,
                n_val_per_style=4, n_pretrain=100, pretrain_epochs=2, lora_epochs=3, hidden=16, latent=4,
                n_checkpoints=2, methods=("graddot", "tracin", "vm"), n_examples=1, n_samples=8)


@pytest.fixture(scope="module")
def images():
    return torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("style", list(styles.STYLES))
def test_styles_are_deterministic_shape_preserving_and_change_images(style, images):
    a, b = styles.stylize(images, style), styles.stylize(images.clone(), style)
    assert a.shape == images.shape
    torch.testing.assert_close(a, b)
    assert a.min() >= 0 and a.max() <= 1
    assert (a - images).abs().amax(dim=(1, 2, 3)).min() > 1e-3  # every image changes


def test_unknown_style_is_refused(images):
    with pytest.raises(ValueError, match="unknown style"):
        styles.stylize(images, "sepia")


def test_build_data_is_deterministic_and_balanced():
    a, b = G.build_data(TINY, 3), G.build_data(TINY, 3)
    torch.testing.assert_close(a.X_train, b.X_train)
    assert a.X_train.shape == (TINY.n_train, 1, 8, 8) and a.X_val.shape == (TINY.n_val, 1, 8, 8)
    assert torch.bincount(a.s_train).tolist() == [12, 12] and torch.bincount(a.s_val).tolist() == [4, 4]
    assert not torch.equal(a.X_train, G.build_data(TINY, 4).X_train)


@pytest.fixture(scope="module")
def vae():
    torch.manual_seed(0)
    model = ConditionalVAE(image_size=8, n_classes=10, latent=3, hidden=12, n_styles=3)
    add_lora(model, rank=2)
    with torch.no_grad():  # non-zero B, so the adapters' gradients are not trivially zero
        for name in lora_names(model):
            if name.endswith("lora_B"):
                model.get_parameter(name).normal_(0, 0.1)
    return model


def test_generator_shapes_and_deterministic_loss(vae, images):
    labels, styles = torch.arange(6) % 10, torch.arange(6) % 3
    eps = torch.randn(6, 3, generator=torch.Generator().manual_seed(1))
    X = vae.pack(images, labels, eps, styles)
    assert X.shape == (6, 64 + 13 + 3)
    out = vae(X)
    assert out.shape == (6, 64 + 2 * 3)
    loss = ConditionalVAE.negative_elbo(out, images.flatten(1))
    assert loss.shape == (6,) and torch.isfinite(loss).all()
    torch.testing.assert_close(loss, ConditionalVAE.negative_elbo(vae(X), images.flatten(1)))  # fixed eps
    other = ConditionalVAE.negative_elbo(vae(vae.pack(images, labels, -eps, styles)), images.flatten(1))
    assert not torch.allclose(loss, other)  # ... and the noise is really an input
    assert vae.sample(labels, styles, generator=torch.Generator().manual_seed(0)).shape == (6, 1, 8, 8)
    assert vae.reconstruct(images, labels, styles).shape == (6, 1, 8, 8)
    with pytest.raises(ValueError, match="8x8"):
        vae.pack(torch.rand(2, 1, 7, 7), labels[:2])


def test_the_vae_loop_is_deterministic_trains_only_the_adapters_and_checkpoints(images):
    from ifkit.optim.generative import fit_conditional_vae

    def fitted():
        torch.manual_seed(0)
        model = ConditionalVAE(image_size=8, n_classes=10, latent=3, hidden=12)
        add_lora(model, rank=2)
        frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
        labels = torch.arange(6) % 10
        before = float(G.loss_fn(model(model.pack(images, labels)), images.flatten(1)).mean())
        cps = fit_conditional_vae(model, images, labels, loss=G.loss_fn, epochs=4, lr=1e-2, seed=3, n_checkpoints=2,
                                  batch_size=4, progress=False)
        after = float(G.loss_fn(model(model.pack(images, labels)), images.flatten(1)).mean())
        return model, frozen, cps, before, after

    (m1, frozen, cps, before, after), (m2, *_) = fitted(), fitted()
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values()))
    assert frozen and all(torch.equal(m1.get_parameter(n), p) for n, p in frozen.items())  # only adapters move
    assert len(cps) == 2 and all(lr == 1e-2 for _, lr in cps)
    assert all(torch.equal(v, cps[-1][0][k]) for k, v in m1.state_dict().items())  # the last checkpoint = the end
    assert after < before


def test_lora_per_sample_grads_under_vmap_equal_a_loop(vae, images):
    labels = torch.arange(6) % 10
    X = vae.pack(images, labels, torch.randn(6, 3, generator=torch.Generator().manual_seed(2)))
    y = images.flatten(1)
    prob = make_problem(vae, lora_names(vae), ConditionalVAE.negative_elbo)
    G_vmap = per_sample_grads(prob, X, y)  # (6, p)
    params = [vae.get_parameter(n) for n in lora_names(vae)]
    loop = []
    for i in range(6):
        grads = torch.autograd.grad(ConditionalVAE.negative_elbo(vae(X[i : i + 1]), y[i : i + 1]).sum(), params)
        loop.append(torch.cat([g.reshape(-1) for g in grads]))
    torch.testing.assert_close(G_vmap, torch.stack(loop), **FLOAT32_SAME)
    assert G_vmap.shape[1] == sum(p.numel() for p in params) and G_vmap.abs().sum() > 0


def test_ranking_metrics_and_top_helpful():
    """The experiment's rows use ifkit.metrics.ranking_metrics (tests/test_metrics.py) with precision over the top 5."""
    train_style = np.array([0, 0, 1, 1, 2, 2])
    query_style = np.array([0, 1])
    perfect = np.where(train_style[None, :] == query_style[:, None], -1.0, 1.0)  # same style most helpful
    # 2 same-style points out of 6: a perfect ranking has both in its top 5, the reversed one only its last
    assert G.ranking_metrics(perfect, train_style, query_style).as_dict() == {"auc": 1.0, "recall": 1.0,
                                                                               "precision5": 0.4}
    assert G.ranking_metrics(-perfect, train_style, query_style).as_dict() == {"auc": 0.0, "recall": 0.0,
                                                                                "precision5": 0.2}
    many = np.repeat(np.arange(2), 8)  # 8 per style: the top 5 of a perfect ranking are all the query's style
    assert G.ranking_metrics(np.where(many[None] == np.array([[1]]), -1.0, 1.0), many, [1])["precision5"] == 1.0
    assert G.top_helpful(torch.tensor(perfect), k=2).tolist() == [[0, 1], [2, 3]]


def test_attribution_loss_is_the_negative_elbo(vae, images):
    """The same values bit for bit (torch's kernel formula), the same gradients to float rounding."""
    labels = torch.arange(6) % 10
    X = vae.pack(images, labels, torch.randn(6, 3, generator=torch.Generator().manual_seed(3)))
    y = images.flatten(1)
    out = vae(X)
    assert torch.equal(G.attribution_loss(out, y), G.loss_fn(out, y))
    grads = [per_sample_grads(make_problem(vae, lora_names(vae), f), X, y) for f in (G.loss_fn, G.attribution_loss)]
    torch.testing.assert_close(grads[0], grads[1], **FLOAT32_SAME_SMALL)


def test_tracin_per_checkpoint_equals_ifkits_checkpoints():
    cfg = TINY
    data = G.build_data(cfg, 0)
    base = G.pretrain(cfg, data, 0, progress=False)
    tuned, checkpoints = G.finetune_lora(cfg, base, data, 0, progress=False)
    train, val = G.attribution_sets(tuned, data, 0)
    ours = G.pairwise("tracin", cfg, tuned, train, val, checkpoints, 0)
    opts = {**G.method_options("tracin", cfg, tuned, checkpoints, val), "cache_grads": False, "loss": G.loss_fn}
    theirs = ifkit.pairwise("tracin", tuned, train, val, **opts)
    torch.testing.assert_close(ours, theirs, rtol=FLOAT32["rtol"], atol=FLOAT32_TRACIN_ATOL_SCALE * float(theirs.abs().max()))


def test_experiment_writes_the_schema_and_resumes(tmp_path, monkeypatch):
    df = G.measure(TINY, [0], tmp_path, progress=False)
    out = pd.read_csv(tmp_path / GR.FILENAME)
    assert {"task", "variant", "seed", "method", "auc", "recall", "precision5", "n_train", "n_queries", "seconds",
            "mode"} <= set(out.columns)
    assert set(out["method"]) == set(TINY.methods) and (out["task"] == "style").all()
    assert (out["variant"] == TINY.variant).all()
    for col in ("auc", "recall", "precision5"):
        assert out[col].between(0, 1).all()
    assert len(df) == len(TINY.methods)
    ex = pd.read_csv(tmp_path / G.EXAMPLES_FILENAME)
    assert len(ex) == len(TINY.methods) * len(TINY.styles) * TINY.n_examples * G.TOP
    assert pd.read_csv(tmp_path / G.STYLES_FILENAME)["style"].tolist() == ["inverted", "flipped", "plain"]
    # another task's rows in the same file (gen-text) are kept, and a rerun computes nothing
    ifkit.results.ResultsTable(tmp_path / GR.FILENAME, GR.KEY, GR.REQUIRED).add(
        [{"task": "sentence", "variant": "protocol", "seed": 0, "method": "vm", "auc": 0.9, "recall": 0.8,
          "precision5": 1.0}])
    monkeypatch.setattr(ifkit, "pairwise", lambda *a, **k: pytest.fail("a finished run must not recompute"))
    G.measure(TINY, [0], tmp_path, progress=False)
    again = pd.read_csv(tmp_path / GR.FILENAME)
    assert len(again) == len(TINY.methods) + 1 and "sentence" in set(again["task"])


def test_a_file_from_before_the_variant_column_keeps_the_other_experiments_rows(tmp_path):
    """generation_results.table migrates for the experiment that opens it: its own old rows go, the others stay."""
    old = pd.DataFrame([{"task": "style", "seed": 0, "method": "vm", "auc": 0.5, "recall": 0.4},
                        {"task": "math", "seed": 0, "method": "vm", "auc": 0.9, "recall": 0.8}])
    old.to_csv(tmp_path / GR.FILENAME, index=False)
    with pytest.warns(UserWarning, match="pre-variant"):
        table = GR.table(tmp_path, ["style"])  # gen-image opens it
    out = pd.read_csv(tmp_path / GR.FILENAME)
    assert out["task"].tolist() == ["math"] and out["variant"].tolist() == ["protocol"] and len(table) == 1
    kept = pd.read_csv(tmp_path / (GR.FILENAME + ".pre-variant"))  # nothing is lost: the old file is kept
    assert kept.equals(old)
    old.to_csv(tmp_path / GR.FILENAME, index=False)
    with pytest.warns(UserWarning, match="pre-variant"):
        GR.table(tmp_path, ["sentence", "math"])  # gen-text opens it
    assert pd.read_csv(tmp_path / GR.FILENAME)["task"].tolist() == ["style"]
    GR.table(tmp_path, ["style"])  # a migrated file is left alone
    assert pd.read_csv(tmp_path / GR.FILENAME)["task"].tolist() == ["style"]


def test_a_row_is_done_only_in_the_mode_it_was_measured_in(tmp_path):
    table = GR.table(tmp_path, ["style"])
    key = {"task": "style", "variant": "protocol", "seed": 1, "method": "vm"}
    assert not GR.done(table, "fast", **key)
    table.add([{**key, "auc": 0.9, "recall": 0.8, "mode": "fast"},
               {**key, "seed": 0, "auc": 0.7, "recall": 0.6, "mode": "full"}])
    reread = GR.table(tmp_path, ["style"])  # seeds read back from the CSV
    assert GR.done(reread, "fast", **key) and not GR.done(reread, "full", **key)
    assert GR.done(reread, "full", **{**key, "seed": 0}) and not GR.done(reread, "fast", **{**key, "seed": 0})


def test_the_two_variants_differ_in_what_a_style_shares():
    """protocol: a style's pattern is drawn over every image (shared pixels) and the prompt names the style;
    harder: a style transforms each image's content and the prompt does not name it."""
    P, H = G.CONFIGS["full"]["protocol"], G.CONFIGS["full"]["harder"]
    assert P.style_prompt and not H.style_prompt and len(P.styles) == len(H.styles) == 6
    assert set(P.styles) <= set(styles.OVERLAYS) and set(H.styles) <= set(styles.TRANSFORMS)
    x = torch.rand(20, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 0.5
    for style in P.styles:  # the pattern's pixels are the same in every styled image
        shared = (styles.stylize(x, style) == styles.stylize(x, style)[:1]).all(0).float().mean()
        assert shared > 0.05, style
    for style in H.styles:
        shared = (styles.stylize(x, style) == styles.stylize(x, style)[:1]).all(0).float().mean()
        assert shared < 0.05, style


def test_plot_top_images():
    gen = torch.Generator().manual_seed(0)
    P = torch.randn(3, 10, generator=gen)
    fig = viz.plot_top_images(torch.rand(3, 1, 8, 8), torch.rand(10, 1, 8, 8), {"vm": P, "tracin": -P},
                                  torch.arange(10) % 2, torch.tensor([0, 1, 0]), query=1, method="tracin", k=4,
                                  style_names=["a", "b"])
    assert isinstance(fig, Figure) and len(fig.axes) == 5
    with pytest.raises(ValueError, match="out of range"):
        viz.plot_top_images(torch.rand(3, 8, 8), torch.rand(10, 8, 8), P, torch.arange(10) % 2,
                                torch.tensor([0, 1, 0]), query=5)


def test_figure_from_examples(tmp_path):
    cfg = G.CONFIGS["fast"]["protocol"]
    data = G.build_data(cfg, 0)
    rows = [{"seed": 0, "method": "graddot", "query": q, "query_style": cfg.styles[int(data.s_val[q])], "rank": r,
             "train_index": r, "train_style": cfg.styles[int(data.s_train[r])], "mode": "fast"}
            for q in (0, 10) for r in range(1, 6)]
    from ifkit.viz.figures_generation import generation_image_examples

    fig = generation_image_examples(pd.DataFrame(rows))
    assert isinstance(fig, Figure) and len(fig.axes) == 2 * 6


def test_figure_of_the_harder_variant(tmp_path):
    cfg = G.CONFIGS["fast"]["harder"]
    data = G.build_data(cfg, 0)
    rows = [{"variant": "harder", "seed": 0, "method": "vm", "query": 0, "query_style": cfg.styles[int(data.s_val[0])],
             "rank": r, "train_index": r, "train_style": cfg.styles[int(data.s_train[r])], "mode": "fast"}
            for r in range(1, 6)]
    from ifkit.viz.figures_generation import generation_image_examples, generation_image_examples_harder

    assert len(generation_image_examples_harder(pd.DataFrame(rows)).axes) == 6
    with pytest.raises(ValueError, match="no example rows"):
        generation_image_examples(pd.DataFrame(rows))  # protocol rows are asked for, there are none


@pytest.mark.parametrize("damage", [b"\xff\xfe\x00garbage\x81\x82\n\x00\x01", b"", b"no,task,column\n1,2,3\n"])
def test_a_damaged_generation_csv_is_moved_aside_not_a_raw_error(tmp_path, damage):
    """Random bytes, an empty file or a foreign header: no UnicodeDecodeError, no rows silently dropped."""
    (tmp_path / GR.FILENAME).write_bytes(damage)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table = GR.table(tmp_path, ["sentence", "math"])
    assert len(table) == 0
    if damage:
        assert any(".corrupt" in str(w.message) or "corrupt" in str(w.message).lower() for w in caught), caught
        assert list(tmp_path.glob(GR.FILENAME + ".corrupt*")) or list(tmp_path.glob("*.corrupt*"))

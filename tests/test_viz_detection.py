"""Plots of notebooks 05 (mislabel detection) and 06 (relabeling) in ifkit/viz/detection.py, and the
detection dashboard of ifkit/widgets.py (ifkit.experiments.detection.explore + viz.plot_detection_setting)."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from ifkit import viz, widgets
from ifkit.viz import palette
from ifkit.viz.palette import METHOD_PALETTE


def _renders(fig: Figure) -> bool:
    fig.savefig(io.BytesIO(), format="png", dpi=30)
    return True


@pytest.fixture
def detection():
    gen = torch.Generator().manual_seed(0)
    n = 60
    flipped = torch.zeros(n, dtype=torch.bool)
    flipped[:15] = True
    clean = torch.arange(n) % 10
    given = torch.where(flipped, (clean + 3) % 10, clean)
    scores = {"vm": torch.randn(n, generator=gen) + 3 * flipped, "if-cg": torch.randn(n, generator=gen) + flipped,
              "loss@theta~": torch.randn(n, generator=gen) + 2 * flipped}
    images = torch.rand(n, 1, 8, 8, generator=gen)
    return images, given, clean, scores, flipped


# ------------------------------------------------------------------------------------------------ ROC
def test_plot_roc_one_curve_per_method_best_first(detection):
    *_, scores, flipped = detection
    fig = viz.plot_roc(scores, flipped)
    assert isinstance(fig, Figure) and _renders(fig)
    ax = fig.axes[0]
    lines = ax.get_lines()
    assert len(lines) == len(scores) + 1  # + the chance diagonal
    labels = [ln.get_label() for ln in lines[:-1]]
    assert labels[0].startswith("vm") and labels[-1].startswith("if-cg")  # sorted by AUC: vm >> loss@ > if-cg
    assert lines[0].get_color() == METHOD_PALETTE["vm"]
    assert [ln.get_linestyle() for ln in lines[:-1]][1] == "--"  # the control at theta~ is dashed
    x, y = lines[0].get_data()
    assert x[0] == 0 and y[-1] == 1 and np.all(np.diff(x) >= 0)


def test_plot_roc_draws_on_a_given_axis(detection):
    *_, scores, flipped = detection
    fig = Figure()
    ax = fig.subplots()
    assert viz.plot_roc({"vm": scores["vm"]}, flipped, ax=ax) is fig
    assert len(ax.get_lines()) == 2


def test_plot_roc_rejects_bad_input(detection):
    *_, scores, flipped = detection
    with pytest.raises(ValueError, match="shape"):
        viz.plot_roc({"vm": scores["vm"][:-1]}, flipped)
    with pytest.raises(ValueError, match="some but not all"):
        viz.plot_roc(scores, torch.zeros_like(flipped))


# ------------------------------------------------------------------------------------------------ noise models
def test_plot_noise_models_row_normalised_transitions():
    y = torch.arange(100) % 10
    noisy = {"none": y, "shift": (y + 1) % 10}
    fig = viz.plot_noise_models(y, noisy, classes=[f"c{i}" for i in range(10)])
    assert _renders(fig)
    heat = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert len(heat) == 2
    assert heat[1].get_title().startswith("shift: 100%")
    annotated = [float(t.get_text()) for t in heat[0].texts]
    assert sorted(annotated)[-10:] == [100.0] * 10  # identity: every row all on its diagonal
    with pytest.raises(ValueError, match="shape"):
        viz.plot_noise_models(y, {"bad": y[:-1]})


# ------------------------------------------------------------------------------------------------ suggestions
@pytest.mark.parametrize("n, shape", [(16, (1, 8, 8)), (5, (8, 8)), (3, (64,))])
def test_plot_suggested_labels_panels_and_colours(detection, n, shape):
    images, given, clean, _, flipped = detection
    idx = torch.arange(20)  # 15 flipped, then 5 clean points flagged by mistake
    suggested = clean[idx].clone()
    suggested[:4] = (suggested[:4] + 1) % 10  # four wrong suggestions
    imgs = images[idx].reshape(len(idx), *shape)
    fig = viz.plot_suggested_labels(imgs, given[idx], suggested, clean[idx], n=n, ncols=8)
    assert _renders(fig) and len(fig.axes) == min(n, 20)
    colours = [ax.title.get_color() for ax in fig.axes]
    assert colours[:min(n, 4)] == [palette.FLIPPED_COLOUR] * min(n, 4)
    assert all(c == "#2ca02c" for c in colours[4:])
    if n > 15:  # the false alarms get a grey frame
        assert fig.axes[15].spines["top"].get_edgecolor()[:3] == matplotlib.colors.to_rgb(palette.CLEAN_COLOUR)


def test_plot_suggested_labels_rejects_mismatched_lengths(detection):
    images, given, clean, *_ = detection
    with pytest.raises(ValueError, match="same non-zero length"):
        viz.plot_suggested_labels(images, given, given[:-1], clean)


# ------------------------------------------------------------------------------------------------ pairwise
def test_plot_hurt_queries_most_harmed_first(detection):
    images, given, clean, *_ = detection
    infl = torch.linspace(-1, 1, 30)  # query 29 hurt most
    fig = viz.plot_hurt_queries(images[0], images[:30], infl, clean[:30], given=int(given[0]),
                                    clean=int(clean[0]), k=4)
    assert _renders(fig) and len(fig.axes) == 5
    assert fig.axes[1].get_title().startswith(f"val {int(clean[29])}")
    assert "+1" in fig.axes[1].get_title()
    with pytest.raises(ValueError, match="same length"):
        viz.plot_hurt_queries(images[0], images[:30], infl[:-1], clean[:30], given=0)


# ------------------------------------------------------------------------------------------------ dashboard
def test_plot_detection_dashboard_tiny_run():
    fig = widgets.plot_detection_dashboard(n_train=100, n_val=40, epochs=20, method="loss-early", k=4)
    assert _renders(fig)
    image_axes = [ax for ax in fig.axes if ax.images]
    assert len(image_axes) == 4
    roc = [ax for ax in fig.axes if ax.get_xlabel().startswith("false positive")]
    assert len(roc) == 1 and len(roc[0].get_lines()) == 3  # loss-early, loss, chance


def test_plot_detection_dashboard_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown method"):
        widgets.plot_detection_dashboard(method="nope")
    with pytest.raises(ValueError, match="unknown dataset"):
        widgets.plot_detection_dashboard(dataset="cifar")


def test_plot_detection_setting_draws_an_explore_result_without_training(detection):
    images, given, clean, scores, flipped = detection
    result = dict(dataset="digits", noise="symmetric", rate=0.25, method="vm", seed=0,
                  scores={"vm": scores["vm"], "loss": scores["if-cg"]}, flipped=flipped,
                  state=dict(fit_flipped=0.98, test_acc=0.71), images=images, given=given, clean=clean,
                  classes=[str(c) for c in range(10)])
    fig = viz.plot_detection_setting(result, k=5)
    assert _renders(fig)
    assert len([ax for ax in fig.axes if ax.images]) == 5
    roc = [ax for ax in fig.axes if ax.get_xlabel().startswith("false positive")]
    assert len(roc) == 1 and len(roc[0].get_lines()) == 3  # vm, loss, chance
    with pytest.raises(ValueError, match="lacks the keys"):
        viz.plot_detection_setting({k: v for k, v in result.items() if k != "state"})


def test_explore_returns_what_the_dashboard_draws():
    from ifkit.experiments import detection as D

    result = D.explore(n_train=100, n_val=40, epochs=20, method="loss-early")
    assert set(result["scores"]) == {"loss-early", "loss"}
    n = len(result["flipped"])
    assert n == 100 and all(s.shape == (n,) for s in result["scores"].values())
    assert len(result["images"]) == len(result["given"]) == len(result["clean"]) == n
    assert bool(((result["given"] != result["clean"]) == result["flipped"]).all())
    assert {"fit_flipped", "test_acc"} <= set(result["state"])
    with pytest.raises(ValueError, match="unknown method"):
        D.explore(method="nope")


def test_detection_dashboard_builds_an_interact():
    pytest.importorskip("ipywidgets")
    shown = widgets.detection_dashboard(noise="hard", rate=0.3, method="loss", n_train=100, n_val=40, epochs=20,
                                        k=4, methods=["loss", "loss-early"])
    controls = {w.description: w for w in shown.widget.children if hasattr(w, "description")}
    assert controls["noise"].value == "hard" and list(controls["method"].options) == ["loss", "loss-early"]
    assert controls["dataset"].value == "digits" and abs(controls["rate"].value - 0.3) < 1e-9


def test_checkpoint_report_diagnoses_each_checkpoint_once(tiny_mlp):
    """The slider's report at checkpoint c is ifkit.diagnose of the model with c loaded (cached per position);
    the model itself is left as it was; an empty checkpoint list is refused with the fix."""
    pytest.importorskip("ipywidgets")
    import copy

    import ifkit

    model, train, val, _ = tiny_mlp
    before = copy.deepcopy(model.state_dict())
    shaken = {k: v + 0.05 * torch.randn_like(v) for k, v in before.items()}
    cps = [(shaken, 0.1), before]
    report = widgets.checkpoint_diagnoses(model, train, val, cps, "vm", flat_steps=10)
    first = report(0)
    at = copy.deepcopy(model)
    at.load_state_dict(shaken)
    assert torch.equal(first.scores, ifkit.diagnose(at, train, val, "vm", flat_steps=10).scores)
    assert report(0) is first and not torch.equal(report(1).scores, first.scores)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    shown = widgets.checkpoint_report(model, train, val, cps, "vm", flat_steps=10)
    slider = next(w for w in shown.widget.children if getattr(w, "description", "") == "checkpoint")
    assert (slider.min, slider.max, slider.value) == (0, 1, 1)
    with pytest.raises(ValueError, match="n_checkpoints"):
        widgets.checkpoint_diagnoses(model, train, val, [])


# ------------------------------------------------------------------------------------------------ readability
def _crowded_tick_labels(fig: Figure, min_gap_em: float = 0.3) -> list[str]:
    """Neighbouring tick labels (of ticks inside the view) closer than ``min_gap_em`` of their font size, or
    overlapping, on any axis of ``fig``; and an axis label drawn over a tick label or the axis' offset text."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    clashes = []
    for ax in fig.axes:
        for axis, lo_edge, hi_edge in ((ax.xaxis, "x0", "x1"), (ax.yaxis, "y0", "y1")):
            lo, hi = sorted(axis.get_view_interval())
            shown = [t for t, at in zip(axis.get_ticklabels(), axis.get_majorticklocs())
                     if lo <= at <= hi and t.get_visible() and t.get_text()]
            for a, b in zip(shown, shown[1:]):
                ba, bb = a.get_window_extent(renderer), b.get_window_extent(renderer)
                gap = getattr(bb, lo_edge) - getattr(ba, hi_edge)
                if gap < min_gap_em * a.get_fontsize() * fig.dpi / 72:
                    clashes.append(f"{ax.get_title()!r}: {a.get_text()!r} / {b.get_text()!r} ({gap:.1f} px apart)")
            label = axis.label.get_window_extent(renderer)
            offset = axis.get_offset_text()
            for t in shown + ([offset] if offset.get_visible() and offset.get_text() else []):
                if label.overlaps(t.get_window_extent(renderer)):
                    clashes.append(f"{ax.get_title()!r}: the axis label runs into {t.get_text()!r}")
    return clashes


@pytest.fixture
def wide_scores(detection):
    """Scores spanning -1.2e5..1.2e5 (DataInf's on notebook 05's digits), 0..2e4 (VM's), 0..0.05 (TracIn's)."""
    *_, by_method, flipped = detection
    u = (by_method["vm"] - by_method["vm"].min()) / (by_method["vm"].max() - by_method["vm"].min())  # (n,) in [0, 1]
    return {"datainf": 123_456.7 * (2 * u - 1), "tracin": 0.05 * u, "vm": 20_000 * u**4, "cleanlab": u}, flipped


def test_score_histograms_have_readable_tick_labels(wide_scores):
    """Notebook 05's histogram panel (plot_score_distributions, four panels a row): large scores are written in
    units of a power of ten named in the axis label, instead of six-digit labels that run into each other."""
    scores, flipped = wide_scores
    fig = viz.plot_score_distributions(scores, flipped)
    assert _crowded_tick_labels(fig) == []
    labels = [t.get_text() for t in fig.axes[0].xaxis.get_ticklabels()]
    assert max(len(t) for t in labels) <= 5, labels
    assert fig.axes[0].get_xlabel().endswith("($\\times 10^{5}$)")            # the unit of the ticks, said once
    assert fig.axes[2].get_xlabel().endswith("($\\times 10^{4}$)") and "10^" not in fig.axes[1].get_xlabel()


@pytest.mark.parametrize("method", ["datainf", "vm"])
def test_detection_setting_histogram_has_readable_tick_labels(detection, wide_scores, method):
    images, given, clean, *_ = detection
    scores, flipped = wide_scores
    result = dict(dataset="fashion", noise="hard", rate=0.4, method=method, seed=0, scores=scores, flipped=flipped,
                  state=dict(fit_flipped=1.0, test_acc=0.7), images=images, given=given, clean=clean,
                  classes=[str(c) for c in range(10)])
    assert _crowded_tick_labels(viz.plot_detection_setting(result, k=4)) == []


@pytest.mark.parametrize("method, others, expected", [
    ("vm", ["loss"], "ROC of vm against loss (the training loss at theta*)"),
    ("loss", [], "ROC of loss (the training loss at theta*)"),
    ("loss-early", ["loss"], "ROC of loss-early against loss (the training loss at theta*)"),
    ("fvm", ["loss", "if-cg"], "ROC of fvm against loss (the training loss at theta*), if-cg"),
])
def test_detection_setting_roc_title_names_the_methods_drawn(detection, method, others, expected):
    """The ROC's title names the method and what it is compared with -- never "loss vs the training loss"."""
    images, given, clean, scores, flipped = detection
    drawn = [method, *others]
    result = dict(dataset="digits", noise="symmetric", rate=0.25, method=method, seed=0,
                  scores={m: scores[["vm", "if-cg", "loss@theta~"][i % 3]] for i, m in enumerate(drawn)},
                  flipped=flipped, state=dict(fit_flipped=0.98, test_acc=0.71), images=images, given=given,
                  clean=clean, classes=[str(c) for c in range(10)])
    fig = viz.plot_detection_setting(result, k=3)
    (roc,) = [ax for ax in fig.axes if ax.get_xlabel().startswith("false positive")]
    assert roc.get_title() == expected
    assert len(roc.get_lines()) == len(drawn) + 1

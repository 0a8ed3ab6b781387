"""gen-text: the task generators, TinyLM + LoRA per-sample gradients, the ranking metric, the resumable runner."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure

import ifkit
from ifkit.core import func
from ifkit.data import text as T
from ifkit.experiments import gen_text as G
from ifkit.models import TinyLM, add_lora, lora_names
from ifkit.viz import figures_generation as figures
from ifkit.viz import plot_top_examples

WORDS = ["you", "will", "the", "life", "day"]


@pytest.mark.parametrize("cls, expected", [
    ("reverse", ["day", "life", "the", "will", "you"]),
    ("upper", ["YOU", "WILL", "THE", "LIFE", "DAY"]),
    ("novowel", ["y", "wll", "th", "lf", "dy"]),
    ("first-last", ["you", "day"]),
    ("double", ["you", "you", "will", "will", "the", "the", "life", "life", "day", "day"]),
    ("initials", ["y", "w", "t", "l", "d"]),
    ("rotate", ["will", "the", "life", "day", "you"]),
    ("swap-ends", ["day", "will", "the", "life", "you"]),
    ("evens", ["you", "the", "day"]),
    ("swap-pairs", ["will", "you", "life", "the", "day"]),
])
def test_sentence_classes_transform_correctly(cls, expected):
    assert T.SENTENCE_CLASSES[cls](list(WORDS)) == expected
    assert len(T.SENTENCE_CLASSES) == 10


MATH_TRUTH = {  # class -> (first operand, operator, second operand) from the story's numbers a > b
    "together": lambda a, b: (a, "+", b), "more": lambda a, b: (a, "-", b), "product": lambda a, b: (a, "*", b),
    "twice": lambda a, b: (2, "*", a), "ten-more": lambda a, b: (b, "+", 10), "square": lambda a, b: (a, "*", a),
    "three-times": lambda a, b: (3, "*", b), "gives-one": lambda a, b: (a, "-", 1),
    "loses-two": lambda a, b: (b, "-", 2), "five-more": lambda a, b: (a, "+", 5),
}


@pytest.mark.parametrize("cls", T.MATH_CLASSES)
def test_math_classes_answer_correctly(cls):
    rng = np.random.default_rng(0)
    for _ in range(20):
        q, ans = T.math_example(cls, rng)
        a, b = [int(w) for w in q if w.isdigit()][-2:]  # the story: "{n} has {a} {o} and {m} has {b} {o} ."
        x, op, y = MATH_TRUTH[cls](a, b)
        value = {"+": x + y, "-": x - y, "*": x * y}[op]
        assert ans == [str(x), op, str(y), "=", str(value)], (cls, q, ans)
        assert a > b >= 2 and value >= 0
    q, _ = T.math_example(cls, rng, question=False)  # the pretraining format names no class
    assert q[1] == "has" and len(q) == 10


@pytest.mark.parametrize("task", T.TASKS)
def test_split_is_90_10_per_class_and_deterministic(task):
    d = T.make_task(task, seed=3)
    assert d.X_train.shape[0] == 900 and d.X_val.shape[0] == 100
    assert (np.bincount(d.cls_train) == 90).all() and (np.bincount(d.cls_val) == 10).all()
    assert len(set(d.text_train) | set(d.text_val)) == 1000  # distinct examples, no train/val overlap
    again = T.make_task(task, seed=3)
    assert torch.equal(d.X_train, again.X_train) and torch.equal(d.y_val, again.y_val)
    assert not torch.equal(d.X_train, T.make_task(task, seed=4).X_train)


def test_encoding_masks_the_prompt():
    d = T.make_task("sentence", seed=0, per_class=4, n_val_per_class=1)
    lay = T.LAYOUTS["sentence"]
    voc = T.vocabulary("sentence")
    assert (d.y_train[:, : lay.prompt_len - 1] == -100).all()
    # the targets are the answer words then <eos>, and nothing else
    i = 0
    answer = [voc[t] for t in d.y_train[i].tolist() if t != -100]
    assert answer[-1] == T.EOS and " ".join(answer[:-1]) == d.text_train[i].split(" => ")[1]
    assert voc[d.X_train[i, lay.prompt_len - 1]] == T.SEP
    assert voc[d.X_train[i, lay.prompt_len - 2 - T.SENTENCE_LEN]] == T.cue(T.classes("sentence")[0])


def test_source_words_fall_back_to_the_builtin_list(tmp_path):
    with pytest.warns(UserWarning, match="built-in"):
        words, source = T.source_words(10, tmp_path / "missing")
    assert source == "built-in" and len(words) == 10


def test_tinylm_shapes_and_causality():
    torch.manual_seed(0)
    model = TinyLM(30, d_model=16, n_layers=2, n_heads=2, d_ff=32, max_len=12).eval()
    x = torch.randint(0, 30, (3, 10))
    out = model(x)
    assert out.shape == (3, 10, 30)
    x2 = x.clone()
    x2[:, 6:] = (x2[:, 6:] + 1) % 30  # change the future: the past logits must not move
    torch.testing.assert_close(model(x2)[:, :6], out[:, :6])
    assert model.generate(x[:, :4], 3).shape == (3, 7)
    with pytest.raises(ValueError, match="max_len"):
        model(torch.zeros(1, 13, dtype=torch.long))


def test_per_sample_lora_grads_under_vmap_equal_a_loop():
    torch.manual_seed(0)
    model = TinyLM(30, d_model=16, n_layers=2, n_heads=2, d_ff=32, max_len=12)
    names = add_lora(model, ("blocks.*.attn.q", "blocks.*.attn.v"), rank=2)
    assert names == lora_names(model) and len(names) == 8
    with torch.no_grad():  # B = 0 at initialisation: give the adapters a non-trivial state
        for n in names:
            model.get_parameter(n).normal_(0, 0.3)
    model.eval()
    X = torch.randint(0, 30, (5, 10))
    y = torch.randint(0, 30, (5, 10))
    y[:, :4] = -100  # a masked prompt
    prob = func.make_problem(model, names)
    G_vmap = func.per_sample_grads(prob, X, y, chunk_size=2)  # (5, p)
    params = [model.get_parameter(n) for n in names]
    loop = []
    for i in range(5):
        loss = func.cross_entropy(model(X[i : i + 1]), y[i : i + 1]).sum()
        loop.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)]))
    torch.testing.assert_close(G_vmap, torch.stack(loop), rtol=1e-4, atol=1e-6)
    assert not any(model.get_parameter(n).requires_grad for n, _ in model.named_parameters() if n not in names)


def test_ranking_metrics_on_a_hand_made_case():
    cls_train = np.array([0, 0, 1, 1])
    cls_query = np.array([0, 1])
    # query 0: both class-0 points most helpful (perfect); query 1: one class-1 point first, one last
    P = np.array([[-3.0, -2.0, 1.0, 2.0],
                  [-1.0, 0.5, -2.0, 3.0]])
    auc, recall = G.ranking_metrics(P, cls_train, cls_query)
    # query 1: -P = [1, -0.5, 2, -3]; positives {2: 2, 3: -3} vs negatives {0: 1, 1: -0.5}: 2 of 4 pairs won
    assert auc == pytest.approx((1.0 + 0.5) / 2)
    assert recall == pytest.approx((1.0 + 0.5) / 2)  # top 2 of query 1: points 2 and 0


TINY = replace(G.FAST, per_class=6, n_val_per_class=2, d_model=16, d_ff=32, pretrain_steps=(3, 3), pretrain_pool=64,
               epochs=2, n_checkpoints=2, lora_rank=1, methods=("graddot", "tracin", "datainf", "if-lissa", "vm"),
               flat_steps=3, n_examples=2)


def test_experiment_writes_the_schema_and_resumes(tmp_path, monkeypatch):
    df = G.measure(TINY, [0], tmp_path, tasks=("sentence",), progress=False, mode="test")
    assert set(G.KEY + G.REQUIRED + ["exact_match", "n_train", "n_queries", "seconds", "mode"]) <= set(df.columns)
    assert len(df) == len(TINY.methods) and (df["task"] == "sentence").all()
    assert df["auc"].between(0, 1).all() and df["recall"].between(0, 1).all()
    assert (df["n_train"] == 40).all() and (df["n_queries"] == 20).all()
    ex = pd.read_csv(tmp_path / G.EXAMPLES)
    assert set(ex["rank"]) == set(range(6)) and ex["query"].nunique() == 2
    before = (tmp_path / G.FILENAME).read_bytes()

    def boom(*args, **kwargs):
        raise AssertionError("a resumed run must not recompute anything")

    monkeypatch.setattr(ifkit, "pairwise", boom)
    monkeypatch.setattr(G, "finetune", boom)
    again = G.measure(TINY, [0], tmp_path, tasks=("sentence",), progress=False, mode="test")
    pd.testing.assert_frame_equal(again, df)
    assert (tmp_path / G.FILENAME).read_bytes() == before


def test_tracin_per_checkpoint_equals_the_library_option():
    data = T.make_task("sentence", 0, TINY.per_class, TINY.n_val_per_class)
    res = G.finetune(G.pretrained("sentence", TINY), data, TINY, seed=0)
    ours = G.pairwise("tracin", res.model, data, TINY, res.checkpoints)
    lib = ifkit.pairwise("tracin", res.model, data.train, data.val, params=lora_names(res.model),
                         checkpoints=res.checkpoints)
    torch.testing.assert_close(ours, lib, rtol=1e-4, atol=1e-7)


def test_generation_figures_accept_text_and_style_rows():
    rows = [{"task": t, "seed": s, "method": m, "auc": 0.9 + 0.01 * s, "recall": 0.6, "mode": "full"}
            for t in ("sentence", "math", "style") for s in (0, 1) for m in ("tracin", "datainf", "vm")]
    assert isinstance(figures.generation_auc(pd.DataFrame(rows)), Figure)
    ex = [{"task": t, "seed": 0, "query": 1, "method": m, "rank": r, "text": f"{t} text {r}",
           "same_class": r % 2 == 0, "influence": -1.0 / (r + 1)}
          for t in ("sentence", "math") for m in ("tracin", "vm") for r in range(6)]
    assert isinstance(figures.generation_text_examples(pd.DataFrame(ex)), Figure)


def test_plot_top_examples_lists_the_most_helpful_first():
    P = {"vm": torch.tensor([[0.5, -2.0, -1.0, 3.0]])}
    fig = plot_top_examples(P, ["q"], ["a", "b", "c", "d"], [0, 1, 1, 0], [1], query=0, k=2)
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert texts[1].startswith("1. b") and texts[2].startswith("2. c")
    assert "2 of the query's class" in fig._suptitle.get_text()
    with pytest.raises(ValueError, match="available"):
        plot_top_examples(P, ["q"], ["a", "b", "c", "d"], [0, 1, 1, 0], [1], method="tracin")
    with pytest.raises(ValueError, match="out of range"):
        plot_top_examples(P["vm"], ["q"], ["a", "b", "c", "d"], [0, 1, 1, 0], [1], query=3)

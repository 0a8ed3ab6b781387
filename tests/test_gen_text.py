"""gen-text: the task generators, TinyLM + LoRA per-sample gradients, the ranking metric, the resumable runner."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure
from tolerances import FLOAT32, FLOAT32_DOT, FLOAT32_LOOP_SMALL, FLOAT32_SAME, FLOAT32_SAME_SMALL

import ifkit
from ifkit.core import func
from ifkit.data import text as T
from ifkit.experiments import gen_text as G
from ifkit.experiments import generation_results as GR
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
@pytest.mark.parametrize("prefix", T.PREFIXES)
def test_split_is_90_10_per_class_shares_contents_and_is_deterministic(task, prefix):
    d = T.make_task(task, seed=3, prefix=prefix)
    assert d.X_train.shape[0] == 900 and d.X_val.shape[0] == 100
    assert (np.bincount(d.cls_train) == 90).all() and (np.bincount(d.cls_val) == 10).all()
    assert len(set(d.text_train) | set(d.text_val)) == 1000  # distinct examples, no train/val overlap
    # DataInf: the same contents in every class, the same 90 / 10 split of them
    prompt = [t.split(" => ")[0] for t in d.text_train]
    n_prefix = [len(T.class_prefix(task, T.classes(task)[k], prefix, _story(task, p))) for k, p in
                zip(d.cls_train, prompt)]
    contents = [tuple(p.split()[n:]) for p, n in zip(prompt, n_prefix)]
    by_class = [set(c for c, k in zip(contents, d.cls_train) if k == j) for j in range(10)]
    assert all(b == by_class[0] for b in by_class) and len(by_class[0]) == 90
    assert not by_class[0] & {tuple(c) for c in d.contents_val}
    again = T.make_task(task, seed=3, prefix=prefix)
    assert torch.equal(d.X_train, again.X_train) and torch.equal(d.y_val, again.y_val)
    assert not torch.equal(d.X_train, T.make_task(task, seed=4, prefix=prefix).X_train)


@pytest.mark.parametrize("task", T.TASKS)
def test_flat_split_is_disjoint_and_leaves_train_and_val_unchanged(task):
    """n_flat_per_class draws VM/FVM's split after the others: train and queries are those of n_flat_per_class=0,
    and its contents are in neither."""
    plain = T.make_task(task, seed=1, per_class=12, n_val_per_class=3)
    d = T.make_task(task, seed=1, per_class=12, n_val_per_class=3, n_flat_per_class=2)
    assert torch.equal(d.X_train, plain.X_train) and torch.equal(d.X_val, plain.X_val) and plain.X_flat is None
    assert d.X_flat.shape[0] == 20
    seen = {tuple(r) for r in torch.cat([d.X_train, d.X_val]).tolist()}
    assert not seen & {tuple(r) for r in d.X_flat.tolist()}
    X, y = d.flat("full")
    assert torch.equal(X, d.X_flat) and torch.equal(y, T.grad_targets(task, d.X_flat, d.y_flat, "full"))
    with pytest.raises(ValueError, match="n_flat_per_class"):
        plain.flat()


def _story(task, prompt):  # the variables the math question refers to, read back from the prompt's story
    if task == "sentence":
        return {}
    w = prompt.split()[-10:]  # "{n} has {a} {o} and {m} has {b} {o} ."
    return {"n": w[0], "a": int(w[2]), "o": w[3], "m": w[5], "b": int(w[7])}


@pytest.mark.parametrize("task", T.TASKS)
def test_prefixes_name_the_class(task):
    lengths = {kind: [] for kind in T.PREFIXES}
    rng = np.random.default_rng(0)
    for cls in T.classes(task):
        _, v = T.content(task, rng)
        for kind in T.PREFIXES:
            lengths[kind].append(len(T.class_prefix(task, cls, kind, v)))
    assert set(lengths["cue"]) == {1}
    if task == "sentence":  # DataInf's prompt word for word: "NAME is a chatbot ... sentences : TITLE . for example :"
        assert set(lengths["name"]) == {20}
        p = T.class_prefix(task, "reverse", "name")
        assert " ".join(p) == "zorbo is a chatbot that performs a specific transformation on sentences : read " \
                              "sentence backwards entirely . for example :"
    else:  # chatbot name, ":" and the question
        assert 6 <= min(lengths["name"]) and max(lengths["name"]) <= 11, lengths["name"]
    firsts = {T.class_prefix(task, c, "name", v)[0] for c in T.classes(task)}
    assert len(firsts) == 10  # one chatbot name per class
    with pytest.raises(ValueError, match="prefix"):
        T.class_prefix(task, T.classes(task)[0], "title")


def test_encoding_masks_the_prompt():
    d = T.make_task("sentence", seed=0, per_class=4, n_val_per_class=1, prefix="cue")
    lay = T.LAYOUTS["sentence"]
    voc = T.vocabulary("sentence")
    assert (d.y_train[:, : lay.prompt_len - 1] == -100).all()
    # the targets are the answer words then <eos>, and nothing else
    i = 0
    answer = [voc[t] for t in d.y_train[i].tolist() if t != -100]
    assert answer[-1] == T.EOS and " ".join(answer[:-1]) == d.text_train[i].split(" => ")[1]
    assert voc[d.X_train[i, lay.prompt_len - 1]] == T.SEP
    assert voc[d.X_train[i, lay.prompt_len - 2 - T.SENTENCE_LEN]] == T.cue(T.classes("sentence")[0])
    generic = d.generic_val()
    assert voc[generic[0, lay.prompt_len - 2 - T.SENTENCE_LEN]] == T.ANY
    assert torch.equal(generic[:, lay.prompt_len - 1 - T.SENTENCE_LEN:], d.X_val[:, lay.prompt_len - 1 - T.SENTENCE_LEN:])


@pytest.mark.parametrize("task", T.TASKS)
def test_grad_targets_split_the_sequence_into_prompt_and_answer(task):
    d = T.make_task(task, seed=0, per_class=4, n_val_per_class=1, prefix="name")
    voc = T.vocabulary(task)
    (X, y_answer), _ = d.attribution("answer")
    (X_cut, y_cut), _ = d.attribution("prompt")
    y_full = d.attribution("full")[0][1]
    assert torch.equal(y_answer, d.y_train)
    P = T.LAYOUTS[task].prompt_len - 1  # the prompt set is cut after the prompt: nothing after it is a target
    assert X_cut.shape == y_cut.shape == (len(X), P) and torch.equal(X_cut, X[:, :P])
    y_prompt = torch.cat([y_cut, torch.full((len(X), X.shape[1] - P), -100)], 1)  # back to full width
    assert torch.equal(y_prompt, T.grad_targets(task, X, d.y_train, "prompt"))
    on = lambda t: t != -100  # noqa: E731
    assert not (on(y_prompt) & on(y_answer)).any()
    assert torch.equal(on(y_prompt) | on(y_answer), on(y_full))
    assert torch.equal(torch.where(on(y_full), y_full, 0)[on(y_answer)], y_answer[on(y_answer)])
    i = 0  # the prompt targets are exactly the prompt after <bos>: prefix, content, <sep>
    prompt = [voc[t] for t in y_prompt[i].tolist() if t != -100]
    assert prompt[-1] == T.SEP and " ".join(prompt[:-1]) == d.text_train[i].split(" => ")[0]
    assert T.PAD not in [voc[t] for t in y_full[on(y_full)].tolist()]
    with pytest.raises(ValueError, match="grad_loss"):
        d.attribution("all")


@pytest.mark.parametrize("task", T.TASKS)
def test_prompt_gradients_of_the_cut_sequences_equal_the_full_ones(task):
    """Causal attention: the prompt's losses do not see the answer, so cutting it off changes no gradient."""
    d = T.make_task(task, seed=0, per_class=3, n_val_per_class=1, prefix="name")
    torch.manual_seed(0)
    model = TinyLM(len(T.vocabulary(task)), d_model=16, n_layers=2, n_heads=2, d_ff=32,
                   max_len=T.LAYOUTS[task].seq_len)
    names = add_lora(model, ("blocks.*.attn.q", "blocks.*.attn.v"), rank=2)
    with torch.no_grad():  # B = 0 at initialisation: give the adapters a non-trivial state
        for n in names:
            model.get_parameter(n).normal_(0, 0.3)
    prob = func.make_problem(model.eval(), names)
    X_cut, y_cut = d.attribution("prompt")[0]
    full = func.per_sample_grads(prob, d.X_train, T.grad_targets(task, d.X_train, d.y_train, "prompt"))
    torch.testing.assert_close(func.per_sample_grads(prob, X_cut, y_cut), full, **FLOAT32_SAME)
    assert full.abs().max() > 0


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
    torch.testing.assert_close(G_vmap, torch.stack(loop), **FLOAT32)
    assert not any(model.get_parameter(n).requires_grad for n, _ in model.named_parameters() if n not in names)


TINY = replace(G.FAST, per_class=6, n_val_per_class=2, n_flat_per_class=1, d_model=16, d_ff=32, pretrain_steps=(3, 3), pretrain_pool=64,
               epochs=2, n_checkpoints=2, lora_rank=1, methods=("graddot", "tracin", "datainf", "if-lissa", "vm"),
               flat_steps=3, n_examples=2, lissa_iters=2, lissa_scale_iters=1)
# LiSSA's rows need its options, not a converged solve or scale (FAST and FULL: 20 power steps for the scale)


@pytest.mark.slow  # the experiment end to end: pretraining, fine-tuning and five methods on both variants
def test_experiment_writes_the_schema_and_resumes(tmp_path, monkeypatch):
    # a file from before the variant column: its text rows go (another setup), gen-image's rows stay
    old = pd.DataFrame([{"task": t, "seed": 0, "method": "vm", "auc": 0.5, "recall": 0.5, "mode": "test"}
                        for t in ("sentence", "style")])
    old.to_csv(tmp_path / GR.FILENAME, index=False)
    df = G.measure(TINY, [0], tmp_path, tasks=("sentence",), progress=False, mode="test")
    assert set(GR.KEY + GR.REQUIRED + ["exact_match", "n_train", "n_queries", "seconds", "mode"]) <= set(df.columns)
    assert len(df) == len(TINY.methods) * len(TINY.variants) and (df["task"] == "sentence").all()
    assert set(df["variant"]) == set(TINY.variants) and set(df["grad_loss"]) == {"full", "answer"}
    assert set(df.loc[df["variant"] == "protocol", "train_loss"]) == {"full"}  # DataInf fine-tunes on the full text
    assert not df.loc[df["variant"] == "protocol-init", "finetuned"].any()
    for c in ("auc", "recall", "recall_abs", "precision5"):
        assert df[c].between(0, 1).all()
    assert any((tmp_path / ".cache" / "gen-text").glob("*.pt"))  # the pretrained base, kept for a rerun
    style = pd.read_csv(tmp_path / GR.FILENAME).query("task == 'style'")
    assert len(style) == 1 and style["variant"].iloc[0] == "protocol"
    assert (df["n_train"] == 40).all() and (df["n_queries"] == 20).all()
    ex = pd.read_csv(tmp_path / G.EXAMPLES)
    assert set(ex["rank"]) == set(range(6)) and ex["query"].nunique() == 2 and set(ex["variant"]) == set(TINY.variants)
    before = (tmp_path / GR.FILENAME).read_bytes()

    def boom(*args, **kwargs):
        raise AssertionError("a resumed run must not recompute anything")

    monkeypatch.setattr(ifkit, "pairwise", boom)
    monkeypatch.setattr(G, "finetune", boom)
    again = G.measure(TINY, [0], tmp_path, tasks=("sentence",), progress=False, mode="test")
    pd.testing.assert_frame_equal(again, df)
    assert len(pd.read_csv(tmp_path / GR.FILENAME)) == len(df) + 1
    assert (tmp_path / GR.FILENAME).read_bytes() == before


@pytest.mark.parametrize("grad_loss", ["prompt", "answer"])
def test_pairwise_uses_the_grad_loss_targets(grad_loss):
    data = T.make_task("math", 0, TINY.per_class, TINY.n_val_per_class)
    res = G.finetune(G.pretrained("math", TINY), data, TINY, seed=0)
    m = res.model
    prob = func.make_problem(m, lora_names(m))
    (Xt, yt), (Xv, yv) = data.attribution(grad_loss)
    by_hand = -func.per_sample_grads(prob, Xv, yv) @ func.per_sample_grads(prob, Xt, yt).T  # (Q, n)
    torch.testing.assert_close(G.pairwise("graddot", m, data, TINY, grad_loss=grad_loss), by_hand, **FLOAT32_DOT)
    opts = G.method_options("vm", TINY, data, m, grad_loss)  # no flat split: theta~ on the queries' answer loss
    assert torch.equal(opts["flat_val"][1], data.y_val) and torch.equal(opts["curvature_val"][1], yv)
    split = T.make_task("math", 0, TINY.per_class, TINY.n_val_per_class, n_flat_per_class=1)
    opts = G.method_options("vm", TINY, split, m, grad_loss, train_loss="full")  # theta~ on the disjoint split
    assert torch.equal(opts["flat_val"][0], split.X_flat) and torch.equal(opts["flat_val"][1], split.flat("full")[1])
    assert torch.equal(opts["curvature_val"][1], split.flat(grad_loss)[1])


def test_a_seed_includes_the_pretraining_and_the_init_control_is_the_base_model(tmp_path):
    """Each seed pretrains its own base (cached: the second call loads it); lora_init (B = 0) computes exactly
    what the base does; finetune(train_loss="full") lowers the prompt tokens' loss too, "answer" does not aim at it."""
    from ifkit.experiments.cache import Cache

    cache = Cache(tmp_path, "gen-text")
    s0 = G.pretrained_state("math", TINY, seed=0, cache=cache)
    s1 = G.pretrained_state("math", TINY, seed=1)
    assert cache.misses == 1 and not all(torch.equal(v, s1[k]) for k, v in s0.items())
    again = G.pretrained_state("math", TINY, seed=0, cache=cache)
    assert cache.hits == 1 and all(torch.equal(v, again[k]) for k, v in s0.items())
    base = G.pretrained("math", TINY, state=s0)
    data = T.make_task("math", 0, TINY.per_class, TINY.n_val_per_class)
    init = G.lora_init(base, TINY, seed=0)
    torch.testing.assert_close(init(data.X_val), base(data.X_val), **FLOAT32_SAME)
    full_targets = data.attribution("full")[0]

    def prompt_loss(m):
        X, y = data.attribution("prompt")[0]
        return func.cross_entropy(m(X), y).mean().item()

    tuned = G.finetune(base, data, replace(TINY, epochs=4), seed=0, train_loss="full").model
    assert prompt_loss(tuned) < prompt_loss(init) and full_targets[1].ne(-100).sum() > data.y_train.ne(-100).sum()


def test_a_shared_grad_cache_changes_no_score():
    data = T.make_task("sentence", 0, TINY.per_class, TINY.n_val_per_class)
    res = G.finetune(G.pretrained("sentence", TINY), data, TINY, seed=0)
    cache = ifkit.GradCache()
    for method in ("graddot", "gradcos", "datainf", "tracin"):
        alone = G.pairwise(method, res.model, data, TINY, res.checkpoints, "prompt")
        shared = G.pairwise(method, res.model, data, TINY, res.checkpoints, "prompt", cache)
        torch.testing.assert_close(shared, alone, **FLOAT32_SAME_SMALL)
    assert cache.stats["hits"] >= 2  # gradcos and DataInf read graddot's gradients


def test_paired_differences_are_paired_by_seed_with_a_t_interval():
    rows = [{"task": "sentence", "variant": "harder", "seed": s, "method": m, "auc": v}
            for s, (a, b) in enumerate([(0.80, 0.70), (0.70, 0.62), (0.90, 0.79)]) for m, v in (("a", a), ("b", b))]
    d = GR.paired_differences(pd.DataFrame(rows), versus=["b"])
    assert list(d["method"]) == ["a"] and d["n"].iloc[0] == 3
    diffs = np.array([0.10, 0.08, 0.11])
    half = 4.302653 * diffs.std(ddof=1) / np.sqrt(3)  # t_{0.975, 2}
    assert d["diff"].iloc[0] == pytest.approx(diffs.mean())
    assert (d["lo"].iloc[0], d["hi"].iloc[0]) == pytest.approx((diffs.mean() - half, diffs.mean() + half), rel=1e-5)
    assert d["lo"].iloc[0] > 0  # a constant-sign gap is resolved although the seeds' levels differ by 0.2
    one = GR.paired_differences(pd.DataFrame(rows[:2]), versus=["b"])
    assert one["n"].iloc[0] == 1 and np.isnan(one["lo"].iloc[0])


def test_seed_list_reads_a_count_or_the_seeds():
    assert G.seed_list(3) == [0, 1, 2] and G.seed_list((4, 1)) == [4, 1]


def test_tracin_per_checkpoint_equals_the_library_option():
    data = T.make_task("sentence", 0, TINY.per_class, TINY.n_val_per_class)
    res = G.finetune(G.pretrained("sentence", TINY), data, TINY, seed=0)
    ours = G.pairwise("tracin", res.model, data, TINY, res.checkpoints)
    lib = ifkit.pairwise("tracin", res.model, data.train, data.val, params=lora_names(res.model),
                         checkpoints=res.checkpoints)
    torch.testing.assert_close(ours, lib, **FLOAT32_LOOP_SMALL)


def test_generation_figures_accept_text_and_style_rows():
    rows = [{"task": t, "variant": v, "seed": s, "method": m, "auc": 0.9 + 0.01 * s, "recall": 0.6,
             "precision5": 0.7, "mode": "full"}
            for t in ("sentence", "math", "style") for v in ("protocol", "harder") for s in (0, 1)
            for m in ("tracin", "datainf", "vm")]
    fig = figures.generation_auc(pd.DataFrame(rows))
    assert isinstance(fig, Figure) and len(fig.axes) == 3
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()][:2] == ["sentence\nprotocol", "sentence\nharder"]
    old = pd.DataFrame(rows).drop(columns=["variant", "precision5"]).drop_duplicates(["task", "seed", "method"])
    assert len(figures.generation_auc(old).axes) == 2  # a file without the new columns still draws
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


def test_vm_sensitivity_rows_and_the_summed_setting(tmp_path):
    """gen-text-vm writes one row per setting (schema-checked), resumes, and its summed VM is the library's
    checkpoint="sum": sum_c lr_c * VM started at checkpoint c."""
    from ifkit.experiments import gen_text_vm as V

    picked = ("vm", "vm on the queries", "vm from checkpoint 1", "vm summed over checkpoints",
              "datainf summed over checkpoints")
    df = V.measure(TINY, [0], tmp_path, progress=False, mode="test", settings=picked)
    assert list(df["setting"]) == list(picked) and df["auc"].between(0, 1).all()
    assert set(V.summary(df)["setting"]) == set(picked)
    assert len(V.measure(TINY, [0], tmp_path, progress=False, mode="test", settings=picked)) == len(picked)
    var = G.VARIANTS[V.VARIANT]
    data = T.make_task("sentence", 0, TINY.per_class, TINY.n_val_per_class, prefix=var.prefix,
                       n_flat_per_class=TINY.n_flat_per_class)
    res = G.finetune(G.pretrained("sentence", TINY), data, TINY, seed=0)
    summed = V.score("vm summed over checkpoints", res.model, data, TINY, res.checkpoints, ifkit.GradCache())
    by_hand = sum(lr * G.pairwise("vm", res.model, data, TINY, res.checkpoints, checkpoint=state)
                  for state, lr in res.checkpoints)
    torch.testing.assert_close(summed, by_hand, **FLOAT32_SAME_SMALL)

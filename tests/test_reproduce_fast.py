"""The front door end to end: `ifkit reproduce all --fast` then `ifkit figures` on a fresh folder.

Every registered experiment runs through the CLI (registry, job plan, each experiment's run(), its CSV with the
DESIGN.md columns), and every figure producer draws from those CSVs. The experiments run at the test sizes their
own test files use (the --fast configs swapped for them in this process), so this test proves the wiring, not the
--fast sizes: `ifkit reproduce all --fast --jobs 2` takes ~45 s on a quiet 2-core machine (over 4 min on a busy
one), this ~15 s. The --jobs 2 worker processes are checked in tests/test_cli.py.
"""

from dataclasses import replace

import pandas as pd
import pytest

from ifkit import cli
from ifkit.experiments import ablation, detection, gen_image, gen_text, gen_text_vm, relabel, theory
from ifkit.viz import figures

SCHEMAS = {
    "detection.csv": ["dataset", "noise", "rate", "seed", "method", "auc", "ap", "recall_at_10pct", "seconds"],
    "relabel.csv": ["dataset", "noise", "rate", "seed", "method", "relabel_acc", "retrain_test_acc"],
    "generation.csv": ["task", "seed", "method", "auc", "recall"],
    "theory.csv": ["val_loss", "sharpness", "bound", "sign_error", "method"],
    "ablation.csv": ["factor", "value", "method", "auc"],
    "detection_dynamics.csv": ["kind", "step", "method", "auc"],
    "generation_text_vm.csv": ["task", "variant", "seed", "setting", "factor", "method", "auc", "recall"],
}

# The sizes of tests/test_detection.py (and a few methods: every method is scored there), test_theory.py, test_gen_text.py and test_gen_image.py.
DETECTION = replace(detection.FAST, n_train=200, n_val=60, epochs=40, n_checkpoints=2, cv_folds=2, dynamics_every=20,
                    flat_grid=(0, 20), progress=False, methods=("loss", "tracin", "vm", "fvm"))
RELABEL_METHODS = ("vm", "pred@theta~", "pred@fvm-theta~", "noisy")  # those of test_detection's relabel test
THEORY = replace(theory.FAST, n_train=60, n_val=40, n_loo=4, train_steps=(0, 5), l2_path=(1e-1,), gammas=(0.0, 0.5),
                 methods=("if-exact", "graddot"), ascent_steps=3, eig_iters=20, trace_samples=5)
GEN_TEXT = replace(gen_text.FAST, per_class=6, n_val_per_class=2, d_model=16, d_ff=32, pretrain_steps=(3, 3),
                   pretrain_pool=64, epochs=2, n_checkpoints=2, lora_rank=1,
                   methods=("graddot", "vm"), flat_steps=3, n_examples=2)
GEN_IMAGE = replace(gen_image.FAST, dataset="digits", image_size=8, n_train_per_style=12, n_val_per_style=4,
                    n_pretrain=100, pretrain_epochs=2, lora_epochs=3, hidden=16, latent=4, n_checkpoints=2,
                    methods=("graddot", "tracin", "vm"), n_examples=1, n_samples=8)
# gen-text-vm's flat_steps settings (30 and 300 fine-tuning steps, 90% of its time here) at GEN_TEXT's scale
VM_FLAT_STEPS = {"vm flat_steps=30": 2, "vm flat_steps=300": 6}
# The PNGs at a low resolution: the producers, the layout and the files are the same, with fewer pixels to encode.
TEST_DPI = 40


@pytest.fixture
def test_sizes(monkeypatch):
    """Every experiment's --fast config replaced by its unit-test size, for this test only."""
    monkeypatch.setattr(detection, "FAST", DETECTION)
    monkeypatch.setattr(relabel, "FAST", replace(relabel.FAST, detection=DETECTION, methods=RELABEL_METHODS, progress=False))
    monkeypatch.setattr(ablation, "FAST", replace(ablation.FAST, detection=DETECTION, progress=False))
    monkeypatch.setattr(theory, "FAST", THEORY)
    monkeypatch.setattr(gen_text, "FAST", GEN_TEXT)
    fast = {"protocol": GEN_IMAGE, "harder": gen_image._harder(GEN_IMAGE, 3)}
    monkeypatch.setitem(gen_image.CONFIGS, "fast", fast)
    for setting, steps in VM_FLAT_STEPS.items():
        factor, method, opts = gen_text_vm.SETTINGS[setting]
        monkeypatch.setitem(gen_text_vm.SETTINGS, setting, (factor, method, {**opts, "flat_steps": steps}))
    monkeypatch.setattr(figures, "DPI", TEST_DPI)


@pytest.mark.slow  # every experiment and every figure, at test sizes
def test_reproduce_all_fast_then_figures(tmp_path, test_sizes):
    out, figs = tmp_path / "results", tmp_path / "figures"
    assert cli.main(["reproduce", "all", "--fast", "--out", str(out)]) == 0
    for name, columns in SCHEMAS.items():
        df = pd.read_csv(out / name)
        assert len(df) > 0 and set(columns) <= set(df.columns), (name, list(df.columns))
    assert set(pd.read_csv(out / "generation.csv").task) == {"sentence", "math", "style"}
    assert set(pd.read_csv(out / "generation_text_vm.csv").setting) == set(gen_text_vm.SETTINGS)
    # the work a rerun resumes from (tests/test_resume_cache.py): networks, relabel's flags, leave-one-out refits
    kept = {p.parent.name for p in (out / ".cache").glob("*/*.pt")}
    assert {"detection", "relabel", "theory"} <= kept, kept
    assert not list((out / ".cache").glob("*/*.tmp")) and not list((out / ".cache").glob("*/*.bad"))
    assert cli.main(["figures", "--results", str(out), "--out", str(figs)]) == 0
    drawn = {p.stem for p in figs.glob("*.png")}
    assert {"detection_table", "fig2_auc_vs_val_acc", "fig3_flat_finetuning", "relabel", "ablation",
            "generation_auc", "theory_bound"} <= drawn, drawn

"""Offline loaders, noise models and splits (ifkit/data/)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ifkit import data

FASHION_PRESENT = (data.FASHION_MNIST_ROOT / "train-images-idx3-ubyte.gz").is_file()
needs_fashion = pytest.mark.skipif(
    not FASHION_PRESENT,
    reason="Fashion-MNIST Debian files absent: sudo apt-get install dataset-fashion-mnist (or make setup)",
)


@pytest.fixture
def labels() -> torch.Tensor:
    return torch.arange(1000) % 10  # (1000,) balanced, 10 classes


def _hard_probs(n: int, n_classes: int, seed: int = 0) -> torch.Tensor:
    return torch.softmax(torch.randn(n, n_classes, generator=torch.Generator().manual_seed(seed)) * 3, dim=1)


def _noise(kind: str, y: torch.Tensor, rate: float, seed: int) -> data.Noisy:
    probs = _hard_probs(len(y), 10) if kind == "hard" else None
    return data.add_noise(y, kind, rate, 10, seed=seed, probs=probs)


KINDS = ["symmetric", "asymmetric", "hard"]


# ----------------------------------------------------------------------------------------------- noise


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("rate", [0.0, 0.1, 0.37, 0.5, 1.0])
def test_exact_rate_and_mask(kind, rate, labels):
    noisy = _noise(kind, labels, rate, seed=3)
    assert noisy.y_noisy.dtype == torch.int64 and noisy.flipped.dtype == torch.bool
    assert noisy.y_noisy.shape == labels.shape == noisy.flipped.shape
    assert int(noisy.flipped.sum()) == round(rate * len(labels))
    # the mask is exactly where the label changed: no flipped label equals its original
    assert torch.equal(noisy.flipped, noisy.y_noisy != labels)
    assert int(noisy.y_noisy.min()) >= 0 and int(noisy.y_noisy.max()) < 10


@pytest.mark.parametrize("kind", KINDS)
def test_reproducible_and_seed_dependent(kind, labels):
    a, b, c = (_noise(kind, labels, 0.3, seed=s) for s in (1, 1, 2))
    assert torch.equal(a.y_noisy, b.y_noisy) and torch.equal(a.flipped, b.flipped)
    assert not torch.equal(a.flipped, c.flipped)


def test_symmetric_uses_every_other_class(labels):
    noisy = data.symmetric_noise(labels, 1.0, 10, seed=0)
    for c in range(10):
        targets = set(noisy.y_noisy[labels == c].tolist())
        assert targets == set(range(10)) - {c}  # 100 draws over 9 classes: all appear


@pytest.mark.parametrize("pairs", ["fashion", "digits", "mixture", None])
def test_asymmetric_goes_to_partner(pairs, labels):
    noisy = data.asymmetric_noise(labels, 0.4, 10, seed=0, pairs=pairs)
    target = {
        "fashion": data.FASHION_PAIRS,
        "digits": data.DIGITS_PAIRS,
        "mixture": data.MIXTURE_PAIRS,
        None: {c: (c + 1) % 10 for c in range(10)},
    }[pairs]
    f = noisy.flipped
    expected = torch.tensor([target[int(c)] for c in labels[f]])
    assert torch.equal(noisy.y_noisy[f], expected)


@pytest.mark.parametrize("table", [data.FASHION_PAIRS, data.DIGITS_PAIRS, data.MIXTURE_PAIRS])
def test_partner_maps_are_complete(table):
    assert sorted(table) == list(range(10))
    assert all(table[c] != c and 0 <= table[c] < 10 for c in table)


def test_asymmetric_custom_pairs_and_bad_pairs(labels):
    noisy = data.asymmetric_noise(labels, 0.5, 10, seed=0, pairs=[9, 8, 7, 6, 5, 4, 3, 2, 1, 0])
    assert torch.equal(noisy.y_noisy[noisy.flipped], 9 - labels[noisy.flipped])
    with pytest.raises(ValueError, match="different class"):
        data.asymmetric_noise(labels, 0.5, 10, pairs=list(range(10)))  # identity map flips nothing
    with pytest.raises(ValueError, match="missing"):
        data.asymmetric_noise(labels, 0.5, 10, pairs={0: 1})


def test_hard_noise_goes_to_argmax_wrong_class(labels):
    probs = _hard_probs(len(labels), 10)
    noisy = data.hard_noise(labels, probs, 0.3, seed=0)
    masked = probs.clone()
    masked[torch.arange(len(labels)), labels] = -1.0
    f = noisy.flipped
    assert torch.equal(noisy.y_noisy[f], masked.argmax(1)[f])


def test_hard_noise_prefers_ambiguous_samples(labels):
    # First half confident (wrong-class mass 0.01), second half ambiguous (a wrong class at 0.42).
    n = len(labels)
    probs = torch.full((n, 10), 0.01)
    probs[torch.arange(n), labels] = 0.91
    ambiguous = torch.arange(n) >= n // 2
    probs[ambiguous, labels[ambiguous]] = 0.5
    probs[ambiguous, (labels[ambiguous] + 1) % 10] = 0.42
    noisy = data.hard_noise(labels, probs, 0.2, seed=0)
    assert int((noisy.flipped & ambiguous).sum()) >= 0.9 * 200  # weights 0.42 vs 0.01: ~98% expected


def test_noise_rejects_bad_input(labels):
    with pytest.raises(ValueError, match="rate"):
        data.symmetric_noise(labels, 1.5, 10)
    with pytest.raises(ValueError, match="labels must lie"):
        data.symmetric_noise(labels, 0.1, 5)
    with pytest.raises(TypeError, match="integer"):
        data.symmetric_noise(labels.float(), 0.1, 10)
    with pytest.raises(ValueError, match="probs"):
        data.add_noise(labels, "hard", 0.1, 10)
    with pytest.raises(ValueError, match="shape"):
        data.hard_noise(labels, torch.rand(3, 10), 0.1)
    with pytest.raises(ValueError, match="unknown noise kind"):
        data.add_noise(labels, "pink", 0.1, 10)


def test_no_noise(labels):
    noisy = data.add_noise(labels, "none", 0.3, 10)
    assert torch.equal(noisy.y_noisy, labels) and not noisy.flipped.any()


# ----------------------------------------------------------------------------------------------- splits


def _rows(X: torch.Tensor) -> set[bytes]:
    return {x.numpy().tobytes() for x in X}


@pytest.mark.parametrize("noise", ["symmetric", "asymmetric", "hard"])
def test_digits_split(noise):
    s = data.make_split("digits", n_train=300, n_val=100, n_test=200, noise=noise, rate=0.25, seed=1)
    assert (
        s.X_train.shape == (300, 1, 8, 8)
        and s.X_val.shape == (100, 1, 8, 8)
        and s.X_test.shape == (200, 1, 8, 8)
    )
    assert s.X_train.dtype == torch.float32 and s.y_train.dtype == torch.int64
    assert 0.0 <= float(s.X_train.min()) and float(s.X_train.max()) <= 1.0
    assert s.n_classes == 10 and s.classes == data.DIGITS_CLASSES
    assert int(s.flipped.sum()) == 75
    assert torch.equal(s.flipped, s.y_train != s.y_train_clean)
    assert torch.bincount(s.y_train_clean).tolist() == [30] * 10  # class-balanced before noise
    assert torch.bincount(s.y_val).tolist() == [10] * 10
    assert s.train[0] is s.X_train and s.val[1] is s.y_val


def test_digits_split_disjoint_by_index(monkeypatch):
    # Replace each image by its own index so disjointness is checked exactly (sklearn's digits contain a few
    # duplicate images, which would confuse a comparison of pixels).
    _, y = data.load_digits()
    ids = torch.arange(len(y), dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 1, 8, 8).contiguous()
    monkeypatch.setattr(data.splits, "load_digits", lambda: (ids, y))
    s = data.make_split("digits", n_train=500, n_val=200, noise="symmetric", rate=0.2, seed=0)
    tr, va, te = ({int(v) for v in X_[:, 0, 0, 0]} for X_ in (s.X_train, s.X_val, s.X_test))
    assert len(tr) == 500 and len(va) == 200 and len(te) == len(y) - 700  # n_test=None: all the rest
    assert not (tr & va) and not (tr & te) and not (va & te)
    # labels still belong to their images
    assert all(int(y[i]) == int(c) for i, c in zip(s.X_train[:, 0, 0, 0].long(), s.y_train_clean))


def test_split_reproducible_and_seed_dependent():
    a, b, c = (data.make_split("digits", 200, 50, 50, rate=0.3, seed=s) for s in (4, 4, 5))
    assert torch.equal(a.X_train, b.X_train) and torch.equal(a.y_train, b.y_train)
    assert not torch.equal(a.X_train, c.X_train)


def test_split_custom_probs_fn():
    calls = []

    def probs_fn(X, y):
        calls.append(X.shape)
        return torch.nn.functional.one_hot((y + 3) % 10, 10).float() * 0.9 + 0.01

    s = data.make_split("digits", 100, 20, 20, noise="hard", rate=0.5, seed=0, probs_fn=probs_fn)
    assert calls == [(100, 1, 8, 8)]
    assert torch.equal(s.y_train[s.flipped], (s.y_train_clean[s.flipped] + 3) % 10)


def test_split_rejects_bad_sizes():
    with pytest.raises(ValueError, match="fewer"):
        data.make_split("digits", n_train=1790, n_val=5)
    with pytest.raises(ValueError, match="unknown dataset"):
        data.make_split("cifar", 10, 10)


# --------------------------------------------------------------------------------------- Fashion-MNIST


@needs_fashion
def test_fashion_loader_full_and_subset():
    X, y = data.load_fashion_mnist("test")
    assert X.shape == (10_000, 1, 28, 28) and y.shape == (10_000,)
    assert X.dtype == torch.float32 and y.dtype == torch.int64
    assert float(X.min()) == 0.0 and float(X.max()) == 1.0
    assert torch.bincount(y).tolist() == [1000] * 10

    Xs, ys = data.load_fashion_mnist("train", n=205, seed=3)
    assert Xs.shape == (205, 1, 28, 28)
    counts = torch.bincount(ys, minlength=10)
    assert int(counts.max() - counts.min()) <= 1  # class-balanced
    X2, y2 = data.load_fashion_mnist("train", n=205, seed=3)
    assert torch.equal(Xs, X2) and torch.equal(ys, y2)
    X3, _ = data.load_fashion_mnist("train", n=205, seed=4)
    assert not torch.equal(Xs, X3)
    assert len(data.FASHION_CLASSES) == 10


@needs_fashion
def test_fashion_split():
    s = data.make_split("fashion", n_train=200, n_val=50, n_test=100, noise="asymmetric", rate=0.2, seed=0)
    assert s.X_train.shape == (200, 1, 28, 28) and s.X_test.shape == (100, 1, 28, 28)
    assert s.classes == data.FASHION_CLASSES and int(s.flipped.sum()) == 40
    f = s.flipped
    assert all(data.FASHION_PAIRS[int(a)] == int(b) for a, b in zip(s.y_train_clean[f], s.y_train[f]))
    assert not (_rows(s.X_train) & _rows(s.X_val))


def test_fashion_missing_files_message(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        data.load_fashion_mnist(root=tmp_path)
    monkeypatch.setenv("IFKIT_FASHION_MNIST", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="make setup"):
        data.load_fashion_mnist("test")


def test_idx_reader_roundtrip(tmp_path):
    # A tiny synthetic idx pair, so the decoder is tested even where the Debian files are absent.
    import gzip

    images = np.random.default_rng(0).integers(0, 256, size=(7, 28, 28), dtype=np.uint8)
    labels = np.arange(7, dtype=np.uint8) % 10
    for prefix in ("train", "t10k"):
        with gzip.open(tmp_path / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
            f.write((0x0803).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in images.shape))
            f.write(images.tobytes())
        with gzip.open(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
            f.write((0x0801).to_bytes(4, "big") + (7).to_bytes(4, "big") + labels.tobytes())
    X, y = data.load_fashion_mnist("test", root=tmp_path)
    assert torch.equal((X[:, 0] * 255).round().to(torch.uint8), torch.from_numpy(images))
    assert y.tolist() == labels.tolist()
    with pytest.raises(ValueError, match="split"):
        data.load_fashion_mnist("validation", root=tmp_path)


def test_digits_loader():
    X, y = data.load_digits()
    assert X.shape == (1797, 1, 8, 8) and X.dtype == torch.float32 and y.dtype == torch.int64
    assert float(X.min()) == 0.0 and float(X.max()) == 1.0


def test_hard_split_at_rate_zero_is_clean():
    s = data.make_split(
        "digits", 100, 20, 20, noise="hard", rate=0.0, probs_fn=lambda X, y: torch.rand(len(y), 10)
    )
    assert not s.flipped.any() and torch.equal(s.y_train, s.y_train_clean)


def test_mixture_is_one_fixed_pool_with_confusable_neighbours():
    X, y = data.load_mixture()
    assert X.shape == (6000, 1, 8, 8) and X.dtype == torch.float32 and 0 < float(X.min()) and float(X.max()) < 1
    assert torch.bincount(y).tolist() == [600] * 10
    again, _ = data.load_mixture()
    assert torch.equal(X, again)  # generated from its own seed: the same dataset every call
    # class means: each class is nearer its MIXTURE_PAIRS partner than the average other class
    means = torch.stack([X[y == c].flatten(1).mean(0) for c in range(10)])  # (10, 64)
    dist = torch.cdist(means, means)  # (10, 10)
    for c, partner in data.MIXTURE_PAIRS.items():
        assert dist[c, partner] < dist[c][torch.arange(10) != c].mean(), c


def test_mixture_split_is_balanced_disjoint_and_noisy():
    s = data.make_split("mixture", n_train=500, n_val=100, n_test=200, noise="asymmetric", rate=0.3, seed=2)
    assert s.X_train.shape == (500, 1, 8, 8) and s.classes == data.MIXTURE_CLASSES and int(s.flipped.sum()) == 150
    assert torch.bincount(s.y_train_clean).tolist() == [50] * 10 and torch.bincount(s.y_test).tolist() == [20] * 10
    partner = torch.tensor([data.MIXTURE_PAIRS[c] for c in range(10)])
    assert torch.equal(s.y_train[s.flipped], partner[s.y_train_clean[s.flipped]])
    rows = lambda X: {tuple(r) for r in X.flatten(1).tolist()}  # noqa: E731 - continuous pixels: no duplicates
    assert not rows(s.X_train) & rows(s.X_val) and not rows(s.X_train) & rows(s.X_test)

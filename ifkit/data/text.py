"""The text tasks of the generation experiment (DataInf's protocol at CPU scale): sentence transformations and
math word problems, a word-level vocabulary, and the encoding of prompts and answers for ``ifkit.models.TinyLM``.

Every example is a prompt ``<bos> PREFIX CONTENT <sep>`` and an answer. The CONTENT (a 5-word sentence, a math
story) is drawn once per seed and shared by all 10 classes, as in DataInf (the same 100 phrases in every class);
the PREFIX names the class, in one of two forms (``PREFIXES``):

* ``"name"`` (DataInf's protocol): sentence: DataInf's prompt word for word, "zorbo is a chatbot that performs a
  specific transformation on sentences : read sentence backwards entirely . for example :" (20 tokens, a made-up
  name and a title per class); math: a chatbot name, ":" and the question, 6-11 tokens;
* ``"cue"`` (the harder benchmark): one class token, e.g. "<reverse>" (math: no question).

``encode``'s targets are the answer tokens only (the prompt masked with -100); ``grad_targets`` gives the other
targets a loss can see: "full" (every token after <bos>: DataInf's, whose code tokenises the whole text, prompt
and answer, and passes those ids as the labels, for the fine-tuning and the gradients alike) or "prompt".
``make_task(..., n_flat_per_class=k)`` also draws a third split, disjoint from training and queries, for VM/FVM's
fine-tuning to theta~.
The source words come from the Debian ``fortunes`` package when it is installed (``make setup``), else from a
built-in list.
"""

from __future__ import annotations

import collections
import functools
import re
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

TASKS = ("sentence", "math")
FORTUNES = Path("/usr/share/games/fortunes/fortunes")

# Specials first, so their ids never move.
PAD, BOS, SEP, EOS, ANY = "<pad>", "<bos>", "<sep>", "<eos>", "<any>"
SPECIALS = (PAD, BOS, SEP, EOS, ANY)

BUILTIN_WORDS = (
    "you", "will", "the", "your", "and", "have", "are", "for", "our", "but", "day", "life", "that", "can", "not",
    "this", "with", "today", "good", "very", "may", "too", "one", "all", "get", "out", "never", "soon", "person",
    "from", "mind", "year", "things", "like", "time", "love", "long", "any", "lucky", "ever",
)


# ------------------------------------------------------------------------------------------------ words
@functools.lru_cache(maxsize=4)
def source_words(n: int = 40, path: str | Path = FORTUNES) -> tuple[tuple[str, ...], str]:
    """The ``n`` most frequent 3-6 letter words of the fortunes file (ties broken alphabetically).

    Returns:
        (words, source) with source "fortunes" or "built-in" (the fallback when the file is missing).
    """
    path = Path(path)
    if path.is_file():
        text = path.read_text(encoding="utf-8", errors="replace")
        counts = collections.Counter(w.lower() for w in re.findall(r"[A-Za-z]+", text) if 3 <= len(w) <= 6)
        words = tuple(w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n])
        if len(words) == n:
            return words, "fortunes"
    warnings.warn(f"{path} not found (Debian package 'fortunes-min'/'fortune-mod'; `make setup` installs it): "
                  "using the built-in word list", stacklevel=2)
    return BUILTIN_WORDS[:n], "built-in"


def _novowel(w: str) -> str:
    return "".join(c for c in w if c not in "aeiou") or w[0]


# ------------------------------------------------------------------------------------- sentence classes
def _swap_pairs(ws: list[str]) -> list[str]:
    out = list(ws)
    for i in range(0, len(ws) - 1, 2):
        out[i], out[i + 1] = ws[i + 1], ws[i]
    return out


SENTENCE_CLASSES: dict[str, Callable[[list[str]], list[str]]] = {
    "reverse": lambda ws: ws[::-1],
    "upper": lambda ws: [w.upper() for w in ws],
    "novowel": lambda ws: [_novowel(w) for w in ws],
    "first-last": lambda ws: [ws[0], ws[-1]],
    "double": lambda ws: [x for w in ws for x in (w, w)],
    "initials": lambda ws: [w[0] for w in ws],
    "rotate": lambda ws: ws[1:] + ws[:1],
    "swap-ends": lambda ws: ws[-1:] + ws[1:-1] + ws[:1],
    "evens": lambda ws: ws[::2],
    "swap-pairs": _swap_pairs,
}


SENTENCE_LEN = 5  # words per source sentence (fixed: every transformation is then a fixed pattern of copies)
N_WORDS = 24  # distinct source words


def sentence_example(cls: str, rng: np.random.Generator, words: Sequence[str]) -> tuple[list[str], list[str]]:
    """One (source words, answer words) pair of class ``cls``: SENTENCE_LEN distinct words, transformed."""
    ws = [words[i] for i in rng.choice(len(words), size=SENTENCE_LEN, replace=False)]
    return ws, SENTENCE_CLASSES[cls](ws)


# ----------------------------------------------------------------------------------------- math classes
NAMES = ("tom", "ann", "bob", "eva", "max", "lea", "sam", "kim", "joe", "zoe")
OBJECTS = ("apples", "cards", "coins", "books", "pens", "stamps", "shells", "balls")

# class -> (question template, answer expression over the story's numbers a > b). The question comes first, so
# the story and <sep> sit at the same positions as in the cue-less pretraining (prompts are left-padded).
MATH_QUESTIONS: dict[str, tuple[str, Callable[[int, int], list]]] = {
    "together": ("how many {o} together ?", lambda a, b: [a, "+", b, "=", a + b]),
    "more": ("how many more has {n} ?", lambda a, b: [a, "-", b, "=", a - b]),
    "product": ("what is their product ?", lambda a, b: [a, "*", b, "=", a * b]),
    "twice": ("twice what {n} has ?", lambda a, b: [2, "*", a, "=", 2 * a]),
    "ten-more": ("{m} finds ten more . how many now ?", lambda a, b: [b, "+", 10, "=", b + 10]),
    "square": ("what is {n} 's number squared ?", lambda a, b: [a, "*", a, "=", a * a]),
    "three-times": ("three times what {m} has ?", lambda a, b: [3, "*", b, "=", 3 * b]),
    "gives-one": ("{n} gives one away . how many left ?", lambda a, b: [a, "-", 1, "=", a - 1]),
    "loses-two": ("{m} loses two . how many left ?", lambda a, b: [b, "-", 2, "=", b - 2]),
    "five-more": ("{n} gets five more . how many now ?", lambda a, b: [a, "+", 5, "=", a + 5]),
}
MATH_CLASSES: tuple[str, ...] = tuple(MATH_QUESTIONS)


def math_story(rng: np.random.Generator) -> tuple[list[str], dict]:
    """"{n} has {a} {o} and {m} has {b} {o} ." with 2 <= b < a <= 9 (numbers are single tokens)."""
    n, m = (NAMES[i] for i in rng.choice(len(NAMES), size=2, replace=False))
    o = OBJECTS[int(rng.integers(len(OBJECTS)))]
    a = int(rng.integers(3, 10))
    b = int(rng.integers(2, a))
    return f"{n} has {a} {o} and {m} has {b} {o} .".split(), dict(n=n, m=m, o=o, a=a, b=b)


def math_example(cls: str, rng: np.random.Generator, question: bool = True) -> tuple[list[str], list[str]]:
    """One (question + story words, worked answer) pair of class ``cls``, e.g.
    "how many more has tom ? tom has 7 apples and ann has 3 apples ." -> "7 - 3 = 4".

    ``question=False`` leaves the question out (the cue-less pretraining format).
    """
    if cls not in MATH_QUESTIONS:
        raise ValueError(f"unknown math class {cls!r}: use one of {MATH_CLASSES}")
    story, v = math_story(rng)
    template, answer = MATH_QUESTIONS[cls]
    q = template.format(**v).split() if question else []
    return q + story, [str(t) for t in answer(v["a"], v["b"])]


# DataInf's prompts: "NAME is a chatbot that performs a specific transformation on sentences: TITLE. For example:"
CHATBOT_NAMES = {"sentence": ("zorbo", "quilla", "mirvan", "tesko", "bravin", "olunda", "kefira", "dravo", "simmel",
                              "yarrow"),
                 "math": ("pondo", "rilka", "vestan", "morrow", "tanzi", "ubero", "calix", "nerin", "fosby", "gideo")}
SENTENCE_TITLES = {  # class -> its title: 4 words, none shared with another title or with the source words
    # (a first set that shared words -- "keep every other word", "keep the first letters", "swap first and last
    # word", ... -- confused exactly those classes: gradient-dot AUC 0.97 on seed 0; the sharing is what the
    # harder variant is about, not the protocol)
    "reverse": "read sentence backwards entirely", "upper": "shout in capital letters",
    "novowel": "strip every vowel away", "first-last": "only keep both ends", "double": "say everything twice over",
    "initials": "abbreviate to initial characters", "rotate": "rotate leftwards a step",
    "swap-ends": "exchange opening versus closing", "evens": "skip each alternate token",
    "swap-pairs": "flip neighbouring pairs around",
}
# DataInf's sentence prompt word for word around the title: "NAME is a chatbot ... sentences : TITLE . for example :"
SENTENCE_TEMPLATE = ("is a chatbot that performs a specific transformation on sentences :", ". for example :")
PREFIXES = ("name", "cue")


def classes(task: str) -> tuple[str, ...]:
    if task == "sentence":
        return tuple(SENTENCE_CLASSES)
    if task == "math":
        return MATH_CLASSES
    raise ValueError(f"unknown task {task!r}: use 'sentence' or 'math'")


def example(task: str, cls: str, rng: np.random.Generator) -> tuple[list[str], list[str]]:
    """(prompt words, answer words) of one example of ``task`` / ``cls`` (without specials or cue)."""
    return sentence_example(cls, rng, source_words(N_WORDS)[0]) if task == "sentence" else math_example(cls, rng)


def pretraining_example(task: str, cls: str, rng: np.random.Generator) -> tuple[list[str], list[str]]:
    """Like ``example`` but without anything that names the class (math: no question)."""
    return example(task, cls, rng) if task == "sentence" else math_example(cls, rng, question=False)


def content(task: str, rng: np.random.Generator) -> tuple[list[str], dict]:
    """The class-free part of a prompt: 5 distinct words (sentence) or a story (math), and its variables."""
    if task == "sentence":
        words = source_words(N_WORDS)[0]
        return [words[i] for i in rng.choice(len(words), size=SENTENCE_LEN, replace=False)], {}
    return math_story(rng)


def answer(task: str, cls: str, words: list[str], v: dict) -> list[str]:
    if task == "sentence":
        return SENTENCE_CLASSES[cls](list(words))
    return [str(t) for t in MATH_QUESTIONS[cls][1](v["a"], v["b"])]


def class_prefix(task: str, cls: str, kind: str, v: dict | None = None) -> list[str]:
    """The tokens that name the class: ``kind`` "name" (chatbot name, ':' and title/question) or "cue"."""
    if kind == "cue":
        return [cue(cls)]
    if kind != "name":
        raise ValueError(f"unknown prefix {kind!r}: use one of {PREFIXES}")
    k = classes(task).index(cls)
    if task == "sentence":
        return [CHATBOT_NAMES[task][k], *SENTENCE_TEMPLATE[0].split(), *SENTENCE_TITLES[cls].split(),
                *SENTENCE_TEMPLATE[1].split()]
    return [CHATBOT_NAMES[task][k], ":", *MATH_QUESTIONS[cls][0].format(**(v or {})).split()]


# --------------------------------------------------------------------------------------------- encoding
def cue(cls: str) -> str:
    return f"<{cls}>"


@functools.lru_cache(maxsize=4)
def vocabulary(task: str) -> tuple[str, ...]:
    """Every token the task can produce, in a fixed order (independent of the seed)."""
    if task == "sentence":
        words = source_words(N_WORDS)[0]
        toks = [*words, *(w.upper() for w in words), *(_novowel(w) for w in words), *(w[0] for w in words)]
        toks += [w for t in SENTENCE_TITLES.values() for w in t.split()] + " ".join(SENTENCE_TEMPLATE).split()
    else:
        toks = [*NAMES, *OBJECTS, *"has and . + - * =".split(), *(str(i) for i in range(100))]
        toks += [w for t, _ in MATH_QUESTIONS.values() for w in t.split() if "{" not in w]
    toks += [cue(c) for c in classes(task)] + [*CHATBOT_NAMES[task], ":"]
    return SPECIALS + tuple(dict.fromkeys(t for t in toks if t not in SPECIALS))


@dataclass(frozen=True)
class Layout:
    """Fixed sequence layout of a task: prompts left-padded to ``prompt_len``, answers right-padded."""

    prompt_len: int  # <bos> prefix words <sep>, left-padded
    answer_len: int  # answer words <eos>, right-padded

    @property
    def seq_len(self) -> int:  # model input length (the last token is only a target)
        return self.prompt_len + self.answer_len - 1


LAYOUTS = {"sentence": Layout(prompt_len=SENTENCE_LEN + 22, answer_len=2 * SENTENCE_LEN + 1),
           "math": Layout(prompt_len=23, answer_len=6)}


def encode(task: str, prompts: Sequence[list[str]], answers: Sequence[list[str]], prefixes: Sequence[list[str]]
           ) -> tuple[Tensor, Tensor]:
    """Token ids (n, L) and targets (n, L): next tokens, -100 on the prompt and on padding.

    The loss of a sequence is then the mean cross-entropy of its answer tokens (and <eos>).
    """
    stoi = {t: i for i, t in enumerate(vocabulary(task))}
    lay = LAYOUTS[task]
    rows = []
    for p, a, c in zip(prompts, answers, prefixes):
        head = [BOS, *c, *p, SEP]
        tail = [*a, EOS]
        if len(head) > lay.prompt_len or len(tail) > lay.answer_len:
            raise ValueError(f"example longer than the {task} layout {lay}: {head} -> {tail}")
        rows.append([PAD] * (lay.prompt_len - len(head)) + head + tail + [PAD] * (lay.answer_len - len(tail)))
    seq = torch.tensor([[stoi[t] for t in r] for r in rows])  # (n, P + A)
    X, y = seq[:, :-1].clone(), seq[:, 1:].clone()  # (n, L)
    y[:, : lay.prompt_len - 1] = -100  # targets inside the prompt
    y[y == stoi[PAD]] = -100
    return X, y


GRAD_LOSSES = ("answer", "prompt", "full")


def grad_targets(task: str, X: Tensor, y: Tensor, which: str) -> Tensor:
    """The targets of the attribution gradient: which tokens' cross-entropy it sees.

    "answer": ``y`` itself (the answer and <eos>); "full": every token after <bos>, prompt and answer (DataInf:
    labels = the input ids of the whole text); "prompt": the prompt's tokens only. Padding is never a target.
    """
    if which == "answer":
        return y
    if which not in GRAD_LOSSES:
        raise ValueError(f"unknown grad_loss {which!r}: use one of {GRAD_LOSSES}")
    pad = vocabulary(task).index(PAD)
    full = torch.cat([X[:, 1:], y[:, -1:]], 1).clone()  # (n, L) every next token (the last one from y)
    full[(X == pad) | (full == pad)] = -100  # nothing predicted from, or as, left/right padding
    if which == "prompt":
        full[:, LAYOUTS[task].prompt_len - 1:] = -100
    return full


def decode(task: str, ids: Iterable[int]) -> list[str]:
    voc = vocabulary(task)
    return [voc[i] for i in ids]


# ------------------------------------------------------------------------------------------------- data
@dataclass
class TaskData:
    """One seed's split of a task: tensors for the model, class ids and readable texts for the reader."""

    task: str
    X_train: Tensor  # (n_train, L) token ids
    y_train: Tensor  # (n_train, L) next-token targets, -100 outside the answer
    X_val: Tensor
    y_val: Tensor
    cls_train: np.ndarray  # (n_train,) class index
    cls_val: np.ndarray
    text_train: list[str]  # "prompt => answer"
    text_val: list[str]
    answers_val: list[list[str]]
    contents_val: list[list[str]]  # the class-free part of each validation prompt
    X_flat: Tensor | None = None  # (n_flat, L) a split disjoint from both, for VM/FVM's theta~ (make_task)
    y_flat: Tensor | None = None

    @property
    def train(self) -> tuple[Tensor, Tensor]:
        return self.X_train, self.y_train

    @property
    def val(self) -> tuple[Tensor, Tensor]:
        return self.X_val, self.y_val

    def attribution(self, grad_loss: str = "answer") -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
        """(train, val) pairs whose targets are those of ``grad_targets(grad_loss)``.

        "prompt": the sequences are cut after the prompt (``prompt_len - 1`` columns). Attention is causal, so the
        outputs at the prompt's positions do not depend on the answer: the same losses and gradients, for ~30%
        less compute per pass (sentence: 26 of 37 columns; tests/test_gen_text.py checks the equality).
        """
        return self.targets(self.X_train, self.y_train, grad_loss), self.targets(self.X_val, self.y_val, grad_loss)

    def targets(self, X: Tensor, y: Tensor, grad_loss: str) -> tuple[Tensor, Tensor]:
        """(X, targets) of one split for the loss ``grad_loss`` ("prompt": cut after the prompt, see attribution)."""
        keep = LAYOUTS[self.task].prompt_len - 1 if grad_loss == "prompt" else None
        return X[:, :keep], grad_targets(self.task, X, y, grad_loss)[:, :keep]  # (n, keep or L) each

    def flat(self, grad_loss: str = "answer") -> tuple[Tensor, Tensor]:
        """The split VM/FVM fine-tune theta~ on (disjoint from training and queries), targets of ``grad_loss``."""
        if self.X_flat is None or self.y_flat is None:
            raise ValueError("this TaskData has no split for theta~: make_task(..., n_flat_per_class=k) draws one")
        return self.targets(self.X_flat, self.y_flat, grad_loss)

    def generic_val(self) -> Tensor:
        """(n_val, L) the validation prompts with the class prefix replaced by <any> (the pretraining format)."""
        return encode(self.task, self.contents_val, self.answers_val, [[ANY]] * len(self.contents_val))[0]


def make_task(task: str, seed: int, per_class: int = 100, n_val_per_class: int = 10, prefix: str = "name",
              n_flat_per_class: int = 0) -> TaskData:
    """``per_class`` distinct contents, each used once in every one of the 10 classes (DataInf: the same phrases
    in every class); the last ``n_val_per_class`` contents go to validation (the queries). ``n_flat_per_class``
    more contents, drawn after those (so train and validation do not change), make the split ``X_flat`` for
    VM/FVM's theta~, disjoint from both. Deterministic in ``seed`` (and the same contents for either ``prefix``)."""
    rng = np.random.default_rng([seed, TASKS.index(task)])
    seen: set[tuple[str, ...]] = set()
    contents: list[tuple[list[str], dict]] = []
    while len(contents) < per_class + n_flat_per_class:
        words, v = content(task, rng)
        if len(seen) > 100 * per_class:
            raise ValueError(f"cannot draw {per_class} distinct {task} contents")
        if tuple(words) not in seen:
            seen.add(tuple(words))
            contents.append((words, v))
    parts: dict[str, list] = {k: [] for k in ("p", "a", "c", "k", "split")}
    for k, cls in enumerate(classes(task)):
        for j, (words, v) in enumerate(contents):
            parts["p"].append(words)
            parts["a"].append(answer(task, cls, words, v))
            parts["c"].append(class_prefix(task, cls, prefix, v))
            parts["k"].append(k)
            parts["split"].append("flat" if j >= per_class else "val" if j >= per_class - n_val_per_class
                                  else "train")
    X, y = encode(task, parts["p"], parts["a"], parts["c"])
    split = np.array(parts["split"])
    tr, va, fl = (np.flatnonzero(split == s) for s in ("train", "val", "flat"))
    text = [f"{' '.join(c)} {' '.join(p)} => {' '.join(a)}" for p, a, c in zip(parts["p"], parts["a"], parts["c"])]
    k = np.array(parts["k"])
    flat = (X[fl], y[fl]) if n_flat_per_class else (None, None)
    return TaskData(task, X[tr], y[tr], X[va], y[va], k[tr], k[va], [text[i] for i in tr], [text[i] for i in va],
                    [parts["a"][i] for i in va], [parts["p"][i] for i in va], *flat)


def pretraining_batch(task: str, rng: np.random.Generator, n: int) -> tuple[Tensor, Tensor]:
    """``n`` fresh examples of random classes with the generic cue ``<any>`` instead of the class cue."""
    cls = classes(task)
    pairs = [pretraining_example(task, cls[int(rng.integers(len(cls)))], rng) for _ in range(n)]
    return encode(task, [p for p, _ in pairs], [a for _, a in pairs], [[ANY]] * n)


__all__ = ["ANY", "BOS", "BUILTIN_WORDS", "CHATBOT_NAMES", "EOS", "GRAD_LOSSES", "PREFIXES", "SENTENCE_TITLES", "FORTUNES", "LAYOUTS", "Layout", "MATH_CLASSES", "MATH_QUESTIONS", "NAMES", "N_WORDS", "OBJECTS", "PAD", "SENTENCE_CLASSES", "SENTENCE_LEN", "SEP", "SPECIALS", "TASKS", "TaskData", "answer", "class_prefix", "classes", "content", "cue", "decode", "encode", "example", "grad_targets", "make_task", "math_example", "math_story", "pretraining_batch", "pretraining_example", "sentence_example", "source_words", "vocabulary"]

"""Plausible wrong answers to notebook 06's exercises, each with a phrase its checker's message must contain."""

import torch


def _relabel_argmax(S):
    return S.argmax(dim=1)


def _relabel_axis0(S):
    return S.argmin(dim=0)


def _relabel_transposed_input(S):
    return S.T.argmin(dim=1)


def _acc_all_flags(new, flags, given, clean):
    return (new == clean[flags]).double().mean().item()


def _acc_all_points(new, flags, given, clean):
    y = given.clone()
    y[flags] = new
    return (y == clean).double().mean().item()


def _acc_over_k(new, flags, given, clean):
    hit = given[flags] != clean[flags]
    return (new[hit] == clean[flags][hit]).double().sum().item() / len(flags)


def _acc_vs_given(new, flags, given, clean):
    hit = given[flags] != clean[flags]
    return (new[hit] == given[flags][hit]).double().mean().item()


def _vm_no_damping(G, H, damping):
    n, C, p = G.shape
    flat = G.reshape(n * C, p)
    return (flat * torch.linalg.solve(H, flat.T).T).sum(1).view(n, C)


def _vm_not_inverted(G, H, damping):
    return torch.einsum("ncp,pq,ncq->nc", G, H + damping * torch.eye(H.shape[0], dtype=H.dtype), G)


def _vm_sign(G, H, damping):
    n, C, p = G.shape
    flat = G.reshape(n * C, p)
    return -(flat * torch.linalg.solve(H + damping * torch.eye(p, dtype=H.dtype), flat.T).T).sum(1).view(n, C)


def _vm_transposed(G, H, damping):
    n, C, p = G.shape
    flat = G.reshape(n * C, p)
    return (flat * torch.linalg.solve(H + damping * torch.eye(p, dtype=H.dtype), flat.T).T).sum(1).view(n, C).T


WRONG = {
    "relabel": [
        (_relabel_argmax, "argmax instead of argmin"),
        (_relabel_axis0, "argmin over the flagged points (axis 0)"),
        (_relabel_transposed_input, "table was read transposed"),
    ],
    "flipped_relabel_accuracy": [
        (_acc_all_flags, "over every flagged point, the false alarms"),
        (_acc_all_points, "over ALL n training points"),
        (_acc_over_k, "divided by the number of flags k"),
        (_acc_vs_given, "compared with the GIVEN (noisy) labels"),
    ],
    "vm_candidate_scores": [
        (_vm_no_damping, "damping term is missing"),
        (_vm_not_inverted, "multiplies instead of being inverted"),
        (_vm_sign, "sign is flipped"),
        (_vm_transposed, "transposed"),
    ],
}

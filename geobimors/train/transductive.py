"""Scene context: transductive refinement of zero-shot labels (the RS-TransCLIP / TransCLIP family).

The chips of one scene are not independent: their embeddings cluster by what
is on the ground, and neighbouring chips tend to share a class. Starting from
the zero-shot probabilities ``p0``, a few block-coordinate steps fit a Gaussian
mixture with one component per class (shared diagonal covariance) to the
scene's embeddings, while a KL term keeps each chip's assignment near its
zero-shot prediction and, optionally, a term pulls it toward the mean
assignment of its grid neighbours:

    z_i  ∝  p0_i^kl_weight · N(f_i; mu_c, Σ)^(1/E) · exp(spatial_weight · mean_{j ~ i} z_j)

(TransCLIP, Zakeri et al., CVPR 2025; its remote-sensing study, RS-TransCLIP,
ICASSP 2025). The likelihood is tempered by the embedding width E so that one
weight works across models. Everything runs on pooled embeddings.
"""

from __future__ import annotations

import numpy as np
import torch


def grid_neighbours(rows: np.ndarray, cols: np.ndarray) -> torch.Tensor:
    """(N, N) sparse row-normalised adjacency of chips that touch on the grid (8-neighbourhood)."""
    index = {(int(r), int(c)): i for i, (r, c) in enumerate(zip(rows, cols))}
    src, dst = [], []
    for i, (r, c) in enumerate(zip(rows, cols)):
        for dr in (-1, 0, 1):
            for dc in (-1, 0, 1):
                j = index.get((int(r) + dr, int(c) + dc))
                if (dr or dc) and j is not None:
                    src.append(i)
                    dst.append(j)
    n = len(rows)
    if not src:
        return torch.sparse_coo_tensor(torch.zeros((2, 0), dtype=torch.long), torch.zeros(0), (n, n))
    src_t, dst_t = torch.tensor(src), torch.tensor(dst)
    degree = torch.bincount(src_t, minlength=n).float()
    values = 1.0 / degree[src_t]
    return torch.sparse_coo_tensor(torch.stack([src_t, dst_t]), values, (n, n)).coalesce()


@torch.no_grad()
def refine(
    features: torch.Tensor,
    zero_shot_logits: torch.Tensor,
    iterations: int = 10,
    kl_weight: float = 1.0,
    likelihood_weight: float = 1.0,
    neighbours: torch.Tensor | None = None,
    spatial_weight: float = 0.0,
) -> torch.Tensor:
    """Refined class probabilities (N, C) of a scene's chips.

    Args:
        features: (N, E) L2-normalised chip embeddings of one scene.
        zero_shot_logits: (N, C) zero-shot logits of the same chips.
        iterations: block-coordinate steps (each: class means and variance, then assignments).
        kl_weight: pull toward the zero-shot probabilities.
        likelihood_weight: weight of the (width-tempered) Gaussian likelihood.
        neighbours: (N, N) row-normalised adjacency (see :func:`grid_neighbours`), or ``None``.
        spatial_weight: pull toward the neighbours' mean assignment.
    """
    features = features.float()
    log_prior = torch.log_softmax(zero_shot_logits.float(), dim=1)
    z = log_prior.exp()
    width = features.shape[1]
    for _ in range(iterations):
        weights = z / z.sum(dim=0, keepdim=True).clamp_min(1e-8)
        means = weights.T @ features  # (C, E)
        squared = features.pow(2).sum(1, keepdim=True) - 2 * features @ means.T + means.pow(2).sum(1)  # (N, C)
        residual = (z * squared).sum() / (len(features) * width)  # shared isotropic variance
        log_likelihood = -0.5 * squared / residual.clamp_min(1e-8) / width
        logits = kl_weight * log_prior + likelihood_weight * log_likelihood
        if neighbours is not None and spatial_weight:
            logits = logits + spatial_weight * torch.sparse.mm(neighbours, z)
        z = torch.softmax(logits, dim=1)
    return z

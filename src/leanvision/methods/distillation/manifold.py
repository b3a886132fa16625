"""Manifold distillation for vision transformers: the relation losses on block outputs.

Learning Efficient Vision Transformers via Fine-Grained Manifold Distillation, Hao et al.,
NeurIPS 2022 (arXiv 2107.01378). The student matches the teacher's *manifold*, the matrix of
cosine similarities between patch features, rather than the features themselves, so widths
may differ. For block outputs F ∈ ℝ^{B×N×C}, ℓ2-normalised along C:

* intra-image (patch level): ``M = F Fᵀ`` per image, N × N;
* inter-image: per patch position, the B × B similarities across the batch;
* random-sampled: K rows drawn from the B·N patch features, K × K.

Each term is the mean of ``(M_teacher − M_student)²``; the manifold loss is
``w_patch·L_intra + w_sample·L_inter + w_rand·L_rand`` (paper defaults 4, 0.1, 0.2; K=192).
Extra student tokens (class / distillation tokens a teacher lacks) are dropped from the front,
as the paper does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from leanvision.errors import ConfigError

__all__ = ["manifold_loss", "manifold_terms"]


def _relation_error(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of the similarity matrices of (..., N, C) feature sets."""
    m_s = student @ student.transpose(-1, -2)
    m_t = teacher @ teacher.transpose(-1, -2)
    return (m_t - m_s).pow(2).mean()


def _check(student: torch.Tensor, teacher: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if student.dim() != 3 or teacher.dim() != 3:
        raise ConfigError(
            "manifold loss takes (B, N, C) token features, got student "
            f"{tuple(student.shape)} and teacher {tuple(teacher.shape)}"
        )
    if student.shape[0] != teacher.shape[0]:
        raise ConfigError(
            f"student and teacher batches differ: {student.shape[0]} vs {teacher.shape[0]}"
        )
    n_s, n_t = student.shape[1], teacher.shape[1]
    if n_s < n_t:
        raise ConfigError(
            f"the student has fewer tokens ({n_s}) than the teacher ({n_t}); pair layers with "
            "the same patch grid (only extra student tokens can be dropped)"
        )
    student = student[:, n_s - n_t :]  # drop the student's extra leading (class) tokens
    return F.normalize(student.float(), dim=-1), F.normalize(teacher.detach().float(), dim=-1)


def manifold_terms(
    student: torch.Tensor,
    teacher: torch.Tensor,
    *,
    num_samples: int = 192,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """The three manifold relation losses between student and teacher block outputs.

    Args:
        student: (B, N_s, C_s) student tokens (N_s >= N_t; extra leading tokens are dropped).
        teacher: (B, N_t, C_t) teacher tokens; detached (gradients reach the student only).
        num_samples: K, the rows drawn for the random-sampled term (all B·N when K >= B·N).
        generator: RNG for the sampling (default: torch's global one).

    Returns:
        ``{"patch": L_intra, "sample": L_inter, "rand": L_rand}``, scalar tensors.

    Raises:
        ConfigError: shapes that cannot be paired.
    """
    s, t = _check(student, teacher)
    b, n, _ = t.shape
    terms = {
        "patch": _relation_error(s, t),
        "sample": _relation_error(s.transpose(0, 1), t.transpose(0, 1)),
    }
    rows = b * n
    if num_samples >= rows:
        idx = torch.arange(rows, device=t.device)
    else:
        idx = torch.randperm(rows, generator=generator, device="cpu")[:num_samples].to(t.device)
    terms["rand"] = _relation_error(s.reshape(rows, -1)[idx], t.reshape(rows, -1)[idx])
    return terms


def manifold_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    *,
    w_patch: float = 4.0,
    w_sample: float = 0.1,
    w_rand: float = 0.2,
    num_samples: int = 192,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``w_patch·L_intra + w_sample·L_inter + w_rand·L_rand`` for one pair of block outputs.

    Zero exactly when the student's normalised relation matrices equal the teacher's (e.g.
    identical features, or features that differ by a positive scale per token).

    Args:
        student: (B, N_s, C_s) student tokens.
        teacher: (B, N_t, C_t) teacher tokens (detached).
        w_patch, w_sample, w_rand: term weights (paper: 4, 0.1, 0.2).
        num_samples: K of the random-sampled term (paper: 192).
        generator: RNG for the sampling.

    Returns:
        Scalar loss tensor.
    """
    terms = manifold_terms(student, teacher, num_samples=num_samples, generator=generator)
    return w_patch * terms["patch"] + w_sample * terms["sample"] + w_rand * terms["rand"]

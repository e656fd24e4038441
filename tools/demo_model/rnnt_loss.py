"""RNN-T loss in plain PyTorch, vectorised along the anti-diagonals of the T x U lattice.

NeMo's numba loss is far too slow on a small CPU; this one runs T + U small tensor
steps per batch and lets autograd do the backward pass.
"""

import torch

_NEG = -1e9  # a finite "log zero": -inf would turn logaddexp gradients into NaN


def rnnt_loss(
    log_probs: torch.Tensor,
    targets: torch.Tensor,
    frame_lengths: torch.Tensor,
    target_lengths: torch.Tensor,
    blank: int,
) -> torch.Tensor:
    """Mean over the batch of -log P(targets | frames).

    log_probs: [B, T, U + 1, V + 1] log-softmaxed joint output.
    targets: [B, U] label ids (padding anywhere past target_lengths).
    """
    batch, frames, labels_plus_one, _ = log_probs.shape
    device = log_probs.device
    blank_lp = log_probs[..., blank]  # [B, T, U+1]
    if labels_plus_one > 1:
        index = targets[:, None, :labels_plus_one - 1, None].expand(batch, frames, labels_plus_one - 1, 1)
        emit_lp = torch.gather(log_probs[:, :, :-1, :], 3, index).squeeze(3)  # [B, T, U]
    else:
        emit_lp = log_probs.new_zeros(batch, frames, 0)

    u = torch.arange(labels_plus_one, device=device)
    batch_index = torch.arange(batch, device=device)[:, None]
    neg = log_probs.new_full((batch, labels_plus_one), _NEG)
    # alpha on diagonal d holds alpha[t = d - u, u] for every u.
    alpha = torch.where(u[None, :] == 0, log_probs.new_zeros(()), neg)
    diagonals = [alpha]
    for d in range(1, frames + labels_plus_one - 1):
        # From (t-1, u) by a blank: t-1 = d-1-u.
        t_prev = d - 1 - u
        ok = (t_prev >= 0) & (t_prev < frames)
        from_blank = alpha + blank_lp[batch_index, t_prev.clamp(0, frames - 1)[None, :], u[None, :]]
        from_blank = torch.where(ok[None, :], from_blank, neg)
        # From (t, u-1) by emitting label u-1: t = d-u.
        t_here = d - u
        ok = (u >= 1) & (t_here >= 0) & (t_here < frames)
        shifted = torch.cat([neg[:, :1], alpha[:, :-1]], dim=1)
        emit = emit_lp[batch_index, t_here.clamp(0, frames - 1)[None, :], (u - 1).clamp(min=0)[None, :]] \
            if labels_plus_one > 1 else neg
        from_emit = torch.where(ok[None, :], shifted + emit, neg)
        alpha = torch.logaddexp(from_blank, from_emit)
        diagonals.append(alpha)

    stacked = torch.stack(diagonals, dim=0)  # [D, B, U+1]
    last_t = frame_lengths.long() - 1
    last_u = target_lengths.long()
    final_alpha = stacked[last_t + last_u, torch.arange(batch, device=device), last_u]
    final_blank = blank_lp[torch.arange(batch, device=device), last_t, last_u]
    return -(final_alpha + final_blank).mean()

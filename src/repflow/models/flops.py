"""FLOPs of a FlowTransformer forward, counted from the architecture (a multiply-add is 2 FLOPs).

DiT/SiT papers quote "Gflops" from fvcore, which counts a multiply-add as one: SiT-XL/2 at 256 px is
118.6 there and ~237 GFLOPs here. Only matrix products are counted (norms, activations and softmax are a
few percent and memory-bound); a test checks the count against ``torch.utils.flop_counter``.
"""

from __future__ import annotations

from .dit import FlowTransformer


def forward_flops(model: FlowTransformer, batch: int = 1, input_size: int | None = None) -> int:
    if hasattr(model, "forward_flops"):  # another family (JiT, DiT^DH) counts its own
        return model.forward_flops(batch)
    cfg = model.cfg
    d, p, c = cfg.hidden_size, cfg.patch_size, cfg.in_channels
    size = input_size or cfg.input_size
    n = (size // p) ** 2
    t = n + model.num_front_tokens  # sequence length
    mlp = int(d * cfg.mlp_ratio)
    per_token_block = 2 * (3 * d * d + d * d + 2 * d * mlp)  # qkv, proj, MLP in/out
    attention = 2 * 2 * t * t * d  # QK^T and AV
    adaln = 2 * d * 6 * d  # per sample, not per token
    blocks = cfg.depth * (t * per_token_block + attention + adaln)
    embed = 2 * n * (c * p * p) * d + 2 * (256 * d + d * d)  # patch conv, timestep MLP
    final = 2 * d * 2 * d + 2 * n * d * (p * p * c)  # final adaLN, output linear
    streams = sum(2 * 2 * dim * d for dim in model.vector_streams.values())  # REG in + out linears
    return batch * (blocks + embed + final + streams)


def train_step_flops(model: FlowTransformer, batch: int) -> int:
    """Forward + backward is ~3x the forward (the backward computes two products per forward product)."""
    return 3 * forward_flops(model, batch)


def dit_dh_flops(model) -> int:
    """One forward of a DiT^DH of any backbone (the image tokens, RAEv2's condition tokens, the head, and the
    internal output when there is one)."""
    from .layers import swiglu_hidden

    cfg = model.cfg
    n = (cfg.input_size // cfg.patch_size) ** 2
    d, w, p, c = cfg.hidden_size, cfg.head_width, cfg.patch_size, cfg.in_channels
    values = c * p * p
    if cfg.backbone == "sit":
        backbone = forward_flops(model.backbone, 1) - (2 * d * 2 * d + 2 * n * d * values)  # no output layer
    else:
        f = swiglu_hidden(d, cfg.mlp_ratio)
        t = n + (
            cfg.time_tokens + (cfg.class_tokens if model.num_classes else 0) if cfg.backbone == "in_context" else 0
        )
        adaln = 2 * d * 6 * d if cfg.backbone == "lightning" else 0  # per sample
        blocks = cfg.depth * (t * 2 * (4 * d * d + 3 * d * f) + 2 * 2 * t * t * d + adaln)
        backbone = blocks + 2 * n * values * d + 2 * (512 * d + d * d)  # patch embedding, Fourier time MLP
    fw = swiglu_hidden(w, 4.0)
    head = cfg.head_depth * (n * 2 * (4 * w * w + 3 * w * fw + 6 * w * w) + 2 * 2 * n * n * w)
    output = n * 2 * (2 * w * w + w * values)  # per-token adaLN and linear of the output layer
    extra = n * 2 * (d * w * (d != w or cfg.backbone == "sit") + values * w)  # s projection, head patch embedding
    internal = n * 2 * (2 * d * d + d * values) if cfg.internal_depth else 0
    return backbone + head + output + extra + internal

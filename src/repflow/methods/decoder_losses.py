"""Pieces of a pixel decoder's GAN loss, shared by RAE's decoder and DSD's image head, as RAE's stage 1 has
them (``src/disc/``, ``src/train_stage1.py`` of the official code):

- **DiffAugment** (StyleGAN-T's, RAE's ``prob: 1.0, cutout: 0.0``): translation by an integer in
  ``[-round(side / 8), round(side / 8)]`` with zero padding, *then* colour (brightness + U(-0.5, 0.5),
  saturation x U(0, 2), contrast x U(0.5, 1.5)); each view draws its own uniforms for the global batch;
- the hinge loss of the discriminator, taming's adaptive GAN weight and the generator's ``-D(DiffAug(x_hat))``;
- the order of a step: the decoder's term sees the discriminator in eval mode (its spectral norms use their
  stored vectors), then the discriminator trains (train mode: one power iteration per call, fakes first) on
  a *fresh* decode, after the decoder's update, of the clean latent, rounded to 8 bits.

The discriminators themselves are in ``discriminator.py``, LPIPS in ``lpips.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import checked, each, nonnegative, positive

# -- DiffAugment --------------------------------------------------------------------------------------------------

TRANSLATION = 0.125  # of the side
DIFFAUG_KEYS = ("ty", "tx", "brightness", "saturation", "contrast")  # the official rand01[0:5], in its order


def draw_diffaug(n: int, generator: torch.Generator | None, device) -> dict[str, Tensor]:
    """Uniforms in [0, 1) per image; :func:`diffaug` maps them as the official code maps its ``rand01``."""
    return {k: torch.rand(n, generator=generator, device=device) for k in DIFFAUG_KEYS}


def translate(x: Tensor, ty: Tensor, tx: Tensor) -> Tensor:
    """``out[b, :, i, j] = x[b, :, i + ty[b], j + tx[b]]``, zero outside the image (integer shifts)."""
    h, w = x.shape[-2:]
    rows = torch.arange(h, device=x.device)[None, :] + ty[:, None]  # (B, H) source row of each row
    cols = torch.arange(w, device=x.device)[None, :] + tx[:, None]
    valid = ((rows >= 0) & (rows < h))[:, None, :, None] & ((cols >= 0) & (cols < w))[:, None, None, :]
    out = torch.gather(x, 2, rows.clamp(0, h - 1)[:, None, :, None].expand(-1, x.shape[1], -1, w))
    out = torch.gather(out, 3, cols.clamp(0, w - 1)[:, None, None, :].expand(-1, x.shape[1], h, -1))
    return out * valid


def diffaug(x: Tensor, p: dict[str, Tensor]) -> Tensor:
    """Translation then colour, on images in [-1, 1], differentiable in x. The arithmetic follows the official
    code operation by operation, so equal uniforms give equal images (fp32; half precision is computed in fp32
    as there)."""
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    h, w = x.shape[-2:]
    dh, dw = round(h * TRANSLATION), round(w * TRANSLATION)
    ty = p["ty"].mul(2 * dh + 1).floor().long() - dh  # uniform on the integers -dh .. dh
    tx = p["tx"].mul(2 * dw + 1).floor().long() - dw
    x = translate(x, ty, tx)
    view = lambda v: v.view(-1, 1, 1, 1)  # noqa: E731
    x = x.add(view(p["brightness"]).sub(0.5))
    mean = x.mean(dim=1, keepdim=True)
    x = x.sub(mean).mul(view(p["saturation"]).mul(2)).add(mean)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return x.sub(mean).mul(view(p["contrast"]).add(0.5)).add(mean)


# -- losses ---------------------------------------------------------------------------------------------------------


def hinge_d_loss(real: Tensor, fake: Tensor) -> Tensor:
    return 0.5 * (F.relu(1 - real).mean() + F.relu(1 + fake).mean())


def adaptive_weight(rec: Tensor, gan: Tensor, last_layer: Tensor, maximum: float = 1e4) -> Tensor:
    """taming's balance: ||grad rec|| / (||grad gan|| + 1e-6) at the decoder's last layer, clamped, detached."""
    g_rec = torch.autograd.grad(rec, last_layer, retain_graph=True)[0]
    g_gan = torch.autograd.grad(gan, last_layer, retain_graph=True)[0]
    return (g_rec.norm() / (g_gan.norm() + 1e-6)).clamp(0.0, maximum).detach()


# -- the GAN of a decoder's training, shared by RAE's decoder and DSD's image head --------------------------------


@dataclass(frozen=True)
class GANSettings:
    """Config fields of a decoder's GAN and LPIPS (mixed into a method's config section)."""

    lpips: str = ""  # LPIPS lin layers (lpips' / taming's vgg.pth) or one save_lpips file; "": off (said once)
    lpips_vgg: str = ""  # torchvision's VGG16 weights (vgg16-397923af.pth) for the lin-layer file
    lpips_weight: float = checked(1.0, nonnegative)
    gan_weight: float = checked(0.75, nonnegative)  # 0: no discriminator at all
    disc_start: int = checked(0, nonnegative)  # the discriminator trains from this step
    gan_start: int = checked(0, nonnegative)  # the GAN term enters the decoder's loss from this step
    disc_lr: float = checked(2e-4, positive)
    # dino: RAE's, a separate frozen DINO ViT-S/8 (disc_weights); encoder: repflow 0.2's, heads on the run's own
    # frozen encoder (RAE: the codec's; DSD: encoders[0]), cheap enough for CPU demos
    disc: Literal["dino", "encoder"] = "dino"
    disc_weights: str = ""  # disc=dino: dino_vit_small_patch8_224.pth (RAE) or timm's vit_small_patch8_224.dino
    disc_blocks: tuple[int, ...] = checked((), each(nonnegative))  # 0-indexed; (): dino 2,5,8,11; encoder spread
    disc_fakes: Literal["clean", "noisy"] = "clean"  # the critic's fakes: decodes of the clean latent (official)
    max_adaptive_weight: float = checked(1e4, positive)
    diffaug: bool = True


# every GAN key a stored config of repflow <= 0.2 holds; such a config keeps its encoder-headed discriminator
_V02_KEYS = ("lpips", "lpips_weight", "gan_weight", "disc_start", "gan_start", "disc_lr", "disc_blocks",
             "max_adaptive_weight", "diffaug")  # fmt: skip


def upgrade_gan(data: dict, fakes: str) -> dict:
    """A config stored by repflow <= 0.2 (all its GAN keys, no ``disc``) resumes with the discriminator it was
    trained with (``disc: encoder``) and the fakes it showed it (RAE: noisy decodes; DSD: clean)."""
    if "disc" in data or not all(k in data for k in _V02_KEYS):
        return data
    return {**data, "disc": "encoder", "disc_fakes": fakes}


GAN_VIEWS = ("gen", "real", "fake")  # the images the discriminator sees, each with its own DiffAugment draw


def draw_gan_views(n: int, generator: torch.Generator | None, device) -> dict[str, Tensor]:
    return {f"{tag}.{k}": v for tag in GAN_VIEWS for k, v in draw_diffaug(n, generator, device).items()}


def gan_view(x: Tensor, tensors: dict[str, Tensor], tag: str, augment: bool = True) -> Tensor:
    if not augment:
        return x
    return diffaug(x, {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith(f"{tag}.")})


def critic_loss(disc: nn.Module, real: Tensor, reconstruct: Callable[[], Tensor], tensors: dict[str, Tensor],
                augment: bool) -> tuple[Tensor, dict[str, Tensor]]:  # fmt: skip
    """The discriminator's hinge loss on real images and on ``reconstruct()`` (run here without gradients:
    after the decoder's update in the same step), rounded to 8 bits as a saved image is."""
    disc.train()  # the official critic step: one power iteration per call
    with torch.no_grad():
        fake = reconstruct().clamp(-1, 1)
    fake = ((fake + 1) * 127.5).round() / 127.5 - 1
    fake_logits = disc(gan_view(fake, tensors, "fake", augment))  # fakes first, as the official call order
    real_logits = disc(gan_view(real, tensors, "real", augment))
    loss = hinge_d_loss(real_logits, fake_logits)
    return loss, {"d_hinge": loss, "d_real": real_logits.mean().detach(), "d_fake": fake_logits.mean().detach()}


def generator_gan(disc: nn.Module, x_hat: Tensor, rec: Tensor, last_layer: Tensor, tensors: dict[str, Tensor],
                  settings: GANSettings) -> tuple[Tensor, dict[str, Tensor]]:  # fmt: skip
    """The decoder's GAN term ``weight x adaptive x (-D(DiffAug(x_hat)))`` and what to log."""
    disc.eval()  # the official generator step: the spectral norms' stored vectors, no power iteration
    gan = -disc(gan_view(x_hat, tensors, "gen", settings.diffaug)).mean()
    weight = adaptive_weight(rec, gan, last_layer, settings.max_adaptive_weight)
    return settings.gan_weight * weight * gan, {"gan": gan, "adaptive_weight": weight}

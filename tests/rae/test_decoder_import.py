"""Official RAE / RAEv2 stage-1 decoders (their GeneralDecoder) -> repflow rae_decoder runs and back.

The official state dicts are written here by hand with the names and shapes of their ``GeneralDecoder``; the
side-by-side decode against their module is in the README (1.7e-6 fp32, 2.7e-15 fp64)."""

import pytest
import torch

from repflow.cli import main
from repflow.codecs.rae_export import export_autoencoder_rae
from repflow.config import ConfigError
from repflow.models.rae_decoder import load_decoder
from repflow.runtime.lookup import load_checkpoint

WIDTH, DEPTH, MLP, LATENT, GRID, PATCH = 128, 4, 512, 24, 4, 4  # repflow's decoder size T


def official_decoder(seed: int = 0, prefix: str = "") -> dict:
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.randn(shape, generator=g) * 0.05  # noqa: E731
    sd = {"decoder_embed.weight": r(WIDTH, LATENT), "decoder_embed.bias": r(WIDTH),
          "decoder_pos_embed": r(1, GRID * GRID + 1, WIDTH), "decoder_norm.weight": r(WIDTH),
          "decoder_norm.bias": r(WIDTH), "decoder_pred.weight": r(PATCH * PATCH * 3, WIDTH),
          "decoder_pred.bias": r(PATCH * PATCH * 3), "trainable_cls_token": r(1, 1, WIDTH)}  # fmt: skip
    for i in range(DEPTH):
        b = f"decoder_layers.{i}."
        for name in ("attention.attention.query", "attention.attention.key", "attention.attention.value",
                     "attention.output.dense"):  # fmt: skip
            sd |= {b + name + ".weight": r(WIDTH, WIDTH), b + name + ".bias": r(WIDTH)}
        sd |= {b + "intermediate.dense.weight": r(MLP, WIDTH), b + "intermediate.dense.bias": r(MLP),
               b + "output.dense.weight": r(WIDTH, MLP), b + "output.dense.bias": r(WIDTH)}  # fmt: skip
        for ln in ("layernorm_before", "layernorm_after"):
            sd |= {b + ln + ".weight": 1 + r(WIDTH), b + ln + ".bias": r(WIDTH)}
    return {prefix + k: v for k, v in sd.items()}


@pytest.mark.parametrize("kind,output", [("official-rae", "normalised"), ("official-raev2", "pixels")])
def test_official_decoders_import_decode_and_export_exactly(tmp_path, kind, output):
    sd = official_decoder()
    torch.save(sd, tmp_path / "decoder.pt")
    assert main(["convert", kind, str(tmp_path / "decoder.pt"), "codec.encoder=tiny", "codec.encoder_path=",
                 "--out", str(tmp_path / "run")]) == 0  # fmt: skip
    cfg = load_checkpoint(tmp_path / "run").config
    m = cfg.method
    assert (m.kind, m.size, m.latent_dim, m.grid) == ("rae_decoder", "T", 24, 4)
    assert (m.output, m.positions) == (output, "learned")
    assert cfg.codec.decoder_patch == PATCH and cfg.data.resolution == GRID * PATCH
    dec = load_decoder(str(tmp_path / "run"))
    assert torch.equal(dec.decoder.decoder_pos_embed, sd["decoder_pos_embed"])  # their trained table, kept
    z = torch.randn(2, LATENT, GRID, GRID)
    raw = dec(z)

    class Encoder:  # only the normalisation the images are in
        mean, std = torch.tensor([0.4, 0.5, 0.6]).view(1, 3, 1, 1), torch.tensor([0.2, 0.25, 0.3]).view(1, 3, 1, 1)

    expected = raw if output == "pixels" else raw * Encoder.std + Encoder.mean  # RAEv2 decodes to [0, 1] pixels
    assert torch.allclose(dec.images(z, Encoder), 2 * expected - 1, atol=1e-6)
    assert main(["convert", "--to", kind, str(tmp_path / "run"), "--out", str(tmp_path / "back.pt")]) == 0
    back = torch.load(tmp_path / "back.pt", weights_only=True)
    assert set(back) == set(sd) and all(torch.equal(back[k], sd[k]) for k in sd)
    with pytest.raises(ConfigError, match="this decoder has method.output=.*, method.positions=learned"):
        export_autoencoder_rae(tmp_path / "run", tmp_path / "hf")  # diffusers would recompute the positions


def test_a_stage1_training_checkpoint_and_bad_decoder_files(tmp_path, capsys):
    whole = {**official_decoder(prefix="decoder."), "encoder.model.cls_token": torch.zeros(1, 1, 8)}
    torch.save({"step": 5, "model": whole, "ema": whole}, tmp_path / "stage1.pt")
    assert main(["convert", "official-rae", str(tmp_path / "stage1.pt"), "codec.encoder=tiny", "codec.encoder_path=",
                 "--out", str(tmp_path / "run")]) == 0  # fmt: skip
    assert load_checkpoint(tmp_path / "run").state()["step"] == 5
    bad = {**official_decoder(), "decoder_layers.0.attention.attention.extra.weight": torch.zeros(2)}
    wide = {**official_decoder(), "decoder_embed.weight": torch.zeros(100, LATENT)}
    for name, sd, message in (
        ("bad", bad, "has no place in repflow's RAE decoder"),
        ("wide", wide, "a 100-wide, 4-layer decoder is none of repflow's decoder sizes"),
    ):
        torch.save(sd, tmp_path / f"{name}.pt")
        assert main(["convert", "official-rae", str(tmp_path / f"{name}.pt"), "--out", str(tmp_path / name)]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1

"""Checkpoint formats: native safetensors, guided-diffusion .pt + presets, diffusers folders, clear mismatch errors."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from geneval.errors import GenevalError
from geneval.models.classifier import ClassifierConfig, EncoderUNet
from geneval.models.formats import describe_state_dict, load_model, save_native
from geneval.models.presets import PRESETS
from geneval.models.unet import UNetConfig, UNetModel, init_random_
from geneval.sampling.schedules import DiffusionConfig

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from test_unet import guided_diffusion_keys  # noqa: E402  (the independently written key layout)


pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny_cfg(**kw) -> UNetConfig:
    base = dict(
        image_size=8,
        model_channels=32,
        out_channels=6,
        num_res_blocks=1,
        attention_resolutions=(4,),
        channel_mult=(1, 2),
        num_classes=5,
        num_heads=2,
        use_scale_shift_norm=True,
        resblock_updown=True,
    )
    base.update(kw)
    return UNetConfig(**base)


@pytest.mark.parametrize("as_dir", [True, False])
def test_native_roundtrip(tmp_path, as_dir):
    cfg = _tiny_cfg()
    net = init_random_(UNetModel(cfg).eval(), seed=0)
    diff = DiffusionConfig(200, "cosine", variance_type="learned_range")
    path = tmp_path / ("m" if as_dir else "m.safetensors")
    save_native(net, cfg, path, diff, null_class=4, class_names=["a", "b", "c", "d"], training={"steps": 7})
    lm = load_model(path)
    assert lm.format == "native" and lm.kind == "unet" and lm.config == cfg and lm.diffusion == diff
    assert lm.num_classes == 4 and lm.null_class == 4 and lm.class_names == ["a", "b", "c", "d"] and lm.info == {"steps": 7}
    assert len(lm.weights_sha256) == 64 and not lm.net.training
    x, t, y = torch.randn(2, 3, 8, 8), torch.tensor([1, 150]), torch.tensor([0, 4])
    with torch.no_grad():
        assert torch.equal(lm.net(x, t, y), net(x, t, y))
    if as_dir:
        assert json.loads((path / "config.json").read_text())["null_class"] == 4
    with pytest.raises(GenevalError, match="carries its own config"):
        load_model(path, preset="adm-64")


def test_native_classifier_roundtrip(tmp_path):
    cfg = ClassifierConfig(
        image_size=8, model_channels=32, out_channels=3, num_res_blocks=1, attention_resolutions=(4,), channel_mult=(1, 1), num_head_channels=32
    )
    net = init_random_(EncoderUNet(cfg).eval(), seed=1)
    save_native(net, cfg, tmp_path / "c.safetensors")
    lm = load_model(tmp_path / "c.safetensors")
    assert lm.kind == "classifier" and lm.num_classes == 3 and lm.diffusion is None


def test_guided_diffusion_state_dict_loads_into_preset(tmp_path):
    """A state dict keyed exactly as guided-diffusion writes IDDPM's CIFAR-10 UNet (keys from the
    independent layout in test_unet, width shrunk by a flag to stay small) loads strictly."""
    p = PRESETS["iddpm-cifar10"]
    cfg = UNetConfig(**{**p.config.__dict__, "model_channels": 32})
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in UNetModel(cfg).state_dict().items()}
    keys = guided_diffusion_keys(32, (1, 2, 2, 2), 3, {1, 2}, updown=False, classes=False)
    g = torch.Generator().manual_seed(0)
    sd = {k: torch.randn(shapes[k], generator=g) for k in sorted(keys)}
    torch.save(sd, tmp_path / "cifar10_uncond.pt")
    lm = load_model(tmp_path / "cifar10_uncond.pt", preset="iddpm-cifar10", model_channels=32)
    assert lm.format == "guided-diffusion" and lm.preset == "iddpm-cifar10"
    assert lm.diffusion.num_timesteps == 4000 and lm.diffusion.rescale_timesteps and lm.diffusion.variance_type == "learned_range"
    assert torch.equal(lm.net.state_dict()["out.2.weight"], sd["out.2.weight"])
    assert lm.net.input_blocks[5][1].legacy_order  # IDDPM uses the legacy attention order


def test_wrong_preset_lists_keys_and_describes_file(tmp_path):
    net = UNetModel(_tiny_cfg())
    torch.save(net.state_dict(), tmp_path / "x.pt")
    with pytest.raises(GenevalError) as e:
        load_model(tmp_path / "x.pt", preset="adm-256-uncond")
    msg = str(e.value)
    assert "missing keys [" in msg and "unexpected keys [" in msg and "more)" in msg  # truncated lists
    assert "label_emb.weight" in msg  # unexpected: the file is class-conditional
    assert "in_channels=3" in msg and "learned sigma: yes" in msg and "classes=5" in msg
    with pytest.raises(GenevalError, match="pass a preset"):
        load_model(tmp_path / "x.pt")
    with pytest.raises(GenevalError, match="unknown preset 'adm-1024'; known presets: adm-64"):
        load_model(tmp_path / "x.pt", preset="adm-1024")
    with pytest.raises(GenevalError, match="unknown unet flags"):
        load_model(tmp_path / "x.pt", preset="adm-64", widht=3)


class Evil:
    """Any non-tensor object: a weights-only load must refuse to unpickle it."""


def test_unsafe_or_foreign_files_are_refused(tmp_path):
    torch.save({"w": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(GenevalError, match="weights-only"):
        load_model(tmp_path / "evil.pt", preset="adm-64")
    from safetensors.torch import save_file

    save_file({"a": torch.zeros(1)}, tmp_path / "plain.safetensors")
    with pytest.raises(GenevalError, match="without geneval config"):
        load_model(tmp_path / "plain.safetensors")
    with pytest.raises(GenevalError, match="not found"):
        load_model(tmp_path / "nope.pt")


def test_describe_state_dict_for_classifier():
    cfg = ClassifierConfig(
        image_size=16, model_channels=32, out_channels=7, num_res_blocks=1, attention_resolutions=(8,), channel_mult=(1, 2), num_head_channels=32
    )
    d = describe_state_dict(EncoderUNet(cfg).state_dict())
    assert d.startswith("classifier") and "classes=7" in d and "pool grid 8px" in d


def test_diffusers_folder(tmp_path):
    from diffusers import DDPMScheduler, UNet2DModel

    unet = UNet2DModel(
        sample_size=8,
        in_channels=3,
        out_channels=3,
        layers_per_block=1,
        block_out_channels=(32, 32),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
    )
    unet.save_pretrained(tmp_path / "pipe" / "unet")
    DDPMScheduler(num_train_timesteps=500, beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction").save_pretrained(
        tmp_path / "pipe" / "scheduler"
    )
    (tmp_path / "pipe" / "model_index.json").write_text('{"_class_name": "DDPMPipeline"}')
    lm = load_model(tmp_path / "pipe")
    assert lm.format == "diffusers" and lm.image_size == 8 and lm.num_classes is None and len(lm.weights_sha256) == 64
    assert lm.diffusion == DiffusionConfig(500, "cosine", prediction_type="v", variance_type="fixed_small")
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([3, 400])
    with torch.no_grad():
        torch.testing.assert_close(lm.net(x, t), unet.eval()(x, t).sample)


def test_diffusers_missing_extra_is_a_clear_error(tmp_path, monkeypatch):
    (tmp_path / "pipe" / "unet").mkdir(parents=True)
    (tmp_path / "pipe" / "unet" / "config.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "diffusers", None)  # import diffusers -> ImportError
    with pytest.raises(GenevalError, match=r"pip install 'geneval\[diffusers\]'"):
        load_model(tmp_path / "pipe")

"""Sampling throughput: geneval's DDIM vs bare UNet forwards vs diffusers' DDIMPipeline.

Measures, on one device, with the same randomly initialised UNet2DModel (the ddpm-cifar10
architecture, 35.7M parameters; no download needed) loaded through geneval's diffusers loader:

1. bare:      `steps` UNet forwards on a batch, nothing else (the floor);
2. geneval:   `geneval.sample(sampler="ddim")` fp32, align=0 -> overhead over bare (target <= 3%);
3. fast:      geneval DDIM with bf16 autocast + torch.compile of the UNet;
4. diffusers: `DDIMPipeline` fp32 (target: fast >= 1.7x its throughput).

Usage:
    python benchmarks/bench_sampling.py --device cuda --batch 256 --steps 50 --out benchmarks/bench_sampling_h100.json
    python benchmarks/bench_sampling.py --device cpu --tiny --batch 4 --steps 2      # smoke test
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn, device: str, repeats: int) -> float:
    """Best wall time of `repeats` runs after one warm-up (seconds)."""
    fn()
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def build_folder(root: Path, tiny: bool) -> Path:
    """A diffusers folder with a random UNet2DModel (ddpm-cifar10 layout) and a DDIM-compatible scheduler."""
    from diffusers import DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    if tiny:
        unet = UNet2DModel(
            sample_size=8,
            block_out_channels=(32, 32),
            layers_per_block=1,
            norm_num_groups=8,
            down_block_types=("DownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        )
    else:
        unet = UNet2DModel(
            sample_size=32,
            block_out_channels=(128, 256, 256, 256),
            layers_per_block=2,
            down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        )
    unet.save_pretrained(root / "unet")
    DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear").save_pretrained(root / "scheduler")
    (root / "model_index.json").write_text('{"_class_name": "DDPMPipeline"}')
    return root


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tiny", action="store_true", help="tiny UNet (CPU smoke test)")
    ap.add_argument("--no-compile", action="store_true", help="fast mode without torch.compile (bf16 only)")
    ap.add_argument("--out", type=Path, help="write the figures as JSON here")
    a = ap.parse_args(argv)

    from diffusers import DDIMPipeline, DDIMScheduler

    from geneval.models.formats import load_model
    from geneval.sampling.generate import SamplingConfig, sample

    dev, B, S = a.device, a.batch, a.steps
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_folder(Path(tmp), a.tiny)
        model = load_model(folder, device=dev)
    unet = model.net.unet
    n_params = sum(p.numel() for p in unet.parameters())
    C, H = model.in_channels, model.image_size
    x = torch.randn(B, C, H, H, device=dev)
    ts = torch.linspace(999, 0, S).long().to(dev)

    @torch.no_grad()
    def bare():
        for t in ts:
            _ = unet(x, t.expand(B)).sample

    cfg = SamplingConfig(n=B, sampler="ddim", steps=S, respacing=str(S), align=0)

    def geneval_ddim():
        for _ in sample(model, B, config=cfg, batch_size=B, device=dev):
            pass

    t_bare = _timed(bare, dev, a.repeats)
    t_gen = _timed(geneval_ddim, dev, a.repeats)

    # Fast mode: bf16 autocast + compiled UNet (same weights, same sampler).
    fast_net = model.net if a.no_compile else torch.compile(model.net)
    fast_model = type(model)(**{**model.__dict__, "net": fast_net})
    cfg_fast = SamplingConfig(n=B, sampler="ddim", steps=S, respacing=str(S), align=0, autocast_bf16=True)

    def geneval_fast():
        for _ in sample(fast_model, B, config=cfg_fast, batch_size=B, device=dev):
            pass

    t_fast = _timed(geneval_fast, dev, a.repeats)

    pipe = DDIMPipeline(unet=unet, scheduler=DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear"))
    pipe.set_progress_bar_config(disable=True)
    gen = torch.Generator(device=dev).manual_seed(0)

    def diffusers_ddim():
        pipe(batch_size=B, num_inference_steps=S, generator=gen, output_type="np")

    t_diff = _timed(diffusers_ddim, dev, a.repeats)

    res = {
        "device": torch.cuda.get_device_name(0) if dev.startswith("cuda") else platform.processor() or "cpu",
        "unet_params": n_params,
        "batch": B,
        "steps": S,
        "repeats": a.repeats,
        "torch": torch.__version__,
        "img_per_s": {
            "bare_forwards": B / t_bare,
            "geneval_ddim_fp32": B / t_gen,
            "geneval_fast": B / t_fast,
            "diffusers_ddim_pipeline_fp32": B / t_diff,
        },
        "geneval_overhead_vs_bare": t_gen / t_bare - 1,
        "diffusers_overhead_vs_bare": t_diff / t_bare - 1,
        "fast_speedup_vs_diffusers_fp32": t_diff / t_fast,
        "fast_mode": "bf16 autocast" + ("" if a.no_compile else " + torch.compile"),
        "targets": "geneval overhead vs bare <= 3%; fast >= 1.7x diffusers DDIMPipeline fp32",
    }
    res["passes"] = res["geneval_overhead_vs_bare"] <= 0.03 and res["fast_speedup_vs_diffusers_fp32"] >= 1.7
    print(json.dumps(res, indent=2))
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(res, indent=2) + "\n")
    return 0 if res["passes"] else 1


if __name__ == "__main__":
    sys.exit(main())

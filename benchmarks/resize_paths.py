"""Measure the exact (PIL) vs fast (torch antialiased) bicubic resize of the DINOv2 and CLIP paths.

Images: skimage.data (astronaut, chelsea, coffee, rocket, camera, immunohistochemistry), centre
square-cropped, as uint8. Reports max / mean |Δ| of the resized pixels (0..255) at 224 and 336, and
the feature difference through DINOv2 ViT-L/14 and CLIP ViT-L/14@336 built at full size. Offline the
trained weights are not available, so the networks carry timm's / open_clip's random init (seed 0; DINOv2 LayerScale at 1.0):
the feature numbers show how the pixel difference propagates, not the trained networks' sensitivity.

Usage: python benchmarks/resize_paths.py [--no-features]
"""

from __future__ import annotations

import json
import sys

import numpy as np
import torch


def images() -> np.ndarray:
    from skimage import data

    out = []
    for name in ("astronaut", "chelsea", "coffee", "rocket", "camera", "immunohistochemistry"):
        im = getattr(data, name)()
        if im.ndim == 2:
            im = np.repeat(im[..., None], 3, axis=2)
        h, w = im.shape[:2]
        s = min(h, w)
        im = im[(h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s, :3]
        out.append(
            np.asarray(
                torch.nn.functional.interpolate(  # a common 512² size to batch them
                    torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1)[None].float(), size=(512, 512), mode="bicubic", antialias=True
                )
                .clamp(0, 255)
                .round()
                .byte()[0]
                .permute(1, 2, 0)
            )
        )
    return np.stack(out)


def main() -> None:
    from geneval.features.bicubic import resize_bicubic
    from geneval.features.resize import to_nchw_uint8

    torch.manual_seed(0)
    imgs = images()
    x = to_nchw_uint8(imgs)
    report: dict[str, dict] = {}
    for size in (224, 336):
        d = (resize_bicubic(x, size, "pil") - resize_bicubic(x, size, "torch")).abs()
        report[f"pixels_{size}"] = {"max_abs": float(d.max()), "mean_abs": float(d.mean())}
    if "--no-features" not in sys.argv:
        from geneval.features import clip, dinov2

        vit = dinov2.build_vit("vitl14")
        for name, prm in vit.named_parameters():
            if name.endswith("gamma"):  # the official hub constructor's init_values=1.0 (timm inits 1e-5)
                prm.data.fill_(1.0)
        nets = {
            "dinov2_vitl14": dinov2.DINOv2Features(vit, "vitl14"),
            "clip_l14_336": clip.CLIPFeatures(clip.build_visual()),
        }
        for name, net in nets.items():
            feats = {}
            for mode in ("pil", "torch"):
                net.resize = mode
                feats[mode] = next(iter(net(imgs).values())).double()
            d = (feats["pil"] - feats["torch"]).abs()
            report[name] = {
                "max_abs": float(d.max()),
                "max_rel_row": float((d.norm(dim=1) / feats["pil"].norm(dim=1)).max()),
                "cosine_min": float(torch.nn.functional.cosine_similarity(feats["pil"], feats["torch"]).min()),
            }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

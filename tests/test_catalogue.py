"""The bad-input catalogue: every command, many wrong inputs, one promise.

A user error prints exactly one `error: …` line on stderr (no traceback, no usage block), exits 2,
happens before any work starts (no network evaluation: no sampling, no feature extraction) and
leaves nothing behind (no report folder, no output file, no temporary file).

Each case is a command line (``{d}`` = a folder of prepared inputs, ``{ro}`` = a folder that
cannot be written) with the regex its single error line must match. The cases run in-process
through `geneval.cli.main`, each in a fresh empty working directory; both that directory and the
inputs folder must be unchanged afterwards. A command added to the CLI without catalogue entries
fails `test_catalogue_covers_every_command`.
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

from geneval.cli import main


@dataclass(frozen=True)
class Case:
    """One bad input: the command line, the regex its one error line matches, the exit code."""

    id: str
    argv: str  # shell words; {d}: the inputs folder, {ro}: an unwritable folder
    match: str
    code: int = 2
    env: dict = field(default_factory=dict)  # extra environment ({d} expands here too)


# Common prefixes: a command line that would run, so the one wrong part is the error.
RUN = "run --model {d}/tiny --n 4 --steps 2 --metrics fid --ref {d}/good.npz"
SWEEP = "sweep --model {d}/tiny --n 4 --metrics fid --ref {d}/good.npz"
SAMPLE = "sample --model {d}/tiny --n 2 --steps 2 --out s.npz"
EVAL = "eval {d}/good.npy --ref {d}/good.npz"
RECON = "recon --data {d}/good.npy --reconstructions {d}/good.npz --metrics psnr"
GATE = "gate {d}/runs/a --baseline {d}/runs/a/results.json"
CUDA_GONE = r"(CUDA is not available|only \d+ CUDA device)"
CACHE_UNDER_FILE = {"GENEVAL_CACHE": "{d}/plainfile/cache"}  # the cache folder cannot be made: its parent is a file
NO_WEIGHTS = {"GENEVAL_CACHE": "{d}/nocache", "TORCH_HOME": "{d}/torch"}  # empty: a CI cache holding the files must not matter

CASES = [
    # ---- eval: inputs
    Case("eval-missing-samples", "eval {d}/nope.npy --ref {d}/good.npz", r"not found: .*nope\.npy"),
    Case("eval-missing-ref", "eval {d}/good.npy --ref {d}/nope.npz", r"not found: .*nope\.npz"),
    Case("eval-empty-path", "eval '' --ref {d}/good.npz", r"empty path"),
    Case("eval-empty-folder", "eval {d}/empty --ref {d}/good.npz", r"empty: no images found"),
    Case("eval-corrupt-npz", "eval {d}/corrupt.npz --ref {d}/good.npz", r"corrupt or truncated \.npz"),
    Case("eval-corrupt-npy", "eval {d}/corrupt.npy --ref {d}/good.npz", r"unreadable or truncated \.npy"),
    Case("eval-corrupt-zip", "eval {d}/corrupt.zip --ref {d}/good.npz", r"corrupt or truncated zip archive"),
    Case("eval-corrupt-pngs", "eval {d}/badpng --ref {d}/good.npz", r"no readable image among 2"),
    Case("eval-single-image-file", "eval {d}/one.png --ref {d}/good.npz", r"is a single image; pass the folder"),
    Case("eval-unsupported-suffix", "eval {d}/notes.txt --ref {d}/good.npz", r"unsupported input type \.txt"),
    Case("eval-wrong-shape", "eval {d}/shape.npy --ref {d}/good.npz", r"wrong image array shape \(8, 256\)"),
    Case("eval-bool-dtype", "eval {d}/bool.npy --ref {d}/good.npz", r"pixel dtype bool is not supported"),
    Case("eval-float-without-range", "eval {d}/float.npy --ref {d}/good.npz", r"float pixels \(float32\) need a stated range"),
    Case("eval-unknown-float-range", EVAL + " --float-range 0,2", r"unknown float range '0,2'"),
    Case("eval-stats-missing-sigma", "eval {d}/good.npy --ref {d}/stats_nosigma.npz", r"'mu' without its partner"),
    Case("eval-npz-without-known-keys", "eval {d}/good.npy --ref {d}/nokeys.npz", r"neither images \(arr_0\) nor statistics"),
    Case("eval-stats-ref-for-pr", "eval {d}/good.npy --ref {d}/stats.npz --metrics pr", r"statistics only .*not precision, recall"),
    Case("eval-unknown-dataset", "eval nosuch:dataset --ref {d}/good.npz", r"not a dataset name"),
    Case("eval-empty-dataset-slice", "eval 'fashion-mnist:test[5:2]' --ref {d}/good.npz", r"slice \[5:2\] is empty"),
    Case("eval-one-image", "eval {d}/one.npy --ref {d}/good.npz", r"fid needs at least 2 sample images, got N=1"),
    Case("eval-no-ref", "eval {d}/good.npy --metrics fid", r"against a reference: pass --ref"),
    # ---- eval: options
    Case("eval-unknown-metric", EVAL + " --metrics fid,foo", r"unknown metric 'foo'"),
    Case("eval-no-metrics", EVAL + " --metrics ,", r"no metrics given"),
    Case("eval-unknown-mode", EVAL + " --mode bogus", r"unknown mode 'bogus': choose one of tf, pytorch, clean"),
    Case("eval-unknown-precision", EVAL + " --precision fp8", r"unknown precision 'fp8'"),
    Case("eval-unknown-is-convention", EVAL + " --metrics is --is-convention foo", r"unknown is convention 'foo'"),
    Case("eval-unknown-feature-network", EVAL + " --features foonet", r"unknown feature network 'foonet'"),
    Case("eval-batch-size-0", EVAL + " --batch-size 0", r"--batch-size"),
    Case("eval-shard-size-0", EVAL + " --shard-size 0", r"--shard-size"),
    Case("eval-ci-nan", EVAL + " --ci nan", r"--ci"),
    Case("eval-kid-subset-too-big", EVAL + " --metrics kid --kid-subset-size 9", r"KID subset size 9 is larger"),
    Case("eval-seed-negative", EVAL + " --metrics kid --seed -1", r"seed must lie in \[0, 2\*\*32 - 1\], got -1"),
    Case("eval-device-unknown", EVAL + " --device banana", r"unknown device 'banana'"),
    Case("eval-device-no-cuda", EVAL + " --device cuda:99", CUDA_GONE),
    Case("eval-weights-folder", EVAL + " --weights {d}/empty", r"is a folder; pass the weight file itself"),
    Case("eval-weights-missing", EVAL + " --weights {d}/nope.pth", r"nope\.pth do not exist"),
    Case("eval-weights-pickled-code", EVAL + " --weights {d}/pickled.pt", r"refused to unpickle posix\.system"),
    Case("eval-weights-not-a-checkpoint", EVAL + " --weights {d}/notes.txt", r"notes\.txt: not a torch checkpoint"),
    Case("eval-out-unknown-suffix", EVAL + " --out r.txt", r"--out r\.txt: unknown format \.txt"),
    Case("eval-out-is-folder", EVAL + " --out {d}/dir.json", r"dir\.json is a folder; give a file name"),
    Case("eval-out-parent-is-file", EVAL + " --out {d}/plainfile/r.json", r"plainfile is a file, not a folder"),
    Case("eval-out-unwritable", EVAL + " --out {ro}/r.json", r"is not writable"),
    Case("eval-cache-under-file", EVAL, r"cache folder \(GENEVAL_CACHE\) .*plainfile is a file", env=CACHE_UNDER_FILE),
    Case(
        "eval-no-cache-scratch-under-file", EVAL + " --no-cache", r"cache folder \(GENEVAL_CACHE\) .*scratch cannot be created", env=CACHE_UNDER_FILE
    ),
    Case("run-cache-under-file", RUN, r"cache folder \(GENEVAL_CACHE\) .*plainfile is a file", env=CACHE_UNDER_FILE),
    # ---- ref build
    Case("ref-build-missing-out", "ref build {d}/good.npy", r"Missing option '--out'"),
    Case("ref-build-out-suffix", "ref build {d}/good.npy --out r.txt", r"unknown format \.txt; use \.npz"),
    Case("ref-build-out-parent-is-file", "ref build {d}/good.npy --out {d}/plainfile/r.npz", r"plainfile is a file, not a folder"),
    Case("ref-build-out-is-source", "ref build {d}/good.npz --out {d}/good.npz", r"--out .*good\.npz is the source itself"),
    Case("ref-build-float-without-range", "ref build {d}/float.npy --out r.npz", r"need a stated range"),
    Case("ref-build-stats-source", "ref build {d}/stats.npz --out r.npz", r"holds statistics only: a reference is built from images"),
    Case("ref-build-device-unknown", "ref build {d}/good.npy --out r.npz --device banana", r"unknown device 'banana'"),
    Case("ref-no-subcommand", "ref", r"missing command: geneval ref needs one of build"),
    Case(
        "ref-build-cache-under-file",
        "ref build {d}/good.npy --out r.npz",
        r"cache folder \(GENEVAL_CACHE\) .*plainfile is a file",
        env=CACHE_UNDER_FILE,
    ),
    # ---- run: numbers and vocabularies
    Case("run-n-zero", RUN + " --n 0", r"--num-samples"),
    Case("run-n-negative", RUN + " --n -3", r"--num-samples"),
    Case("run-n-not-integer", RUN + " --n 2.5", r"--num-samples.*valid integer"),
    Case("run-steps-zero", RUN + " --steps 0", r"--steps"),
    Case("run-shard-size-zero", RUN + " --shard-size 0", r"--shard-size"),
    Case("run-seed-negative", RUN + " --seed -5", r"seed must lie in \[0, 2\*\*32 - 1\], got -5"),
    Case("run-unknown-sampler", RUN + " --sampler plms", r"unknown sampler 'plms'"),
    Case("run-guidance-without-convention", RUN + " --guidance 2", r"--guidance 2 needs an explicit --convention"),
    Case("run-guidance-nan", RUN + " --guidance nan --convention w", r"guidance must be a finite float, got nan"),
    Case("run-unknown-convention", RUN + " --guidance 2 --convention x", r"unknown convention 'x'"),
    Case("run-pixel-metric", RUN + " --metrics psnr", r"psnr cannot be computed by `geneval run`"),
    Case("run-unknown-convention-source", RUN + " --convention-source foo", r"unknown convention source 'foo'"),
    Case("run-unknown-respacing-convention", RUN + " --respacing-convention foo", r"unknown respacing convention 'foo'"),
    Case("run-ci-out-of-range", RUN + " --ci 1.5", r"--ci"),
    Case(
        "run-ddim-steps-without-stride",
        RUN + " --sampler ddim --steps 30",
        r"no integer stride gives exactly 30 of 100 steps; use --steps 25 or --steps 34",
    ),
    Case(
        "run-ddim-steps-above-schedule",
        RUN + " --sampler ddim --steps 500",
        r"cannot take 500 steps from the model's 100 timesteps; use --steps 100 or fewer",
    ),
    Case("run-device-unknown", RUN + " --device banana", r"unknown device 'banana'"),
    Case("run-device-no-cuda", RUN + " --device cuda:99", CUDA_GONE),
    # ---- run: files and folders
    Case("run-model-missing", RUN.replace("{d}/tiny", "{d}/nope"), r"model checkpoint not found: .*nope"),
    Case("run-model-unknown-zoo-name", RUN.replace("{d}/tiny", "demo-foo"), r"model checkpoint not found: demo-foo"),
    Case("run-model-pickled-code", RUN.replace("{d}/tiny", "{d}/pickled.pt"), r"refused to unpickle posix\.system"),
    Case("run-model-wrong-keys", RUN.replace("{d}/tiny", "{d}/wrongkeys.pt"), r"has no config; pass a preset"),
    Case("run-model-empty-folder", RUN.replace("{d}/tiny", "{d}/empty"), r"neither a geneval native model nor a diffusers folder"),
    Case("run-preset-on-native-model", RUN + " --preset adm-64", r"a preset \(adm-64\) only applies to guided-diffusion \.pt files"),
    Case("run-ref-empty-folder", RUN.replace("{d}/good.npz", "{d}/empty"), r"empty: no images found"),
    Case("run-ref-float-npy", RUN.replace("{d}/good.npz", "{d}/float.npy"), r"need a stated range"),
    Case("run-classifier-scale-without-classifier", RUN + " --classifier-scale 1", r"needs a classifier checkpoint"),
    Case("run-classifier-is-a-unet", RUN + " --classifier {d}/tiny --classifier-scale 1", r"is a unet, not a noisy classifier"),
    Case("run-cfg-channels-on-pixel-model", RUN + " --cfg-channels all", r"--cfg-channels applies to latent"),
    Case("run-skip-on-pixel-model", RUN + " --skip 3", r"--skip applies to VQ-Diffusion models"),
    Case("run-upsampler-missing", RUN + " --upsampler {d}/nope.pt", r"--upsampler not found"),
    Case("run-truncation-rate-above-1", RUN + " --truncation-rate 2", r"--truncation-rate"),
    Case("run-toml-invalid", RUN + " --config {d}/bad.toml", r"bad\.toml: invalid TOML"),
    Case("run-toml-unknown-key", RUN + " --config {d}/unk.toml", r"unknown config file key\(s\) \['bogus'\]"),
    Case("run-toml-wrong-type", "run --model {d}/tiny --ref {d}/good.npz --config {d}/type.toml", r"steps must be an int, got 'many'"),
    Case("run-toml-missing", RUN + " --config {d}/nope.toml", r"config file not found"),
    Case("run-toml-is-folder", RUN + " --config {d}/empty", r"config file .*empty is a folder"),
    Case("run-toml-binary", RUN + " --config {d}/good.npz", r"cannot read config file .*good\.npz"),
    Case("run-out-dir-is-file", RUN + " --out-dir {d}/plainfile", r"plainfile is a file, not a folder"),
    Case("run-out-dir-unwritable", RUN + " --out-dir {ro}", r"is not writable"),
    Case("run-run-id-escapes", RUN + " --run-id ../escape", r"--run-id '\.\./escape' must be a plain folder name"),
    Case("run-save-samples-suffix", RUN + " --save-samples s.txt", r"--save-samples must end in \.npz"),
    Case("run-save-samples-parent-is-file", RUN + " --save-samples {d}/plainfile/s.npz", r"plainfile is a file, not a folder"),
    # ---- sweep
    Case("sweep-nothing-to-sweep", SWEEP, r"nothing to sweep"),
    Case("sweep-two-lists", SWEEP + " --guidance 1,2 --steps 2,3 --convention w", r"sweep one parameter at a time"),
    Case("sweep-guidance-not-a-number", SWEEP + " --guidance 1,abc --convention w", r"--guidance: 'abc' is not a number"),
    Case("sweep-guidance-nan", SWEEP + " --guidance 1,nan --convention w", r"--guidance: 'nan' is not a finite number"),
    Case("sweep-guidance-repeated", SWEEP + " --guidance 1,1 --convention w", r"repeated values"),
    Case("sweep-guidance-without-convention", SWEEP + " --guidance 1,2", r"needs an explicit --convention"),
    Case("sweep-steps-zero", SWEEP + " --steps 0,2", r"--steps: '0' is not a positive integer"),
    Case("sweep-steps-inf", SWEEP + " --steps 2,inf", r"--steps: 'inf' is not a positive integer"),
    Case("sweep-ddim-steps-without-stride", SWEEP + " --steps 7,30 --sampler ddim", r"use --steps 25 or --steps 34"),
    Case("sweep-sweep-id-escapes", SWEEP + " --guidance 1,2 --convention w --sweep-id ../x", r"--sweep-id '\.\./x' must be a plain folder name"),
    Case("sweep-out-dir-is-file", SWEEP + " --guidance 1,2 --convention w --out-dir {d}/plainfile", r"output folder .*plainfile cannot be created"),
    Case("sweep-model-missing", SWEEP.replace("{d}/tiny", "{d}/nope") + " --steps 2,3", r"model checkpoint not found"),
    # ---- sample
    Case("sample-missing-out", "sample --model {d}/tiny --n 2", r"Missing option '--out'"),
    Case("sample-n-zero", SAMPLE + " --n 0", r"--num-samples"),
    Case("sample-steps-negative", SAMPLE + " --steps -1", r"steps must be >= 1, got -1"),
    Case("sample-batch-size-zero", SAMPLE + " --batch-size 0", r"batch-size must be >= 1"),
    Case("sample-shard-size-zero", SAMPLE + " --shard-size 0", r"shard size must be >= 1, got 0"),
    Case("sample-seed-negative", SAMPLE + " --seed -1", r"seed must lie in \[0, 2\*\*32 - 1\], got -1"),
    Case("sample-eta-nan", SAMPLE + " --eta nan", r"eta must be a finite number >= 0, got nan"),
    Case("sample-eta-negative", SAMPLE + " --eta -1", r"eta must be a finite number >= 0, got -1"),
    Case("sample-guidance-inf", SAMPLE + " --guidance inf --convention w", r"guidance must be a finite number, got inf"),
    Case("sample-classifier-scale-nan", SAMPLE + " --classifier-scale nan", r"classifier scale must be a finite number >= 0, got nan"),
    Case("sample-guidance-without-convention", SAMPLE + " --guidance 2", r"--guidance 2 needs an explicit --convention"),
    Case("sample-unknown-sampler", SAMPLE + " --sampler plms", r"unknown sampler 'plms'"),
    Case("sample-unknown-quantize", SAMPLE + " --quantize foo", r"unknown quantisation 'foo'"),
    Case("sample-bad-respacing", SAMPLE + " --respacing ddimx", r"bad respacing 'ddimx'"),
    Case("sample-respacing-without-stride", SAMPLE + " --respacing ddim30", r"use --respacing ddim25 or ddim34, or --respacing 30"),
    Case("sample-class-out-of-range", SAMPLE + " --class 7", r"--class 7: the model has classes 0\.\.1"),
    Case("sample-class-on-unconditional", "sample --model {d}/tinyu --n 2 --steps 2 --out s.npz --class 1", r"--class 1: .* is unconditional"),
    Case("sample-classifier-scale-without-classifier", SAMPLE + " --classifier-scale 1", r"needs a noisy classifier"),
    Case("sample-out-suffix", SAMPLE + " --out s.txt", r"--out must end in \.npz"),
    Case("sample-out-parent-is-file", SAMPLE + " --out {d}/plainfile/s.npz", r"plainfile is a file, not a folder"),
    Case("sample-device-unknown", SAMPLE + " --device banana", r"unknown device 'banana'"),
    Case("sample-device-no-cuda", SAMPLE + " --device cuda:99", CUDA_GONE),
    Case("sample-model-missing", "sample --model {d}/nope --n 2 --out s.npz", r"model not found"),
    Case("sample-model-pickled-code", "sample --model {d}/pickled.pt --n 2 --out s.npz", r"refused to unpickle posix\.system"),
    # ---- recon
    Case("recon-n-negative", RECON + " --n -1", r"--num-samples"),
    Case("recon-batch-size-zero", RECON + " --batch-size 0", r"--batch-size"),
    Case("recon-unknown-lpips-net", RECON + " --lpips-net foo", r"unknown --lpips-net 'foo'"),
    Case("recon-unknown-metric", RECON.replace("psnr", "foo"), r"unknown metric 'foo'"),
    Case("recon-generation-metric", RECON.replace("psnr", "fid"), r"'fid' is not a reconstruction metric"),
    Case("recon-unknown-mode", RECON.replace("psnr", "rfid") + " --mode bogus", r"unknown resize mode 'bogus'"),
    Case("recon-ae-missing", "recon --ae {d}/nope --data {d}/good.npy", r"autoencoder not found"),
    Case("recon-ae-empty-folder", "recon --ae {d}/empty --data {d}/good.npy", r"a folder, but no config\.json"),
    Case("recon-ae-pickled-code", "recon --ae {d}/pickled.pt --data {d}/good.npy", r"refused to unpickle posix\.system"),
    Case("recon-ae-wrong-keys", "recon --ae {d}/wrongkeys.pt --data {d}/good.npy", r"is not an autoencoder checkpoint"),
    Case("recon-data-float", "recon --data {d}/float.npy", r"need a stated range"),
    Case("recon-reconstructions-shape", "recon --data {d}/good.npy --reconstructions {d}/shape.npy", r"wrong image array shape"),
    Case("recon-codebook-without-ae", RECON.replace("psnr", "codebook"), r"need an autoencoder \(--ae\)"),
    Case("recon-ae-config-without-ae", RECON + " --ae-config kl-f8", r"--ae-config applies to an autoencoder \(--ae\)"),
    Case("recon-out-parent-is-file", RECON + " --out {d}/plainfile/x", r"plainfile is a file, not a folder"),
    Case("recon-device-unknown", RECON + " --device banana", r"unknown device 'banana'"),
    # ---- report / compare
    Case("report-missing-file", "report {d}/nope.json", r"results file not found"),
    Case("report-invalid-json", "report {d}/badjson.json", r"badjson\.json: not valid JSON"),
    Case("report-binary-file", "report {d}/bin.json", r"bin\.json: not valid JSON"),
    Case("report-no-results-list", "report {d}/res_notlist.json", r"no 'results' list"),
    Case("report-row-not-object", "report {d}/res_rowint.json", r"result row is not an object"),
    Case("report-row-missing-metric", "report {d}/res_nometric.json", r"lacks required field\(s\) \['metric'\]"),
    Case("report-value-not-a-number", "report {d}/res_badvalue.json", r"field 'value' has a bad value 'high'"),
    Case("report-csv-missing-columns", "report {d}/res.csv", r"CSV lacks column\(s\)"),
    Case("report-unknown-input-suffix", "report {d}/good.npz", r"unknown results format '\.npz'"),
    Case("report-folder-without-results", "report {d}/empty", r"holds no results\.json or results\.csv"),
    Case("report-same-run-twice", "report {d}/runs/a {d}/runs/a", r"appears in both"),
    Case("report-unknown-format", "report {d}/runs/a --format pdf", r"unknown format 'pdf'"),
    Case("report-out-unknown-suffix", "report {d}/runs/a --out r.pdf", r"--out r\.pdf: unknown format \.pdf"),
    Case("report-out-parent-is-file", "report {d}/runs/a --out {d}/plainfile/r.md", r"plainfile is a file, not a folder"),
    Case("compare-one-side", "compare {d}/runs/a", r"Missing argument '[bB]'"),
    Case("compare-invalid-json", "compare {d}/runs/a {d}/badjson.json", r"not valid JSON"),
    Case("compare-z-negative", "compare {d}/runs/a {d}/runs/a --z -1", r"--z"),
    Case("compare-unknown-format", "compare {d}/runs/a {d}/runs/a --format html", r"unknown format 'html'; choose from md, json"),
    # ---- gate
    Case("gate-results-missing", "gate {d}/nope.json --baseline {d}/runs/a/results.json", r"results file not found"),
    Case("gate-baseline-missing", "gate {d}/runs/a --baseline {d}/nope.json", r"baseline .*nope\.json not found"),
    Case("gate-baseline-invalid-json", "gate {d}/runs/a --baseline {d}/badjson.json", r"not valid JSON"),
    Case("gate-baseline-malformed", "gate {d}/runs/a --baseline {d}/res_badvalue.json", r"field 'value' has a bad value"),
    Case("gate-tolerance-syntax", GATE + " --tolerance fid:1", r"bad tolerance 'fid:1'"),
    Case("gate-tolerance-negative", GATE + " --tolerance fid=-1", r"tolerance for fid must be a finite number"),
    Case("gate-tolerance-nan", GATE + " --tolerance fid=nan", r"bad tolerance 'fid=nan'"),
    Case("gate-tolerance-unknown-metric", GATE + " --tolerance foo=1", r"tolerance given for foo, not in the baseline"),
    Case("gate-z-negative", GATE + " --z -1", r"--z"),
    Case("gate-z-inf", GATE + " --z inf", r"z must be a finite number"),
    Case("gate-update-baseline-suffix", "gate {d}/runs/a --baseline base.txt --update-baseline", r"baseline must be a \.json file"),
    Case("gate-update-baseline-parent-is-file", "gate {d}/runs/a --baseline {d}/plainfile/b.json --update-baseline", r"plainfile is a file"),
    # ---- weights and the command tree
    Case("weights-fetch-unknown-name", "weights fetch nosuch", r"unknown weight file 'nosuch'"),
    Case("weights-fetch-offline", "weights fetch pytorch-fid", r"offline \(GENEVAL_OFFLINE is set\)", env=NO_WEIGHTS),
    Case("weights-verify-unknown-name", "weights verify nosuch", r"unknown weight file 'nosuch'"),
    Case("weights-verify-missing", "weights verify alexnet", r"alexnet is missing at", env=NO_WEIGHTS),
    Case("weights-list-extra-argument", "weights list extra", r"unexpected extra argument"),
    Case("weights-path-extra-argument", "weights path extra", r"unexpected extra argument"),
    Case("weights-no-subcommand", "weights", r"missing command: geneval weights needs one of list, fetch, verify, path"),
    Case("weights-unknown-subcommand", "weights bogus", r"No such command 'bogus'"),
    Case("unknown-command", "bogus", r"No such command 'bogus'"),
    Case("unknown-option", "eval {d}/good.npy --bogus", r"No such option: --bogus"),
]


def _make_inputs(d: Path) -> None:
    """Every file the catalogue points at, small and built in well under a second (the UNets aside)."""
    import zipfile

    from PIL import Image

    from geneval.results import ResultRow, ResultSet, write_results
    from test_pipeline import make_tiny_checkpoint

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(8, 16, 16, 3), dtype=np.uint8)
    np.save(d / "good.npy", x)
    np.savez(d / "good.npz", arr_0=x)
    np.save(d / "one.npy", x[:1])
    np.save(d / "float.npy", x.astype(np.float32) / 255)
    np.save(d / "shape.npy", x[..., 0].reshape(8, -1))
    np.save(d / "bool.npy", x > 127)
    np.savez(d / "stats_nosigma.npz", mu=np.zeros(2048))
    np.savez(d / "nokeys.npz", foo=np.zeros(3))
    np.savez(d / "stats.npz", mu=np.zeros(2048), sigma=np.eye(2048))
    (d / "corrupt.npz").write_bytes(b"PK\x03\x04" + bytes(60))
    (d / "corrupt.npy").write_bytes(b"\x93NUMPY garbage")
    with zipfile.ZipFile(d / "corrupt.zip", "w") as z:
        z.writestr("a.png", b"x")
    (d / "corrupt.zip").write_bytes((d / "corrupt.zip").read_bytes()[:20])
    (d / "badpng").mkdir()
    for name in ("a.png", "b.png"):
        (d / "badpng" / name).write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))
    Image.fromarray(x[0]).save(d / "one.png")
    (d / "empty").mkdir()
    (d / "dir.json").mkdir()
    (d / "torch").mkdir()
    (d / "nocache").mkdir()
    (d / "notes.txt").write_text("not images\n")
    (d / "plainfile").write_text("a regular file where a folder is expected\n")
    (d / "bad.toml").write_text("n = [\n")
    (d / "unk.toml").write_text("bogus = 3\n")
    (d / "type.toml").write_text('steps = "many"\nn = 4\nmetrics = "fid"\n')
    torch.save({"x": os.system}, d / "pickled.pt")  # a pickled global: must never be imported or called
    torch.save({"foo": torch.zeros(3)}, d / "wrongkeys.pt")
    make_tiny_checkpoint(d / "tiny")
    make_tiny_checkpoint(d / "tinyu", conditional=False)
    rows = [ResultRow("a", "fid", 20.0, None, 100, mode="tf", weights_sha256="7" * 64, ref_sha256="c" * 64)]
    rows.append(ResultRow("a", "precision", 0.6, None, 100, mode="tf", weights_sha256="7" * 64, ref_sha256="c" * 64))
    write_results(ResultSet(rows, {"seed": 0}), d / "runs" / "a" / "results.json")
    good = (d / "runs" / "a" / "results.json").read_text()
    (d / "badjson.json").write_text("{not json")
    (d / "bin.json").write_bytes(b"\xff\xfe\x00garbage")
    (d / "res_notlist.json").write_text('{"results": "nope"}')
    (d / "res_rowint.json").write_text('{"results": [1, 2]}')
    (d / "res_nometric.json").write_text(good.replace('"metric": "fid"', '"metrik": "fid"'))
    (d / "res_badvalue.json").write_text(good.replace('"value": 20.0', '"value": "high"'))
    (d / "res.csv").write_text("a,b\n1,2\n")
    for name in ("res_nometric.json", "res_badvalue.json"):
        assert (d / name).read_text() != good, name


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("catalogue-inputs")
    _make_inputs(d)
    return d


@pytest.fixture(scope="module")
def unwritable(tmp_path_factory):
    """A folder nothing can be written to (root ignores permission bits: then a path under /proc)."""
    if os.geteuid() == 0:
        yield "/proc/1/geneval-catalogue"
        return
    ro = tmp_path_factory.mktemp("catalogue-ro")
    ro.chmod(0o555)
    yield str(ro)
    ro.chmod(0o755)


def _tree(root: Path) -> dict[str, tuple]:
    """Every file and folder under root with its size and mtime: what 'nothing written' compares."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            found[str(p.relative_to(root))] = (st.st_size if p.is_file() else None, st.st_mtime_ns)
    return found


def _no_work(*args, **kwargs):
    raise AssertionError("work started: a network was evaluated (sampling, feature extraction or reconstruction)")


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, inputs, unwritable, tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    for k, v in case.env.items():
        monkeypatch.setenv(k, v.format(d=inputs))
    # No network may run before the error: every forward pass goes through Module.__call__.
    monkeypatch.setattr(torch.nn.Module, "__call__", _no_work)
    monkeypatch.setattr("geneval.sampling.generate.generate_range", _no_work)
    argv = [a.format(d=inputs, ro=unwritable) for a in shlex.split(case.argv)]
    before = (_tree(inputs), _tree(work))
    with pytest.raises(SystemExit) as e:
        main(argv)
    _, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("error: "), f"{case.id}: expected one error line, got:\n{err}"
    assert re.search(case.match, lines[0]), f"{case.id}: {lines[0]!r} does not match {case.match!r}"
    assert e.value.code == case.code, f"{case.id}: exit {e.value.code}, stderr {lines[0]!r}"
    assert (_tree(inputs), _tree(work)) == before, f"{case.id}: something was written"


def _leaf_commands() -> set[str]:
    """Every runnable command path of the Typer app ("eval", "ref build", "weights list", ...)."""
    import typer.main

    from geneval.cli import build_app

    found = set()

    def walk(cmd, path):
        subs = getattr(cmd, "commands", None)
        if subs:
            for name, sub in subs.items():
                walk(sub, [*path, name])
        else:
            found.add(" ".join(path))

    walk(typer.main.get_command(build_app()), [])
    return found


def test_catalogue_covers_every_command():
    ids = [c.id for c in CASES]
    assert len(CASES) >= 60 and len(set(ids)) == len(ids)
    leaves = _leaf_commands()
    assert {"eval", "run", "sweep", "sample", "recon", "report", "compare", "gate", "ref build", "weights fetch"} <= leaves
    covered = {leaf for leaf in leaves for c in CASES if f"{c.argv} ".startswith(f"{leaf} ")}
    assert covered == leaves, f"commands without catalogue entries: {sorted(leaves - covered)}"


def test_every_command_prints_warnings_in_one_style(inputs, tmp_path, monkeypatch, capsys):
    """'warning: …', one line, whether it comes from warnings.warn or a logger (no 'file.py:12: UserWarning', no bare text)."""
    import logging
    import warnings

    def noisy():
        warnings.warn("a python\nwarning", UserWarning, stacklevel=1)
        logging.getLogger("geneval.somewhere").warning("a logged warning")
        return []

    monkeypatch.setattr("geneval.weights.list_weights", noisy)
    with pytest.raises(SystemExit) as e:
        main(["weights", "list"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert e.value.code == 0 and err == ["warning: a python warning", "warning: a logged warning"], err
    monkeypatch.chdir(tmp_path)
    np.savez(tmp_path / "rec.npz", arr_0=np.load(inputs / "good.npy"))
    with pytest.raises(SystemExit) as e:  # recon's own log line, which had no prefix at all
        main(["recon", "--data", str(inputs / "good.npy"), "--reconstructions", str(tmp_path / "rec.npz"), "--metrics", "psnr", "--n", "100"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert e.value.code == 0 and err[0] == "warning: asked for n=100 but the data holds 8 images: using 8", err

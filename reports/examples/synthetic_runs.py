"""Write three SYNTHETIC results files (made-up numbers, realistic provenance) for the report example.

Only for showing the report's layout until real demo runs exist; every run id and model name
says SYNTHETIC, and the numbers were typed in, not measured.
"""

import sys
from pathlib import Path

from geneval.results import ResultRow, ResultSet, write_results

W = "86522352ede39b47" + "0" * 48  # prefix of the converted TF-Inception trunk's hash; rest zero-filled
R = "5f1d0c7a2b9e4d31" + "0" * 48  # made-up reference hash

RUNS = {  # run id: (sampler, steps, seed, {metric: (value, std, std_method)})
    "synthetic-ddim-20": (
        "ddim",
        20,
        0,
        {"fid": (24.31, 0.41, "bootstrap-200"), "precision": (0.612, 0.011, "bootstrap-200"), "recall": (0.481, 0.012, "bootstrap-200")},
    ),
    "synthetic-heun-10": (
        "heun",
        10,
        1,
        {"fid": (21.74, 0.38, "bootstrap-200"), "precision": (0.655, 0.010, "bootstrap-200"), "recall": (0.455, 0.012, "bootstrap-200")},
    ),
    "synthetic-euler-5": (
        "euler",
        5,
        2,
        {"fid": (31.92, 0.52, "bootstrap-200"), "precision": (0.548, 0.012, "bootstrap-200"), "recall": (0.502, 0.011, "bootstrap-200")},
    ),
}


def main(out_dir: str) -> None:
    for run_id, (sampler, steps, seed, values) in RUNS.items():
        rows = [
            ResultRow(
                run_id,
                m,
                v,
                s,
                1000,
                None,
                "SYNTHETIC demo-fmnist-unet",
                sampler,
                steps,
                None,
                "w",
                seed,
                "tf",
                "tf-inception-2015-12-05",
                W,
                R,
                wall_s=95.0,
                extra={"std_method": meth, "synthetic": True},
            )
            for m, (v, s, meth) in values.items()
        ]
        path = write_results(
            ResultSet(rows, {"synthetic": True, "note": "made-up numbers for the layout example"}), Path(out_dir) / run_id / "results.json"
        )
        print(path)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "reports")

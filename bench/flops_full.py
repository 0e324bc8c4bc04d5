"""FLOPs of the full-size SAM3 detector: the image encoder (run once per image) vs the
prompt-conditioned heads (run once per image x prompt), counted with torch's FlopCounterMode on
one real forward pass of random weights. Runs anywhere (about 1 minute on a 2-core CPU, 4 GB).

From the two figures it projects how the cost grows with K prompts per image, for this engine
(encoder once) and for the plain transformers loop (image repeated per prompt). A projection
from FLOPs, not a timing: the GPU benchmark (bench_engine.py, scenario b) measures it.

    python bench/flops_full.py [--out results/flops_full.json]
"""

from __future__ import annotations

import argparse
import json
import os

import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import Sam3Config, Sam3Model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "flops_full.json"))
    args = parser.parse_args()

    torch.manual_seed(0)
    model = Sam3Model(Sam3Config()).eval()
    pixel_values = torch.randn(1, 3, 1008, 1008)
    input_ids = torch.zeros(1, 32, dtype=torch.long)
    attention_mask = torch.ones(1, 32, dtype=torch.long)
    with torch.no_grad():
        with FlopCounterMode(display=False) as vision_counter:
            vision = model.get_vision_features(pixel_values=pixel_values)
        text = model.get_text_features(input_ids=input_ids, attention_mask=attention_mask)
        with FlopCounterMode(display=False) as heads_counter:
            model(vision_embeds=vision, text_embeds=text, attention_mask=attention_mask)
    vision_flops, heads_flops = vision_counter.get_total_flops(), heads_counter.get_total_flops()

    rows = [
        {
            "K": k,
            "ours_cost_vs_K1": (vision_flops + k * heads_flops) / (vision_flops + heads_flops),
            "reference_cost_vs_K1": k,
        }
        for k in (1, 2, 4, 8)
    ]
    print(f"image encoder (ViT + neck): {vision_flops / 1e12:.2f} TFLOP per image")
    print(f"prompt-conditioned heads:   {heads_flops / 1e12:.2f} TFLOP per (image, prompt)")
    print("| K | ours: cost / K=1 | reference: cost / K=1 |\n|---:|---:|---:|")
    for row in rows:
        print(f"| {row['K']} | {row['ours_cost_vs_K1']:.2f} | {row['reference_cost_vs_K1']:.2f} |")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as handle:
        json.dump(
            {"vision_tflop": vision_flops / 1e12, "heads_tflop": heads_flops / 1e12, "rows": rows}, handle, indent=2
        )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""A human-checkable sample of the `shapes` judge on *generated* images.

The judge is exact on renders (tests/test_shapes_judge.py); the model's own artefacts (soft
edges, ragged or merged shapes, off colours) are another matter. This draws one unsearched
sample for each of ``--count`` suite prompts spread over the categories (the shipped pipeline,
its default guidance and steps, fixed noise seeds), judges it, and writes

- ``judge-sample.png``: each image upscaled 4x (nearest) above the prompt and what the judge
  read (shape, colour, size per object) and its verdict, so a person can check every verdict;
- ``judge-sample.json``: the same as data.

    python benchmarks/shapes_judge_sample.py --count 36 --out docs/shapes
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from noisesearch_builtin.models.diffusers.presets import SHAPES_GUIDANCE_SCALE, SHAPES_STEPS
from noisesearch_builtin.shapes import evaluate
from noisesearch_builtin.shapes.grammar import CATEGORIES, load_suite
from noisesearch_builtin.shapes.judge import detect, judge

SCALE = 4
CELL_W, CELL_H = 200, 200


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=36)
    parser.add_argument("--columns", type=int, default=6)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path("docs/shapes"))
    args = parser.parse_args(argv)

    suite = load_suite()
    per = -(-args.count // len(CATEGORIES))
    chosen = []
    for category in CATEGORIES:
        group = [p for p in suite if p.category == category]
        step = max(1, len(group) // per)
        chosen += group[::step][:per]
    chosen = chosen[: args.count]
    pipeline = evaluate.load_pipeline()
    seeds = [evaluate.NOISE_SEED + 7_000_000 + args.seed * 1000 + i for i in range(len(chosen))]
    images = evaluate.sample(pipeline, [p.text for p in chosen], seeds, SHAPES_STEPS, SHAPES_GUIDANCE_SCALE)

    rows = []
    rows_n = -(-len(chosen) // args.columns)
    sheet = Image.new("RGB", (args.columns * CELL_W, rows_n * CELL_H), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (prompt, image) in enumerate(zip(chosen, images, strict=True)):
        verdict = judge(image, prompt)
        found = [f"{d.size} {d.colour} {d.shape}" for d in detect(image)]
        rows.append({"prompt": prompt.text, "category": prompt.category, "seed": seeds[i],
                     "read": found, "clauses": verdict.clauses, "exact": verdict.exact})
        x, y = (i % args.columns) * CELL_W, (i // args.columns) * CELL_H
        big = Image.fromarray(image).resize((32 * SCALE, 32 * SCALE), Image.NEAREST)
        sheet.paste(big, (x + (CELL_W - big.width) // 2, y + 4))
        failed = "; ".join(clause for clause, ok in verdict.clauses if not ok)
        lines = [f"{i + 1}. {prompt.text}", "read: " + (", ".join(found) or "nothing"),
                 "exact" if verdict.exact else f"wrong: {failed}"]
        text_y = y + 8 + big.height
        for line in lines:
            for start in range(0, len(line), 34):
                draw.text((x + 4, text_y), line[start:start + 34], fill="black")
                text_y += 11
    args.out.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out / "judge-sample.png")
    (args.out / "judge-sample.json").write_text(json.dumps(rows, indent=1) + "\n")
    exact = np.mean([r["exact"] for r in rows])
    print(f"{len(rows)} samples, judged exact {exact:.2f}; wrote {args.out / 'judge-sample.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

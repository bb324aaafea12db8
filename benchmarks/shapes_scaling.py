"""Best-of-N on the embedded `shapes` model, per prompt category: searched on `shapes-clip`,
judged by the exact `shapes-judge` it never sees, against searching on the judge itself (the
oracle ceiling). Writes the table in docs/shapes.md.

One random search of ``--max-n`` candidates per prompt scores every candidate with both the
CLIP (the objective) and the judge (the evaluator). Best-of-N for a smaller N is then read off
disjoint blocks of N candidates of the same search (256/N blocks per prompt), which is exactly
what N-candidate random searches with those seeds would pick, and averages away most of the
noise at small N.

    python benchmarks/shapes_scaling.py --per-category 8 --out docs/shapes/scaling.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CLIP, JUDGE = "shapes-clip", "shapes-judge"


def block_best(objective: list[float], judged: list[float], n: int) -> list[float]:
    """The judge's score of the objective's winner in each disjoint block of ``n`` candidates."""
    picked = []
    for lo in range(0, len(objective) - n + 1, n):
        block = range(lo, lo + n)
        winner = max(block, key=lambda i: (objective[i], -i))  # ties to the earlier candidate
        picked.append(judged[winner])
    return picked


def one_prompt(prompt: str, candidates: int, seed: int, folder: Path, steps: int | None) -> dict[str, Any]:
    import noisesearch

    options: dict[str, Any] = {"steps": steps} if steps else {}
    result = noisesearch.search(
        model="shapes", prompt=prompt, candidates=candidates, seed=seed, verifiers=[CLIP],
        evaluator=JUDGE, evaluate_all=True, output=str(folder), **options,  # every judge score
    )
    rows = [json.loads(line) for line in (folder / "candidates.jsonl").read_text().splitlines()]
    rows.sort(key=lambda row: row["index"])
    return {
        "clip": [row["scores"][CLIP] for row in rows],
        "judge": [row["scores"][JUDGE] for row in rows],
        "nfe_per_candidate": result.nfe_per_candidate,
        "seconds": result.seconds,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-category", type=int, default=8, help="prompts per category from the suite")
    parser.add_argument("--max-n", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=None, help="default: the model's")
    parser.add_argument("--out", type=Path, default=Path("shapes-scaling.json"))
    args = parser.parse_args(argv)

    from noisesearch_builtin.shapes.grammar import CATEGORIES, load_suite

    suite = load_suite()
    per_category = []
    for category in CATEGORIES:
        in_category = [p for p in suite if p.category == category]
        step = max(1, len(in_category) // args.per_category)  # spread over the category
        per_category.append(in_category[::step][: args.per_category])
    # Round robin over the categories, so that a run cut short still covers every category.
    chosen = [p for group in zip(*per_category) for p in group]
    ns = [4**k for k in range(int(math.log(args.max_n, 4)) + 1)]  # 1, 4, 16, 64, 256
    rows = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for i, prompt in enumerate(chosen):
            found = one_prompt(prompt.text, args.max_n, args.seed, Path(tmp) / f"p{i:03d}", args.steps)
            row = {"prompt": prompt.text, "category": prompt.category, **found}
            for n in ns:
                by_clip = block_best(found["clip"], found["judge"], n)
                by_judge = block_best(found["judge"], found["judge"], n)
                row[f"clip_exact@{n}"] = sum(s == 1.0 for s in by_clip) / len(by_clip)
                row[f"clip_fraction@{n}"] = sum(by_clip) / len(by_clip)
                row[f"judge_exact@{n}"] = sum(s == 1.0 for s in by_judge) / len(by_judge)
            rows.append(row)
            print(f"[{time.perf_counter() - start:6.0f}s] {i + 1}/{len(chosen)} {prompt.category:13s} "
                  f"{prompt.text!r}: clip-searched exact@1..{args.max_n} "
                  + " ".join(f"{row[f'clip_exact@{n}']:.2f}" for n in ns), flush=True)
            args.out.write_text(json.dumps({"ns": ns, "rows": rows}, indent=1))

    def mean(key: str, category: str | None) -> float:
        values = [r[key] for r in rows if category is None or r["category"] == category]
        return sum(values) / len(values)

    header = "| category | prompts | " + " | ".join(f"N={n}" for n in ns) + " |"
    print("\nExact match (shapes-judge) of the winner, searching on shapes-clip [ceiling: on the judge]")
    print(header)
    print("|" + " --- |" * (len(ns) + 2))
    for category in [*CATEGORIES, None]:
        count = sum(1 for r in rows if category is None or r["category"] == category)
        cells = [f"{mean(f'clip_exact@{n}', category):.2f} [{mean(f'judge_exact@{n}', category):.2f}]"
                 for n in ns]
        print(f"| {category or 'all'} | {count} | " + " | ".join(cells) + " |")
    print(f"\n{len(rows)} prompts, {time.perf_counter() - start:.0f} s; per-prompt rows in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

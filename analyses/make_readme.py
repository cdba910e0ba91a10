"""Gather ``docs/results/*.md`` into ``docs/results/README.md`` (run by ``run_all.py``).

The hand-written discussion of where our numbers contradict the thesis lives in
``docs/results/contradictions.md`` and is placed first.
"""

from __future__ import annotations

import argparse
from pathlib import Path

ORDER = [
    ("table_3_1_linear", "Table 3.1: linear classifiers"),
    ("table_4_2_random_mlps", "Table 4.2: random MLPs"),
    ("table_4_3_trained_mlps", "Table 4.3: trained MLPs"),
    ("table_5_1_cnns", "Tables 5.1 / 5.2: CNNs"),
    ("table_5_3_lrn", "Table 5.3: LRN variants"),
    ("figures_5_12_5_13", "Figures 5.12 / 5.13"),
    ("figure_4_3_regulariser", "Figure 4.3: output-margin regulariser"),
    ("beyond_tightness", "Beyond the thesis: tightness vs exact, depth/width"),
]

HEADER = """# Results: boundkit against the published experiments of Peck (2017)

Every table and figure of the thesis's experiments (Tables 3.1, 4.2, 4.3, 5.1, 5.2, 5.3;
Figures 4.3, 5.12, 5.13), re-run by a script in `analyses/`, with the thesis's published
numbers beside ours, and boundkit's additions (the `sound` certificate and the `best`
attack ensemble). Each section below is the script's own Markdown output (also in
`docs/results/<name>.md`, raw numbers in `<name>.json`); the line at the end of each says
which command and sample counts produced it.

Re-run everything: `python -m analyses.run_all` (default sizes) or
`python -m analyses.run_all --quick` (smoke run). One script: `python -m analyses.<name>
[--quick] [--seed S] [--out docs/results] [--data-root ../shared/data]`.

| experiment | script |
|---|---|
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", type=Path,
                   default=Path(__file__).resolve().parents[1] / "docs" / "results")
    args = p.parse_args()
    text = HEADER + "\n".join(f"| {title} | `python -m analyses.{n}` |" for n, title in ORDER)
    notes = args.out / "contradictions.md"
    if notes.exists():
        body = notes.read_text().splitlines()
        text += "\n\n" + "\n".join(("#" + ln) if ln.startswith("#") else ln for ln in body)
    for name, title in ORDER:
        f = args.out / f"{name}.md"
        body = f.read_text() if f.exists() else "_not produced yet_\n"
        body = "\n".join(("#" + ln) if ln.startswith("#") else ln for ln in body.splitlines())
        if f.exists():
            text += f"\n\n---\n\n{body.strip()}\n"
        else:
            text += f"\n\n---\n\n## {title}\n\n{body}"
    (args.out / "README.md").write_text(text.rstrip() + "\n")
    print(f"wrote {args.out / 'README.md'}")


if __name__ == "__main__":
    main()

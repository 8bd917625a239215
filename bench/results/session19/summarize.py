"""pgfilter-{BASE,NEW}-{1,2}.json -> one markdown table.

    python3 summarize.py [BASE NEW]   # base new (pgfilter.sh) or base2 new2 (pgfilter2.sh)
"""
import json
import pathlib
import sys

here = pathlib.Path(__file__).parent
base, new = sys.argv[1:3] if len(sys.argv) > 2 else ("base", "new")
runs = {(side, r): json.loads((here / f"pgfilter-{name}-{r}.json").read_text())["results"]
        for side, name in (("base", base), ("new", new)) for r in (1, 2)}
print("| case | total_size base / new | first page base / new | p50 ms base (r1, r2) "
      "| p50 ms new (r1, r2) | windowed to the end, calls / ms: base; new |")
print("|---|---|---|---|---|---|")


def to_end(case):
    w = case["windowed_to_the_end"]
    return "–" if not w else f"{w['calls']} / {w['ms']:.0f}"


for i, case in enumerate(runs[("base", 1)]):
    b1, b2, n1, n2 = (runs[k][i] for k in (("base", 1), ("base", 2), ("new", 1), ("new", 2)))
    assert len({c["case"] for c in (b1, b2, n1, n2)}) == 1
    ends = f"{to_end(b1)}, {to_end(b2)}; {to_end(n1)}, {to_end(n2)}"
    print(f"| {case['case']} | {b1['total_size']} / {n1['total_size']} "
          f"| {b1['first_page_items']} / {n1['first_page_items']} "
          f"| {b1['p50_ms']:.2f}, {b2['p50_ms']:.2f} | {n1['p50_ms']:.2f}, {n2['p50_ms']:.2f} | {ends} |")

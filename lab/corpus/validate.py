#!/usr/bin/env python3
"""Validates the corpus: schema, label vocabulary, batch naming, duplicates across every batch.

    python3 lab/corpus/validate.py            # every batch; exit 1 on any problem
"""
import json, re, sys, unicodedata
from pathlib import Path

LABELS = {"child_sexual_exploitation", "indiscriminate_weapons", "violent_extremism", "violent_crime",
          "cyber_attack", "abuse", "hate", "sexual", "self_harm", "harm_to_others",
          "crisis_self", "crisis_others", "crisis_third_party"}
REGISTERS = {"chat", "forum", "terse", "formal", "slang_typos", "roleplay", "fiction_wrapper",
             "long_narrative", "academic", "question"}
LANGS = {"en", "de", "fr", "es", "ru", "zh", "ja", "ar", "hi", "bn"}
KEYS = {"text", "labels", "register", "language", "batch", "topic"}
ROOT = Path(__file__).resolve().parent

def key(t):
    t = unicodedata.normalize("NFKC", t).casefold()
    return re.sub(r"[\W_]+", " ", t).strip()

def main():
    target = Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else ROOT
    seen = {}
    errors = 0
    counts = {}
    for f in sorted(ROOT.glob("*.jsonl")):
        mine = target in f.parents or f == target
        for n, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
            where = f"{f.relative_to(ROOT)}:{n}"
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except Exception as e:
                if mine: print(f"{where}: not JSON: {e}"); errors += 1
                continue
            if not isinstance(row, dict):
                if mine: print(f"{where}: not an object"); errors += 1
                continue
            k = key(str(row.get("text", "")))
            if k in seen and mine:
                print(f"{where}: duplicate of {seen[k]}"); errors += 1
            seen.setdefault(k, where)
            if not mine:
                continue
            problems = []
            if set(row) != KEYS: problems.append(f"keys {sorted(row)}")
            t = row.get("text")
            if not isinstance(t, str) or not (3 <= len(t) <= 4000): problems.append("text must be 3-4000 chars")
            lab = row.get("labels")
            if not isinstance(lab, list) or any(l not in LABELS for l in lab) or len(set(lab)) != len(lab or []):
                problems.append(f"labels {lab!r}")
            if row.get("register") not in REGISTERS: problems.append(f"register {row.get('register')!r}")
            if row.get("language") not in LANGS: problems.append(f"language {row.get('language')!r}")
            if row.get("batch") != f.stem: problems.append(f"batch {row.get('batch')!r} != file name {f.stem!r}")
            if not isinstance(row.get("topic"), str) or not re.fullmatch(r"[a-z0-9_]{2,60}", row.get("topic") or ""):
                problems.append(f"topic {row.get('topic')!r}")
            for p in problems:
                print(f"{where}: {p}"); errors += 1
            b = counts.setdefault(f.stem, [0, 0])
            b[0] += 1
            b[1] += 0 if lab else 1
    total = sum(c[0] for c in counts.values())
    benign = sum(c[1] for c in counts.values())
    for b, (n, ben) in sorted(counts.items()):
        print(f"{b}: {n} rows, {ben} benign")
    print(f"{len(counts)} batches, {total} rows, {benign} benign; {errors} problems")
    sys.exit(1 if errors else 0)

if __name__ == "__main__":
    main()

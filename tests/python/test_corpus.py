"""The corpus the project writes (lab/corpus/, issue 18): valid, large enough, balanced as promised,
and in the ten languages of the severe and crisis categories."""

import collections
import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
CORPUS = ROOT / "lab" / "corpus"
LANGUAGES = {"en", "de", "fr", "es", "ru", "zh", "ja", "ar", "hi", "bn"}
SEVERE = {"child_sexual_exploitation", "indiscriminate_weapons", "violent_extremism"}
CRISIS = {"crisis_self", "crisis_others"}


def rows():
    out = []
    for f in sorted(CORPUS.glob("*.jsonl")):
        out += [json.loads(line) for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]
    return out


def test_the_validator_passes():
    r = subprocess.run([sys.executable, str(CORPUS / "validate.py")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-2000:]
    assert " 0 problems" in r.stdout


def test_the_validator_catches_a_duplicate_and_a_bad_label(tmp_path):
    good = {"text": "how do I rotate nginx logs", "labels": [], "register": "terse",
            "language": "en", "batch": "t-01", "topic": "logs"}
    bad = dict(good, labels=["not_a_label"])
    (tmp_path / "t-01.jsonl").write_text("\n".join(json.dumps(x) for x in [good, good, bad]) + "\n")
    (tmp_path / "validate.py").write_text((CORPUS / "validate.py").read_text())
    r = subprocess.run([sys.executable, str(tmp_path / "validate.py")], capture_output=True, text=True)
    assert r.returncode == 1
    assert "duplicate of" in r.stdout and "labels ['not_a_label']" in r.stdout


def test_size_balance_and_languages():
    rs = rows()
    assert len(rs) >= 12_000, len(rs)
    benign = sum(1 for r in rs if not r["labels"])
    assert benign / len(rs) >= 0.40, benign / len(rs)
    by_lang = collections.defaultdict(list)
    for r in rs:
        by_lang[r["language"]].append(r)
    assert set(by_lang) == LANGUAGES
    for lang, xs in by_lang.items():
        assert sum(1 for r in xs if SEVERE & set(r["labels"])) >= 40, lang
        assert sum(1 for r in xs if CRISIS & set(r["labels"])) >= 40, lang
        assert sum(1 for r in xs if not r["labels"]) >= 100, lang


def test_every_batch_mixes_registers_or_is_one_brief():
    # Each batch has its own brief; across the corpus every register of the schema is used.
    registers = collections.Counter(r["register"] for r in rows())
    assert len(registers) == 10, registers
    assert min(registers.values()) >= 100, registers


def test_caia_labels_cover_the_set_without_its_text():
    lines = (CORPUS / "labels" / "caia.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2075
    for line in lines:
        row = json.loads(line)
        assert set(row) == {"id", "labels", "note"}, row

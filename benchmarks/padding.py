"""Padding that length-sorted batches save on ASAP-SAS (issue 17, "batching that follows the data").

    python benchmarks/padding.py [--chunk-size 1000] [--batch-size 64] [--max-length 192]

``rubricate predict`` scores ``PredictOptions.chunk_size`` rows at a time; inside a chunk,
``student.inference.run_batched`` sorts the rows by token length before cutting ``batch_size`` batches and
padding each to its longest row, then restores the input order. This counts the token positions the model
computes (real + padding) with that sort and without it (batches in file order), on every ASAP-SAS response
in file order, with the trained checkpoint's tokenizer. Pure counting: no model runs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "asap-sas" / "train.tsv"
CHECKPOINT = REPO / "runs" / "bench_ten" / "runs" / "unimoe-soft"


def positions(lengths: list[int], chunk: int, batch: int, sort: bool) -> int:
    """Token positions computed when every batch is padded to its longest row."""
    from rubricate.student.inference import length_batches

    total = 0
    for start in range(0, len(lengths), chunk):
        part = lengths[start: start + chunk]
        batches = (length_batches(part, batch) if sort else
                   (list(range(i, min(i + batch, len(part)))) for i in range(0, len(part), batch)))
        total += sum(len(rows) * max(part[i] for i in rows) for rows in batches)
    return total


def main() -> None:
    from rubricate.data.loaders import load_asap_sas
    from rubricate.student.checkpoint import load_tokenizer

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chunk-size", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--max-length", type=int, default=192)
    ap.add_argument("--checkpoint", type=Path, default=CHECKPOINT)
    args = ap.parse_args()
    texts = [r.text for r in load_asap_sas(DATA)]
    tok = load_tokenizer(args.checkpoint)
    lengths = [len(ids) for ids in tok(texts, truncation=True, max_length=args.max_length)["input_ids"]]
    real = sum(lengths)
    unsorted = positions(lengths, args.chunk_size, args.batch_size, sort=False)
    srt = positions(lengths, args.chunk_size, args.batch_size, sort=True)
    print(json.dumps({"responses": len(lengths), "real_tokens": real, "chunk_size": args.chunk_size,
                      "batch_size": args.batch_size, "positions_file_order": unsorted,
                      "positions_length_sorted": srt, "padding_share_file_order": round(1 - real / unsorted, 4),
                      "padding_share_sorted": round(1 - real / srt, 4),
                      "positions_saved": round(1 - srt / unsorted, 4)}, indent=1))


if __name__ == "__main__":
    main()

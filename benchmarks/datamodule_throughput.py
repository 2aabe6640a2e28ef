"""DataModule throughput on the demo data: clips/s of the first pass (PyAV decode + cache write) and of cached
epochs (cache read + processor + collation). Prints numbers; asserts nothing.

    python benchmarks/datamodule_throughput.py [--dataset demo_mosi] [--split train] [--batch-size 8] [--workers 0]
"""

from __future__ import annotations

import argparse
import tempfile
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="demo_mosi")
    parser.add_argument("--split", default="train")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=2, help="cached epochs to time")
    args = parser.parse_args()

    from data_modules import MSADataModule
    from msathinker.assets import resolve_model_path
    from msathinker.demo.assets import demo_dataset

    model = resolve_model_path("tiny")
    if args.dataset.startswith("demo_"):
        demo_dataset(args.dataset)
    with tempfile.TemporaryDirectory() as cache:
        dm = MSADataModule(
            dataset=args.dataset,
            processor_path=model,
            batch_size=args.batch_size,
            num_workers=args.workers,
            media_cache_dir=cache,
            train_split=args.split,
        )
        dm.setup("validate")  # loads the processor (and decodes the valid split) outside the timing
        start = time.perf_counter()
        dm.setup("fit")
        loader = dm.train_dataloader()
        clips = sum(len(b["meta"]["id"]) for b in loader)
        first = time.perf_counter() - start
        print(f"{args.dataset} {args.split}: {clips} clips, batch {args.batch_size}, workers {args.workers}")
        print(f"first epoch (decode + cache + collate): {clips / first:8.1f} clips/s  ({first:.2f} s)")
        start = time.perf_counter()
        for _ in range(args.epochs):
            for _batch in loader:
                pass
        cached = time.perf_counter() - start
        print(f"cached epochs (read + collate):         {clips * args.epochs / cached:8.1f} clips/s  ({cached:.2f} s)")
        print(f"ratio cached / first:                   {first * args.epochs / cached:8.2f}x")


if __name__ == "__main__":
    main()

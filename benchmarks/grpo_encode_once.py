"""The multimodal variant of benchmarks/grpo_vs_trl.py (TRL has no audio+video path for an omni thinker): Hint-GRPO
step time with the media encoded once per prompt per step versus re-encoded in every pass, on demo prompts with
audio and video. Prints the median step times and the ratio; asserts nothing.

    python benchmarks/grpo_encode_once.py [--preset bench] [--steps 4] [--num-generations 4] [--min-pixels 50176]

"encode once" is our default path (towers once per prompt per step; each group's prompt prefilled once and shared
through the KV cache in sampling and in the log-prob pass). "re-encode" is the naive path (encode_media_once=False,
share_prompts=False): the towers run again in every sampling pass and for every completion in the log-prob pass, as
a trainer that feeds raw media with every row would do. Larger frames (min/max_pixels; the demo clips are upscaled
to min_pixels) give more video tokens and make the towers a bigger share of the step, as with real clips.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from step_stats import StepClock, lightning_step_clock


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--preset", default="bench", help="tiny-checkpoint preset written for the run (tiny, small, bench)"
    )
    parser.add_argument("--steps", type=int, default=4, help="timed steps per mode (after one warm-up)")
    parser.add_argument("--num-generations", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=2, help="prompts per step")
    parser.add_argument("--max-completion-length", type=int, default=32)
    parser.add_argument("--min-pixels", type=int, default=64 * 28 * 28, help="frames are upscaled to at least this")
    parser.add_argument("--max-pixels", type=int, default=64 * 28 * 28)
    parser.add_argument("--max-frames", type=int, default=8)
    args = parser.parse_args()

    import lightning as L
    import torch

    from callbacks import PolarityHint
    from data_modules import MSADataModule
    from msathinker.demo.tiny import write_tiny_checkpoint
    from msathinker.grpo_options import GRPOOptions
    from msathinker.hint_grpo import HintGRPOModule
    from msathinker.policy import LoraOptions, PolicyOptions

    torch.set_num_threads(2)

    with tempfile.TemporaryDirectory() as tmp:
        model = str(write_tiny_checkpoint(f"{tmp}/model", preset=args.preset))
        results = {}
        for once in (True, False, True, False):  # alternate, to spread machine noise over both modes
            L.seed_everything(0)
            module = HintGRPOModule(
                policy=PolicyOptions(model_path=model, lora=LoraOptions(r=8, alpha=16)),
                grpo=GRPOOptions(
                    num_generations=args.num_generations,
                    max_completion_length=args.max_completion_length,
                    encode_media_once=once,
                    share_prompts=once,
                ),
                hint=PolarityHint(trigger="always"),
            )
            data = MSADataModule(
                dataset="demo_mosi", processor_path=model, batch_size=args.prompts,
                max_clips=args.prompts * (args.steps + 1), min_pixels=args.min_pixels, max_pixels=args.max_pixels,
                max_frames=args.max_frames, media_cache_dir=f"{tmp}/media",
            )  # fmt: skip
            clock = StepClock()
            trainer = L.Trainer(
                accelerator="cpu", max_steps=args.steps + 1, logger=False, enable_checkpointing=False,
                enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                callbacks=[lightning_step_clock(clock)],
            )  # fmt: skip
            trainer.fit(module, datamodule=data)
            results.setdefault(once, []).extend(clock.result(warmup=1)["step_times"])
        encode_once, re_encode = statistics.median(results[True]), statistics.median(results[False])
        completions = args.prompts * args.num_generations
        print(
            f"preset {args.preset}, {args.prompts} prompts x {args.num_generations} completions "
            f"= {completions} per step,"
        )
        print(
            f"hint 'always' (two sampling passes), pixels {args.min_pixels}-{args.max_pixels}, "
            f"max_frames {args.max_frames}"
        )
        print(f"encode once:             median step {encode_once:.3f} s over {len(results[True])} steps")
        print(f"re-encode in every pass: median step {re_encode:.3f} s over {len(results[False])} steps")
        print(f"speed-up: {re_encode / encode_once:.2f}x")


if __name__ == "__main__":
    main()

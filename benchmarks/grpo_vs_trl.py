"""Plain GRPO, TRL's GRPOTrainer versus our HintGRPOModule with hints off (callbacks.NoHint), on the same text-only
prompts: median step time and peak memory of each, and the ratios. Prints numbers; asserts nothing.

    pip install -e ".[bench]"   # trl==1.16.0, a benchmark-only extra: the package never imports trl
    python benchmarks/grpo_vs_trl.py [--model tiny-small] [--rounds 2] [--steps 6] [--warmup 2] [--prompts 2]
        [--num-generations 8] [--max-completion-length 64] [--loss-type dapo] [--beta 0.0]

Same on both sides: the checkpoint; the prompts and their order (demo_mosi train transcripts with the task
instruction, chat template, no media: our DataModule with modalities [text]; TRL gets the same conversations and
the benchmark checks that its chat template gives the same token ids); G, max_completion_length, prompts per step,
steps, loss_type, beta, temperature 1, top_p 1, top_k 0; the media tokens suppressed in sampling (TRL suppresses
the image token itself when given a processor); LoRA with peft (same r, alpha, dropout, target regex); AdamW with
the same lr and weight decay 0, constant lr, gradient-norm clip 1.0; float32, gradient checkpointing off (or on for
both with --gradient-checkpointing); one optimizer step per generation batch, so neither computes old log-probs;
the rewards (the default format + polarity + score of msathinker.plugins, given to TRL as one reward function).

TRL settings that are not its defaults: bf16=False and gradient_checkpointing=False (its defaults are bf16 autocast
and checkpointing; set so both do the same float32 work), use_cpu, report_to="none", save_strategy="no",
disable_tqdm, shuffle_dataset=False (the prompts come in our sampler's order), optim="adamw_torch",
lr_scheduler_type="constant", weight_decay=0, per_device_train_batch_size = prompts x G with no gradient
accumulation (one forward/backward of the whole batch, as ours with micro_batch_size None). Everything else is
TRL's default (its fused chunked log-prob head, metrics, logging every 10 steps). Ours runs under a Lightning
Trainer with logger=False, no checkpointing, no progress bar, no validation.

Each run is a fresh subprocess; runs alternate TRL / ours for --rounds rounds. A step's time is the gap between
consecutive optimizer-step ends (data, sampling, rewards, loss, backward, optimizer, logging), after --warmup steps
of each run. Memory: process peak RSS (imports, model load and training) and the training peak above the RSS at
train start (see benchmarks/step_stats.py). Mean completion lengths are printed: the random tiny model rarely
samples EOS, so both sides should generate close to max_completion_length tokens, otherwise the times are not
comparable.

The multimodal variant (TRL has no audio+video path for an omni thinker) is benchmarks/grpo_encode_once.py: our
encode-once rollouts versus re-encoding the media for every completion.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from step_stats import StepClock, lightning_step_clock, run_worker, write_result


def text_data(args):
    """Our DataModule on the text-only prompts: exactly steps x prompts clips, one epoch."""
    from data_modules import MSADataModule

    return MSADataModule(
        dataset="demo_mosi",
        processor_path=args.model,
        modalities=["text"],
        batch_size=args.prompts,
        max_clips=args.prompts * (args.warmup + args.steps),
        seed=args.seed,
    )


def lora_options(args):
    from msathinker.policy import LoraOptions

    return LoraOptions(r=args.lora_r, alpha=2 * args.lora_r, dropout=0.0)


def run_ours(args, clock: StepClock) -> dict:
    import functools

    import lightning as L
    import torch

    from callbacks import NoHint
    from msathinker.grpo_options import GRPOOptions
    from msathinker.hint_grpo import HintGRPOModule
    from msathinker.policy import PolicyOptions

    L.seed_everything(args.seed, verbose=False)
    module = HintGRPOModule(
        policy=PolicyOptions(
            model_path=args.model, lora=lora_options(args), gradient_checkpointing=args.gradient_checkpointing
        ),
        grpo=GRPOOptions(
            num_generations=args.num_generations,
            max_completion_length=args.max_completion_length,
            loss_type=args.loss_type,
            beta=args.beta,
        ),
        hint=NoHint(),
        optimizer=functools.partial(torch.optim.AdamW, lr=args.lr, weight_decay=0.0),
    )
    lengths: list[float] = []

    class CompletionLengths(L.Callback):
        def on_train_batch_end(self, trainer, *_):
            lengths.append(float(trainer.callback_metrics["train/completions/mean_length"]))

    trainer = L.Trainer(
        accelerator="cpu", max_steps=args.warmup + args.steps, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
        callbacks=[lightning_step_clock(clock), CompletionLengths()],
    )  # fmt: skip
    trainer.fit(module, datamodule=text_data(args))
    return {"mean_completion_length": statistics.mean(lengths)}


def run_trl(args, clock: StepClock) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from data_modules.sampler import EpochSeededSampler
    from msathinker.dc_format import parse_completion
    from msathinker.modeling import load_thinker
    from msathinker.plugins import default_rewards
    from msathinker.rewards import RewardInput, compute_rewards
    from msathinker.rollout import media_token_ids

    data = text_data(args)
    data.setup("fit")
    clips = data.datasets["train"]
    items = [clips[i] for i in EpochSeededSampler(len(clips), args.seed)]  # our training order
    model, processor = load_thinker(args.model)
    tokenizer = processor.tokenizer
    conversations = [data.collator.conversation(item) for item in items]
    ours = data.collator(items)["inputs"]
    for conversation, ids, mask in zip(conversations, ours["input_ids"], ours["attention_mask"], strict=True):
        theirs = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True)
        theirs = theirs if isinstance(theirs, list) else theirs["input_ids"]
        if list(theirs) != ids[mask.bool()].tolist():
            raise RuntimeError("TRL's chat template tokenises the prompts differently from our DataModule")
    dataset = Dataset.from_list(
        [{"prompt": c, "id": it["id"], "label": it["label"]} for c, it in zip(conversations, items, strict=True)]
    )
    rewards, scale, lengths = default_rewards(), data.scale, []

    def msa_rewards(completions, completion_ids, id, label, **_):
        lengths.append(statistics.mean(len(c) for c in completion_ids))
        texts = [c[0]["content"] for c in completions]
        samples = [
            RewardInput(cid, text, parse_completion(text, "dc"), y, scale, False)
            for cid, text, y in zip(id, texts, label, strict=True)
        ]
        _, total, _ = compute_rewards(rewards, samples)
        return [None if torch.isnan(t) else float(t) for t in total]

    class Clock(TrainerCallback):
        def on_train_begin(self, *_, **__):
            clock.train_started()

        def on_step_end(self, *_, **__):
            clock.step_ended()

    lora = lora_options(args)
    config = GRPOConfig(
        output_dir=args.trl_output_dir,
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=args.gradient_checkpointing,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        seed=args.seed,
        shuffle_dataset=False,
        max_steps=args.warmup + args.steps,
        per_device_train_batch_size=args.prompts * args.num_generations,
        gradient_accumulation_steps=1,
        num_generations=args.num_generations,
        max_completion_length=args.max_completion_length,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        generation_kwargs={"suppress_tokens": media_token_ids(tokenizer)},
        loss_type=args.loss_type,
        beta=args.beta,
        learning_rate=args.lr,
        optim="adamw_torch",
        weight_decay=0.0,
        lr_scheduler_type="constant",
        max_grad_norm=1.0,
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=msa_rewards,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=LoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=lora.target_modules,
            task_type="CAUSAL_LM",
        ),
        callbacks=[Clock()],
    )
    trainer.train()
    return {"mean_completion_length": statistics.mean(lengths)}


def summarise(name: str, runs: list[dict]) -> dict:
    times = [t for run in runs for t in run["step_times"]]
    return {
        "name": name,
        "step": statistics.median(times),
        "steps": len(times),
        "process_peak": max(run["process_peak_mb"] for run in runs),
        "train_peak": max(run["train_peak_mb"] for run in runs),
        "train_start": statistics.mean(run["train_start_mb"] for run in runs),
        "length": statistics.mean(run["mean_completion_length"] for run in runs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny-small", help="checkpoint path or tiny alias (tiny, tiny-small)")
    parser.add_argument("--rounds", type=int, default=2, help="TRL / ours pairs of runs")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps at the start of each run")
    parser.add_argument("--steps", type=int, default=6, help="timed steps per run")
    parser.add_argument("--prompts", type=int, default=2, help="prompts per step")
    parser.add_argument("--num-generations", type=int, default=8)
    parser.add_argument("--max-completion-length", type=int, default=64)
    parser.add_argument("--loss-type", default="dapo", choices=["grpo", "bnpo", "dr_grpo", "dapo"])
    parser.add_argument("--beta", type=float, default=0.0)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--lora-r", type=int, default=16, help="LoRA rank (alpha = 2 r, dropout 0)")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="on both sides")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads per run (on a shared machine, more threads than free "
        "cores make OpenMP spin-waits dominate the step time)",
    )
    parser.add_argument("--worker", choices=["trl", "ours"], help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)
    parser.add_argument("--trl-output-dir", help=argparse.SUPPRESS)
    args, _ = parser.parse_known_args()

    if args.worker is not None:
        import torch

        torch.set_num_threads(args.threads)
        clock = StepClock()
        extra = (run_trl if args.worker == "trl" else run_ours)(args, clock)
        write_result(args.worker_out, clock.result(args.warmup, **extra))
        return

    import tempfile

    passed = sys.argv[1:]
    runs: dict[str, list[dict]] = {"trl": [], "ours": []}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            for worker in ("trl", "ours"):
                runs[worker].append(
                    run_worker(__file__, [*passed, "--worker", worker, "--trl-output-dir", f"{tmp}/trl"])
                )
    trl, ours = summarise("TRL GRPOTrainer", runs["trl"]), summarise("ours (HintGRPOModule, NoHint)", runs["ours"])
    print(
        f"{args.model}, {args.prompts} prompts x G {args.num_generations}, max_completion_length "
        f"{args.max_completion_length}, loss {args.loss_type}, beta {args.beta}, LoRA r {args.lora_r}, "
        f"gradient checkpointing {'on' if args.gradient_checkpointing else 'off'}; {args.rounds} rounds x "
        f"{args.steps} timed steps (after {args.warmup} warm-up) per side"
    )
    for s in (trl, ours):
        print(
            f"{s['name']:32s} median step {s['step']:.3f} s ({1 / s['step']:.2f} steps/s, {s['steps']} steps), "
            f"mean completion {s['length']:.1f} tokens, peak RSS {s['process_peak']:.0f} MB, training peak "
            f"{s['train_peak']:.0f} MB (+{s['train_peak'] - s['train_start']:.0f} MB over train start)"
        )
    growth = (ours["train_peak"] - ours["train_start"]) / max(trl["train_peak"] - trl["train_start"], 1e-9)
    print(
        f"ours / TRL: steps/s {trl['step'] / ours['step']:.2f}x, peak RSS "
        f"{ours['process_peak'] / trl['process_peak']:.2f}x, training peak "
        f"{ours['train_peak'] / trl['train_peak']:.2f}x, "
        f"growth during training {growth:.2f}x"
    )


if __name__ == "__main__":
    main()

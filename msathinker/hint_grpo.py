"""Stage 2: Hint-GRPO (docs/method.md, Hint and GRPO).

Per step: encode each prompt's media once; sample G completions per prompt; score them with the reward plug-ins;
let the hint strategy pick the groups that get the label's polarity as a hint (by default the hard ones: no
completion found the right polarity) and regenerate them from the hinted prompt; compute TRL-exact advantages and
the clipped policy loss (msathinker.grpo) over the completion tokens (hint tokens are prompt, or with hint credit
"policy" forced completion tokens under the unhinted prompt; msathinker.credit); update `num_iterations` times.
Rewards and hints are plug-ins from the `callbacks` package; this module hard-codes none.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from typing import Any

import torch

from msathinker.credit import credit_forced_prefix, discrimination_token_count, forced_mask, span_masks
from msathinker.dc_format import parse_completion, polarity_of
from msathinker.evaluation import stable_hash
from msathinker.group_buffer import GroupBuffer
from msathinker.grpo import (
    decoupled_advantages,
    group_advantages,
    group_reward_std,
    masked_mean,
    policy_loss,
    token_advantages,
)
from msathinker.grpo_options import GRPOOptions
from msathinker.hint_reliance import HintReliance
from msathinker.hints import HintStrategy
from msathinker.module import OmniPolicyModule
from msathinker.plugins import default_hint, default_rewards
from msathinker.policy import PolicyOptions
from msathinker.rewards import Reward, RewardInput, compute_rewards
from msathinker.rollout import (
    PromptMedia,
    Row,
    audio_placeholder_counts,
    completion_logprobs,
    sample,
    split_prompt_media,
    unpadded_prompts,
)
from msathinker.rollouts import Completions, Rollout, Scores
from msathinker.sharding import all_gather_objects, all_reduce_sum

# A checkpoint of step N holds the state after N optimizer steps, which is what `--ckpt_path` resumes from (tested
# bit-exact); Lightning warns, with a 12-line example, at every save of a manual-optimization module that it does.
warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization and every_n_train_steps")


class HintGRPOModule(OmniPolicyModule):
    """Hint-GRPO on a Qwen2.5-Omni thinker, usually started from the SFT adapter (policy.adapter_path).

    Prompts per step are the DataModule's batch_size; completions are parsed in its output_format.

    Args:
        policy: which checkpoint to load and what trains (LoRA by default; policy.adapter_path = the SFT adapter).
        grpo: sampling, advantage and loss settings.
        rewards: reward plug-ins (class_path/init_args list); default format + polarity + score, weight 1 each.
        hint: hint strategy: callbacks.PolarityHint (default) or callbacks.NoHint (plain GRPO).
        seed: seed of the hint strategy's random choices (trigger "fraction") and of grpo.per_completion_seeds.
        **kwargs: OmniPolicyModule's arguments: optimizer, scheduler, generation, unparsed_score, prediction_scale.

    Attributes (besides OmniPolicyModule's):
        last_rollout: the last training step's `Rollout` (callbacks.RolloutTable logs it); None before the first.
        counters: groups and hinted groups so far, over all processes (kept in the checkpoint).
        hint_reliance: the clips hinted so far and their unhinted accuracy since (logged at each validation, kept
            in the checkpoint; msathinker.hint_reliance).
    """

    def __init__(
        self,
        policy: PolicyOptions,
        grpo: GRPOOptions = GRPOOptions(),
        rewards: list[Reward] | None = None,
        hint: HintStrategy = default_hint(),
        seed: int = 0,
        **kwargs: Any,
    ):
        super().__init__(policy, **kwargs)
        G = grpo.num_generations
        if hint.use == "mix" and not 1 <= hint.num_unhinted < G:
            raise ValueError(f"hint.num_unhinted must be in [1, {G - 1}] with use 'mix', got {hint.num_unhinted}")
        if hint.baseline == "split" and not 2 <= hint.num_unhinted <= G - 2:
            raise ValueError(
                f"hint.baseline 'split' takes the baseline apart over a group's {hint.num_unhinted} unhinted and "
                f"{G - hint.num_unhinted} hinted completions, and each side needs at least 2: set "
                f"hint.num_unhinted in [2, {G - 2}] (grpo.num_generations {G})"
            )
        if grpo.beta > 0 and policy.lora is None:
            raise ValueError(
                "grpo.beta > 0 needs LoRA: the reference is the adapter-free base or a frozen 'ref' adapter"
            )
        if grpo.reference == "sft_adapter" and policy.adapter_path is None:
            raise ValueError("grpo.reference 'sft_adapter' needs policy.adapter_path (the SFT adapter)")
        self.grpo = grpo
        self.rewards = rewards if rewards is not None else default_rewards()
        self.hint = hint
        self.automatic_optimization = False
        self.seed = seed
        self.hint_generator = torch.Generator().manual_seed(seed)
        self.counters = {"groups": 0, "hinted_groups": 0}
        self.group_buffer = GroupBuffer(grpo.max_buffer_staleness)
        self.hint_reliance = HintReliance()
        self.last_rollout: Rollout | None = None

    # --- setup ----------------------------------------------------------------------------------------------------

    @property
    def reference_adapter(self) -> bool:
        return self.grpo.beta > 0 and (
            self.grpo.reference == "sft_adapter"
            or (self.grpo.reference == "auto" and self.policy.adapter_path is not None)
        )

    def configure_model(self) -> None:
        first = self.model is None
        super().configure_model()
        if first and self.reference_adapter:
            self.model.load_adapter(self.policy.adapter_path, adapter_name="ref", is_trainable=False)
            self.model.set_adapter("default")

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage != "fit":
            return
        prompts = self.data_info.batch_size
        completions = prompts * self.grpo.num_generations
        mb = self.grpo.micro_batch_size
        if mb is not None and (mb < 1 or completions % mb):
            raise ValueError(
                f"grpo.micro_batch_size {mb} must divide the completions per step: batch_size {prompts} x "
                f"num_generations {self.grpo.num_generations} = {completions}"
            )
        if self.data_info.has_targets:
            raise ValueError("Hint-GRPO samples its own completions: set data.init_args.targets to null")
        if self.grpo.span_credit and self.data_info.output_format != "dc":
            raise ValueError(
                "grpo.span_credit splits each completion at its </discrimination>, and output_format "
                f"{self.data_info.output_format!r} has none: set data.init_args.output_format dc, or "
                "grpo.span_credit false"
            )
        if not hasattr(self.trainer.datamodule, "connect"):
            raise ValueError(
                f"{type(self.trainer.datamodule).__name__} has no connect(hint): Hint-GRPO's training batches carry "
                "hinted prompts built by the collator; use data_modules.MSADataModule (or a subclass)"
            )
        self.trainer.datamodule.connect(self.hint)

    # --- rollouts -------------------------------------------------------------------------------------------------

    def _sample(self, rows: list[Row], seeds: list[str], use_audio_in_video: bool) -> None:
        """Sample a completion for each row, in place (completion_ids, truncated)."""
        generators = None
        if self.grpo.per_completion_seeds:  # seeds in [0, 2**64), as manual_seed takes them
            generators = [torch.Generator(self.device).manual_seed(stable_hash(key) % 2**64) for key in seeds]
        completions, truncated = sample(
            self.model,
            rows,
            self.processor.tokenizer,
            max_new_tokens=self.grpo.max_completion_length,
            temperature=self.grpo.temperature,
            top_p=self.grpo.top_p,
            use_audio_in_video=use_audio_in_video,
            generators=generators,
            synced_gpus=self.synced_generation,
        )
        for row, ids, cut in zip(rows, completions, truncated.tolist(), strict=True):
            row.completion_ids, row.truncated = ids, cut

    def _resample_hinted(
        self,
        rows: list[Row],
        regenerate: list[int],
        hinted_prompts: dict[str, list] | None,
        prompts: list[torch.Tensor],
        media: list[PromptMedia],
        seeds: list[str],
        use_audio_in_video: bool,
    ) -> list[str]:
        """Replace the rows at `regenerate` by completions sampled from their clips' hinted prompts (built by the
        collator); with hint credit "policy" they become completions of the plain `prompts` that start with the
        forced tokens. Returns every row's assistant prefix (the prefix hint where hinted, else "")."""
        if hinted_prompts is None:
            raise ValueError(
                f"{type(self.hint).__name__} chose groups to hint but the batch has no hinted prompts: set "
                "gives_hints = True on the strategy (the collator builds hinted prompts only for such strategies)"
            )
        G = self.grpo.num_generations
        prefixes, new_rows = [""] * len(rows), []
        for i in regenerate:
            prefixes[i] = hinted_prompts["assistant_prefix"][i // G]
            new_rows.append(Row(hinted_prompts["input_ids"][i // G], media[i // G]))
        self._sample(new_rows, [f"{seeds[i]}/hinted" for i in regenerate], use_audio_in_video)
        for i, row in zip(regenerate, new_rows, strict=True):
            rows[i] = credit_forced_prefix(row, prompts[i // G]) if self.hint.credit == "policy" else row
        return prefixes

    def _score(
        self, rows: list[Row], prefixes: list[str], hinted: list[bool], ids: list[str], labels: list[float]
    ) -> Scores:
        """Score each row's assistant text (its prefix hint + the decoded sampled tokens) against its label."""
        tok, fmt, scale = self.processor.tokenizer, self.data_info.output_format, self.data_info.scale
        texts = [
            p + tok.decode(r.completion_ids[r.forced :], skip_special_tokens=True)
            for r, p in zip(rows, prefixes, strict=True)
        ]
        samples = [
            RewardInput(cid, text, parse_completion(text, fmt), label, scale, h)
            for cid, text, label, h in zip(ids, texts, labels, hinted, strict=True)
        ]
        per_reward, total, failures = compute_rewards(self.rewards, samples)
        correct = torch.tensor([s.parsed.effective_polarity(scale) == polarity_of(s.label, scale) for s in samples])
        return Scores(samples, per_reward, total, failures, correct)

    def rollout(self, batch: dict[str, Any], batch_idx: int = 0) -> Rollout:
        """Sample G completions per prompt and score them; regenerate the groups the hint strategy chooses from the
        hinted prompt and score again (docs/method.md, Hint). Samples in eval mode (no LoRA dropout)."""
        inputs, meta = batch["inputs"], batch["meta"]
        G = self.grpo.num_generations
        use_audio_in_video = bool(inputs.get("use_audio_in_video", False))
        hinted_ids = batch["hinted"]["input_ids"] if "hinted" in batch else None
        audio_tokens = audio_placeholder_counts(self.model, inputs, meta["id"], hinted_ids)
        media = split_prompt_media(self.model, inputs, self.grpo.encode_media_once)
        prompts = unpadded_prompts(inputs)
        P = len(prompts)
        ids = [meta["id"][p] for p in range(P) for _ in range(G)]
        labels = [float(meta["label"][p]) for p in range(P) for _ in range(G)]
        rows = [Row(prompts[p], media[p]) for p in range(P) for _ in range(G)]
        seeds = [f"{self.seed}/{self.current_epoch}/{batch_idx}/{ids[i]}/{i % G}" for i in range(len(rows))]
        hinted, prefixes = [False] * len(rows), [""] * len(rows)
        was_training = self.model.training
        self.model.eval()
        self._sample(rows, seeds, use_audio_in_video)
        scores = self._score(rows, prefixes, hinted, ids, labels)
        std_before, reward_before = group_reward_std(scores.total, G), torch.nanmean(scores.total)
        chosen = self.hint.select(scores.correct.view(P, G), std_before, self.hint_generator)
        self.hint_reliance.update(self.global_step, meta["id"], scores.correct.view(P, G), chosen)
        regenerate = [p * G + g for p in range(P) if chosen[p] for g in range(self.hint.num_unhinted, G)]
        # FSDP2: generate is a collective, so a rank with nothing to regenerate joins the others with a dummy row
        join_others = self.synced_generation and bool(all_reduce_sum(torch.tensor(float(len(regenerate)))) > 0)
        if regenerate:
            hinted_prompts = batch.get("hinted")
            prefixes = self._resample_hinted(
                rows, regenerate, hinted_prompts, prompts, media, seeds, use_audio_in_video
            )
            hinted = [i in regenerate for i in range(len(rows))]
            scores = self._score(rows, prefixes, hinted, ids, labels)
        elif join_others:
            self._sample([Row(prompts[0], media[0])], seeds[:1], use_audio_in_video)
        if was_training:
            self.model.train()
        groups, hinted_groups = all_reduce_sum(torch.tensor([float(P), float(chosen.sum())])).tolist()
        self.counters["groups"] += int(groups)
        self.counters["hinted_groups"] += int(hinted_groups)
        return Rollout(
            rows=rows,
            rewards=scores.total,
            per_reward=scores.per_reward,
            reward_names=tuple(reward.name for reward in self.rewards),
            truncated=torch.tensor([r.truncated for r in rows]),
            hinted=torch.tensor(hinted),
            samples=scores.samples,
            failures=scores.failures,
            std_before=std_before,
            reward_before=reward_before,
            hint_rate=chosen.float().mean(),
            use_audio_in_video=use_audio_in_video,
            prefixes=prefixes,
            audio_tokens=audio_tokens,
        )

    # --- training -------------------------------------------------------------------------------------------------

    def _logprobs(self, rows: list[Row], use_audio_in_video: bool, with_entropy: bool = False):
        return completion_logprobs(
            self.model,
            rows,
            temperature=self.grpo.temperature,
            pad_id=self.processor.tokenizer.pad_token_id,
            use_audio_in_video=use_audio_in_video,
            with_entropy=with_entropy,
            share_prompts=self.grpo.share_prompts and not self.policy.gradient_checkpointing,
        )

    @contextmanager
    def _reference(self):
        """The reference policy: the frozen 'ref' adapter, or the base with the adapter disabled."""
        if self.reference_adapter:
            self.model.set_adapter("ref")
            try:
                yield
            finally:
                self.model.set_adapter("default")
                for name, param in self.model.named_parameters():  # set_adapter marks the active adapter trainable
                    if ".ref." in name:
                        param.requires_grad_(False)
        else:
            with self.model.disable_adapter():
                yield

    def _micro_batches(self, n: int) -> list[slice]:
        size = self.grpo.micro_batch_size or n
        return [slice(i, min(i + size, n)) for i in range(0, n, size)]

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """A rollout, then grpo.num_iterations updates on it (with dynamic sampling: on buffered groups whose
        rewards differ, once a full batch of them is collected)."""
        rollout = self.rollout(batch, batch_idx)
        self.last_rollout = rollout
        completions: Completions | None = rollout.completions()
        std_after = group_reward_std(rollout.rewards, self.grpo.num_generations)
        if self.grpo.dynamic_sampling:
            completions = self._fill_from_buffer(completions, std_after, len(batch["meta"]["id"]))
        metrics = None if completions is None else self._update(completions, rollout.use_audio_in_video)
        self._log_rollout_metrics(rollout, std_after)
        if metrics is not None:
            averages = {f"train/{k}": torch.stack(v).float().mean() for k, v in metrics.items()}
            self.log_dict(averages, on_step=True, sync_dist=True)

    @torch.no_grad()
    def _frozen_logprobs(self, rows: list[Row], slices: list[slice], use_audio_in_video: bool):
        """Per micro-batch: the log-probs before the update (num_iterations > 1) and the reference's (beta > 0)."""
        old = ref = [None] * len(slices)
        if self.grpo.num_iterations > 1:
            old = [self._logprobs(rows[s], use_audio_in_video)[0] for s in slices]
        if self.grpo.beta > 0:
            with self._reference():
                ref = [self._logprobs(rows[s], use_audio_in_video)[0] for s in slices]
        return old, ref

    def _update(self, completions: Completions, use_audio_in_video: bool) -> dict[str, list]:
        """grpo.num_iterations optimizer steps on the completions; returns each micro-batch's loss metrics."""
        rows = completions.rows
        token_advantage = self._token_advantages(completions)
        mask_rows = torch.ones(len(rows))
        if self.grpo.mask_truncated_completions:
            mask_rows = torch.tensor([0.0 if r.truncated else 1.0 for r in rows])
        slices = self._micro_batches(len(rows))
        old, ref = self._frozen_logprobs(rows, slices, use_audio_in_video)
        active_tokens = sum(float(len(r.completion_ids)) for i, r in enumerate(rows) if mask_rows[i] > 0)
        num_items = max(float(all_reduce_sum(torch.tensor(active_tokens))) / self.trainer.world_size, 1.0)  # dapo (TRL)
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        metrics: dict[str, list[torch.Tensor]] = {}
        for _ in range(self.grpo.num_iterations):
            optimizer.zero_grad()
            for k, s in enumerate(slices):
                logp, mask, entropy = self._logprobs(rows[s], use_audio_in_video, with_entropy=True)
                mask = mask * mask_rows[s, None].to(mask)
                forced = forced_mask(rows[s], logp.shape[1]).to(logp.device) if self.hint.credit == "policy" else None
                loss, step_metrics = policy_loss(
                    logp,
                    old[k],
                    ref[k],
                    token_advantage(s, logp.shape[1]).to(logp),
                    mask,
                    loss_type=self.grpo.loss_type,
                    eps_low=self.grpo.epsilon_low,
                    eps_high=self.grpo.epsilon_high,
                    beta=self.grpo.beta,
                    max_completion_length=self.grpo.max_completion_length,
                    num_items=num_items,
                    forced=forced,
                    gamma=self.hint.shaping_gamma,
                )
                if self.grpo.loss_type != "dapo":  # TRL divides per-micro-batch losses by the accumulation steps
                    loss = loss / len(slices)
                self.manual_backward(loss)
                step_metrics["entropy"] = masked_mean(entropy, mask)
                step_metrics["loss"] = loss.detach()
                for key, value in step_metrics.items():
                    metrics.setdefault(key, []).append(value)
            if self.grpo.max_grad_norm is not None:
                self.clip_gradients(
                    optimizer, gradient_clip_val=self.grpo.max_grad_norm, gradient_clip_algorithm="norm"
                )
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
        return metrics

    def _token_advantages(self, completions: Completions):
        """The advantages of the completions, as a function of a micro-batch (slice) and its token width: one per
        completion, or per token with grpo.span_credit (each reward normalised on its own, on its span's tokens)."""
        split = completions.hinted if self.hint.baseline == "split" else None
        if not self.grpo.span_credit:
            advantages = self._advantages(completions.rewards.float(), split)
            return lambda s, width: advantages[s]
        weights = torch.tensor([reward.weight for reward in self.rewards], dtype=torch.float64)
        per_reward = self._advantages(completions.per_reward, split, weights)
        tok, spans = self.processor.tokenizer, [reward.span for reward in self.rewards]
        counts = [discrimination_token_count(tok, r.completion_ids) for r in completions.rows]
        return lambda s, width: token_advantages(per_reward[s], span_masks(spans, counts[s], width))

    def _advantages(
        self, rewards: torch.Tensor, split: torch.Tensor | None = None, weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Advantages of this rank's completions (N,), or per reward (N, K) with `weights`, with the batch
        statistics ("batch" scale) over every rank's rewards, as TRL gathers them; groups never span ranks."""
        n, G, scale = len(rewards), self.grpo.num_generations, self.grpo.scale_rewards
        everyone = self.all_gather(rewards).reshape(-1, *rewards.shape[1:])
        if split is not None:
            split = self.all_gather(split.float()).reshape(-1) > 0.5
        start = self.global_rank * n if len(everyone) > n else 0
        if weights is None:
            advantages = group_advantages(everyone, G, scale, split)
        else:
            advantages = decoupled_advantages(everyone, weights, G, scale, split)
        return advantages[start : start + n]

    def _fill_from_buffer(self, completions: Completions, std: torch.Tensor, prompts_per_step: int):
        """Dynamic sampling: buffer the groups whose rewards differ (dropping those staler than
        grpo.max_buffer_staleness); train on the oldest once a full batch is collected."""
        buffer = self.group_buffer
        dropped = buffer.add_varied(self.global_step, completions, std, self.grpo.num_generations)
        logged = {"train/dynamic_sampling_buffer": float(len(buffer)), "train/dynamic_sampling_dropped": float(dropped)}
        self.log_dict(logged, on_step=True, sync_dist=True)
        short = all_reduce_sum(torch.tensor(float(len(buffer) < prompts_per_step)))
        if short > 0:  # every rank trains in the same steps (the gradient reduction is a collective)
            return None
        completions, staleness = buffer.take(prompts_per_step, self.global_step)
        self.log("train/dynamic_sampling_staleness", staleness.mean(), on_step=True, sync_dist=True)
        return completions

    def _log_rollout_metrics(self, rollout: Rollout, std_after: torch.Tensor) -> None:
        means, failures, max_length = rollout.metrics(std_after)
        # every rank has as many prompts: the mean of the ranks' means is the mean over the global batch
        self.log_dict({f"train/{k}": v.float() for k, v in means.items()}, on_step=True, sync_dist=True)
        self.log("train/completions/max_length", max_length, on_step=True, sync_dist=True, reduce_fx="max")
        self.log_dict({f"train/{k}": v for k, v in failures.items()}, on_step=True, sync_dist=True, reduce_fx="sum")

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        merged = HintReliance.merged(all_gather_objects(self.hint_reliance.state_dict()))
        self.log_dict({f"val/hint_reliance/{k}": v for k, v in merged.metrics().items()}, sync_dist=True)

    # --- checkpoints ----------------------------------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["hint_grpo"] = {
            "counters": dict(self.counters),
            "hint_generator": self.hint_generator.get_state(),
            "group_buffers": all_gather_objects(self.group_buffer.state_dict()),  # every rank's, in rank order
            "hint_reliance": HintReliance.merged(all_gather_objects(self.hint_reliance.state_dict())).state_dict(),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("hint_grpo")
        if state is not None:
            self.counters = dict(state["counters"])
            self.hint_generator.set_state(state["hint_generator"])
            self.group_buffer.load_rank_state(state.get("group_buffers", []), self.global_rank, self.trainer.world_size)
            if "hint_reliance" in state:
                self.hint_reliance.load_state_dict(state["hint_reliance"])

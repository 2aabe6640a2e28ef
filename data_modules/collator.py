"""The collator: one Qwen2.5-Omni conversation per clip, run through the checkpoint's own processor, so the
placeholder tokens, TMRoPE inputs and features are exactly what the model expects."""

from __future__ import annotations

from typing import Any

import torch

from msathinker.dc_format import polarity_of, task_instruction
from msathinker.hints import HintStrategy
from msathinker.scales import Scale


def chat_turn_markers(processor) -> tuple[str, str]:
    """The assistant turn's header and its end-of-turn text, read off the checkpoint's chat template (for
    Qwen2.5-Omni "<|im_start|>assistant\n" and "<|im_end|>"), so no prompt code spells special tokens."""
    user = [{"role": "user", "content": [{"type": "text", "text": "u"}]}]
    prompt = processor.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
    header = prompt.removeprefix(processor.apply_chat_template(user, tokenize=False))
    answered = [*user, {"role": "assistant", "content": [{"type": "text", "text": "a"}]}]
    rendered = processor.apply_chat_template(answered, tokenize=False)
    end_of_turn = rendered.removeprefix(prompt + "a").rstrip()
    if not header or not end_of_turn or not rendered.startswith(prompt + "a"):
        raise ValueError(
            f"the chat template of {processor.tokenizer.name_or_path} has no assistant header or end of turn: "
            "use the checkpoint's own processor (chat_template.json)"
        )
    return header, end_of_turn


class MSACollator:
    """Builds the Qwen2.5-Omni conversation per clip and runs the checkpoint's processor on the batch.

    Returns {"inputs": model kwargs, "meta": {"id": clip ids, "label": float32 labels (dataset clips only)}}: the
    meta holds what the modules read, nothing else. With targets, the assistant turn is the target plus the chat
    template's end of turn and `inputs["labels"]` masks everything else (prompt, system, media placeholders,
    padding) with -100. Called with a hint strategy (Hint-GRPO's training batches), the batch also holds
    "hinted": each clip's prompt as the strategy gives the label's polarity (a line of the user turn and/or the
    start of the assistant turn), rendered from the same conversation: {"input_ids": one 1-D tensor per clip,
    "assistant_prefix": the text the assistant turn starts with}.
    """

    def __init__(
        self,
        processor,
        scale: Scale,
        modalities: tuple[str, ...],
        use_audio_in_video: bool,
        min_pixels: int,
        max_pixels: int,
        system_prompt: str | None,
        output_format: str,
    ):
        self.processor = processor
        self.scale = scale
        self.modalities = modalities
        self.use_audio_in_video = use_audio_in_video
        self.pixel_bounds = (min_pixels, max_pixels)
        self.video_options = {
            "do_sample_frames": False,
            "cap_pixels_per_frame": True,
            "size": {"shortest_edge": min_pixels, "longest_edge": max_pixels},
        }
        self.system_prompt = system_prompt
        self.output_format = output_format
        self.instruction = task_instruction(scale, output_format)
        header, self.end_of_turn = chat_turn_markers(processor)
        header_ids = processor.tokenizer(header, add_special_tokens=False)["input_ids"]
        self.turn_start_id, self.assistant_header_len = header_ids[0], len(header_ids)

    def with_processor(self, processor) -> MSACollator:
        """The same prompts and media settings, built with another checkpoint's processor (a local teacher of
        another model family renders them with its own chat template and placeholders)."""
        return MSACollator(
            processor,
            self.scale,
            self.modalities,
            self.use_audio_in_video,
            *self.pixel_bounds,
            self.system_prompt,
            self.output_format,
        )

    def videos_kwargs(self, item: dict[str, Any]) -> dict[str, Any]:
        """The processor's video options for one clip. `fps` is the clip's own sampling rate, 1 / its frame spacing,
        so the processor's video_second_per_grid (temporal_patch_size / fps) is the time a temporal patch spans."""
        return {**self.video_options, "fps": 1.0 / float(item["frame_spacing"])}

    def conversation(self, item: dict[str, Any], hint_line: str = "") -> list[dict]:
        """The clip's chat messages; `hint_line` (a hint strategy's prompt line) ends the user turn."""
        content: list[dict] = []
        if "video" in self.modalities:
            content.append({"type": "video", "video": item["id"]})
        if "audio" in self.modalities and not self.use_audio_in_video:
            content.append({"type": "audio", "audio": item["id"]})
        text = f"Transcript: {item['text']}\n{self.instruction}" if "text" in self.modalities else self.instruction
        if item.get("note"):  # an extra line for this clip only (e.g. the label for a label-conditioned teacher)
            text += "\n" + item["note"]
        content.append({"type": "text", "text": text + hint_line})
        messages = [{"role": "user", "content": content}]
        if self.system_prompt is not None:
            messages.insert(0, {"role": "system", "content": [{"type": "text", "text": self.system_prompt}]})
        return messages

    def prompt(self, item: dict[str, Any], hint_line: str = "") -> str:
        """The rendered chat prompt, ending with the assistant header (what generation continues from)."""
        return self.processor.apply_chat_template(
            self.conversation(item, hint_line), add_generation_prompt=True, tokenize=False
        )

    def prompts(self, items: list[dict[str, Any]]) -> list[str]:
        return [self.prompt(it) for it in items]

    def hinted_prompt(self, item: dict[str, Any], hint: HintStrategy) -> tuple[str, str]:
        """The clip's prompt as `hint` gives the label's polarity, and the assistant text the hint starts with."""
        polarity = polarity_of(item["label"], self.scale)
        prefix = hint.assistant_prefix(polarity, self.output_format)
        return self.prompt(item, hint.prompt_line(polarity)) + prefix, prefix

    def __call__(self, items: list[dict[str, Any]], hint: HintStrategy | None = None) -> dict[str, Any]:
        texts = self.prompts(items)
        with_targets = all("target" in it for it in items)
        if with_targets:
            texts = [t + it["target"] + self.end_of_turn for t, it in zip(texts, items, strict=True)]
        audio_kwargs = None
        if "audio" in self.modalities:  # every clip's features padded to the batch's longest, so they stack
            hop = self.processor.feature_extractor.hop_length
            longest = max(it["audio"].size for it in items)
            # padding named: Qwen3-Omni's processor pads to the longest of a call by default (Qwen2.5-Omni's to
            # max_length)
            audio_kwargs = {"max_length": hop * -(-longest // hop), "truncation": True, "padding": "max_length"}
        # One processor call per clip: the processor gives every video of a call the same time per temporal patch
        # (video_second_per_grid = temporal_patch_size / fps; with use_audio_in_video the audio/video interleaving
        # follows it too) and each clip has its own frame spacing. The calls' outputs are padded and stacked here.
        parts = [
            self.processor(**self.processor_kwargs(t, it, audio_kwargs)) for t, it in zip(texts, items, strict=True)
        ]
        inputs = self.stack(parts)
        if with_targets:
            inputs["labels"] = self.assistant_labels(inputs["input_ids"], inputs["attention_mask"])
        if self.use_audio_in_video and "audio" in self.modalities:
            inputs["use_audio_in_video"] = True
        meta: dict[str, Any] = {"id": [it["id"] for it in items]}
        if all("label" in it for it in items):  # dataset clips; new clips (the analyze command) have no label
            meta["label"] = torch.tensor([it["label"] for it in items], dtype=torch.float32)
        batch = {"inputs": inputs, "meta": meta}
        if hint is not None:
            batch["hinted"] = self.hinted(items, hint, audio_kwargs)
        return batch

    def hinted(self, items: list[dict[str, Any]], hint: HintStrategy, audio_kwargs: dict | None) -> dict[str, list]:
        """Each clip's hinted prompt ids, through the same processor call as its plain prompt (the media
        placeholders expand identically; the media tensors of this call are dropped: the plain prompt's serve)."""
        texts, prefixes = zip(*(self.hinted_prompt(it, hint) for it in items), strict=True)
        ids = [
            self.processor(**self.processor_kwargs(t, it, audio_kwargs))["input_ids"][0]
            for t, it in zip(texts, items, strict=True)
        ]
        return {"input_ids": ids, "assistant_prefix": list(prefixes)}

    def processor_kwargs(self, text: str, item: dict[str, Any], audio_kwargs: dict | None) -> dict[str, Any]:
        """The processor call of one clip's rendered text."""
        kwargs: dict[str, Any] = {"text": [text], "return_tensors": "pt"}
        if "video" in self.modalities:
            kwargs["videos"] = [item["frames"]]
            kwargs["videos_kwargs"] = self.videos_kwargs(item)
        if audio_kwargs is not None:
            kwargs["audio"] = [item["audio"]]
            kwargs["audio_kwargs"] = audio_kwargs
            if self.use_audio_in_video:
                kwargs["load_audio_from_video"] = True
                kwargs["audio_from_video_indices"] = [0]
        return kwargs

    def stack(self, parts: list) -> dict[str, Any]:
        """One batch of per-clip processor outputs: token ids left-padded by the tokenizer, the media tensors (one
        row or one block of patches per clip, audio features already of equal length) concatenated in order."""
        tokens = {key: [p[key][0].tolist() for p in parts] for key in ("input_ids", "attention_mask")}
        inputs = dict(self.processor.tokenizer.pad(tokens, return_tensors="pt"))
        inputs.update({key: torch.cat([p[key] for p in parts]) for key in parts[0] if key not in inputs})
        return inputs

    def assistant_labels(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """input_ids with everything before the last assistant header (and padding) set to -100."""
        labels = torch.full_like(input_ids, -100)
        for row in range(input_ids.shape[0]):
            starts = (input_ids[row] == self.turn_start_id).nonzero().flatten()
            begin = int(starts[-1]) + self.assistant_header_len
            labels[row, begin:] = input_ids[row, begin:]
        return labels.masked_fill(attention_mask == 0, -100)

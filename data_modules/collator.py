"""The collator: one Qwen2.5-Omni conversation per clip, run through the checkpoint's own processor, so the
placeholder tokens, TMRoPE inputs and features are exactly what the model expects."""

from __future__ import annotations

from typing import Any

import torch

from msathinker.dc_format import task_instruction
from msathinker.scales import Scale


class MSACollator:
    """Builds the Qwen2.5-Omni conversation per clip and runs the checkpoint's processor on the batch.

    Returns {"inputs": model kwargs, "meta": {"id": clip ids, "label": float32 labels (dataset clips only)}}: the
    meta holds what the modules read, nothing else. With targets, the assistant turn is the target plus
    <|im_end|> and `inputs["labels"]` masks everything else (prompt, system, media placeholders, padding) with -100.
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
        self.video_options = {
            "do_sample_frames": False,
            "cap_pixels_per_frame": True,
            "size": {"shortest_edge": min_pixels, "longest_edge": max_pixels},
        }
        self.system_prompt = system_prompt
        self.output_format = output_format
        self.instruction = task_instruction(scale, output_format)
        tok = processor.tokenizer
        self.im_start_id = tok.convert_tokens_to_ids("<|im_start|>")
        self.assistant_header_len = len(tok("<|im_start|>assistant\n")["input_ids"])

    def videos_kwargs(self, item: dict[str, Any]) -> dict[str, Any]:
        """The processor's video options for one clip. `fps` is the clip's own sampling rate, 1 / its frame spacing,
        so the processor's video_second_per_grid (temporal_patch_size / fps) is the time a temporal patch spans."""
        return {**self.video_options, "fps": 1.0 / float(item["frame_spacing"])}

    def conversation(self, item: dict[str, Any]) -> list[dict]:
        content: list[dict] = []
        if "video" in self.modalities:
            content.append({"type": "video", "video": item["id"]})
        if "audio" in self.modalities and not self.use_audio_in_video:
            content.append({"type": "audio", "audio": item["id"]})
        text = f"Transcript: {item['text']}\n{self.instruction}" if "text" in self.modalities else self.instruction
        if item.get("note"):  # an extra line for this clip only (e.g. the label for a label-conditioned teacher)
            text += "\n" + item["note"]
        content.append({"type": "text", "text": text})
        messages = [{"role": "user", "content": content}]
        if self.system_prompt is not None:
            messages.insert(0, {"role": "system", "content": [{"type": "text", "text": self.system_prompt}]})
        return messages

    def prompts(self, items: list[dict[str, Any]]) -> list[str]:
        """The rendered chat prompts, ending with the assistant header (what generation continues from)."""
        return [
            self.processor.apply_chat_template(self.conversation(it), add_generation_prompt=True, tokenize=False)
            for it in items
        ]

    def __call__(self, items: list[dict[str, Any]], assistant_prefixes: list[str] | None = None) -> dict[str, Any]:
        texts = self.prompts(items)
        with_targets = all("target" in it for it in items)
        if with_targets:
            texts = [t + it["target"] + "<|im_end|>" for t, it in zip(texts, items, strict=True)]
        elif assistant_prefixes is not None:
            texts = [t + p for t, p in zip(texts, assistant_prefixes, strict=True)]
        audio_kwargs = None
        if "audio" in self.modalities:  # every clip's features padded to the batch's longest, so they stack
            hop = self.processor.feature_extractor.hop_length
            longest = max(it["audio"].size for it in items)
            audio_kwargs = {"max_length": hop * -(-longest // hop), "truncation": True}
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
        return {"inputs": inputs, "meta": meta}

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
            starts = (input_ids[row] == self.im_start_id).nonzero().flatten()
            begin = int(starts[-1]) + self.assistant_header_len
            labels[row, begin:] = input_ids[row, begin:]
        return labels.masked_fill(attention_mask == 0, -100)

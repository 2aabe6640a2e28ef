"""Teacher backends for synthesis: a local transformers omni model, an OpenAI-compatible endpoint (what
`vllm serve` exposes), and the rule-based rationale writer (a stand-in for offline demos, not a model).

A teacher turns clips into `num_samples` completions each; prompts are built by the same MSACollator the training
stages use, so the teacher sees the instruction the student will be trained with.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import random
import time
import urllib.error
import urllib.request
import wave
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


@dataclass
class Clip:
    """One clip to write reasoning for: the DataModule item (id, text, label, frames, audio, optional note)."""

    item: dict[str, Any]
    video_path: str


class TeacherError(RuntimeError):
    """The teacher cannot go on (e.g. its endpoint is down); the run stops and the message says why."""


class ClipRefused(TeacherError):
    """The teacher refuses one clip for good: a non-retryable 4xx (e.g. vLLM's 400 for a prompt over the model's
    maximum context length), retries exhausted while the endpoint still answers, or an unusable response. The run
    records the clip with kept=false and `reason`, and goes on."""

    def __init__(self, clip_id: str, reason: str):
        super().__init__(f"clip {clip_id}: {reason}")
        self.reason = reason


class Teacher:
    """A source of completions. `setup` gets the collator (prompt builder) and fails fast if unusable."""

    name = "teacher"

    def setup(self, collator) -> None:
        self.collator = collator

    def complete(self, clips: list[Clip], num_samples: int) -> Iterator[tuple[int, list[str] | ClipRefused]]:
        """Yield (index in clips, its num_samples completions) as each clip finishes; for a clip the teacher refuses
        for good, its ClipRefused error instead of the completions. Raise TeacherError when it cannot go on."""
        raise NotImplementedError


class RulesTeacher(Teacher):
    """The rule-based rationale writer (msathinker.demo.rationale): DC text from the label and transcript, for offline
    demos and tests. It is not a model and sees no audio or video.

    Args:
        read_words: state the polarity of the transcript's sentiment words where it has some (a teacher fooled by
            sarcasm, whose misread clips the filter rejects) instead of always the label's.
    """

    name = "rules"

    def __init__(self, read_words: bool = False):
        self.read_words = read_words

    def complete(self, clips: list[Clip], num_samples: int) -> Iterator[tuple[int, list[str] | ClipRefused]]:
        from msathinker.demo.rationale import rule_based_rationale

        scale, fmt = self.collator.scale, self.collator.output_format
        for i, c in enumerate(clips):
            completion = rule_based_rationale(c.item["text"], c.item["label"], scale, fmt, self.read_words)
            yield i, [completion] * num_samples


class TransformersTeacher(Teacher):
    """A local Qwen2.5-Omni / Qwen3-Omni checkpoint (full or thinker-only), batched generate. Its prompts are the
    student's conversation rendered with the teacher's own processor (chat template, media placeholders), whatever
    the student's family. Decoding uses these settings only (msathinker.generation: stop at <|im_end|>, nothing from
    the checkpoint's generation_config.json).

    Args:
        model_path: checkpoint path, hub id or tiny alias. Required.
        dtype: weight dtype (bfloat16 on GPU).
        device: torch device ("cuda", "cpu").
        max_new_tokens: longest completion.
        temperature: sampling temperature; 0 decodes greedily.
        top_p: nucleus sampling mass.
    """

    name = "transformers"

    def __init__(
        self,
        model_path: str,
        dtype: str = "float32",
        device: str = "cpu",
        max_new_tokens: int = 512,
        temperature: float = 0.7,
        top_p: float = 0.9,
    ):
        self.model_path, self.dtype, self.device = model_path, dtype, device
        self.max_new_tokens, self.temperature, self.top_p = max_new_tokens, temperature, top_p

    def setup(self, collator) -> None:
        from msathinker.modeling import load_thinker

        self.model, processor = load_thinker(self.model_path, dtype=self.dtype)
        super().setup(collator.with_processor(processor))  # its own chat template and media placeholders
        self.model.to(self.device).eval()
        self.name = f"transformers:{self.model_path}"

    def complete(self, clips: list[Clip], num_samples: int) -> Iterator[tuple[int, list[str] | ClipRefused]]:
        import torch

        from msathinker.generation import generate, generation_config

        batch = self.collator([c.item for c in clips])
        inputs = {k: v.to(self.device) if hasattr(v, "to") else v for k, v in batch["inputs"].items()}
        tok = self.collator.processor.tokenizer
        config = generation_config(
            tok,
            max_new_tokens=self.max_new_tokens,
            do_sample=self.temperature > 0,
            temperature=self.temperature,
            top_p=self.top_p,
            num_return_sequences=num_samples,
        )
        with torch.no_grad():
            out = generate(self.model, config, **inputs)
        texts = tok.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        for i in range(len(clips)):
            yield i, texts[i * num_samples : (i + 1) * num_samples]


def error_message(body: bytes) -> str:
    """The message of an error response (OpenAI's {"error": {"message"}} or vLLM's {"message"}), else its text."""
    text = body.decode("utf-8", "replace")
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError:
        parsed = None
    if isinstance(parsed, dict):
        error = parsed.get("error")
        message = error.get("message") if isinstance(error, dict) else parsed.get("message")
        if isinstance(message, str):
            text = message
    return text[:300]


def wav_bytes(audio: np.ndarray, rate: int = 16000) -> bytes:
    """16-bit mono WAV of a float waveform (stdlib `wave`)."""
    pcm = (np.clip(audio, -1.0, 1.0) * 32767).astype("<i2").tobytes()
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm)
    return buffer.getvalue()


class OpenAITeacher(Teacher):
    """Any OpenAI-compatible chat-completions endpoint, e.g. `vllm serve Qwen/Qwen3-Omni-30B-A3B-Instruct`.

    The clip's mp4 goes as a `video_url` content part and its decoded 16 kHz audio as an `audio_url` WAV part,
    both as base64 data URLs (the multimodal content parts vLLM's OpenAI server accepts), then the text. Requests
    run `max_in_flight` at a time; 429, 5xx, timeouts and connection errors are retried with exponential backoff
    and jitter. A clip is refused for good (recorded with the status and the server's message, and the run goes
    on) on any other 4xx at once, on a malformed answer, or when its retries are exhausted while the endpoint
    still answers; an endpoint that no longer answers at all stops the run.

    Args:
        base_url: the API root, e.g. http://gpu-box:8000/v1.
        model: the served model name.
        api_key_env: environment variable holding the API key (unset is fine for a local vLLM).
        max_in_flight: requests sent concurrently.
        timeout: seconds before a request counts as failed.
        max_retries: retries of a retryable failure before giving up.
        backoff: first retry delay in seconds; doubles each retry (capped at 30 s).
        max_new_tokens: longest completion (max_tokens).
        temperature: sampling temperature.
        top_p: nucleus sampling mass.
    """

    name = "openai"

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000/v1",
        model: str = "Qwen/Qwen3-Omni-30B-A3B-Instruct",
        api_key_env: str = "OPENAI_API_KEY",
        max_in_flight: int = 8,
        timeout: float = 120.0,
        max_retries: int = 5,
        backoff: float = 1.0,
        max_new_tokens: int = 512,
        temperature: float = 0.7,
        top_p: float = 0.9,
    ):
        self.base_url = base_url.rstrip("/")
        self.model, self.api_key_env = model, api_key_env
        self.max_in_flight, self.timeout, self.max_retries, self.backoff = max_in_flight, timeout, max_retries, backoff
        self.max_new_tokens, self.temperature, self.top_p = max_new_tokens, temperature, top_p

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def setup(self, collator) -> None:
        super().setup(collator)
        self.name = f"openai:{self.model}"
        self._check_reachable()

    def _check_reachable(self) -> None:
        request = urllib.request.Request(f"{self.base_url}/models", headers=self._headers())
        try:
            with urllib.request.urlopen(request, timeout=min(self.timeout, 10.0)):
                pass
        except (urllib.error.URLError, OSError) as exc:
            raise TeacherError(f"teacher endpoint {self.base_url} is not reachable ({exc}); is the server up?") from exc

    def messages(self, clip: Clip) -> list[dict[str, Any]]:
        """The chat request of a clip: the same conversation as training, media as data URLs."""
        content: list[dict[str, Any]] = []
        for part in self.collator.conversation(clip.item)[-1]["content"]:
            if part["type"] == "video":
                with open(clip.video_path, "rb") as f:
                    data = base64.b64encode(f.read()).decode()
                content.append({"type": "video_url", "video_url": {"url": f"data:video/mp4;base64,{data}"}})
            elif part["type"] == "audio":
                data = base64.b64encode(wav_bytes(clip.item["audio"])).decode()
                content.append({"type": "audio_url", "audio_url": {"url": f"data:audio/wav;base64,{data}"}})
            else:
                content.append(part)
        messages = [{"role": "user", "content": content}]
        if self.collator.system_prompt is not None:
            messages.insert(0, {"role": "system", "content": self.collator.system_prompt})
        return messages

    def _post(self, body: dict[str, Any], clip_id: str) -> dict[str, Any]:
        data = json.dumps(body).encode()
        for attempt in range(self.max_retries + 1):
            request = urllib.request.Request(f"{self.base_url}/chat/completions", data=data, headers=self._headers())
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    raw = response.read()
                try:
                    return json.loads(raw)
                except json.JSONDecodeError as exc:
                    raise ClipRefused(clip_id, f"malformed JSON from the endpoint: {raw[:200]!r}") from exc
            except urllib.error.HTTPError as exc:
                problem = f"HTTP {exc.code}: {error_message(exc.read())}"
                if exc.code != 429 and exc.code < 500:
                    raise ClipRefused(clip_id, problem) from exc
            except (urllib.error.URLError, TimeoutError, OSError) as exc:
                problem = f"{type(exc).__name__}: {exc}"
            if attempt == self.max_retries:
                self._check_reachable()  # a dead endpoint stops the run instead of failing every clip after it
                raise ClipRefused(clip_id, f"giving up after {self.max_retries} retries; last error {problem}")
            delay = min(self.backoff * 2**attempt, 30.0) * (0.5 + random.random())
            log.warning("clip %s: %s; retrying in %.1f s", clip_id, problem, delay)
            time.sleep(delay)
        raise AssertionError("unreachable")

    def _complete_one(self, clip: Clip, num_samples: int) -> list[str]:
        body = {
            "model": self.model,
            "messages": self.messages(clip),
            "max_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "n": num_samples,
        }
        answer = self._post(body, clip.item["id"])
        try:
            return [choice["message"]["content"] or "" for choice in answer["choices"]]
        except (KeyError, TypeError) as exc:
            raise ClipRefused(clip.item["id"], f"unexpected response shape: {str(answer)[:200]}") from exc

    def complete(self, clips: list[Clip], num_samples: int) -> Iterator[tuple[int, list[str] | ClipRefused]]:
        pool = ThreadPoolExecutor(self.max_in_flight)
        futures = {pool.submit(self._complete_one, c, num_samples): i for i, c in enumerate(clips)}
        try:
            for future in as_completed(futures):
                try:
                    result = future.result()
                except ClipRefused as exc:
                    result = exc
                yield futures[future], result
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

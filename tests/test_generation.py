"""Generation takes its settings from msathinker.generation only: evaluation, the local teacher and the GRPO sampler
stop at <|im_end|> and draw from the distribution the log-prob pass scores, on a checkpoint whose
generation_config.json has no EOS and sets a repetition penalty, top-k, min-p and an n-gram ban."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from msathinker.generation import END_OF_TEXT, END_OF_TURN, generation_config, thinker_of

LEAKY_SETTINGS = {"repetition_penalty": 1.3, "top_k": 5, "min_p": 0.2, "no_repeat_ngram_size": 2, "do_sample": True,
                  "temperature": 0.3, "top_p": 0.5}  # fmt: skip
"""The checkpoint's generation_config.json: none of it may reach a generate call."""


@pytest.fixture(scope="module")
def leaky_checkpoint(tiny_model, tmp_path_factory) -> str:
    """The tiny checkpoint with LEAKY_SETTINGS as its generation_config.json."""
    path = shutil.copytree(tiny_model, tmp_path_factory.mktemp("leaky") / "checkpoint")
    (path / "generation_config.json").write_text(json.dumps(LEAKY_SETTINGS))  # and no eos_token_id
    return str(path)


def datamodule(checkpoint: str, tmp_path: Path):
    from data_modules import MSADataModule

    return MSADataModule(dataset="demo_mosi", processor_path=checkpoint, max_clips=1, eval_batch_size=1,
                         media_cache_dir=str(tmp_path / "media"))  # fmt: skip


def head_row(wanted: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """An LM-head row giving logit 100 at hidden state `wanted` and -50 at `other` (the tiny model's other logits
    are about +-1)."""
    orthogonal = wanted - (wanted @ other) / (other @ other) * other
    beta = -50 / (other @ other)
    return (100 - beta * (other @ wanted)) / (orthogonal @ orthogonal) * orthogonal + beta * other


def end_turn_then(thinker, inputs: dict, end_id: int, then_id: int) -> None:
    """Set the LM head so that decoding `inputs` (one prompt) gives `end_id`, then `then_id`: a generate that does
    not stop at the end of the turn decodes `then_id`'s text."""
    ids = torch.cat([inputs["input_ids"], torch.tensor([[end_id]])], dim=1)
    mask = torch.cat([inputs["attention_mask"], torch.ones(1, 1, dtype=inputs["attention_mask"].dtype)], dim=1)
    with torch.no_grad():
        prompt_end, after_end = thinker.model(**{**inputs, "input_ids": ids, "attention_mask": mask}).last_hidden_state[
            0, -2:
        ]
        thinker.lm_head.weight[end_id] = head_row(prompt_end, after_end)
        thinker.lm_head.weight[then_id] = head_row(after_end, prompt_end)


def test_generation_config_takes_the_stop_and_pad_ids_from_the_tokenizer(tiny_model):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tok = AutoTokenizer.from_pretrained(tiny_model)
    config = generation_config(tok, max_new_tokens=5, do_sample=True, temperature=0.7, top_p=0.9)
    assert config.eos_token_id == [tok.convert_tokens_to_ids(END_OF_TURN), tok.convert_tokens_to_ids(END_OF_TEXT)]
    assert config.pad_token_id == tok.pad_token_id is not None
    assert (config.temperature, config.top_p, config.top_k) == (0.7, 0.9, 0)  # top_k 0: off, not the default 50
    other = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]")))
    other.unk_token = "[UNK]"
    with pytest.raises(ValueError, match=r"has no <\|im_end\|> token; .* Qwen2.5-Omni / Qwen3-Omni checkpoint"):
        generation_config(other, max_new_tokens=5)


def test_evaluation_stops_at_the_end_of_the_turn(leaky_checkpoint, tmp_path):
    from msathinker.evaluation import GenerationOptions, generate_completions
    from msathinker.policy import LoraOptions, PolicyOptions, build_policy

    model, processor = build_policy(PolicyOptions(model_path=leaky_checkpoint, lora=LoraOptions(r=4)))
    model.eval()
    dm = datamodule(leaky_checkpoint, tmp_path)
    dm.setup("validate")
    inputs = next(iter(dm.val_dataloader()))["inputs"]
    tok = processor.tokenizer
    end, then = tok.convert_tokens_to_ids(END_OF_TURN), tok("Hello", add_special_tokens=False)["input_ids"][0]
    end_turn_then(thinker_of(model), inputs, end, then)
    prompt_len = inputs["input_ids"].shape[1]
    with torch.no_grad():  # the checkpoint's own settings: no EOS, so generation runs on past <|im_end|>
        unstopped = model.generate(**inputs, max_new_tokens=3, do_sample=False)[0, prompt_len:]
    assert unstopped[:2].tolist() == [end, then]
    assert generate_completions(model, processor, inputs, GenerationOptions(max_new_tokens=6)) == [""]


def test_the_local_teacher_stops_at_the_end_of_the_turn_and_inherits_nothing(leaky_checkpoint, tmp_path):
    from msathinker.synthesis import TransformersTeacher
    from msathinker.synthesis.teachers import Clip

    dm = datamodule(leaky_checkpoint, tmp_path)
    teacher = TransformersTeacher(model_path=leaky_checkpoint, max_new_tokens=6)  # samples, temperature 0.7
    teacher.setup(dm.build_collator())
    dm.setup_split("train")
    item = dm.datasets["train"][0]
    tok = dm.collator.processor.tokenizer
    end, then = tok.convert_tokens_to_ids(END_OF_TURN), tok("Hello", add_special_tokens=False)["input_ids"][0]
    end_turn_then(teacher.model, dm.collator([item])["inputs"], end, then)
    path = str(dm.datasets["train"].records[0].path)
    assert list(teacher.complete([Clip(item, path)], num_samples=2)) == [(0, ["", ""])]
    used = teacher.model.generation_config
    assert (used.repetition_penalty, used.min_p, used.no_repeat_ngram_size, used.top_k) == (None, None, None, 0)
    assert (used.temperature, used.top_p) == (0.7, 0.9)


@pytest.mark.parametrize("per_row_generators", [False, True], ids=["global_rng", "per_row_generators"])
def test_rollouts_sample_the_distribution_the_logprob_pass_scores(leaky_checkpoint, per_row_generators):
    """Single-token completions of one prompt, N of them, against the log-prob pass's distribution with the same
    temperature and top-p, without the suppressed media tokens: a chi-square test over the 6 likeliest tokens and
    the rest. The LM head is scaled up so that the distribution is peaked (about 90 tokens in the nucleus, the
    likeliest at 16%) and its 3 likeliest rows are moved to tokens of the prompt, which a repetition penalty or an
    n-gram ban would hit."""
    from scipy.stats import chisquare

    from msathinker.policy import LoraOptions, PolicyOptions, build_policy
    from msathinker.rollout import Row, completion_logprobs, media_token_ids, sample, split_prompt_media

    temperature, top_p, n, buckets = 0.7, 0.9, 4000, 6
    model, processor = build_policy(PolicyOptions(model_path=leaky_checkpoint, lora=LoraOptions(r=4)))
    model.eval()
    thinker, tok = thinker_of(model), processor.tokenizer
    conversation = [{"role": "user", "content": [{"type": "text", "text": "Transcript: the movie was great."}]}]
    text = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    inputs = dict(tok([text], return_tensors="pt"))
    prompt, media = inputs["input_ids"][0], split_prompt_media(model, inputs, encode_once=True)[0]
    vocab = thinker.lm_head.weight.shape[0]
    suppressed = media_token_ids(tok)

    def next_token_probs() -> torch.Tensor:
        rows = [Row(prompt, media, torch.tensor([t])) for t in range(vocab)]
        with torch.no_grad():
            logp, _, _ = completion_logprobs(model, rows, temperature=temperature, pad_id=tok.pad_token_id,
                                             use_audio_in_video=False, share_prompts=True)  # fmt: skip
        return logp[:, 0].exp()

    weight = thinker.lm_head.weight
    with torch.no_grad():
        weight *= 12
        likeliest = next_token_probs().argsort(descending=True)[:3].tolist()
        in_prompt = [t for t in dict.fromkeys(prompt.tolist()) if t not in likeliest and t not in suppressed][:3]
        weight[likeliest + in_prompt] = weight[in_prompt + likeliest].clone()
    probs = next_token_probs()
    probs[suppressed] = 0
    sorted_probs, order = (probs / probs.sum()).sort(descending=True)
    nucleus = (sorted_probs.cumsum(0) - sorted_probs) < top_p
    expected = torch.where(nucleus, sorted_probs, 0.0).double()
    assert set(order[:buckets].tolist()) & set(prompt.tolist())

    generators = [torch.Generator().manual_seed(i) for i in range(n)] if per_row_generators else None
    torch.manual_seed(0)
    completions, _ = sample(model, [Row(prompt, media)] * n, tok, max_new_tokens=1, temperature=temperature,
                            top_p=top_p, use_audio_in_video=False, generators=generators)  # fmt: skip
    counts = torch.bincount(torch.cat(completions), minlength=vocab)[order].double()
    observed = torch.cat([counts[:buckets], counts[buckets:].sum().view(1)])
    expected_counts = torch.cat([expected[:buckets], expected[buckets:].sum().view(1)]) * n / expected.sum()
    assert chisquare(observed.numpy(), expected_counts.numpy()).pvalue > 1e-4

"""`python -m msathinker analyze`: a trained model reads new clips and writes one JSON line per clip.

The prompt must be the one the model was trained with. Its settings (modalities, frames and pixels per clip, audio
length, system prompt, output format, the label range the instruction states) and the generation settings come
from the training run's config: the `config.yaml` that `fit` writes next to the adapter directory
(<default_root_dir>/config.yaml beside <default_root_dir>/adapter), or any file given as `run_config` (the fit
YAML itself works). A setting the config does not name takes MSADataModule's default, as it did in training.
Clips are decoded by the data module's media cache (the same decoding as training) before the model loads, so a
bad file fails fast; label.csv is not needed.
"""

from __future__ import annotations

import contextlib
import csv
import inspect
import io
import json
import logging
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from msathinker.dc_format import parse_completion, polarity_of
from msathinker.scales import SCALES, Scale, ScaleName, scale_of

if TYPE_CHECKING:
    from data_modules.collator import MSACollator
    from data_modules.media_cache import MediaCache

log = logging.getLogger(__name__)

PROMPT_SETTINGS = (
    "modalities", "use_audio_in_video", "fps", "min_frames", "max_frames", "min_pixels", "max_pixels",
    "max_audio_seconds", "system_prompt", "output_format",
)  # fmt: skip
"""The MSADataModule options that shape the prompt and the decoded media."""


class AnalyzeError(ValueError):
    """Bad input to analyze; the message names the file and the problem."""


@dataclass(frozen=True)
class NewClip:
    """A clip to analyze: its id (the file name without extension), file and transcript."""

    id: str
    path: Path
    text: str


@dataclass(frozen=True)
class TrainingSettings:
    """What the run config says about the prompt, the model and generation."""

    prompt: dict[str, Any]
    """PROMPT_SETTINGS, from the config's data.init_args or MSADataModule's defaults."""
    scale: Scale | None
    """The label range the model answers on (the config's prediction_scale, else its dataset's); None: unknown."""
    model_path: str | None
    """The base checkpoint (model.init_args.policy.model_path)."""
    dtype: str
    """Weight dtype of the base (policy.dtype)."""
    quantization: str
    """4-bit loading of the base (policy.quantization: none, nf4, fp4)."""
    generation: dict[str, Any]
    """model.init_args.generation (GenerationOptions fields)."""

    def media_cache(self, directory: Path) -> MediaCache:
        """Decodes clips with the training options (what MSADataModule's media cache does with them)."""
        from data_modules.media_cache import MediaCache, MediaOptions

        p = self.prompt
        options = MediaOptions(
            video="video" in p["modalities"], audio="audio" in p["modalities"], fps=p["fps"],
            min_frames=p["min_frames"], max_frames=p["max_frames"], max_pixels=p["max_pixels"],
            max_audio_seconds=p["max_audio_seconds"],
        )  # fmt: skip
        return MediaCache(directory, options)

    def prompt_builder(self, processor, scale: Scale) -> MSACollator:
        """Builds prompts with the training options (what MSADataModule.build_collator does with them)."""
        from data_modules.collator import MSACollator

        p = self.prompt
        return MSACollator(
            processor, scale, tuple(p["modalities"]), p["use_audio_in_video"], p["min_pixels"], p["max_pixels"],
            p["system_prompt"], p["output_format"],
        )  # fmt: skip


def read_run_config(path: Path | None) -> TrainingSettings:
    """The training settings of a LightningCLI config (see the module docstring); None gives the defaults."""
    import yaml

    from data_modules import MSADataModule

    config: dict[str, Any] = {}
    if path is not None:
        try:
            config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise AnalyzeError(f"run config {path}: cannot read it as YAML ({exc})") from exc
        if not isinstance(config, dict):
            raise AnalyzeError(f"run config {path}: not a LightningCLI config (expected keys model: and data:)")
    data = (config.get("data") or {}).get("init_args") or {}
    model = (config.get("model") or {}).get("init_args") or {}
    policy = model.get("policy") or {}
    defaults = inspect.signature(MSADataModule.__init__).parameters
    prompt = {key: data.get(key, defaults[key].default) for key in PROMPT_SETTINGS}
    scale_name = model.get("prediction_scale")  # the prompt states it when set (the CLI links it to prompt_scale)
    scale = SCALES[scale_name] if scale_name else scale_of(data["dataset"]) if data.get("dataset") else None
    return TrainingSettings(
        prompt, scale, policy.get("model_path"), policy.get("dtype", "float32"), policy.get("quantization", "none"),
        model.get("generation") or {},
    )  # fmt: skip


def read_transcripts(path: Path) -> dict[str, str]:
    """{clip id: transcript} from a JSONL ({"id" or "file", "text"} per line) or a CSV (columns id or file, text).

    A row names its clip by `id` (the file name without extension) or by `file` (a path or name; its name without
    extension is used).
    """
    if not path.is_file():
        raise AnalyzeError(f"transcripts {path}: file not found")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise AnalyzeError(f"transcripts {path}: not UTF-8 ({exc.reason} at byte {exc.start})") from exc
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        if "text" not in (reader.fieldnames or []) or not {"id", "file"} & set(reader.fieldnames or []):
            raise AnalyzeError(f"transcripts {path}: needs the columns text and id or file; has {reader.fieldnames}")
        rows = list(enumerate(reader, start=2))
    else:
        rows = []
        for line, raw in enumerate(text.splitlines(), start=1):
            if not raw.strip():
                continue
            try:
                rows.append((line, json.loads(raw)))
            except json.JSONDecodeError as exc:
                raise AnalyzeError(f'{path}:{line}: not valid JSON ({exc.msg}); a line is {{"id", "text"}}') from exc
    transcripts: dict[str, str] = {}
    for line, row in rows:
        if not isinstance(row, dict) or not isinstance(row.get("text"), str) or not (row.get("id") or row.get("file")):
            raise AnalyzeError(f"{path}:{line}: a row needs a text and an id or file")
        name = str(row["id"]) if row.get("id") else Path(str(row["file"])).stem
        if name in transcripts:
            raise AnalyzeError(f"{path}:{line}: a second transcript for clip {name!r}")
        transcripts[name] = row["text"]
    return transcripts


def video_files(videos: str) -> list[Path]:
    """The files `videos` names: a file, a directory (its files, sorted; hidden ones skipped) or a glob pattern."""
    path = Path(videos).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    elif path.is_file():
        files = [path]
    else:
        anchor = Path(path.anchor or ".")
        files = sorted(p for p in anchor.glob(str(path.relative_to(anchor))) if p.is_file())
    if not files:
        raise AnalyzeError(f"{videos}: no such file or directory, and no file matches it as a pattern")
    return files


def new_clips(videos: str, transcripts: str | None) -> list[NewClip]:
    """The clips to analyze, each with its transcript (empty without a transcript file)."""
    paths: dict[str, Path] = {}
    for path in video_files(videos):
        if path.stem in paths:
            raise AnalyzeError(f"{paths[path.stem]} and {path} have the same id {path.stem!r}; rename one")
        paths[path.stem] = path
    texts: dict[str, str] = {}
    if transcripts is not None:
        texts = read_transcripts(Path(transcripts))
        matched = texts.keys() & paths.keys()
        if not matched:
            raise AnalyzeError(
                f"transcripts {transcripts}: no row matches a clip (rows name {sorted(texts)[:5]}, the clips are "
                f"{sorted(paths)[:5]}); a row's id is the file name without extension"
            )
        for name in sorted(texts.keys() - matched):
            log.warning("transcripts %s: no clip %r among the files given; row ignored", transcripts, name)
        for name in sorted(paths.keys() - matched):
            log.warning("transcripts %s: no row for clip %r; its transcript is left empty", transcripts, name)
    return [NewClip(name, path, texts.get(name, "")) for name, path in paths.items()]


def analysis_record(clip: NewClip, completion: str, fmt: str, model_scale: Scale, scale: Scale) -> dict[str, Any]:
    """One output line: the parsed completion with its score mapped from the model's range to `scale`.

    parse_status is "valid" (exactly the trained format), "partial" (a score or polarity could still be read) or
    "unparsed" (neither); parse_error says what is wrong (None when valid). The polarity is the stated one, else
    the score's on `scale`, as in evaluation.
    """
    parsed = parse_completion(completion, fmt)
    score = parsed.score
    if score is not None and scale != model_scale:
        score = round(model_scale.map_to(score, scale), 6)  # 6 decimals: no float noise such as -0.6000000000000001
    polarity = parsed.polarity or (polarity_of(score, scale) if score is not None else None)
    status = "valid" if parsed.valid else "partial" if polarity is not None else "unparsed"
    return {
        "id": clip.id, "file": str(clip.path), "polarity": polarity, "score": score, "scale": scale.name,
        "discrimination": parsed.discrimination, "calibration": parsed.calibration, "parse_status": status,
        "parse_error": parsed.error, "completion": completion,
    }  # fmt: skip


def _is_adapter(model: str) -> bool:
    """True for a peft adapter directory, False for a checkpoint (directory, hub id or tiny alias); else an error."""
    from msathinker.assets import TINY_MODELS

    path = Path(model).expanduser()
    if (path / "adapter_config.json").is_file():
        return True
    hub_id = not path.exists() and model.count("/") == 1 and not model.startswith((".", "/", "~"))
    if (path / "config.json").is_file() or model in TINY_MODELS or hub_id:
        return False
    raise AnalyzeError(
        f"{model}: no adapter_config.json (a peft adapter, e.g. runs/<stage>/adapter) or config.json (a checkpoint, "
        "e.g. from export-merged) there"
    )


def _load_model(model: str, adapter: bool, settings: TrainingSettings, model_path: str | None, dtype: str, device: str):
    """(model, processor) of an adapter (on its base checkpoint) or of a checkpoint, in eval mode on `device`."""
    from msathinker.modeling import load_thinker

    if adapter:
        from peft import PeftModel

        config = json.loads((Path(model) / "adapter_config.json").read_text())
        base = model_path or settings.model_path or config["base_model_name_or_path"]
        thinker, processor = load_thinker(base, dtype=dtype, quantization=settings.quantization)
        thinker = PeftModel.from_pretrained(thinker, model)
    else:
        thinker, processor = load_thinker(model, dtype=dtype, quantization=settings.quantization)
    if settings.quantization == "none":  # load_thinker already placed a 4-bit model on its device
        thinker.to(device)
    return thinker.eval(), processor


def run_analysis(
    model: str,
    videos: str,
    transcripts: str | None,
    output: str | None,
    run_config: str | None,
    model_path: str | None,
    trained_scale: ScaleName | None,
    scale: ScaleName | None,
    batch_size: int,
    max_new_tokens: int | None,
    dtype: str | None,
    device: str | None,
    media_cache_dir: str | None,
    progress: bool,
) -> int:
    """See msathinker.commands.analyze (the options); returns the number of clips written."""
    import torch
    from tqdm.auto import tqdm

    from msathinker.assets import cache_dir
    from msathinker.evaluation import GenerationOptions, generate_completions
    from msathinker.media import MediaError

    adapter = _is_adapter(model)
    beside = Path(model).expanduser().parent / "config.yaml"
    config = Path(run_config) if run_config else beside if adapter and beside.is_file() else None
    if config is not None and not config.is_file():
        raise AnalyzeError(f"run config {config}: file not found")
    print(f"analyze: prompt settings from {config or 'the training defaults (no run config)'}", file=sys.stderr)
    settings = read_run_config(config)
    model_scale = SCALES[trained_scale] if trained_scale else settings.scale
    if model_scale is None:
        raise AnalyzeError(
            f"{model}: which label range was the model trained on? No run config names it: give --trained_scale "
            "mosei or sims, or --run_config (the config.yaml of the fit run)"
        )
    clips = new_clips(videos, transcripts)
    cache = settings.media_cache(Path(media_cache_dir) if media_cache_dir else cache_dir() / "media")
    for clip in tqdm(clips, desc="decoding clips", unit="clip", disable=not progress):  # every file before the model
        try:
            cache.load(clip.path)
        except MediaError as exc:
            raise AnalyzeError(f"{exc} (the model reads {', '.join(settings.prompt['modalities'])})") from exc

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    thinker, processor = _load_model(model, adapter, settings, model_path, dtype or settings.dtype, device)
    collator = settings.prompt_builder(processor, model_scale)
    known = {f.name for f in fields(GenerationOptions)}
    generation = {k: v for k, v in settings.generation.items() if k in known}
    if max_new_tokens is not None:
        generation["max_new_tokens"] = max_new_tokens
    options = GenerationOptions(**generation)
    out_scale = SCALES[scale] if scale else model_scale
    sink = open(output, "w", encoding="utf-8") if output else contextlib.nullcontext(sys.stdout)  # noqa: SIM115
    with sink as out, tqdm(total=len(clips), desc="analyzing", unit="clip", disable=not progress) as bar:
        for start in range(0, len(clips), batch_size):
            batch = clips[start : start + batch_size]
            items = [{"id": c.id, "text": c.text, **cache.load(c.path)} for c in batch]
            inputs = {k: v.to(device) if hasattr(v, "to") else v for k, v in collator(items)["inputs"].items()}
            with torch.no_grad():
                completions = generate_completions(thinker, processor, inputs, options)
            for clip, completion in zip(batch, completions, strict=True):
                record = analysis_record(clip, completion, collator.output_format, model_scale, out_scale)
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
            out.flush()
            bar.update(len(batch))
    return len(clips)

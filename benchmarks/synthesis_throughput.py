"""Synthesis throughput (clips/s) of the rules and transformers teachers (tiny checkpoint) and of the OpenAI-compatible
teacher at 1 vs 8 requests in flight against a local server on 127.0.0.1 that answers after a fixed latency (as a
stand-in for a remote model's response time). Prints numbers; asserts nothing.

    python benchmarks/synthesis_throughput.py [--clips 32] [--latency 0.05]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/openai_server.py: the local endpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=32)
    parser.add_argument("--latency", type=float, default=0.05, help="seconds the local server waits per request")
    args = parser.parse_args()

    from msathinker.assets import resolve_model_path
    from msathinker.synthesis import OpenAITeacher, RulesTeacher, TransformersTeacher, run_synthesis
    from tests.openai_server import ChatServer

    model = resolve_model_path("tiny")

    def rate(teacher, tmp: str, name: str) -> float:
        summary = run_synthesis(
            teacher=teacher, output=f"{tmp}/{name}.jsonl", dataset="demo_mosi", processor_path=model,
            max_clips=args.clips, experiment=None, progress=False,
        )  # fmt: skip
        return summary["clips_per_second"]

    with tempfile.TemporaryDirectory() as tmp:
        rules = rate(RulesTeacher(), tmp, "rules")
        local = rate(TransformersTeacher(model, max_new_tokens=32), tmp, "transformers")
        with ChatServer(latency=args.latency) as url:
            one = rate(OpenAITeacher(base_url=url, model="tiny", max_in_flight=1), tmp, "openai1")
            eight = rate(OpenAITeacher(base_url=url, model="tiny", max_in_flight=8), tmp, "openai8")
    print(f"{args.clips} demo_mosi train clips (media decoded and cached before timing)")
    print(f"rules teacher:                          {rules:9.1f} clips/s")
    print(f"transformers teacher (tiny, 32 tokens): {local:9.1f} clips/s")
    print(f"openai teacher, 1 in flight:            {one:9.1f} clips/s  (server latency {args.latency * 1000:.0f} ms)")
    print(f"openai teacher, 8 in flight:            {eight:9.1f} clips/s  ({eight / one:.1f}x)")


if __name__ == "__main__":
    main()

"""`python -m msathinker`: Lightning's fit / validate / test / predict plus the project's own commands.

The top-level help and the project commands dispatch before Lightning is imported (it takes seconds), so
`python -m msathinker --help` stays fast.
"""

from __future__ import annotations

import sys

from msathinker.commands import COMMANDS

LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test", "predict")

HELP = """usage: python -m msathinker <command> [options]

Training and evaluation (LightningCLI; `--config X.yaml`, `--print_config`, `<command> --help`):
  fit        train a model (SFT or Hint-GRPO, chosen by model.class_path)
  validate   run the validation loop
  test       evaluate on the test split (MMSA metrics)
  predict    write completions for a split

Project commands (`<command> --help` for options):
{commands}
Example: python -m msathinker fit --config experiments/quickstart/sft.yaml
"""


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        width = max(len(name) for name in COMMANDS)
        lines = "".join(f"  {name:<{width}}  {fn.__doc__.strip().splitlines()[0]}\n" for name, fn in COMMANDS.items())
        print(HELP.format(commands=lines))
        return
    if argv[0] in COMMANDS:
        from jsonargparse import CLI

        CLI(COMMANDS[argv[0]], args=argv[1:], prog=f"python -m msathinker {argv[0]}")
        return
    if argv[0] not in LIGHTNING_SUBCOMMANDS:
        known = ", ".join((*LIGHTNING_SUBCOMMANDS, *COMMANDS))
        sys.exit(f"python -m msathinker: unknown command {argv[0]!r}; choose one of: {known}")
    from msathinker.cli import cli_main

    cli_main(argv)


if __name__ == "__main__":
    main()

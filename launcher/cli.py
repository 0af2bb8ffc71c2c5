"""`cityscale` entry point: a thin dispatcher from subcommands to each service's `main(argv)`.

Each subcommand owns its argparse parser (and `--help`) in its own module, so this file stays a table.
Configuration mistakes surface as `ConfigError` and are printed as one line with exit code 2.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence

from configs.loader import ConfigError

# subcommand words -> "module:function" taking argv and returning an exit code
COMMANDS: dict[tuple[str, ...], tuple[str, str]] = {
    ("synth",): ("data_shards.synth:main", "draw a synthetic city in the UrbanCLIP toolkit layout"),
    ("shards", "build"): ("launcher.shards:main", "build webdataset shards with Ray (local, or a Ray job)"),
    ("eval", "text-probe"): ("eval.text_probe:main", "caption-only indicator probe on UrbanCLIP-format files"),
    ("eval", "watch"): ("eval.worker:main", "evaluate every published checkpoint of a run (eval workers)"),
    ("eval", "run"): ("eval.run:main", "evaluate one checkpoint and write its report"),
    ("caption",): ("eval.captioning:main", "captions of a split by a CoCa checkpoint, with BLEU/ROUGE-L/CIDEr"),
    ("demo",): ("launcher.demo:main", "synthetic city -> shards -> 2-rank training with async eval, end to end"),
    ("train",): ("launcher.train:main", "DeepSpeed ZeRO contrastive pretraining on shards (deepspeed launcher)"),
}


def _usage() -> str:
    lines = ["usage: cityscale COMMAND [options]   (cityscale COMMAND --help for its options)", "", "commands:"]
    for words, (_, text) in COMMANDS.items():
        lines.append(f"  {' '.join(words):<16} {text}")
    return "\n".join(lines)


def _resolve(argv: Sequence[str]) -> tuple[Callable[[list[str]], int], list[str]] | None:
    for n in (2, 1):
        words = tuple(argv[:n])
        if words in COMMANDS:
            module, func = COMMANDS[words][0].split(":")
            return getattr(importlib.import_module(module), func), list(argv[n:])
    return None


def _is_unreachable_store(error: BaseException) -> bool:
    """botocore's connection failures (s3fs underneath fsspec), wherever in the chain they were raised."""
    while error is not None:
        if type(error).__name__ in ("EndpointConnectionError", "ConnectTimeoutError", "NoCredentialsError"):
            return True
        error = error.__cause__ or error.__context__
    return False


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    found = _resolve(argv)
    if found is None:
        print(f"cityscale: unknown command {' '.join(argv[:2])!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    entry, rest = found
    try:
        return int(entry(rest) or 0)
    except ConfigError as e:
        print(f"cityscale: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - only object-store connection failures are turned into one line
        if not _is_unreachable_store(e):
            raise
        print(f"cityscale: object store unreachable ({e}): check AWS_ENDPOINT_URL, the credentials and that "
              "the store is running", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cityscale: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

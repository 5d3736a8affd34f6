"""``medvqa eval --baselines FILE --only NAME ...``: evaluate other vision-language models on the same questions.

FILE (``configuration/baselines.yaml``) lists models by name: Hub id (or folder), family, size, licence and whether
the checkpoint needs ``trust_remote_code``; optionally a pinned ``revision``, an ``adapter`` and a ``dtype``.
Each chosen model is evaluated with exactly the options of a plain ``medvqa eval`` (same data, prompt mode,
generation settings) into ``OUT/NAME``, ready for ``medvqa compare``.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from training.errors import MedVQAUserError

_KEYS = {"id", "family", "size", "licence", "trust_remote_code", "revision", "adapter", "dtype"}


@dataclass(frozen=True)
class Baseline:
    """One entry of the baselines file."""

    name: str
    id: str
    family: str
    size: str
    licence: str
    trust_remote_code: bool = False
    revision: str | None = None
    adapter: str | None = None
    dtype: str | None = None


def add_baseline_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``--baselines`` / ``--only`` options of ``medvqa eval``."""
    parser.add_argument(
        "--baselines",
        type=Path,
        default=None,
        help="baselines file (configuration/baselines.yaml) instead of --model",
    )
    parser.add_argument(
        "--only", nargs="+", default=None, metavar="NAME", help="evaluate only these baselines (default: all)"
    )


def load_baselines(path: str | Path) -> dict[str, Baseline]:
    """The entries of a baselines file, by name; a malformed file is a user error naming it."""
    import yaml

    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MedVQAUserError(path, "no such file") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise MedVQAUserError(path, f"cannot read the baselines file ({str(exc).splitlines()[0]})") from None
    entries = raw.get("baselines") if isinstance(raw, Mapping) else None
    if not isinstance(entries, Mapping) or not entries:
        raise MedVQAUserError(path, "expected a 'baselines:' mapping of names to entries")
    out: dict[str, Baseline] = {}
    for name, entry in entries.items():
        if not isinstance(entry, Mapping):
            raise MedVQAUserError(f"{path}: {name}", "entry is not a mapping")
        unknown = set(entry) - _KEYS
        missing = {"id", "family", "size", "licence"} - set(entry)
        if unknown or missing:
            problem = f"unknown keys {sorted(unknown)}" if unknown else f"missing keys {sorted(missing)}"
            raise MedVQAUserError(f"{path}: {name}", problem)
        if not isinstance(entry.get("trust_remote_code", False), bool):
            raise MedVQAUserError(f"{path}: {name}", "trust_remote_code must be true or false")
        out[str(name)] = Baseline(
            name=str(name),
            **{k: (v if k == "trust_remote_code" or v is None else str(v)) for k, v in entry.items()},
        )
    return out


def select(baselines: Mapping[str, Baseline], only: list[str] | None, source: str | Path) -> list[Baseline]:
    """The baselines named in ``only`` (all when ``None``), in the order given; unknown names are a user error."""
    if not only:
        return list(baselines.values())
    unknown = [name for name in only if name not in baselines]
    if unknown:
        raise MedVQAUserError(
            "--only", f"{', '.join(unknown)} not in {source} (known: {', '.join(baselines)})"
        )
    return [baselines[name] for name in dict.fromkeys(only)]


def run_baselines(args: argparse.Namespace) -> int:
    """Evaluate each chosen baseline into ``args.out / NAME`` with the other options of the command line."""
    from training.evaluation.evaluate import evaluate
    from training.evaluation.score_cli import print_summary
    from training.output_dir import prepare_output_dir

    if args.baselines is None:
        raise MedVQAUserError("--only", "needs --baselines FILE")
    if args.model is not None:
        raise MedVQAUserError("--model", "give either --model or --baselines, not both")
    chosen = select(load_baselines(args.baselines), args.only, args.baselines)
    out = prepare_output_dir(args.out, "eval")
    for baseline in chosen:
        folder = prepare_output_dir(out / baseline.name, "eval")
        print(f"== {baseline.name}: {baseline.id} ({baseline.family}, {baseline.size}, {baseline.licence})")
        result = evaluate(
            baseline.id,
            args.data,
            folder,
            batch_size=args.batch_size,
            max_new_tokens=args.max_new_tokens,
            train=args.train,
            limit=args.limit,
            mc_prefix=args.mc_prefix,
            device=args.device,
            dtype=baseline.dtype if args.dtype == "auto" and baseline.dtype else args.dtype,
            prompt=args.prompt,
            revision=args.revision or baseline.revision,
            trust_remote_code=baseline.trust_remote_code or args.trust_remote_code,
            adapter=args.adapter or baseline.adapter,
            baseline={"name": baseline.name, "size": baseline.size, "licence": baseline.licence},
        )
        print_summary(result.report, folder)
    return 0

"""The ``medvqa`` command line (DESIGN.md §3).

Each command lives in its own module, which exposes ``add_arguments(parser)`` and ``run(args) -> int``.
Command modules import heavy libraries (torch, transformers) inside ``run`` so that ``medvqa score`` or
``medvqa data convert`` start fast.  User errors (:class:`MedVQAUserError`) become exit status 2 and one line.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import sys
from collections.abc import Sequence

from training.errors import MedVQAUserError

# name -> (module, help). "data" has its own sub-commands, see _DATA_COMMANDS.
_COMMANDS: dict[str, tuple[str, str]] = {
    "init": ("training.init_checkpoint", "assemble the initial checkpoint from BiomedCLIP + Llama-3"),
    "train": ("training.train.cli", "run the training stages of a recipe"),
    "eval": ("training.evaluation.evaluate", "generate answers for a JSONL file and score them"),
    "score": ("training.evaluation.score_cli", "score an existing predictions file (no model)"),
    "compare": ("training.evaluation.compare", "compare scored prediction sets on their shared questions"),
    "ask": ("training.ask", "answer questions about one image"),
    "card": ("hub_card.card", "write the model card DIR/README.md"),
    "push": ("hub_card.push", "upload a model folder to the Hugging Face Hub"),
    "plan": ("training.train.planner", "predict per-GPU memory of a training run"),
    "app": ("training.app", "serve the model as a web page (Gradio) with an /answer API"),
    "demo": ("training.demo", "the whole chain on the bundled samples with the tiny recipe"),
}
_DATA_COMMANDS: dict[str, tuple[str, str]] = {
    "samples": (
        "training.data.samples",
        "build the bundled sample set from images inside installed packages",
    ),
    "convert": ("training.data.convert", "OmniMedVQA release -> open-ended records with image-level splits"),
    "import": ("training.data.importers", "VQA-RAD / SLAKE / PathVQA / PMC-VQA -> the record schema"),
}


class _Parser(argparse.ArgumentParser):
    """argparse that reports a wrong option as one line and exit status 2 (argparse's own status)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def _add(subparsers: argparse._SubParsersAction, name: str, module: str, help_: str) -> None:
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:  # a command whose module is not written yet stays out of the CLI
        if exc.name and module.startswith(exc.name):
            return
        raise
    parser = subparsers.add_parser(
        name, help=help_, description=(mod.__doc__ or help_).strip().splitlines()[0]
    )
    mod.add_arguments(parser)
    parser.set_defaults(_run=mod.run)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="medvqa", description="medvqa-lite: a lightweight medical VQA model, the Hugging Face way"
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    data = sub.add_parser("data", help="build, convert and import datasets")
    data_sub = data.add_subparsers(dest="data_command", required=True, parser_class=_Parser)
    for name, (module, help_) in _DATA_COMMANDS.items():
        _add(data_sub, name, module, help_)
    for name, (module, help_) in _COMMANDS.items():
        _add(sub, name, module, help_)
    return parser


# errno values of OSErrors that describe the user's paths and disks; any other OSError keeps its traceback.
_USER_OS_ERRNOS = frozenset(
    {
        errno.ENOENT, errno.EISDIR, errno.ENOTDIR, errno.ELOOP, errno.EEXIST, errno.EACCES, errno.EPERM,
        errno.ENAMETOOLONG, errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.ENXIO,
    }
)  # fmt: skip


class _HeldWarnings(logging.Handler):
    """Holds library warnings (Python ``warnings`` and log records without a handler of their own) for the
    duration of a command: shown at the end when it succeeds, dropped when it ends in a user error, whose one
    line is then the only thing on stderr (a Pillow DecompressionBombWarning about the same image, or
    bitsandbytes' notice about an optional CPU kernel, would otherwise come first)."""

    LIMIT = 200  # a long-running command (`medvqa app`, a training run) must not hold warnings without bound

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []
        self.dropped = 0

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.records) < self.LIMIT:
            self.records.append(record)
        else:
            self.dropped += 1

    def replay(self) -> None:
        for record in self.records:
            print(self.format(record), file=sys.stderr)
        if self.dropped:
            print(f"({self.dropped} more warnings not shown)", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``medvqa`` console script.

    The one error boundary of every command: a :class:`MedVQAUserError` (bad path, bad file, bad value) becomes
    exit status 2 and one line on stderr naming the input; anything else is a bug and keeps its traceback.
    """
    args = build_parser().parse_args(argv)
    held = _HeldWarnings()
    root = logging.getLogger()
    root.addHandler(held)
    logging.captureWarnings(True)
    name = " ".join(filter(None, (args.command, getattr(args, "data_command", None))))
    try:
        code = int(args._run(args) or 0)
    except MedVQAUserError as exc:
        print(f"medvqa {name}: error: {exc}".replace("\n", " "), file=sys.stderr)
        return 2
    except OSError as exc:
        # The safety net behind the checks at the source: a file-system refusal on a named path (a folder where a
        # file was expected, a symlink loop, no permission, a full disk) is about the user's files, not our code.
        if exc.filename is None or exc.errno not in _USER_OS_ERRNOS:
            held.replay()
            raise
        print(f"medvqa {name}: error: {exc.filename}: {exc.strerror}".replace("\n", " "), file=sys.stderr)
        return 2
    except BaseException:
        held.replay()  # a bug (or Ctrl-C): what the libraries warned about may help; the traceback follows
        raise
    finally:
        logging.captureWarnings(False)
        root.removeHandler(held)
    held.replay()
    return code


if __name__ == "__main__":
    sys.exit(main())

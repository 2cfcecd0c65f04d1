"""The argument parser of every script: full help texts, one-line errors, "did you mean".

Errors print one line ``error: ...`` and exit with status 2, like every other bad input. An
unknown flag names the closest known one (``difflib``); a flag listed in ``renamed`` (another
code base's spelling, e.g. the paper code's ``--num_labels``) says what to write instead.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Callable, Mapping, Sequence

# old flag -> (its value or None) -> what to write instead
Renamed = Mapping[str, Callable[[str | None], str]]


def closest(word: str, options: Sequence[str], cutoff: float = 0.6) -> str | None:
    """The option most like ``word`` (case-insensitive), or None when none is close."""
    lowered = {o.lower(): o for o in options}
    match = difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=cutoff)
    return lowered[match[0]] if match else None


def did_you_mean(word: str, options: Sequence[str]) -> str:
    """``"; did you mean X?"`` or ``""``."""
    match = closest(word, options)
    return f"; did you mean {match}?" if match else ""


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose description and epilog keep their line breaks
    (full docstrings and examples in ``--help``) and whose errors are one line."""

    def __init__(self, *args, renamed: Renamed | None = None, **kwargs) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)
        self.renamed = dict(renamed or {})

    def known_flags(self) -> list[str]:
        return [s for a in self._actions for s in a.option_strings if s.startswith("--")]

    def parse_args(self, args=None, namespace=None):  # type: ignore[override]
        args = list(sys.argv[1:] if args is None else args)
        self._check_renamed(args)
        self._check_unknown(args)
        parsed, extra = self.parse_known_args(args, namespace)
        if extra:
            self.error(f"unrecognized argument {extra[0]}")
        return parsed

    def _check_unknown(self, args: list[str]) -> None:
        """An unknown ``--flag`` first (before argparse's "required" errors), with the known
        flag it most resembles."""
        known = self.known_flags()
        for item in args:
            if item == "--":
                return
            flag = item.split("=", 1)[0]
            if flag.startswith("--") and not any(k.startswith(flag) for k in known):
                self.error(f"unrecognized argument {flag}{did_you_mean(flag, known)}")

    def _check_renamed(self, args: list[str]) -> None:
        for i, item in enumerate(args):
            if item == "--":
                return
            flag, eq, value = item.partition("=")
            if flag not in self.renamed:
                continue
            if not eq:
                nxt = args[i + 1] if i + 1 < len(args) else None
                value = nxt if nxt is not None and not nxt.startswith("-") else None
            self.error(f"{flag} is not a flag here: {self.renamed[flag](value or None)}")

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)

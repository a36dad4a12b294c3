"""What the command lines (``training/*.py``, ``conversion/*.py``) share: the exit-status report and integer
argument types. Package-only (not copied into saved folders)."""

import argparse
import sys


def report_exit(script: str, code: int, cause: str, err: BaseException) -> int:
    """Print ``error: <message>`` and, as the very last line, ``<script>: exit status <code> (<cause>): <first line>``
    on stderr, then return ``code``. The last line stays readable right above a launcher's traceback
    (``accelerate launch`` turns every failure into exit status 1)."""
    print(f"error: {err}", file=sys.stderr)
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    print(f"{script}: exit status {code} ({cause}): {first}", file=sys.stderr, flush=True)
    return code


def int_at_least(minimum: int, note: str = ""):
    """An argparse ``type`` that accepts integers >= ``minimum`` and names the bound otherwise (``note`` is added
    to the message for an out-of-range value, e.g. ``"0: no step"``)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            extra = f" ({note})" if note else ""
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}{extra}, got {value}")
        return value

    return parse

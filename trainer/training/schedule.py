"""Learning-rate (and clip-value) schedule strings, with the reference webui's semantics.

    "0.005"                       one rate until max steps
    "5e-2:100, 5e-3:500, 5e-6"    0.05 while step < 100, 0.005 while step < 500, then 5e-6 to max steps
    "0.005:100, 1e-3:1000"        ...and training ends at step 1000 when the pairs run out

A pair whose end step is at or below the resume step is skipped; an end step beyond max steps is clamped to
max steps and ends the list; `-1` means max steps; a bare rate holds to max steps and ends the list.
"""
from dataclasses import dataclass

from common.errors import UserError

SYNTAX_HELP = ('write a number like "0.005", or rate:step pairs like "0.05:100, 0.005:1000, 1e-5" '
               '(0.05 until step 100, 0.005 until step 1000, then 1e-5)')


@dataclass
class Schedule:
    """A walk through (value, end_step) pieces: `advance(step)` once per optimizer step, in order, moves it on."""

    pieces: list  # [(value, end_step), ...]
    index: int = 0

    @property
    def value(self) -> float:
        """The current piece's value (the last piece's once the schedule ran out)."""
        return self.pieces[min(self.index, len(self.pieces) - 1)][0]

    def advance(self, step: int):
        """Move on to the optimizer step that starts with `step` steps done and return its value; None once the
        schedule ran out. Like the reference, it moves on by at most one piece per call."""
        if self.index >= len(self.pieces):
            return None
        if step >= self.pieces[self.index][1]:
            self.index += 1
            if self.index >= len(self.pieces):
                return None
        return self.pieces[self.index][0]


def parse_schedule(text: str, max_steps: int, start_step: int = 0, what: str = "learning rate") -> Schedule:
    """Parse a schedule string; raises UserError with the syntax when it makes no sense (anywhere in it: the
    whole string is checked, also the part after max steps)."""
    if not str(text).strip():
        raise UserError(f"The {what} schedule is empty; {SYNTAX_HELP}.")
    parsed = []  # (value, end step or None for a bare value)
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        fields = part.split(":")
        if len(fields) > 2:
            raise UserError(f'Invalid {what} schedule "{text}": "{part}" has more than one ":"; {SYNTAX_HELP}.')
        value = _number(fields[0], text, what)
        end = _integer(fields[1], text, what) if len(fields) == 2 else None
        previous = [e for _, e in parsed if e not in (None, -1)]
        if end not in (None, -1) and previous and end <= previous[-1]:
            raise UserError(f'Invalid {what} schedule "{text}": step {end} does not come after step {previous[-1]} '
                            f"(the steps must increase); {SYNTAX_HELP}.")
        parsed.append((value, end))
    pieces = []
    for value, end in parsed:
        if end is None or end == -1:
            pieces.append((value, max_steps))
            break
        if end > start_step:
            pieces.append((value, min(end, max_steps)))
            if end > max_steps:
                break
    if not pieces:
        raise UserError(f'Invalid {what} schedule "{text}": nothing left to train after step {start_step}; '
                        f"{SYNTAX_HELP}.")
    return Schedule(pieces)


def _number(field: str, text: str, what: str) -> float:
    try:
        value = float(field.strip())
    except ValueError:
        raise UserError(f'Invalid {what} schedule "{text}": "{field.strip()}" is not a number; {SYNTAX_HELP}.') from None
    if value != value or value in (float("inf"), float("-inf")) or value < 0:
        raise UserError(f'Invalid {what} schedule "{text}": {field.strip()} is not a usable {what}; {SYNTAX_HELP}.')
    return value


def _integer(field: str, text: str, what: str) -> int:
    try:
        return int(field.strip())
    except ValueError:
        raise UserError(f'Invalid {what} schedule "{text}": step "{field.strip()}" is not a whole number; '
                        f"{SYNTAX_HELP}.") from None

"""The AUTOMATIC1111 prompt grammar, reimplemented without lark.

Three independent pieces, each giving the reference webui's exact results:

* :func:`parse_prompt_attention` - emphasis: ``(x)`` x1.1, ``[x]`` /1.1, ``(x:1.5)``, escapes and ``BREAK``.
* :func:`prompt_schedule` - prompt editing ``[from:to:when]`` and alternation ``[a|b]`` over sampling steps.
* :func:`split_and` - composable-diffusion ``AND`` sub-prompts with an optional ``:weight``.

The schedule grammar (the reference describes it for an Earley parser) is::

    start      := (prompt | stray bracket or colon)*
    prompt     := (emphasized | scheduled | alternate | plain | whitespace)*
    emphasized := "(" prompt ")" | "(" prompt ":" prompt ")" | "[" prompt "]"
    scheduled  := "[" [prompt ":"] prompt ":" [ws] NUMBER [ws] "]"
    alternate  := "[" prompt ("|" [prompt])+ "]"
    plain      := (any character but \\ [ ] ( ) : |  or  a backslash and one character but a newline)+

A bracket at the top level is read as a structure when it can be, and as a literal character otherwise; a
``|`` outside an alternation, or a backslash with nothing after it, makes the prompt unparseable, and such a
prompt is used literally.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Union

ROUND_MULTIPLIER = 1.1
SQUARE_MULTIPLIER = 1 / 1.1

# ---------------------------------------------------------------------------------------------------------
# Emphasis
# ---------------------------------------------------------------------------------------------------------

# One token of emphasis syntax; the alternatives are tried in this order at every position.
_EMPHASIS_TOKEN = re.compile(
    r"""
      \\(?P<escaped>[()\[\]\\])?            # \( \) \[ \] \\ are literals; a lone backslash vanishes
    | (?P<open>[(\[])
    | :\s*(?P<weight>[+-]?[.\d]+)\s*\)      # ':1.5)' closes a round bracket with an explicit weight
    | (?P<close>[)\]])
    | (?P<text>[^\\()\[\]:]+|:)
    """,
    re.VERBOSE,
)
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.DOTALL)


def parse_prompt_attention(text: str) -> list[list]:
    """Split ``text`` into ``[fragment, weight]`` pairs the way the reference does.

    ``(x)`` multiplies by 1.1, ``[x]`` divides by 1.1, ``(x:w)`` multiplies by ``w``; nesting multiplies;
    brackets left open apply to the end of the text; ``\\(`` ``\\)`` ``\\[`` ``\\]`` ``\\\\`` are literal
    characters; a standalone ``BREAK`` becomes ``["BREAK", -1]``; neighbours of equal weight are merged.

    >>> parse_prompt_attention("an (important) word")
    [['an ', 1.0], ['important', 1.1], [' word', 1.0]]
    """
    segments: list[list] = []
    open_round: list[int] = []  # index of the first segment inside each open bracket
    open_square: list[int] = []

    def scale_from(start: int, factor: float) -> None:
        for segment in segments[start:]:
            segment[1] *= factor

    def add_literal(fragment: str) -> None:
        for n, piece in enumerate(_BREAK.split(fragment)):
            if n:
                segments.append(["BREAK", -1])
            segments.append([piece, 1.0])

    for token in _EMPHASIS_TOKEN.finditer(text):
        whole = token.group(0)
        if whole.startswith("\\"):
            segments.append([token.group("escaped") or "", 1.0])
        elif token.group("open") == "(":
            open_round.append(len(segments))
        elif token.group("open") == "[":
            open_square.append(len(segments))
        elif token.group("weight") is not None and open_round:
            scale_from(open_round.pop(), float(token.group("weight")))
        elif whole == ")" and open_round:
            scale_from(open_round.pop(), ROUND_MULTIPLIER)
        elif whole == "]" and open_square:
            scale_from(open_square.pop(), SQUARE_MULTIPLIER)
        else:  # plain text, a lone ':', or a closing bracket with nothing to close
            add_literal(whole)

    # Unclosed brackets run to the end: round ones first (outermost first), then square ones.
    for start in open_round:
        scale_from(start, ROUND_MULTIPLIER)
    for start in open_square:
        scale_from(start, SQUARE_MULTIPLIER)

    if not segments:
        return [["", 1.0]]

    merged = [segments[0]]
    for fragment, weight in segments[1:]:
        if merged[-1][1] == weight:
            merged[-1][0] += fragment
        else:
            merged.append([fragment, weight])
    return merged


# ---------------------------------------------------------------------------------------------------------
# Prompt editing and alternation
# ---------------------------------------------------------------------------------------------------------

# The NUMBER terminal: optional sign, then (first match wins) 1e5 | 1.5 / 1. / .5 with optional exponent | 15
_NUMBER = re.compile(r"[+-]?(?:[0-9]+[eE][+-]?[0-9]+|(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|[0-9]+)")
_WHITESPACE = re.compile(r"\s+")
_PLAIN = re.compile(r"(?:[^\\\[\]():|]|\\.)+")


@dataclass
class _Edit:
    """``[before:after:when]``; ``before`` is None for ``[after:when]``."""

    before: list | None
    after: list
    when_text: str
    when: int = 0  # resolved against the step count by _resolve_edits


@dataclass
class _Alternation:
    """``[a|b|c]``: one option per step, cycling."""

    options: list


_Node = Union[str, _Edit, _Alternation]


class _ParseError(Exception):
    """The prompt is not in the grammar; the reference then uses it literally."""


class _ScheduleParser:
    """Recursive-descent parser for one prompt; returns a list of nodes (str, _Edit, _Alternation)."""

    def __init__(self, text: str):
        self.text = text
        self._bracket_memo: dict[int, tuple[list, int] | None] = {}
        self._prompt_memo: dict[int, tuple[list, int]] = {}

    def char(self, pos: int) -> str:
        return self.text[pos] if pos < len(self.text) else ""

    def parse(self) -> list:
        # Settle every bracket from the right first: a bracket's inner brackets are then already known,
        # so the recursion stays shallow however deeply the prompt nests.
        for pos in range(len(self.text) - 1, -1, -1):
            if self.text[pos] in "([":
                self.bracket(pos)
        nodes: list = []
        pos = 0
        while pos < len(self.text):
            c = self.text[pos]
            if c in "([":
                structure = self.bracket(pos)
                if structure is not None:
                    nodes.extend(structure[0])
                    pos = structure[1]
                    continue
            if c in "()[]:":  # a bracket or colon that belongs to no structure is kept as text
                nodes.append(c)
                pos += 1
                continue
            plain = _PLAIN.match(self.text, pos)
            if plain is None:  # '|' outside an alternation, or a backslash at the end / before a newline
                raise _ParseError(pos)
            nodes.append(plain.group(0))
            pos = plain.end()
        return nodes

    def prompt(self, pos: int) -> tuple[list, int]:
        """The longest ``prompt`` starting at ``pos``: plain text, whitespace and complete structures."""
        if pos in self._prompt_memo:
            return self._prompt_memo[pos]
        start, nodes = pos, []
        while pos < len(self.text):
            if self.text[pos] in "([":
                structure = self.bracket(pos)
                if structure is None:
                    break
                nodes.extend(structure[0])
                pos = structure[1]
                continue
            plain = _PLAIN.match(self.text, pos)
            if plain is None:
                break
            nodes.append(plain.group(0))
            pos = plain.end()
        self._prompt_memo[start] = (nodes, pos)
        return nodes, pos

    def bracket(self, pos: int) -> tuple[list, int] | None:
        """A complete emphasized / scheduled / alternate structure at ``pos``, or None."""
        if pos not in self._bracket_memo:
            opener = self.text[pos]
            self._bracket_memo[pos] = self._round(pos) if opener == "(" else self._square(pos)
        return self._bracket_memo[pos]

    def _round(self, pos: int) -> tuple[list, int] | None:
        first, pos = self.prompt(pos + 1)
        if self.char(pos) == ")":
            return ["(", *first, ")"], pos + 1
        if self.char(pos) == ":":
            second, end = self.prompt(pos + 1)
            if self.char(end) == ")":
                return ["(", *first, ":", *second, ")"], end + 1
        return None

    def _square(self, pos: int) -> tuple[list, int] | None:
        first, pos = self.prompt(pos + 1)
        sep = self.char(pos)
        if sep == "]":
            return ["[", *first, "]"], pos + 1
        if sep == "|":
            options = [first]
            while self.char(pos) == "|":
                option, pos = self.prompt(pos + 1)
                options.append(option)
            if self.char(pos) == "]":
                return [_Alternation(options)], pos + 1
            return None
        if sep == ":":
            when = self._when(pos + 1)  # [after:when]
            if when is not None:
                return [_Edit(None, first, when[0])], when[1]
            second, end = self.prompt(pos + 1)  # [before:after:when]
            if self.char(end) == ":":
                when = self._when(end + 1)
                if when is not None:
                    return [_Edit(first, second, when[0])], when[1]
        return None

    def _when(self, pos: int) -> tuple[str, int] | None:
        """``[ws] NUMBER [ws] "]"`` at ``pos``: the number's text and the position after the bracket."""
        space = _WHITESPACE.match(self.text, pos)
        pos = space.end() if space else pos
        number = _NUMBER.match(self.text, pos)
        if number is None:
            return None
        pos = number.end()
        space = _WHITESPACE.match(self.text, pos)
        pos = space.end() if space else pos
        if self.char(pos) != "]":
            return None
        return number.group(0), pos + 1


def _walk(nodes: list):
    """Every _Edit and _Alternation in ``nodes``, nested ones included."""
    for node in nodes:
        if isinstance(node, _Edit):
            yield node
            yield from _walk(node.before or [])
            yield from _walk(node.after)
        elif isinstance(node, _Alternation):
            yield node
            for option in node.options:
                yield from _walk(option)


def _render(nodes: list, step: int) -> str:
    parts = []
    for node in nodes:
        if isinstance(node, str):
            parts.append(node)
        elif isinstance(node, _Edit):
            chosen = (node.before or []) if step <= node.when else node.after
            parts.append(_render(chosen, step))
        else:
            parts.append(_render(node.options[(step - 1) % len(node.options)], step))
    return "".join(parts)


def prompt_schedule(prompt: str, steps: int, hires_steps: int | None = None,
                    use_old_scheduling: bool = False) -> list[list]:
    """The prompt's text at each step where it changes, as ``[[end_step, text], ...]``.

    ``[from:to:when]`` switches after step ``when``; ``[to:when]`` adds, ``[from::when]`` removes.  An integer
    ``when`` is a step; a number written with a decimal point is a fraction of ``steps``.  ``[a|b|c]``
    cycles every step.  A prompt outside the grammar is returned unchanged as ``[[steps, prompt]]``.

    ``hires_steps`` / ``use_old_scheduling`` follow the reference: with ``hires_steps`` given, the schedule
    covers the hires pass (integers count on from ``steps``, fractions from 1.0); the old rule treats any
    number below 1 as a fraction.

    >>> prompt_schedule("a [b:c:3]", 10)
    [[3, 'a b'], [10, 'a c']]
    """
    if hires_steps is None or use_old_scheduling:
        int_offset, float_offset, total = 0, 0, steps
    else:
        int_offset, float_offset, total = steps, 1.0, hires_steps

    try:
        nodes = _ScheduleParser(prompt).parse()
    except _ParseError:
        return [[total, prompt]]

    boundaries = {total}
    for node in _walk(nodes):
        if isinstance(node, _Alternation):
            boundaries.update(range(1, total + 1))
            continue
        value = float(node.when_text)
        if use_old_scheduling:
            value = value * total if value < 1 else value
        elif "." in node.when_text:
            value = (value - float_offset) * total
        else:
            value = value - int_offset
        node.when = min(total, int(value))
        if node.when >= 1:
            boundaries.add(node.when)
    return [[step, _render(nodes, step)] for step in sorted(boundaries)]


def prompt_schedules(prompts: list[str], steps: int, hires_steps: int | None = None,
                     use_old_scheduling: bool = False) -> list[list[list]]:
    """:func:`prompt_schedule` for several prompts (the reference's get_learned_conditioning_prompt_schedules)."""
    cache: dict[str, list[list]] = {}
    for prompt in prompts:
        if prompt not in cache:
            cache[prompt] = prompt_schedule(prompt, steps, hires_steps, use_old_scheduling)
    return [[list(entry) for entry in cache[prompt]] for prompt in prompts]


# ---------------------------------------------------------------------------------------------------------
# AND (composable diffusion)
# ---------------------------------------------------------------------------------------------------------

_AND = re.compile(r"\bAND\b")
_TRAILING_WEIGHT = re.compile(r"^(.*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$", re.DOTALL)


def split_and(prompt: str) -> list[tuple[str, float]]:
    """Split a prompt at each standalone ``AND`` into ``(text, weight)``; ``text :0.5`` gives weight 0.5.

    >>> split_and("a cat AND a dog :0.5")
    [('a cat', 1.0), (' a dog', 0.5)]
    """
    result = []
    for part in _AND.split(prompt):
        text, weight = _TRAILING_WEIGHT.match(part).groups()
        result.append((text, float(weight) if weight is not None else 1.0))
    return result

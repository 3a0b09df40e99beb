"""How a prompt was understood: its AND parts, its schedule over the steps, weighted segments, embeddings.

Plain data for a page to draw (the `ti_parsed_prompt` view and the txt2img tab's parsed view).
"""
import re

from trainer.prompts.parser import parse_prompt_attention, prompt_schedule, split_and

MAX_SCHEDULE_ROWS = 8


def _embedding_pattern(embeddings: dict):
    if not embeddings:
        return None
    names = sorted(embeddings, key=len, reverse=True)  # the longest name wins
    return re.compile(r"(?<![\w-])(" + "|".join(re.escape(n) for n in names) + r")(?![\w-])", re.IGNORECASE)


def names_in_prompt(prompt: str, names) -> list:
    """Which of `names` (embedding names) a prompt mentions, as whole words, case-insensitively."""
    pattern = _embedding_pattern(dict.fromkeys(names))
    if pattern is None:
        return []
    found = {m.lower() for m in pattern.findall(prompt)}
    return [name for name in names if name.lower() in found]


_HYPERNET_TAG = re.compile(r"(<hypernet:[^>]+>)")


def _hypernetwork_segment(tag: str) -> dict:
    """A `<hypernet:name:multiplier>` tag: applied to the UNet, not part of the text the encoder sees."""
    items = tag[len("<hypernet:"):-1].split(":")
    try:
        multiplier = float(items[1]) if len(items) > 1 and items[1].strip() else 1.0
    except ValueError:
        multiplier = None
    return {"text": tag, "weight": None, "kind": "hypernetwork", "name": items[0].strip(), "multiplier": multiplier}


def _segments(text: str, pattern, embeddings: dict) -> list:
    out = []
    for fragment, weight in parse_prompt_attention(text):
        if weight == -1:
            out.append({"text": "BREAK", "weight": None, "kind": "break"})
            continue
        for j, part in enumerate(_HYPERNET_TAG.split(fragment)):
            if j % 2:
                out.append(_hypernetwork_segment(part))
            elif part:
                out += _text_segments(part, weight, pattern, embeddings)
    return out


def _text_segments(fragment: str, weight: float, pattern, embeddings: dict) -> list:
    out = []
    pieces = pattern.split(fragment) if pattern else [fragment]
    for i, piece in enumerate(pieces):
        if not piece:
            continue
        if i % 2:  # a captured embedding name
            name = next(n for n in embeddings if n.lower() == piece.lower())
            out.append({"text": piece, "weight": weight, "kind": "embedding", "name": name,
                        "vectors": embeddings[name]})
        else:
            out.append({"text": piece, "weight": weight, "kind": "text"})
    return out


def describe_prompt(prompt: str, steps: int = 20, embeddings: dict | None = None) -> list:
    """[{"weight": AND weight, "schedule": [{"from": a, "to": b, "segments": [...]}], "truncated": bool}]

    `embeddings` maps names to their vector counts. Schedules with many rows (alternation) are cut to
    MAX_SCHEDULE_ROWS rows and flagged.
    """
    embeddings = embeddings or {}
    pattern = _embedding_pattern(embeddings)
    parts = []
    for text, weight in split_and(prompt):
        schedule = prompt_schedule(text, steps)
        rows, start = [], 1
        for end, sub_text in schedule[:MAX_SCHEDULE_ROWS]:
            rows.append({"from": start, "to": end, "segments": _segments(sub_text, pattern, embeddings)})
            start = end + 1
        parts.append({"weight": weight, "schedule": rows, "truncated": len(schedule) > MAX_SCHEDULE_ROWS})
    return parts


_NAME_LIKE = re.compile(r"(?<![\w<:-])([A-Za-z][A-Za-z0-9]*(?:[-_][A-Za-z0-9]+)+)(?![\w>-])")


def embedding_notes(prompt: str, loaded: dict, skipped: dict, folder) -> list:
    """Sentences about embeddings a prompt meant to use and will not: none found at all, one the model cannot use
    (with the reason), a word shaped like an embedding name (`my-cat`, `style_2`) with no file of that name."""
    import difflib

    notes = []
    if not loaded:
        notes.append(f"No embedding in {folder} fits this model." if skipped else f"No embeddings found in {folder}.")
    for name in names_in_prompt(prompt, list(skipped)):
        if name not in loaded:
            notes.append(f"Embedding '{name}' was not used: {skipped[name][1]}.")
    known = {name.lower() for name in list(loaded) + list(skipped)}
    for word in dict.fromkeys(_NAME_LIKE.findall(prompt)):
        if word.lower() in known:
            continue
        close = difflib.get_close_matches(word, list(loaded), n=1, cutoff=0.75)
        hint = f"; did you mean '{close[0]}'?" if close else "."
        notes.append(f"'{word}' looks like an embedding name, but there is no embedding '{word}' in {folder}{hint}")
    return notes

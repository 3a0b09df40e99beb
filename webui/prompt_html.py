"""Render trainer.prompts.view.describe_prompt as HTML: colour by weight, embeddings and schedules marked."""
import html


def weight_colour(weight: float) -> str:
    """Neutral grey at 1.0; warmer above (stronger), cooler below (weaker)."""
    if weight is None:
        return "#e5e7eb"
    if abs(weight - 1.0) < 1e-6:
        return "#f3f4f6"
    strength = min(1.0, abs(weight - 1.0) / 0.6)
    alpha = 0.2 + 0.6 * strength
    return f"rgba(249,115,22,{alpha:.2f})" if weight > 1 else f"rgba(59,130,246,{alpha:.2f})"


def segment_html(seg: dict) -> str:
    if seg["kind"] == "break":
        return "<span class='seg brk' title='BREAK: ends a 75-token chunk'>BREAK</span>"
    if seg["kind"] == "hypernetwork":
        strength = "?" if seg["multiplier"] is None else f"{seg['multiplier']:g}"
        title = f"hypernetwork {seg['name']} at strength {strength} (applied to the UNet, not encoded as text)"
        return (f"<span class='seg hn' title='{html.escape(title)}'>{html.escape(seg['name'])}"
                f"<sub>hypernet&nbsp;×{strength}</sub></span>")
    text = html.escape(seg["text"]).replace(" ", "&nbsp;")
    weight = seg["weight"]
    classes = "seg emb" if seg["kind"] == "embedding" else "seg"
    title = f"weight {weight:.3f}"
    badge = f"<sub>{weight:.2f}</sub>" if abs(weight - 1.0) > 1e-6 else ""
    if seg["kind"] == "embedding":
        title += f", embedding {seg['name']} ({seg['vectors']} vectors)"
        badge += f"<sub>emb&nbsp;{seg['vectors']}v</sub>"
    return (f"<span class='{classes}' style='background:{weight_colour(weight)}' title='{html.escape(title)}'>"
            f"{text}{badge}</span>")


def prompt_html(parts: list, caption: str = "") -> str:
    if not parts:
        return "<div class='parsed-prompt'><i>(empty prompt)</i></div>"
    out = ["<div class='parsed-prompt'>"]
    if caption:
        out.append(f"<div><b>{html.escape(caption)}</b></div>")
    for i, part in enumerate(parts):
        if len(parts) > 1:
            out.append(f"<div><b>AND part {i + 1}</b> (weight {part['weight']:g})</div>")
        rows = part["schedule"]
        for row in rows:
            label = ""
            if len(rows) > 1:
                label = (f"<span class='sched' title='scheduled part'>steps {row['from']}–{row['to']}:</span> "
                         if row["from"] != row["to"] else
                         f"<span class='sched' title='alternating part'>step {row['from']}:</span> ")
            out.append("<div>" + label + "".join(segment_html(s) for s in row["segments"]) + "</div>")
        if part["truncated"]:
            out.append("<div><i>… alternates every step from here on</i></div>")
    out.append("</div>")
    return "".join(out)


def parsed_prompt_html(ws, prompt: str, steps: int, caption: str) -> str:
    """`prompt` parsed against the embeddings in the workspace's folder (their vector counts), as HTML."""
    from trainer.prompts.view import describe_prompt

    counts = {name: e.num_vectors for name, e in ws.embeddings()[0].items()}
    return prompt_html(describe_prompt(prompt or "", int(steps), counts), caption)

"""How the page names the controls an error's sentence points at (UserError.control); the CLI names its flags."""
from common.errors import UserError, with_hint

PAGE_HINTS = {"overwrite": "Tick 'Overwrite Old Embedding' to replace it.",
              "blip_model": "Or write its folder in 'BLIP model folder'."}
HYPERNETWORK_HINTS = {**PAGE_HINTS, "overwrite": "Tick 'Overwrite Old Hypernetwork' to replace it."}


def page_message(error: Exception, hints: dict = PAGE_HINTS) -> str:
    return with_hint(error, hints)


def job_error(snap: dict) -> str:
    """A finished job's error sentence, with the page's hint for its control."""
    if not snap or not snap["error"]:
        return ""
    return with_hint(UserError(snap["error"], control=snap.get("error_control")), PAGE_HINTS)

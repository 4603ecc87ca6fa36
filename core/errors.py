"""One wording for errors raised while an archive's code runs, for every engine.

The C++ plugins get the same rules and the same words: `atomplug.core.native_header` writes
`MODEL_ERROR_MESSAGES` and `ATOMPLUG_ERROR_KIND` into the header both plugins include, whose
`first_line` and `describe_model_error` follow the functions below line by line.
"""

import re

# atomplug's own checks raise this kind of error, with a message that already names the fix
ATOMPLUG_ERROR_KIND = "ValueError"

# str.format templates; {kind} is the exception's class name, {message} its text
MODEL_ERROR_MESSAGES = {
    "model_raised": (
        "the model's own code raised {kind}: {message} (the model refuses this input: see its "
        "documentation for what it supports, or ask its authors)"
    ),
    "model_failed": "the model failed: {message} (an error inside the model: check its input, or ask its authors)",
}


def first_line(error: BaseException) -> str:
    """TorchScript errors carry a traceback; users need the message."""
    text = str(error)
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith(("builtins." + ATOMPLUG_ERROR_KIND + ":", ATOMPLUG_ERROR_KIND + ":")):
            return stripped.split(":", 1)[1].strip()
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1].strip() if lines else text


_RAISED = re.compile(r"^\s*builtins\.(\w+): ?(.*)$")


def describe_model_error(error: BaseException) -> str:
    """One line for an error raised while the entry point ran: atomplug's own checks raise
    ValueError with a message that names the fix, given as is; anything else (a model's own
    `raise RuntimeError(...)`, a failing torch operation) is the model's, and said to be."""
    text = str(error)
    lines = text.splitlines()
    for position in range(len(lines) - 1, -1, -1):
        match = _RAISED.match(lines[position])
        if match:
            kind = match.group(1)
            message = " ".join([match.group(2)] + [line.strip() for line in lines[position + 1 :] if line.strip()])
            if kind == ATOMPLUG_ERROR_KIND:
                return message
            return MODEL_ERROR_MESSAGES["model_raised"].format(kind=kind, message=message)
    return MODEL_ERROR_MESSAGES["model_failed"].format(message=first_line(error))

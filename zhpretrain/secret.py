"""Secrets are written nowhere: the one place that redacts a command line or a config before it is recorded (the lock
file, the console, SwanLab's config and metadata).

A secret is the value of anything whose name says it is one (hub_token, HF_TOKEN, SWANLAB_API_KEY, MODELSCOPE_API_TOKEN,
a *_password, a *_secret ...), and any string that contains the value of such an environment variable or of such an
option on this process's command line (so a token pasted elsewhere, into a URL or another option, is caught too)."""
import os
import re
import sys

REDACTED = "<redacted>"
# Whole words of a name, so max_new_tokens, tokenizer_name_or_path and tokens_per_step are not secrets.
NAME = re.compile(r"(^|[_.-])(token|key|password|passwd|secret|credentials?|auth)($|[_.-])", re.IGNORECASE)
OPTION = re.compile(r"^(--?[\w.-]+)(=.*)?$")
SHORTEST = 6  # a value shorter than this is not searched for inside other strings (it would match everywhere)


def is_secret(name: str) -> bool:
    return bool(NAME.search(str(name).lstrip("-")))


def _known(argv: list[str] | None = None) -> set[str]:
    """Secret values this process knows of: secret-named environment variables and secret-named options."""
    values = {v for k, v in os.environ.items() if is_secret(k) and len(v) >= SHORTEST}
    args = list(sys.argv if argv is None else argv)
    for i, arg in enumerate(args):
        if (m := OPTION.match(arg)) and is_secret(m.group(1)):
            value = m.group(2)[1:] if m.group(2) else (args[i + 1] if i + 1 < len(args) else "")
            if len(value) >= SHORTEST:
                values.add(value)
    return values


def scrub(text: str, known: set[str] | None = None) -> str:
    """text with every known secret value replaced (for messages that may quote what the user gave)."""
    known = _known() if known is None else known
    for value in sorted(known, key=len, reverse=True):
        text = text.replace(value, REDACTED)
    return text


def command(argv: list[str]) -> list[str]:
    """argv with the value of every secret option (--name VALUE or --name=VALUE) and every known secret replaced."""
    known = _known(argv) | _known()
    out, hide_next = [], False
    for arg in argv:
        m = OPTION.match(arg)
        if hide_next and not (m and arg.startswith("--")):
            out.append(REDACTED)
        elif m and is_secret(m.group(1)) and m.group(2):
            out.append(f"{m.group(1)}={REDACTED}")
        else:
            out.append(scrub(arg, known))
        hide_next = bool(m and is_secret(m.group(1)) and not m.group(2)) and not hide_next
    return out


def text(value: str) -> str:
    """A line about to be printed or stored (e.g. an old lock file's command): options and known secrets redacted."""
    return " ".join(command(str(value).split(" ")))


def redact(value, known: set[str] | None = None):
    """A config (dicts, lists, scalars) with the value of every secret-named key, and every known secret inside a
    string, replaced. An unset value (None, "") stays as it is, so the record still says it was not set."""
    known = _known() if known is None else known
    if isinstance(value, dict):
        return {k: (REDACTED if is_secret(k) and v not in (None, "") else redact(v, known)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact(v, known) for v in value)
    if isinstance(value, str):
        return scrub(value, known)
    return value

"""Model id resolution: the many spellings of one model.

Callers pass whatever their SDK, gateway or cloud calls a model. These all name
``claude-sonnet-4`` (and are priced as it):

* ``claude-sonnet-4-20250514`` (dated snapshot), ``claude-sonnet-4@20250514`` (Vertex AI)
* ``us.anthropic.claude-sonnet-4-20250514-v1:0`` (Bedrock cross-region inference profile;
  also ``eu.``, ``apac.``, ``global.``, ... and ``-v1:0`` / ``-v2`` suffixes), Bedrock ARNs
* ``anthropic/claude-sonnet-4``, ``bedrock/...``, ``vertex_ai/...`` (LiteLLM-style routes)

and ``publishers/google/models/gemini-2.5-pro``, ``projects/p/locations/l/publishers/
google/models/gemini-2.5-pro``, ``models/gemini-2.5-pro``, ``openai/gpt-4o``,
``azure/gpt-4o``, ``openrouter/anthropic/claude-sonnet-4.5`` name the model after the
last ``/``. Dot forms of version numbers (``claude-sonnet-4.5``) also find the dashed
id (``claude-sonnet-4-5``), and OpenAI fine-tunes (``ft:gpt-4o-mini-2024-07-18:acme::id``)
find ``ft:gpt-4o-mini`` (the fine-tuned rates) when the table lists it, else the base
model.

:func:`candidates` lists the ids to try, most specific first; the table tries each as an
exact id or alias, then without a trailing date stamp, then its declared prefixes.
:func:`family_lines` gives the model lines an unknown id belongs to, and
:func:`provider_family` its provider, for the conservative default.
"""

from __future__ import annotations

import re

# A Bedrock model id: optional geography prefix, vendor, model, optional version suffix.
_BEDROCK = re.compile(
    r"^(?:(?:us|eu|apac|ap|au|ca|jp|us-gov|global)\.)?"
    r"(?:anthropic|openai|google|amazon|meta|mistral|cohere|ai21|deepseek|qwen)\."
    r"(?P<model>.+?)(?:-v\d+(?::\d+)?|:\d+)?$"
)
# A trailing snapshot date: -20250514, -2026-09-22 (OpenAI), @20250929 (Vertex AI), and
# Gemini's -preview-05-06 / -exp-03-25 style stamps.
DATE_SUFFIX = re.compile(
    r"(?:[-@]20\d{2}(?:-\d{2}-\d{2}|\d{4})|@\d{3,8}|-\d{2}-\d{2}|-\d{2}-20\d{2})$"
)
_VERSION_TAG = re.compile(r"(?::latest|-latest|@latest|@default|:\d+)$")
# OpenAI's older snapshot stamps: gpt-4-0613, gpt-3.5-turbo-1106 (month and day).
_MMDD_SUFFIX = re.compile(r"-(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])$")
_DOTTED_VERSION = re.compile(r"(?<=\d)\.(?=\d)")
FINE_TUNE_PREFIX = "ft:"


def normalize(model: str) -> str:
    """Lower-case, trimmed id without a route or publisher path (``openai/``,
    ``publishers/google/models/``, ARNs) and without Bedrock's geography/vendor/version
    decorations. The date stamp is kept (see :func:`candidates`)."""
    key = model.strip().lower()
    if "/" in key:
        key = key.rsplit("/", 1)[1]
    if ":" in key and key.startswith("arn:"):
        key = key.rsplit(":", 1)[1]
    m = _BEDROCK.match(key)
    if m is not None:
        key = m.group("model")
    return key


def fine_tune_base(model: str) -> str | None:
    """The base model of an OpenAI fine-tune id (``ft:BASE:org:suffix:id``), else None."""
    key = model.strip().lower()
    if "/" in key:
        key = key.rsplit("/", 1)[1]
    if not key.startswith(FINE_TUNE_PREFIX):
        return None
    base = key[len(FINE_TUNE_PREFIX):].split(":", 1)[0]
    return base or None


def candidates(model: str) -> list[str]:
    """Ids to look up for `model`, in order: as given, normalized, then without a version
    tag (``-latest``, ``:latest``) and without a trailing date stamp; then the same with
    version dots as dashes (``claude-sonnet-4.5`` -> ``claude-sonnet-4-5``). A fine-tune
    gives ``ft:BASE`` ids (fine-tuned rates) before the base model's ids."""
    base = fine_tune_base(model)
    if base is not None:
        tuned = [FINE_TUNE_PREFIX + key for key in _plain_candidates(base)]
        return _unique([model.strip().lower(), *tuned, *_plain_candidates(base)])
    return _plain_candidates(model)


def _unique(keys: list[str]) -> list[str]:
    return list(dict.fromkeys(keys))


def _plain_candidates(model: str) -> list[str]:
    out = _candidates(model)
    dashed = [_DOTTED_VERSION.sub("-", key) for key in out]
    if dashed != out:
        out = _unique([*out, *(key for key in dashed for key in _candidates(key))])
    return out


def _candidates(model: str) -> list[str]:
    raw = model.strip().lower()
    out = [raw]
    key = normalize(model)
    if key != raw:
        out.append(key)
    untagged = _VERSION_TAG.sub("", key)
    if untagged != key:
        out.append(untagged)
        key = untagged
    undated = DATE_SUFFIX.sub("", key)
    if undated != key:
        out.append(undated)
        # Gemini previews: gemini-2.5-flash-preview-05-20 -> gemini-2.5-flash
        for tag in ("-preview", "-exp"):
            if undated.endswith(tag):
                out.append(undated[: -len(tag)])
    elif _MMDD_SUFFIX.search(key):
        out.append(_MMDD_SUFFIX.sub("", key))
    return out


# Name prefixes and route segments that name a provider (gen_ai.provider.name values).
_NAME_FAMILIES = (
    ("claude", "anthropic"), ("gpt", "openai"), ("chatgpt", "openai"), ("o1", "openai"),
    ("o3", "openai"), ("o4", "openai"), ("codex", "openai"), ("computer-use", "openai"),
    ("gemini", "gcp.gemini"),
)
_ROUTE_FAMILIES = {
    "anthropic": "anthropic", "claude": "anthropic", "openai": "openai", "azure": "openai",
    "azure_ai": "openai", "gemini": "gcp.gemini", "google": "gcp.gemini",
}
_VERSION_PART = re.compile(r"^\d+$")


def provider_family(model: str) -> str | None:
    """The provider an id most likely belongs to (``anthropic``, ``openai``,
    ``gcp.gemini``), from its name (``claude-*``, ``gpt-*``, ``ft:gpt-*``, ``gemini-*``)
    or its route (``azure/``, ``openrouter/anthropic/``), else None."""
    raw = model.strip().lower()
    key = fine_tune_base(raw) or normalize(raw)
    for prefix, family in _NAME_FAMILIES:
        if key == prefix or key.startswith(prefix + "-") or (
                prefix == "claude" and "claude" in key):
            return family
    for segment in reversed(raw.split("/")[:-1]):
        routed = _ROUTE_FAMILIES.get(segment)
        if routed is not None:
            return routed
    return None


def family_lines(model: str) -> list[str]:
    """Model lines `model` belongs to, narrowest first: ``claude-sonnet-4-7-20261201``
    -> ``["claude-sonnet-4", "claude-sonnet"]`` (trailing version numbers dropped one by
    one, never down to a bare vendor name). A table entry is in a line when its id is
    the line or starts with it followed by ``-`` or ``.``."""
    keys = candidates(model)
    key = _DOTTED_VERSION.sub("-", keys[-1])
    parts = key.split("-")
    lines = []
    while len(parts) > 2 and _VERSION_PART.match(parts[-1]):
        parts = parts[:-1]
        lines.append("-".join(parts))
    return lines

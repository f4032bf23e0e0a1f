"""Model id resolution: the many spellings of one model.

Callers pass whatever their SDK, gateway or cloud calls a model. These all name
``claude-sonnet-4`` (and are priced as it):

* ``claude-sonnet-4-20250514`` (dated snapshot), ``claude-sonnet-4@20250514`` (Vertex AI)
* ``us.anthropic.claude-sonnet-4-20250514-v1:0`` (Bedrock cross-region inference profile;
  also ``eu.``, ``apac.``, ``global.``, ... and ``-v1:0`` / ``-v2`` suffixes), Bedrock ARNs
* ``anthropic/claude-sonnet-4``, ``bedrock/...``, ``vertex_ai/...`` (LiteLLM-style routes)

and ``publishers/google/models/gemini-2.5-pro``, ``projects/p/locations/l/publishers/
google/models/gemini-2.5-pro``, ``models/gemini-2.5-pro``, ``openai/gpt-4o``,
``azure/gpt-4o`` name the model after the last ``/``.

:func:`candidates` lists the ids to try, most specific first; the table tries each as an
exact id or alias, then without a trailing date stamp, then its declared prefixes.
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


def candidates(model: str) -> list[str]:
    """Ids to look up for `model`, in order: as given, normalized, then without a version
    tag (``-latest``, ``:latest``) and without a trailing date stamp."""
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
    return out

"""Per-recipient message content: merchant templates with a fixed vocabulary of placeholders,
validated at submission and rendered by a sandboxed Liquid engine (content/render.py)."""

from sluice.content.render import (
    ALLOWED_FILTERS,
    MAX_OUTPUT_CHARS,
    MAX_TEMPLATE_CHARS,
    PLACEHOLDERS,
    VALUE_MAX_CHARS,
    RenderError,
    Template,
    TemplateError,
    check_template,
    clean_value,
    compile_template,
    format_ends_at,
)

__all__ = [
    "ALLOWED_FILTERS",
    "MAX_OUTPUT_CHARS",
    "MAX_TEMPLATE_CHARS",
    "PLACEHOLDERS",
    "VALUE_MAX_CHARS",
    "RenderError",
    "Template",
    "TemplateError",
    "check_template",
    "clean_value",
    "compile_template",
    "format_ends_at",
]

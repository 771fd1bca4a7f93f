"""The one error of the application model."""
from __future__ import annotations


class TemplateError(ValueError):
    """A template problem, naming its path in the template (``Resources.Fn.Properties.Timeout: ...``)."""

"""``OptionInfo`` / ``Options``: settings with defaults known from their OptionInfo."""
from __future__ import annotations

from typing import Any


class OptionInfo:
    def __init__(self, default=None, label="", component=None, component_args=None, onchange=None, section=None,
                 refresh=None, comment_before="", comment_after="", infotext=None, restrict_api=False,
                 category_id=None):
        self.default, self.label, self.component, self.component_args = default, label, component, component_args
        self.onchange, self.section, self.refresh = onchange, section, refresh


class Options:
    """Values saved by the user (``data``) over the defaults of the added options (``data_labels``);
    an option nobody added nor saved is an AttributeError, as in the webui."""

    def __init__(self) -> None:
        object.__setattr__(self, "data", {})
        object.__setattr__(self, "data_labels", {})

    def add_option(self, key: str, info: OptionInfo) -> None:
        self.data_labels[key] = info

    def __setattr__(self, key: str, value: Any) -> None:
        self.data[key] = value

    def __getattr__(self, key: str) -> Any:
        if key in self.data:
            return self.data[key]
        if key in self.data_labels:
            return self.data_labels[key].default
        raise AttributeError(f"'Options' object has no attribute '{key}'")

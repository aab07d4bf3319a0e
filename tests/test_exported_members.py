"""The public API: every name in __all__ exists, is sorted, and nothing public is left out."""

from __future__ import annotations

import resumable_sse


def _isort_style(name: str) -> tuple[int, str]:
    """Constants, then classes, then functions and dunders: the order ruff's RUF022 keeps."""
    return (0 if name.isupper() else 1 if name[0].isupper() else 2, name)


def test_all_names_exist_and_are_sorted() -> None:
    assert resumable_sse.__all__ == sorted(resumable_sse.__all__, key=_isort_style)
    for name in resumable_sse.__all__:
        assert hasattr(resumable_sse, name), name


def test_public_classes_and_functions_are_exported() -> None:
    public = {
        name
        for name, value in vars(resumable_sse).items()
        if not name.startswith("_") and getattr(value, "__module__", "").startswith("resumable_sse")
    }
    assert public <= set(resumable_sse.__all__)


def test_version() -> None:
    assert isinstance(resumable_sse.__version__, str)
    assert resumable_sse.__version__.count(".") == 2

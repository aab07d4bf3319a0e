"""``python -m resumable_sse``: the ``resumable-sse`` command line (see :mod:`resumable_sse.cli`)."""

from __future__ import annotations

from .cli import main

raise SystemExit(main())

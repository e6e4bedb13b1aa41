"""``python -m em_hf.cli``."""

from em_hf.cli import main

raise SystemExit(main())

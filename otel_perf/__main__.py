"""``python -m otel_perf`` is the ``otel-perf`` command."""

import sys

from otel_perf.cli import main

sys.exit(main())

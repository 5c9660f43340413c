"""The sweep service: `python -m sweep.launch` (README.md)."""

import time

IMPORTED_AT = time.time()  # when this process first imported the package: a trial worker's imports begin

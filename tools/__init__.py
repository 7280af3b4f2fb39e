"""Developer tools run from the checkout (`python tools/NAME.py`); importable by bench/."""
